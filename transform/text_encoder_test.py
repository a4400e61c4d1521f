"""Pins the pretrained text encoder to the sentence-transformers reference.

The SavedModel is exported once into the cache (`$MMFUSE_CACHE` or
~/.cache/mmfuse) and reused by later runs, so only a cold cache pays the
export. Nothing here touches the network.
"""
import os
import threading

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from transform import text_encoder as te

# 120 words, 130 word pieces: more than the 126 that fit between [CLS] and [SEP].
_LONG = " ".join(["the quick brown fox jumps over the lazy dog near the riverbank"] * 10)


@pytest.fixture(scope="module")
def encoder() -> te.TextEncoder:
    return te.load_text_encoder()


def _embed(encoder, texts) -> np.ndarray:
    return encoder.embed(tf.constant(texts)).numpy()


def test_reference_similarity(encoder):
    # The value sentence-transformers gives for all-MiniLM-L6-v2.
    a, b = _embed(encoder, ["A man is eating food.", "A man is eating a piece of bread."])
    assert float(a @ b) == pytest.approx(0.7553, abs=1e-3)


def test_unit_norm_shape_and_dtype(encoder):
    texts = ["Red running shoes", "A", "", "   ", "Café crème, 12 €!", "東京タワー", _LONG]
    vectors = encoder.embed(tf.constant(texts))
    assert vectors.dtype == tf.float32
    assert vectors.shape == (len(texts), te.EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors.numpy(), axis=1), 1.0, atol=1e-5)


def test_batch_equals_one_at_a_time(encoder):
    # Padding to the batch's longest row must not leak into the short rows.
    texts = ["short", "a somewhat longer product title with words", "", _LONG]
    batch = _embed(encoder, texts)
    single = np.concatenate([_embed(encoder, [text]) for text in texts])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_long_text_is_truncated(encoder):
    # Words past the 128th token change nothing.
    long, longer = _embed(encoder, [_LONG, _LONG + " completely different ending about taxes"])
    np.testing.assert_allclose(long, longer, atol=1e-5)


def test_lower_cases_and_strips_accents(encoder):
    # As the checkpoint's Hugging Face tokenizer (do_lower_case=True) does.
    plain, shouted, accented = _embed(encoder, ["cafe creme", "CAFE CREME", "Café Crème"])
    np.testing.assert_allclose(plain, shouted, atol=1e-5)
    np.testing.assert_allclose(plain, accented, atol=1e-5)


def test_empty_batch(encoder):
    assert encoder.embed(tf.constant([], tf.string)).shape == (0, te.EMBEDDING_DIM)


def test_inside_tf_function(encoder):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def scores(text):
        vectors = encoder.embed(text)
        return tf.matmul(vectors, vectors, transpose_b=True)

    texts = ["wireless mouse", "cordless mouse", "garden hose"]
    eager = _embed(encoder, texts)
    np.testing.assert_allclose(scores(tf.constant(texts)).numpy(), eager @ eager.T, atol=1e-5)


def _op_types(graph_def) -> set:
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def test_graph_has_no_fast_tokenizer_ops(encoder):
    # Stock TF Serving lacks FastWordpieceTokenizer / FastBertNormalize & co.
    concrete = encoder.embed.get_concrete_function()
    ops = _op_types(concrete.graph.as_graph_def())
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(encoder.path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    for meta_graph in saved.meta_graphs:
        ops |= _op_types(meta_graph.graph_def)
    assert "WordpieceTokenizeWithOffsets" in ops  # the tokenizer really is in the graph
    assert not sorted(op for op in ops if op.startswith("Fast"))


def test_serving_signature(encoder):
    serve = encoder._model.signatures["serving_default"]
    out = serve(text=tf.constant(["A man is eating food."]))
    np.testing.assert_allclose(out["embedding"].numpy(),
                               _embed(encoder, ["A man is eating food."]), atol=1e-6)


def test_frozen(encoder):
    assert len(encoder.variables) > 100  # 6 layers' weights, visible to checkpoints
    assert not encoder.trainable_variables


def test_saved_inside_another_module(encoder, tmp_path):
    class Wrapper(tf.Module):
        def __init__(self, text_encoder):
            super().__init__()
            self.text_encoder = text_encoder

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, text):
            return {"embedding": self.text_encoder.embed(text)}

    wrapper = Wrapper(encoder)
    tf.saved_model.save(wrapper, str(tmp_path), signatures={"serving_default": wrapper.serve})
    assert (tmp_path / "assets" / "vocab.txt").exists()
    reloaded = tf.saved_model.load(str(tmp_path))
    texts = tf.constant(["wireless mouse", "", _LONG])
    expected = wrapper.serve(texts)["embedding"].numpy()
    np.testing.assert_allclose(reloaded.serve(texts)["embedding"].numpy(), expected, atol=1e-6)
    signature = reloaded.signatures["serving_default"]
    np.testing.assert_allclose(signature(text=texts)["embedding"].numpy(), expected, atol=1e-6)


def test_build_once_is_atomic_and_idempotent(tmp_path):
    calls = []
    barrier = threading.Barrier(2)

    def build(out):
        calls.append(out)
        barrier.wait(timeout=10)  # both builders are mid-way at the same time
        (out / "data").write_text(str(len(calls)))

    target = tmp_path / "thing"
    results = []
    threads = [threading.Thread(target=lambda: results.append(te._build_once(target, build)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [target, target] and len(calls) == 2
    assert (target / "data").read_text() in ("1", "2")
    assert [p.name for p in tmp_path.iterdir()] == ["thing"]  # no scratch dirs left
    te._build_once(target, lambda out: pytest.fail("rebuilt an existing target"))


def test_checkpoint_names_for_keras_hub():
    assert (te._hf_to_keras_hub_name("embeddings.LayerNorm.weight")
            == "bert.embeddings.LayerNorm.gamma")
    assert (te._hf_to_keras_hub_name("encoder.layer.3.output.LayerNorm.bias")
            == "bert.encoder.layer.3.output.LayerNorm.beta")
    assert (te._hf_to_keras_hub_name("encoder.layer.0.attention.self.query.weight")
            == "bert.encoder.layer.0.attention.self.query.weight")


def test_inside_tf_transform_preprocessing_fn(encoder, tmp_path):
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    def preprocessing_fn(inputs):
        # Made and tracked inside the function, so the transform graph saves it.
        text_encoder = tft.make_and_track_object(te.load_text_encoder, name="text_encoder")
        return {"title_embedding": text_encoder.embed(inputs["title"])}

    spec = {"title": tf.io.FixedLenFeature([], tf.string)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    titles = [b"A man is eating food.", b"", b"Blue lamp"]
    with tft_beam.Context(temp_dir=str(tmp_path / "tmp"), force_tf_compat_v1=False):
        (rows, _), transform_fn = ([{"title": t} for t in titles], metadata) | (
            tft_beam.AnalyzeAndTransformDataset(preprocessing_fn, output_record_batches=False))
        _ = transform_fn | tft_beam.WriteTransformFn(str(tmp_path / "out"))
    expected = _embed(encoder, titles)
    embedded = np.stack([row["title_embedding"] for row in rows])
    np.testing.assert_allclose(embedded, expected, atol=1e-5)
    # The written transform graph carries the encoder: serving-time preprocessing.
    layer = tft.TFTransformOutput(str(tmp_path / "out")).transform_features_layer()
    served = layer({"title": tf.constant(titles)})["title_embedding"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)

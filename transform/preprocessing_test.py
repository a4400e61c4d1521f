"""Runs `preprocessing_fn` through tf.Transform's Beam implementation on a few
raw examples, and checks the serving-time preprocessors on their own."""
import io
import math
import os
from datetime import datetime, timezone

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from PIL import Image
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils
from tfx.utils import io_utils

from schema import SCHEMA_FILE
from transform import features as f
from transform import image_preprocessor, preprocessing, text_preprocessor
from transform.image_encoder import FEATURE_DIM as IMAGE_DIM
from transform.image_encoder import ImageEncoderModule
from transform.preprocessing import IdLookup, preprocessing_fn
from transform.text_encoder import load_text_encoder

# Saturday 2024-01-06 18:30 UTC.
TIMESTAMP = int(datetime(2024, 1, 6, 18, 30, tzinfo=timezone.utc).timestamp())


def _png(colour, size=(40, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_text_is_lowercased_and_split_on_punctuation():
    tokens = text_preprocessor.tokenize(tf.constant(["Red, CERAMIC mug!", "", "Ünïcode—text"]), 8)
    assert tokens.to_list() == [[b"red", b"ceramic", b"mug"], [], ["ünïcode".encode(), b"text"]]


def test_tokens_are_cut_at_the_limit():
    assert text_preprocessor.tokenize(tf.constant(["a b c d e"]), 3).to_list() == [[b"a", b"b", b"c"]]


def test_image_keeps_aspect_ratio_and_normalises():
    pixels = image_preprocessor.preprocess(tf.constant(_png((255, 0, 0)))).numpy()
    assert pixels.shape == (224, 224, 3)
    # A flat red picture stays flat red after resize and centre crop.
    np.testing.assert_allclose(pixels[..., 0], (255 - 127) / 128, atol=1e-3)
    np.testing.assert_allclose(pixels[..., 1], -127 / 128, atol=1e-3)


def test_image_that_does_not_decode_is_an_error():
    with pytest.raises(tf.errors.InvalidArgumentError):
        image_preprocessor.preprocess(tf.constant(b"not an image"))


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    schema = io_utils.parse_pbtxt_file(SCHEMA_FILE, schema_pb2.Schema())
    metadata = dataset_metadata.DatasetMetadata(schema)
    raw = [
        {"item_id": [b"a"], "title": [b"Red mug"], "attributes": [b"colour=red", b"Kind=Mug"],
         "image": [_png((255, 0, 0))]},
        {"item_id": [b"b"], "title": [b"Blue lamp"], "description": [b"A tall lamp."]},
        {"item_id": [b"a"], "user_id": [b"u1"], "query": [b"red MUG"], "timestamp": [TIMESTAMP],
         "rating": [4.5]},
        {"item_id": [b"b"], "query": [b"lamp"]},
        {"user_id": [b"u1"], "recent_items": [b"b", b"unknown", b"a"]},
    ]
    spec = schema_utils.schema_as_feature_spec(schema).feature_spec
    rows = [{name: row.get(name, []) for name in spec} for row in raw]
    temp = str(tmp_path_factory.mktemp("tft"))
    with tft_beam.Context(temp_dir=temp):
        (outputs, _), transform_fn = (rows, metadata) | tft_beam.AnalyzeAndTransformDataset(
            preprocessing_fn, output_record_batches=False)
    output_dir = os.path.join(temp, "transform_fn")
    _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
    return outputs, tft.TFTransformOutput(output_dir)


def test_ids_and_words_share_vocabularies(transformed):
    outputs, tft_output = transformed
    items = tft_output.vocabulary_by_name(f.ITEM_VOCABULARY)
    assert sorted(items) == [b"a", b"b"]
    assert outputs[0][f.ITEM_INDEX] == outputs[2][f.ITEM_INDEX] == items.index(b"a") + 1
    # "red mug" in a query maps to the same ids as in the title.
    title, query = outputs[0][f.ITEM_TOKENS], outputs[2][f.QUERY_TOKENS]
    assert list(query[:2]) == list(title[:2]) and query[0] > 0
    assert len(title) == f.ITEM_TEXT_LENGTH and not any(title[2:])


def test_a_word_outside_the_vocabulary_is_the_same_bucket_in_queries_and_titles(transformed):
    """A new product's new word (never seen by the vocabulary) must still
    match the same word in a query: both hash to one index after the vocabulary."""
    _, tft_output = transformed
    words = len(tft_output.vocabulary_by_name(f.TOKEN_VOCABULARY))
    spec = schema_utils.schema_as_feature_spec(
        io_utils.parse_pbtxt_file(SCHEMA_FILE, schema_pb2.Schema())).feature_spec
    texts = {f.TITLE: b"Zebra mug", f.QUERY: b"zebra"}
    raw = {name: tf.sparse.from_dense(tf.constant([[texts[name]]])) if name in texts else
           tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0], value.dtype), [1, 1])
           for name, value in spec.items()}
    out = tft_output.transform_features_layer()(raw)
    (zebra, mug), query = out[f.ITEM_TOKENS].numpy()[0][:2], out[f.QUERY_TOKENS].numpy()[0][0]
    assert words < zebra == query <= words + f.WORD_OOV_BUCKETS
    assert 0 < mug <= words


def test_catalogue_rows_carry_their_title_and_attributes_as_written_for_answers(transformed):
    outputs, _ = transformed
    assert [(row[f.DISPLAY_TITLE], row[f.DISPLAY_ATTRIBUTES]) for row in outputs] == [
        (b"Red mug", b"colour=red, Kind=Mug"), (b"Blue lamp", b""), (b"", b""), (b"", b""),
        (b"", b"")]


def test_absent_values_are_index_zero(transformed):
    outputs, tft_output = transformed
    assert b"" not in tft_output.vocabulary_by_name(f.USER_VOCABULARY)
    assert outputs[3][f.USER_INDEX] == 0  # anonymous search row
    assert outputs[1][f.USER_INDEX] == 0  # catalogue row
    assert not any(outputs[2][f.ITEM_TOKENS])


def test_recent_items_map_to_item_indices_in_order(transformed):
    outputs, tft_output = transformed
    items = tft_output.vocabulary_by_name(f.ITEM_VOCABULARY)
    recent = outputs[4][f.RECENT_ITEM_INDICES]
    assert len(recent) == f.RECENT_ITEMS_LENGTH
    assert list(recent[:3]) == [items.index(b"b") + 1, 0, items.index(b"a") + 1]
    assert not any(recent[3:]) and not any(outputs[2][f.RECENT_ITEM_INDICES])


def test_only_rows_with_the_input_carry_frozen_features(transformed):
    outputs, _ = transformed
    lengths = [(len(row[f.ITEM_TEXT_EMBEDDING]), len(row[f.QUERY_TEXT_EMBEDDING]),
                len(row[f.IMAGE_EMBEDDING])) for row in outputs]
    assert lengths == [(384, 0, IMAGE_DIM), (384, 0, 0), (0, 384, 0), (0, 384, 0), (0, 0, 0)]


def test_the_encoders_are_built_once_for_all_of_tf_transforms_traces(transformed):
    # Built on each trace, they were half of a sample run's Transform time.
    for factory in (preprocessing._shared_text_encoder, preprocessing._shared_image_encoder):
        assert factory.cache_info().misses == 1 and factory.cache_info().hits >= 1


def test_frozen_features_equal_the_encoders_run_directly(transformed):
    """Training reads the Transform output; serving runs the encoders through
    the Transform layer: both must give the encoders' own output."""
    outputs, tft_output = transformed
    encoder = load_text_encoder()
    expected = encoder.embed(tf.constant(["Red mug", "red MUG"])).numpy()
    np.testing.assert_allclose(outputs[0][f.ITEM_TEXT_EMBEDDING], expected[0], atol=1e-5)
    np.testing.assert_allclose(outputs[2][f.QUERY_TEXT_EMBEDDING], expected[1], atol=1e-5)
    pixels = image_preprocessor.preprocess_batch(tf.constant([_png((255, 0, 0))]))
    np.testing.assert_allclose(outputs[0][f.IMAGE_EMBEDDING], ImageEncoderModule()(pixels)[0],
                               rtol=1e-4, atol=1e-4)
    # The full input signature, as the serving model feeds it (trainer/export.py):
    # the Transform layer drops outputs whose inputs are missing. The second
    # row carries a feature the feature cache attached, taken as it is.
    layer = tft_output.transform_features_layer()
    spec = schema_utils.schema_as_feature_spec(
        io_utils.parse_pbtxt_file(SCHEMA_FILE, schema_pb2.Schema())).feature_spec
    inputs = {name: tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0], value.dtype), [2, 1])
              for name, value in spec.items()}
    inputs[f.QUERY] = tf.sparse.from_dense(tf.constant([["red MUG"], ["not encoded again"]]))
    inputs[f.IMAGE] = tf.sparse.from_dense(tf.constant([[_png((255, 0, 0))], [b""]]))
    cached = np.full(expected.shape[1], 0.5, np.float32)
    inputs[f.ENCODED_QUERY] = tf.RaggedTensor.from_row_lengths(cached, [0, len(cached)]).to_sparse()
    served = layer(inputs)
    queries = tf.sparse.to_dense(served[f.QUERY_TEXT_EMBEDDING]).numpy()
    np.testing.assert_allclose(queries[0], expected[1], atol=1e-5)
    np.testing.assert_array_equal(queries[1], cached)
    np.testing.assert_allclose(tf.sparse.to_dense(served[f.IMAGE_EMBEDDING])[0],
                               outputs[0][f.IMAGE_EMBEDDING], rtol=1e-4, atol=1e-4)


def test_id_lookup_gives_the_transform_layers_indices(transformed):
    """Serving looks ids up without the Transform layer; both must agree,
    for known, unknown and empty ids."""
    _, tft_output = transformed
    layer = tft_output.transform_features_layer()
    spec = schema_utils.schema_as_feature_spec(
        io_utils.parse_pbtxt_file(SCHEMA_FILE, schema_pb2.Schema())).feature_spec
    ids = [b"a", b"b", b"u1", b"nobody", b""]
    raw = {name: tf.sparse.from_dense(tf.constant([[value] for value in ids]))
           if name in (f.ITEM_ID, f.USER_ID) else
           tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0], value.dtype), [len(ids), 1])
           for name, value in spec.items()}
    expected = layer(raw)
    for feature, vocabulary in ((f.ITEM_INDEX, f.ITEM_VOCABULARY), (f.USER_INDEX, f.USER_VOCABULARY)):
        lookup = IdLookup(tft_output.vocabulary_file_by_name(vocabulary))
        assert lookup(tf.constant(ids)).numpy().tolist() == expected[feature].numpy().tolist()
    assert expected[f.ITEM_INDEX].numpy().tolist()[2:] == [0, 0, 0]


def test_time_of_interaction_is_hour_of_day_and_day_of_week(transformed):
    outputs, _ = transformed
    hour, weekday = 2 * math.pi * 18.5 / 24, 2 * math.pi * 5 / 7  # Monday is day 0
    np.testing.assert_allclose(outputs[2][f.TIME_OF_INTERACTION],
                               [math.sin(hour), math.cos(hour), math.sin(weekday), math.cos(weekday)],
                               atol=1e-5)
    assert outputs[2][f.TIME_OF_INTERACTION + "_present"] == 1.0
    assert outputs[2][f.RATING_LABEL] == 4.5 and outputs[2][f.RATING_LABEL + "_present"] == 1.0


def test_rows_without_timestamp_or_rating_have_zeros_and_flag_0(transformed):
    outputs, tft_output = transformed
    for row in outputs[:2] + outputs[3:]:
        assert not any(row[f.TIME_OF_INTERACTION]) and row[f.TIME_OF_INTERACTION + "_present"] == 0.0
        assert row[f.RATING_LABEL] == 0.0 and row[f.RATING_LABEL + "_present"] == 0.0
    # Serving requests feed the absent features empty (trainer/export.py).
    spec = schema_utils.schema_as_feature_spec(
        io_utils.parse_pbtxt_file(SCHEMA_FILE, schema_pb2.Schema())).feature_spec
    raw = {name: tf.sparse.from_dense(tf.constant([[b"u1"], [b"u2"]])) if name == f.USER_ID else
           tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0], value.dtype), [2, 1])
           for name, value in spec.items()}
    served = tft_output.transform_features_layer()(raw)
    np.testing.assert_array_equal(served[f.TIME_OF_INTERACTION], np.zeros([2, f.TIME_OF_INTERACTION_DIM]))
    np.testing.assert_array_equal(served[f.TIME_OF_INTERACTION + "_present"], [0.0, 0.0])
    np.testing.assert_array_equal(served[f.RATING_LABEL + "_present"], [0.0, 0.0])


def test_the_serving_layer_derives_the_same_time(transformed):
    outputs, tft_output = transformed
    layer = tft_output.transform_features_layer()
    served = layer({f.TIMESTAMP: tf.sparse.from_dense(tf.constant([[TIMESTAMP]], tf.int64))})
    np.testing.assert_allclose(served[f.TIME_OF_INTERACTION][0], outputs[2][f.TIME_OF_INTERACTION],
                               atol=1e-6)

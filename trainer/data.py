"""Reads the Transform output: training batches and the catalogue table."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Dict, List  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402

from transform import features as f  # noqa: E402
from transform import image_preprocessor  # noqa: E402

VOCABULARIES = (f.ITEM_VOCABULARY, f.USER_VOCABULARY, f.TOKEN_VOCABULARY, f.ATTRIBUTE_VOCABULARY)
_IMAGE_SHAPE = (image_preprocessor.IMAGE_SIZE, image_preprocessor.IMAGE_SIZE, 3)


def vocabulary_sizes(tft_output: tft.TFTransformOutput) -> Dict[str, int]:
    """Embedding table sizes: each vocabulary plus index 0 for "unknown"."""
    return {name: tft_output.vocabulary_size_by_name(name) + 1 for name in VOCABULARIES}


def _parsed_records(file_pattern: str, tft_output: tft.TFTransformOutput,
                    batch_size: int) -> tf.data.Dataset:
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise FileNotFoundError(f"no transformed examples match {file_pattern}")
    spec = tft_output.transformed_feature_spec()
    return (tf.data.TFRecordDataset(files, compression_type="GZIP")
            .batch(batch_size)
            .map(lambda records: tf.io.parse_example(records, spec),
                 num_parallel_calls=tf.data.AUTOTUNE))


def item_counts(file_pattern: str, tft_output: tft.TFTransformOutput) -> np.ndarray:
    """How often each item index occurs in the (training) interactions."""
    size = vocabulary_sizes(tft_output)[f.ITEM_VOCABULARY]
    counts = np.zeros(size, np.int64)
    for batch in _parsed_records(file_pattern, tft_output, 4096).as_numpy_iterator():
        counts += np.bincount(batch[f.ITEM_INDEX], minlength=size)
    return counts


def interaction_batches(file_pattern: str, tft_output: tft.TFTransformOutput, batch_size: int,
                        shuffle_seed=None) -> tf.data.Dataset:
    """Batches of the features the query tower and the task need."""
    dataset = _parsed_records(file_pattern, tft_output, batch_size).unbatch()
    if shuffle_seed is not None:
        dataset = dataset.shuffle(100_000, seed=shuffle_seed, reshuffle_each_iteration=True)
    keep = (f.USER_INDEX, f.QUERY_TOKENS, f.ITEM_INDEX)
    return (dataset.batch(batch_size)
            .map(lambda batch: {name: batch[name] for name in keep})
            .prefetch(tf.data.AUTOTUNE))


def _dense_images(batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Sparse flattened pixels (empty rows = no image) -> images and presence."""
    pixels = batch[f.IMAGE_PIXELS]
    batch_size = tf.shape(batch[f.ITEM_INDEX])[0]
    values_per_row = tf.math.bincount(tf.cast(pixels.indices[:, 0], tf.int32),
                                      minlength=batch_size, maxlength=batch_size)
    dense = tf.sparse.to_dense(tf.sparse.reset_shape(pixels, [tf.cast(batch_size, tf.int64),
                                                              np.prod(_IMAGE_SHAPE)]))
    return {**batch,
            f.IMAGE_PIXELS: tf.reshape(dense, (-1,) + _IMAGE_SHAPE),
            "image_present": tf.cast(values_per_row > 0, tf.float32)}


def load_catalog(file_pattern: str, tft_output: tft.TFTransformOutput) -> Dict[str, np.ndarray]:
    """Every catalogue row's content, placed at its item index (row 0 empty)."""
    size = vocabulary_sizes(tft_output)[f.ITEM_VOCABULARY]
    content = {
        f.ITEM_TOKENS: np.zeros((size, f.ITEM_TEXT_LENGTH), np.int64),
        f.ATTRIBUTE_TOKENS: np.zeros((size, f.ATTRIBUTES_LENGTH), np.int64),
        f.IMAGE_PIXELS: np.zeros((size,) + _IMAGE_SHAPE, np.float32),
        "image_present": np.zeros((size,), np.float32),
    }
    seen: List[np.ndarray] = []
    batches = _parsed_records(file_pattern, tft_output, 1024).map(_dense_images)
    for batch in batches.as_numpy_iterator():
        rows = batch[f.ITEM_INDEX]
        seen.append(rows)
        for name in content:
            content[name][rows] = batch[name]
    missing = size - 1 - len(np.unique(np.concatenate(seen)))
    if missing:
        raise ValueError(f"{missing} item ids in the vocabulary have no catalogue row")
    return content

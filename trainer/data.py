"""Reads the Transform output: training batches and the catalogue table."""


from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from transform import features as f
from transform import image_encoder, text_encoder

VOCABULARIES = (f.ITEM_VOCABULARY, f.USER_VOCABULARY, f.TOKEN_VOCABULARY, f.ATTRIBUTE_VOCABULARY)
# Frozen features and their sizes; each comes with a "<name>_present" flag.
EMBEDDING_DIMS = {
    f.ITEM_TEXT_EMBEDDING: text_encoder.EMBEDDING_DIM,
    f.QUERY_TEXT_EMBEDDING: text_encoder.EMBEDDING_DIM,
    f.IMAGE_EMBEDDING: image_encoder.FEATURE_DIM,
}
CATALOG_FEATURES = (f.ITEM_TOKENS, f.ATTRIBUTE_TOKENS, f.ITEM_TEXT_EMBEDDING,
                    f.ITEM_TEXT_EMBEDDING + "_present", f.IMAGE_EMBEDDING, f.IMAGE_EMBEDDING + "_present")
# A query's photo is the request's `image`, the feature an item's photo is:
# interaction rows have none, serving's image search has one.
QUERY_FEATURES = (f.USER_INDEX, f.RECENT_ITEM_INDICES, f.QUERY_TOKENS, f.QUERY_TEXT_EMBEDDING,
                  f.QUERY_TEXT_EMBEDDING + "_present", f.IMAGE_EMBEDDING,
                  f.IMAGE_EMBEDDING + "_present", f.TIME_OF_INTERACTION,
                  f.TIME_OF_INTERACTION + "_present")
# The rating head's label and which rows have one.
RATING_FEATURES = (f.RATING_LABEL, f.RATING_LABEL + "_present")


def vocabulary_sizes(tft_output: tft.TFTransformOutput) -> Dict[str, int]:
    """Embedding table sizes: each vocabulary plus index 0 for "unknown" (and
    the words' out-of-vocabulary buckets)."""
    sizes = {name: tft_output.vocabulary_size_by_name(name) + 1 for name in VOCABULARIES}
    sizes[f.TOKEN_VOCABULARY] += f.WORD_OOV_BUCKETS
    return sizes


def _parsed_records(file_pattern: str, tft_output: tft.TFTransformOutput, batch_size: int,
                    features: Sequence[str]) -> tf.data.Dataset:
    """Batches of the named transformed features (parsing only those: the
    frozen embeddings are most of a record's bytes)."""
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise FileNotFoundError(f"no transformed examples match {file_pattern}")
    spec = {name: value for name, value in tft_output.transformed_feature_spec().items()
            if name in features}
    return (tf.data.TFRecordDataset(files, compression_type="GZIP")
            .batch(batch_size)
            .map(lambda records: tf.io.parse_example(records, spec),
                 num_parallel_calls=tf.data.AUTOTUNE))


def item_counts(file_pattern: str, tft_output: tft.TFTransformOutput) -> np.ndarray:
    """How often each item index occurs in the (training) interactions."""
    size = vocabulary_sizes(tft_output)[f.ITEM_VOCABULARY]
    counts = np.zeros(size, np.int64)
    for batch in _parsed_records(file_pattern, tft_output, 4096, [f.ITEM_INDEX]).as_numpy_iterator():
        counts += np.bincount(batch[f.ITEM_INDEX], minlength=size)
    return counts


def user_item_counts(file_pattern: str, tft_output: tft.TFTransformOutput) -> List[Dict[int, int]]:
    """At each user index, how often each item index occurs in the user's
    (training) interactions."""
    size = vocabulary_sizes(tft_output)[f.USER_VOCABULARY]
    counts: List[Dict[int, int]] = [{} for _ in range(size)]
    for batch in _parsed_records(file_pattern, tft_output, 4096,
                                 [f.USER_INDEX, f.ITEM_INDEX]).as_numpy_iterator():
        for user, item in zip(batch[f.USER_INDEX].tolist(), batch[f.ITEM_INDEX].tolist()):
            if user:
                counts[user][item] = counts[user].get(item, 0) + 1
    return counts


def last_visit_rows(file_pattern: str, tft_output: tft.TFTransformOutput) -> np.ndarray:
    """At each user index, how many of the user's (training) interactions
    share their latest timestamp: the rows of their last visit or basket. A
    user whose latest rows have no timestamp counts one row (each row a visit)."""
    size = vocabulary_sizes(tft_output)[f.USER_VOCABULARY]
    latest = np.full(size, -1, np.int64)
    rows = np.zeros(size, np.int64)
    for batch in _parsed_records(file_pattern, tft_output, 4096,
                                 [f.USER_INDEX, f.INTERACTION_TIMESTAMP]).as_numpy_iterator():
        for user, when in zip(batch[f.USER_INDEX].tolist(),
                              batch[f.INTERACTION_TIMESTAMP].tolist()):
            if when > latest[user]:
                latest[user], rows[user] = when, 0
            if when == latest[user]:
                rows[user] += 1
    rows[latest == 0] = 1
    rows[0] = 0
    return rows


def interaction_batches(file_pattern: str, tft_output: tft.TFTransformOutput, batch_size: int,
                        shuffle_seed=None, max_rows: Optional[int] = None) -> tf.data.Dataset:
    """Batches of the features the query tower and the tasks need.

    Args:
      file_pattern: the transformed examples (GZIP TFRecords).
      tft_output: the Transform's output, for the feature spec.
      batch_size: rows per batch.
      shuffle_seed: shuffle the rows (a new order each pass) with this seed; None: in file order.
      max_rows: keep an even sample of at most this many rows (every n-th, in file
        order); None: every row.
    """
    dataset = _parsed_records(file_pattern, tft_output, batch_size,
                              QUERY_FEATURES + RATING_FEATURES + (f.ITEM_INDEX,)).unbatch()
    if max_rows is not None:
        stride = -(-record_count(file_pattern) // max_rows)
        if stride > 1:
            dataset = (dataset.enumerate().filter(lambda position, _: position % stride == 0)
                       .map(lambda _, row: row))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(100_000, seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(dense_embeddings).prefetch(tf.data.AUTOTUNE)


def record_count(file_pattern: str) -> int:
    """How many transformed examples match `file_pattern` (read, not parsed)."""
    files = sorted(tf.io.gfile.glob(file_pattern))
    return int(tf.data.TFRecordDataset(files, compression_type="GZIP")
               .reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))


def dense_embeddings(features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Variable-length frozen features (an empty row = input absent) ->
    dense [batch, dim] plus a 0/1 "<name>_present" flag. Used on training
    batches and, in the serving graph, on the Transform layer's output."""
    dense = dict(features)
    for name, dim in EMBEDDING_DIMS.items():
        if name not in features:
            continue
        values = features[name]
        batch_size = tf.shape(values, out_type=tf.int64)[0]
        values_per_row = tf.math.bincount(values.indices[:, 0], minlength=batch_size,
                                          maxlength=batch_size, dtype=tf.int64)
        dense[name] = tf.reshape(tf.sparse.to_dense(tf.sparse.reset_shape(values, [batch_size, dim])),
                                 [-1, dim])
        dense[name + "_present"] = tf.cast(values_per_row > 0, tf.float32)
    return dense


def load_catalog(file_pattern: str, tft_output: tft.TFTransformOutput) -> Dict[str, np.ndarray]:
    """Every catalogue row's content, placed at its item index (row 0 empty)."""
    size = vocabulary_sizes(tft_output)[f.ITEM_VOCABULARY]
    content = {
        f.ITEM_TOKENS: np.zeros((size, f.ITEM_TEXT_LENGTH), np.int64),
        f.ATTRIBUTE_TOKENS: np.zeros((size, f.ATTRIBUTES_LENGTH), np.int64),
    }
    for name in (f.ITEM_TEXT_EMBEDDING, f.IMAGE_EMBEDDING):
        content[name] = np.zeros((size, EMBEDDING_DIMS[name]), np.float32)
        content[name + "_present"] = np.zeros((size,), np.float32)
    seen: List[np.ndarray] = []
    batches = _parsed_records(file_pattern, tft_output, 1024,
                              CATALOG_FEATURES + (f.ITEM_INDEX,)).map(dense_embeddings)
    for batch in batches.as_numpy_iterator():
        rows = batch[f.ITEM_INDEX]
        seen.append(rows)
        for name in content:
            content[name][rows] = batch[name]
    missing = size - 1 - len(np.unique(np.concatenate(seen)))
    if missing:
        raise ValueError(f"{missing} item ids in the vocabulary have no catalogue row")
    return content


def load_recent_items(file_pattern: str, tft_output: tft.TFTransformOutput) -> np.ndarray:
    """Each user's recent item indices, at the user's index (row 0: no user)."""
    size = vocabulary_sizes(tft_output)[f.USER_VOCABULARY]
    recent = np.zeros((size, f.RECENT_ITEMS_LENGTH), np.int64)
    batches = _parsed_records(file_pattern, tft_output, 4096, (f.USER_INDEX, f.RECENT_ITEM_INDICES))
    for batch in batches.as_numpy_iterator():
        recent[batch[f.USER_INDEX]] = batch[f.RECENT_ITEM_INDICES]
    return recent


def load_display(file_pattern: str, tft_output: tft.TFTransformOutput) -> Dict[str, np.ndarray]:
    """Each catalogue item's title and attributes as written (bytes), at its
    item index (row 0: ""), for answers to show (trainer/export.py)."""
    size = vocabulary_sizes(tft_output)[f.ITEM_VOCABULARY]
    display = {name: np.full(size, b"", dtype=object)
               for name in (f.DISPLAY_TITLE, f.DISPLAY_ATTRIBUTES)}
    batches = _parsed_records(file_pattern, tft_output, 1024, tuple(display) + (f.ITEM_INDEX,))
    for batch in batches.as_numpy_iterator():
        for name in display:
            display[name][batch[f.ITEM_INDEX]] = batch[name]
    return display

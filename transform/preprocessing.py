"""The tf.Transform `preprocessing_fn`: raw examples -> model features.

Ids and words become vocabulary indices (0 = absent or unknown; a word outside
the vocabulary hashes into `WORD_OOV_BUCKETS` indices after it), text is
normalised and tokenised by `text_preprocessor`, images are decoded, resized and
normalised by `image_preprocessor`. The frozen pretrained encoders (MiniLM for
text, EfficientNet-Lite0 for images) run here, once per row that has the input,
so training steps never run them and their output is cached in the Transform
artifact. The Transform graph is embedded in the exported model, so serving
requests go through this same code, encoders included.
"""
import functools
import math

import tensorflow as tf
import tensorflow_transform as tft

from mmfuse.config import from_dict
from transform import features as f
from transform import image_preprocessor, text_preprocessor
from transform.image_encoder import FEATURE_DIM as IMAGE_DIM
from transform.image_encoder import ImageEncoderModule
from transform.text_encoder import EMBEDDING_DIM as TEXT_DIM
from transform.text_encoder import load_text_encoder

# tf.Transform traces `preprocessing_fn` five times a run (analysis phases,
# the final graph), and building the encoders took half of a sample run's
# Transform time. They are eager objects tied to no trace, so one pair per
# process serves every trace.
_shared_text_encoder = functools.lru_cache(maxsize=1)(load_text_encoder)
_shared_image_encoder = functools.lru_cache(maxsize=1)(ImageEncoderModule)


def preprocessing_fn(inputs, custom_config=None):
    """Raw features -> model features (tf.Transform calls it; so does the serving graph).

    Args:
        inputs: the raw features of the schema (schema/schema.pbtxt), each a
            batch of `tf.SparseTensor`.
        custom_config: the `transform` section of the configuration
            (mmfuse/config.py `TransformSettings`) as a dict; None or missing
            keys take the defaults.

    Returns:
        The transformed features named in transform/features.py.
    """
    settings = from_dict({"transform": custom_config or {}}).transform
    # Tracked inside the function so that the Transform graph saves the
    # encoders' variables and vocabulary.
    text_encoder = tft.make_and_track_object(_shared_text_encoder, name="text_encoder")
    image_encoder = tft.make_and_track_object(_shared_image_encoder, name="image_encoder")

    item_id = _single_value(inputs[f.ITEM_ID], "")
    user_id = _single_value(inputs[f.USER_ID], "")
    query = _single_value(inputs[f.QUERY], "")
    query_tokens = text_preprocessor.tokenize(query, f.QUERY_LENGTH)
    title, description = _single_value(inputs[f.TITLE], ""), _single_value(inputs[f.DESCRIPTION], "")
    item_text = tf.strings.strip(tf.strings.join([title, description], " "))
    item_tokens = text_preprocessor.tokenize(item_text, f.ITEM_TEXT_LENGTH)
    all_attributes = tf.RaggedTensor.from_sparse(inputs[f.ATTRIBUTES])
    attribute_tokens = tf.strings.lower(all_attributes[:, :f.ATTRIBUTES_LENGTH])

    # Queries and item text share one vocabulary, so a word typed in a query
    # and the same word in a title map to one embedding.
    item_vocabulary = tft.vocabulary(_present(item_id), vocab_filename=f.ITEM_VOCABULARY)
    token_vocabulary = tft.vocabulary(
        tf.concat([query_tokens.flat_values, item_tokens.flat_values], axis=0),
        top_k=settings.text_vocabulary_size, vocab_filename=f.TOKEN_VOCABULARY)
    has_timestamp, has_rating = _has_value(inputs[f.TIMESTAMP]), _has_value(inputs[f.RATING])
    return {
        f.ITEM_INDEX: _index(item_id, item_vocabulary),
        f.RECENT_ITEM_INDICES: _padded_indices(tf.RaggedTensor.from_sparse(inputs[f.RECENT_ITEMS]),
                                               item_vocabulary, f.RECENT_ITEMS_LENGTH),
        f.USER_INDEX: _index(user_id, tft.vocabulary(_present(user_id),
                                                     vocab_filename=f.USER_VOCABULARY)),
        f.QUERY_TOKENS: _padded_indices(query_tokens, token_vocabulary, f.QUERY_LENGTH,
                                        f.WORD_OOV_BUCKETS),
        f.ITEM_TOKENS: _padded_indices(item_tokens, token_vocabulary, f.ITEM_TEXT_LENGTH,
                                       f.WORD_OOV_BUCKETS),
        f.ATTRIBUTE_TOKENS: _padded_indices(
            attribute_tokens,
            tft.vocabulary(attribute_tokens.flat_values, top_k=settings.attribute_vocabulary_size,
                           vocab_filename=f.ATTRIBUTE_VOCABULARY),
            f.ATTRIBUTES_LENGTH),
        f.ITEM_TEXT_EMBEDDING: _embed_present(item_text, text_encoder.embed, TEXT_DIM,
                                              inputs.get(f.ENCODED_ITEM_TEXT)),
        f.QUERY_TEXT_EMBEDDING: _embed_present(tf.strings.strip(query), text_encoder.embed, TEXT_DIM,
                                               inputs.get(f.ENCODED_QUERY)),
        f.IMAGE_EMBEDDING: _embed_present(
            _single_value(inputs[f.IMAGE], ""),
            lambda images: image_encoder(image_preprocessor.preprocess_batch(images)), IMAGE_DIM,
            inputs.get(f.ENCODED_IMAGE)),
        f.TIME_OF_INTERACTION: (_time_of_interaction(_single_value(inputs[f.TIMESTAMP], 0))
                                * has_timestamp[:, None]),
        f.TIME_OF_INTERACTION + "_present": has_timestamp,
        f.INTERACTION_TIMESTAMP: _single_value(inputs[f.TIMESTAMP], 0),
        f.RATING_LABEL: _single_value(inputs[f.RATING], 0.0),
        f.RATING_LABEL + "_present": has_rating,
        f.DISPLAY_TITLE: title,
        f.DISPLAY_ATTRIBUTES: tf.strings.reduce_join(all_attributes, axis=1, separator=", "),
    }


def _single_value(sparse: tf.SparseTensor, default) -> tf.Tensor:
    """A single-valued optional feature [batch, <=1] -> [batch], `default` when absent."""
    batch_size = sparse.dense_shape[0]
    reshaped = tf.SparseTensor(sparse.indices, sparse.values, tf.stack([batch_size, 1]))
    return tf.sparse.to_dense(reshaped, default_value=default)[:, 0]


def _has_value(sparse: tf.SparseTensor) -> tf.Tensor:
    """[batch] 1.0 where a single-valued optional feature has its value, else 0.0."""
    return _single_value(tf.SparseTensor(sparse.indices, tf.ones_like(sparse.values, tf.float32),
                                         sparse.dense_shape), 0.0)


def _time_of_interaction(timestamp: tf.Tensor) -> tf.Tensor:
    """Unix seconds [batch] -> [batch, 4]: sin and cos of the hour of day and of
    the day of week (UTC). Cyclic, so 23:59 lies next to 00:00 and Sunday next
    to Monday; the absolute time, which serving never repeats, is left out."""
    seconds_per_day = 24 * 3600
    hour = tf.cast(tf.math.floormod(timestamp, seconds_per_day), tf.float32) / 3600.0
    # 1970-01-01 was a Thursday: day 3 with Monday as 0.
    weekday = tf.cast(tf.math.floormod(tf.math.floordiv(timestamp, seconds_per_day) + 3, 7), tf.float32)
    hour_angle, weekday_angle = 2 * math.pi * hour / 24, 2 * math.pi * weekday / 7
    return tf.stack([tf.sin(hour_angle), tf.cos(hour_angle), tf.sin(weekday_angle),
                     tf.cos(weekday_angle)], axis=1)


def _present(values: tf.Tensor) -> tf.Tensor:
    """Drops empty strings so they never enter a vocabulary (they mean "absent")."""
    return tf.boolean_mask(values, tf.strings.length(values) > 0)


def _index(values: tf.Tensor, vocabulary) -> tf.Tensor:
    return tft.apply_vocabulary(values, vocabulary, default_value=-1) + 1


class IdLookup(tf.Module):
    """Ids -> indices over a vocabulary file this Transform wrote, by `_index`'s
    rule (line number + 1; 0 for an unknown or empty id).

    For serving paths that need an id's index and nothing else: the whole
    Transform layer costs about 2.5 ms a call whatever the request carries,
    five times the rest of a `recommend` (measured on a 44k-item model).
    A test pins it to the Transform layer's own output.
    """

    def __init__(self, vocabulary_file: str, name=None):
        super().__init__(name=name)
        # A file path: tf.saved_model.save copies it into the model's assets.
        self._table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(vocabulary_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                          tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER),
            default_value=-1)

    def __call__(self, ids: tf.Tensor) -> tf.Tensor:
        return self._table.lookup(ids) + 1


def _padded_indices(tokens: tf.RaggedTensor, vocabulary, length: int,
                    oov_buckets: int = 0) -> tf.Tensor:
    """[batch, length] indices, 0 padding; a token outside the vocabulary is
    0 too, or with `oov_buckets` one of that many indices after it."""
    indices = tf.ragged.map_flat_values(
        lambda words: tft.apply_vocabulary(words, vocabulary, default_value=-1,
                                           num_oov_buckets=oov_buckets) + 1, tokens)
    return indices.to_tensor(default_value=0, shape=[None, length])


def _embed_present(values: tf.Tensor, encode, dim: int, encoded=None) -> tf.SparseTensor:
    """Encodes the non-empty rows of `values` [batch]; empty rows stay empty,
    so rows without the input cost neither encoder time nor storage. A batch
    with no such row (most serving requests) skips the encoder: even on an
    empty batch it would run its ~1,600 graph ops.

    `encoded` (sparse [batch, dim] or None): features the feature cache
    attached (transform/cached_executor.py); a row that has all `dim` of them
    takes them as they are and is not encoded (its input may be gone)."""
    present = tf.strings.length(values) > 0
    if encoded is None:
        has_encoded = tf.zeros_like(present)
        cached = tf.zeros([0, dim], tf.float32)
    else:
        encoded = tf.RaggedTensor.from_sparse(encoded)
        has_encoded = tf.equal(encoded.row_lengths(), dim)
        cached = tf.reshape(tf.ragged.boolean_mask(encoded, has_encoded).flat_values, [-1, dim])
    to_encode = present & ~has_encoded
    values_to_encode = tf.boolean_mask(values, to_encode)
    embedded = tf.cond(tf.size(values_to_encode) > 0,
                       lambda: tf.reshape(encode(values_to_encode), [-1, dim]),
                       lambda: tf.zeros([0, dim], tf.float32))
    rows = tf.stack([tf.size(values, out_type=tf.int64), dim])
    merged = (tf.scatter_nd(tf.where(to_encode), embedded, rows)
              + tf.scatter_nd(tf.where(has_encoded), cached, rows))
    kept = present | has_encoded
    lengths = tf.cast(tf.where(kept, dim, 0), tf.int64)
    return tf.RaggedTensor.from_row_lengths(tf.reshape(tf.boolean_mask(merged, kept), [-1]),
                                            lengths).to_sparse()

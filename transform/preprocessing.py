"""The tf.Transform `preprocessing_fn`: raw examples -> model features.

Ids and words become vocabulary indices (0 = absent or unknown), text is
normalised and tokenised by `text_preprocessor`, images are decoded, resized and
normalised by `image_preprocessor`. The Transform graph is embedded in the
exported model, so serving requests go through this same code.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402

from transform import features as f  # noqa: E402
from transform import image_preprocessor, text_preprocessor  # noqa: E402


def preprocessing_fn(inputs):
    item_id = _single_string(inputs[f.ITEM_ID])
    user_id = _single_string(inputs[f.USER_ID])
    query_tokens = text_preprocessor.tokenize(_single_string(inputs[f.QUERY]), f.QUERY_LENGTH)
    item_text = tf.strings.join(
        [_single_string(inputs[f.TITLE]), _single_string(inputs[f.DESCRIPTION])], " ")
    item_tokens = text_preprocessor.tokenize(item_text, f.ITEM_TEXT_LENGTH)
    attribute_tokens = tf.RaggedTensor.from_sparse(inputs[f.ATTRIBUTES])[:, :f.ATTRIBUTES_LENGTH]
    attribute_tokens = tf.strings.lower(attribute_tokens)

    # Queries and item text share one vocabulary, so a word typed in a query
    # and the same word in a title map to one embedding.
    token_vocabulary = tft.vocabulary(
        tf.concat([query_tokens.flat_values, item_tokens.flat_values], axis=0),
        top_k=f.MAX_TEXT_TOKENS, vocab_filename=f.TOKEN_VOCABULARY)
    return {
        f.ITEM_INDEX: _index(item_id, tft.vocabulary(_present(item_id),
                                                     vocab_filename=f.ITEM_VOCABULARY)),
        f.USER_INDEX: _index(user_id, tft.vocabulary(_present(user_id),
                                                     vocab_filename=f.USER_VOCABULARY)),
        f.QUERY_TOKENS: _padded_indices(query_tokens, token_vocabulary, f.QUERY_LENGTH),
        f.ITEM_TOKENS: _padded_indices(item_tokens, token_vocabulary, f.ITEM_TEXT_LENGTH),
        f.ATTRIBUTE_TOKENS: _padded_indices(
            attribute_tokens,
            tft.vocabulary(attribute_tokens.flat_values, top_k=f.MAX_ATTRIBUTE_TOKENS,
                           vocab_filename=f.ATTRIBUTE_VOCABULARY),
            f.ATTRIBUTES_LENGTH),
        f.IMAGE_PIXELS: _image_pixels(_single_string(inputs[f.IMAGE])),
    }


def _single_string(sparse: tf.SparseTensor) -> tf.Tensor:
    """A single-valued optional feature [batch, <=1] -> [batch], '' when absent."""
    batch_size = sparse.dense_shape[0]
    reshaped = tf.SparseTensor(sparse.indices, sparse.values, tf.stack([batch_size, 1]))
    return tf.sparse.to_dense(reshaped, default_value="")[:, 0]


def _present(values: tf.Tensor) -> tf.Tensor:
    """Drops empty strings so they never enter a vocabulary (they mean "absent")."""
    return tf.boolean_mask(values, tf.strings.length(values) > 0)


def _index(values: tf.Tensor, vocabulary) -> tf.Tensor:
    return tft.apply_vocabulary(values, vocabulary, default_value=-1) + 1


def _padded_indices(tokens: tf.RaggedTensor, vocabulary, length: int) -> tf.Tensor:
    indices = tf.ragged.map_flat_values(
        lambda words: tft.apply_vocabulary(words, vocabulary, default_value=-1) + 1, tokens)
    return indices.to_tensor(default_value=0, shape=[None, length])


def _image_pixels(encoded: tf.Tensor) -> tf.SparseTensor:
    """Flattened pixels of each present image; rows without an image stay empty,
    so interaction rows cost no storage."""
    present = tf.strings.length(encoded) > 0
    pixels = image_preprocessor.preprocess_batch(tf.boolean_mask(encoded, present))
    pixels_per_image = image_preprocessor.IMAGE_SIZE * image_preprocessor.IMAGE_SIZE * 3
    lengths = tf.where(present, pixels_per_image, 0)
    ragged = tf.RaggedTensor.from_row_lengths(tf.reshape(pixels, [-1]), tf.cast(lengths, tf.int64))
    return ragged.to_sparse()

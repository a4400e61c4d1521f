"""Text normalisation and tokenisation, as TensorFlow ops.

Used by `preprocessing_fn` on titles, descriptions and queries, and therefore
also inside the exported serving graph: a query typed at serving time is cut
into the very tokens the model saw in training.
"""
import tensorflow as tf

_NOT_WORD = r"[^\p{L}\p{N}]+"


def normalize(text: tf.Tensor) -> tf.Tensor:
    """Lower-cases (Unicode-aware) and turns punctuation into spaces."""
    text = tf.strings.lower(text, encoding="utf-8")
    return tf.strings.strip(tf.strings.regex_replace(text, _NOT_WORD, " "))


def tokenize(text: tf.Tensor, max_tokens: int) -> tf.RaggedTensor:
    """Splits normalised text [batch] into at most `max_tokens` words per row."""
    return tf.strings.split(normalize(text))[:, :max_tokens]

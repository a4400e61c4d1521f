"""The lexical side of search: Okapi BM25 of a query's words over each item's words.

The towers place a query near items that mean the same; they are weaker at the
exact match of a rare word (a model number, a brand, a size) that a lexical
score gets right. `search` adds the two: the towers' cosine plus
`lexical_weight` times the query's BM25 scores divided by their maximum over
the catalogue, so that the best lexical match adds exactly `lexical_weight`
whatever the query's length.

Both sides are the Transform's token indices (`ITEM_TOKENS`, `QUERY_TOKENS`,
one vocabulary), so the words are the ones the towers see: normalised and
tokenised by the same code, index 0 (padding or a word outside the
vocabulary) never matching.
"""


from typing import Tuple

import numpy as np
import tensorflow as tf


def bm25_weights(item_tokens: np.ndarray, k1: float = 1.2,
                 b: float = 0.75) -> Tuple[np.ndarray, np.ndarray]:
    """(entries [n, 2] of (item index, word index), their weights [n]) from
    the catalogue's token indices [items, length], row 0 being the empty
    "unknown" item. The weight of word t in item d is
    idf(t) * f(t, d) (k1 + 1) / (f(t, d) + k1 (1 - b + b |d| / avgdl)), with
    idf(t) = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5)): the same formula as the
    benchmark's BM25 baseline (evaluation/rankers.py)."""
    pairs, counts, lengths = term_counts(item_tokens)
    return pairs, bm25_from_counts(pairs, counts, lengths, k1, b)


def term_counts(item_tokens: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(entries [n, 2] of (item index, word index), each word's count in the
    item [n], each item's length in words [items]): all BM25 needs, kept in
    the serving model so that an edited catalogue's table can be recomputed."""
    items, words = np.nonzero(item_tokens)
    words = item_tokens[items, words]
    # One entry per (item, word), with the word's count in the item.
    pairs, counts = np.unique(np.stack([items, words], axis=1), axis=0, return_counts=True)
    return (pairs.reshape(-1, 2).astype(np.int64), counts.astype(np.float32),
            np.count_nonzero(item_tokens, axis=1).astype(np.float32))


def bm25_from_counts(pairs: np.ndarray, counts: np.ndarray, lengths: np.ndarray,
                     k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """The weights of `bm25_weights` from `term_counts`' output."""
    documents = len(lengths) - 1
    average_length = max(lengths[1:].mean() if documents else 0.0, 1e-9)
    document_frequency = np.bincount(pairs[:, 1], minlength=int(pairs[:, 1].max(initial=0)) + 1)
    idf = np.log1p((documents - document_frequency + 0.5) / (document_frequency + 0.5))
    norm = k1 * (1.0 - b + b * lengths[pairs[:, 0]] / average_length)
    weights = idf[pairs[:, 1]] * counts * (k1 + 1.0) / (counts + norm)
    return weights.astype(np.float32)


def normalised_scores(entries: tf.Tensor, weights: tf.Tensor, num_items: tf.Tensor,
                      vocabulary_size: int, query_tokens: tf.Tensor) -> tf.Tensor:
    """[batch, num_items]: each query's BM25 scores over the catalogue divided
    by the query's best one (all 0 for a query with no word in any item).

    A word repeated in a query counts once per occurrence, as in the baseline.
    """
    index = tf.SparseTensor(entries, weights, tf.stack([tf.cast(num_items, tf.int64),
                                                        vocabulary_size]))
    # [batch, vocabulary] word counts, counted in place rather than summed
    # over one-hot rows (a [batch, length, vocabulary] tensor: 0.5 GB for 256
    # queries of 16 words over 30k words); column 0 (padding, unknown) dropped.
    counts = tf.math.bincount(query_tokens, minlength=vocabulary_size, maxlength=vocabulary_size,
                              axis=-1, dtype=tf.float32)
    counts = tf.concat([tf.zeros_like(counts[:, :1]), counts[:, 1:]], axis=1)
    # catalogue x queries, then transposed, as the towers' product is.
    scores = tf.transpose(tf.sparse.sparse_dense_matmul(index, counts, adjoint_b=True))
    best = tf.reduce_max(scores, axis=1, keepdims=True)
    return tf.math.divide_no_nan(scores, best)


def search_scores(tower_scores: tf.Tensor, lexical_weight: float, entries: tf.Tensor,
                  weights: tf.Tensor, vocabulary_size: int, query_tokens: tf.Tensor) -> tf.Tensor:
    """[batch, catalogue]: the towers' scores plus `lexical_weight` times the
    normalised lexical ones, as `search` ranks (a query with no words gets
    the towers' alone)."""
    if lexical_weight == 0:
        return tower_scores
    return tower_scores + lexical_weight * normalised_scores(
        entries, weights, tf.shape(tower_scores)[1], vocabulary_size, query_tokens)

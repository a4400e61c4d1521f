"""The item-to-item stage of `recommend`: a user's whole history against every item.

The two towers compress a user into one vector; what they cannot cross is
each of the user's past items against each candidate ("people who had this
had that"). This stage adds it: EASE (Steck, WWW 2019), a linear item-to-item
model fitted in closed form on the training interactions,

    B = argmin ||X - X B||^2 + L2 ||B||^2 with diag(B) = 0,
    P = (X^T X + L2 I)^-1,  B_ij = -P_ij / P_jj off the diagonal,

where X is the users x items matrix of who had what. A user's item-to-item
score of item j is the sum of B[i, j] over their past items i (0 for the
items they had: the buy-again mix decides those). It is added to
the towers' cosine on the towers' scale: divided by its own spread over the
catalogue for that user, times the towers' typical spread (measured at export)
and `weight`, so one weight fits any shop. An item no training row had (a new
product, one added with `mmfuse catalog add`) scores 0 here: the towers alone
place it.

B is dense, items x items, so the stage is built only for catalogues up to
`max_items` (the configuration's `export.item_item_max_items`): 5,000 items
take 100 MB and about a minute to invert on 2 cores.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
from scipy import sparse

# EASE's L2 weight: the value of the EASE paper and of the benchmarks' EASE baseline.
L2 = 500.0


def fit(user_item_counts: Sequence[Dict[int, int]], num_items: int,
        l2: float = L2) -> Optional[np.ndarray]:
    """[num_items, num_items] float32 EASE weights by item index (row and
    column 0, the unknown item, are 0) from each user's {item index: rows};
    None when no user had an item."""
    if not l2 > 0:
        raise ValueError(f"the item-to-item L2 weight must be positive, not {l2}")
    users = [np.fromiter(items, np.int64) for items in user_item_counts if items]
    if not users:
        return None
    # Who had what, once each however often they had it.
    had = sparse.csr_matrix((np.ones(sum(map(len, users)), np.float64),
                             np.concatenate(users), np.cumsum([0] + [len(u) for u in users])),
                            shape=(len(users), num_items))
    gram = (had.T @ had).toarray()
    gram[0, :] = gram[:, 0] = 0.0
    gram[np.diag_indices_from(gram)] += l2
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    weights[0, :] = weights[:, 0] = 0.0
    return weights.astype(np.float32)


def tower_spread(user_queries: np.ndarray, candidates: np.ndarray, max_users: int = 2000) -> float:
    """The towers' typical spread: the mean over (up to `max_users`) users of
    the standard deviation of their cosine over the catalogue (row 0 of both,
    the unknown user and item, left out)."""
    queries = user_queries[1:1 + max_users]
    if not len(queries) or len(candidates) < 3:
        return 1.0
    return float(np.mean(np.std(queries @ candidates[1:].T, axis=1)))


class ItemItemStage(tf.Module):
    """The fitted weights and each user's items, as constants of the serving
    graph, and the scores they add to the towers'.

    Args:
        weights: `fit`'s output, [items, items] by item index.
        user_items: [users, M] item indices each user had (0 pads), by user index.
        weight: the stage's weight against the towers (> 0).
        spread: `tower_spread` of the trained towers.

    Example (as trainer/run.py builds it):
        stage = ItemItemStage(fit(user_counts, items), past.items, 0.4, tower_spread(q, c))
        scores = towers_scores + stage.scores(stage.user_items_of(user_index), row_items)
    """

    def __init__(self, weights: np.ndarray, user_items: np.ndarray, weight: float, spread: float):
        super().__init__(name="item_item")
        if not weight > 0:
            raise ValueError(f"the item-to-item weight must be positive, not {weight}")
        self.weights = tf.constant(weights, tf.float32)
        self.user_items = tf.constant(user_items, tf.int64)
        self.scale = tf.constant(weight * spread, tf.float32)

    def user_items_of(self, user_index: tf.Tensor) -> tf.Tensor:
        """[batch, M] the items of users by index (0: no user, no items)."""
        return tf.gather(self.user_items, user_index)

    def scores(self, items: tf.Tensor, row_items: tf.Tensor) -> tf.Tensor:
        """[batch, rows] what the stage adds to the towers' scores of each
        catalogue row, for users who had `items` [batch, M] (item indices, 0
        pads, repeats count once; their own items get 0); `row_items` [rows] is the item index of
        each catalogue row (0 for rows the towers' vocabulary does not know)."""
        items = tf.cast(items, tf.int64)
        size = tf.shape(self.weights, out_type=tf.int64)[0]
        batch = tf.shape(items, out_type=tf.int64)[0]
        cells = tf.stack([tf.broadcast_to(tf.range(batch)[:, None], tf.shape(items)), items], -1)
        had = tf.minimum(tf.scatter_nd(tf.reshape(cells, [-1, 2]),
                                       tf.ones([tf.size(items)], tf.float32),
                                       tf.stack([batch, size])), 1.0)
        # Row 0 of the weights is zero, so padding and unknown items add nothing.
        # The user's own items get nothing either: whether they come back is
        # the buy-again mix's question, and EASE would rank them first.
        # A sparse product: its cost is the user's items times the catalogue,
        # not the catalogue squared.
        raw = tf.sparse.sparse_dense_matmul(tf.sparse.from_dense(had), self.weights)
        raw = tf.gather(raw * (1.0 - had), row_items, axis=1)
        spread = tf.math.reduce_std(raw, axis=1, keepdims=True)
        return tf.math.divide_no_nan(raw, spread) * self.scale

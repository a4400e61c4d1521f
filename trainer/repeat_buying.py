"""Buy-again: how likely a user is to want again an item they already have.

A user's history is a table of their distinct past items (`PastItems`):
how many times they had each and how many rows ago they last had it (known
within their `RECENT` most recent rows, which the pipeline's per-user table of
recent items holds; older ones count as `RECENT` rows ago).

Fitted at export from the training histories, with no per-shop flag: each
user's last visit (the rows sharing their latest timestamp; without
timestamps, their last row) stands for "what they buy next" and the rows
before it for "what they had", as the last-purchase protocol holds a
customer's last basket out. Carving the last visit, not a share of the rows,
matters: a share cuts through a basket, whose lines are distinct items, and
taught the model that an item had just before the cut does not come back.
For each distinct item of the older part a small logistic model predicts
whether it is in the last visit from:

- log(1 + times the user had it), log(1 + how many rows ago they last had it),
- the item's repeat rate (share of the users who have it that have it twice
  or more, smoothed towards the shop's rate), as a logit,
- log(1 + the length of the user's history).

Where nobody buys again (MovieLens) every label is 0 and the model learns a
probability near 0; in a shop where a third of purchases repeat, it learns
who rebuys what.

The probability is mixed with the two-tower ranking by the slots it earns:
`new_item_rates[r]` is the chance, on the same carve, that the r-th most
popular item the user does not have is in the last visit (popularity stands
in for the towers, which trained on that part), times `new_item_weight`
(the configuration's `export.new_item_weight`: popularity finds fewer new items
than the towers do, and a shop may want more of them). A
past item goes in front of the towers' r-th new item when its probability is
higher. `mix_scores` does
it inside the exported graph (standard ops only).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Tuple

import numpy as np
import tensorflow as tf

RECENT = 50  # transform/features.py RECENT_ITEMS_LENGTH
NEW_ITEM_RANKS = 200
# Width of the per-user table of past items: every past item of all but the
# heaviest users (a past item left out of it can come back from the towers).
MAX_PAST_ITEMS = 1000
# Pseudo-users of the shop's rate in each item's repeat rate.
RATE_PRIOR = 5.0
L2 = 1.0
# Below every probability and rank score: items neither rebought nor in the towers' top k.
_BELOW = -3.0


@dataclasses.dataclass
class PastItems:
    """[users, M] tables, most recently had first; item 0 pads."""
    items: np.ndarray
    counts: np.ndarray
    recency: np.ndarray  # rows ago (0 = the latest), RECENT when older than the recent rows
    lengths: np.ndarray  # [users]: the user's number of rows


@dataclasses.dataclass
class BuyAgain:
    weights: np.ndarray  # [4]
    bias: float
    item_rate_logits: np.ndarray  # [items]: logit of each item's repeat rate
    new_item_rates: np.ndarray  # [NEW_ITEM_RANKS], non-increasing, weighted
    shop_repeat_rate: float  # share of the carve's newer items that the user had before
    examples: int


def _logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def past_items(recent: np.ndarray, user_item_counts,
               max_items: int = MAX_PAST_ITEMS) -> PastItems:
    """From the recent items [users, RECENT] (most recent first, 0 pads) and
    every user's {item: rows} (index = user), each user's past items (as many
    as the user with most has, at most `max_items`): the recent ones by
    recency, then the older ones by count."""
    users = len(recent)
    max_items = max(1, min(max_items, max((len(counts) for counts in user_item_counts), default=1)))
    table = PastItems(np.zeros((users, max_items), np.int64), np.zeros((users, max_items), np.float32),
                      np.full((users, max_items), RECENT, np.float32), np.zeros(users, np.float32))
    for user in range(users):
        counts = user_item_counts[user]
        order, recency = [], {}
        for position, item in enumerate(recent[user]):
            if item and item not in recency:
                recency[item] = position
                order.append(item)
        order += sorted((item for item in counts if item not in recency),
                        key=lambda item: -counts[item])
        order = order[:max_items]
        table.items[user, :len(order)] = order
        table.counts[user, :len(order)] = [counts.get(item, 1) for item in order]
        table.recency[user, :len(order)] = [recency.get(item, RECENT) for item in order]
        table.lengths[user] = sum(counts.values())
    return table


def features(table: PastItems, item_rate_logits: np.ndarray) -> np.ndarray:
    """[users, M, 4] features of each past item."""
    lengths = np.broadcast_to(table.lengths[:, None], table.items.shape)
    return np.stack([np.log1p(table.counts), np.log1p(table.recency),
                     item_rate_logits[table.items], np.log1p(lengths)], axis=-1)


def _carve(recent: np.ndarray, user_item_counts, last_visit_rows, max_items: int):
    """Users with a visit before their last one within their recent rows ->
    (their rows before the last visit as PastItems, sets of the last visit's items)."""
    older_recent, older_counts, newer = [], [], []
    for row, counts, cut in zip(recent, user_item_counts, last_visit_rows):
        n = int((row != 0).sum())
        cut = int(cut)
        # A last visit that fills the recent rows may have more items than they hold.
        if not 0 < cut < n:
            continue
        after = collections.Counter(row[:cut].tolist())
        older = {item: count - after.get(item, 0) for item, count in counts.items()
                 if count - after.get(item, 0) > 0}
        shifted = np.zeros_like(row)
        shifted[:n - cut] = row[cut:n]
        older_recent.append(shifted)
        older_counts.append(older)
        newer.append(set(after))
    if not newer:
        return None, []
    return past_items(np.asarray(older_recent), older_counts, max_items), newer


def fit(recent: np.ndarray, user_item_counts, item_counts: np.ndarray, new_item_weight: float,
        last_visit_rows=None, max_items: int = MAX_PAST_ITEMS) -> "BuyAgain | None":
    """Fits the model.

    Args:
      recent: [users, RECENT] each user's recent item indices, most recent first (0 pads).
      user_item_counts: each user's {item: rows} over all their rows (index = user).
      item_counts: [items] rows per item; orders the stand-in for the towers' new items.
      new_item_weight: the stand-in's hit rates are multiplied by it (`export.new_item_weight`).
      last_visit_rows: [users] how many rows the user's last visit has (rows sharing
        their latest timestamp); None: each row is a visit of its own.
      max_items: width of the past-item tables.
    Returns None when no user has a visit before their last one.
    """
    if last_visit_rows is None:
        last_visit_rows = np.ones(len(recent), np.int64)
    older, newer = _carve(np.asarray(recent), user_item_counts, last_visit_rows, max_items)
    if not newer:
        return None
    size = len(item_counts)
    # Each item's repeat rate over the older parts.
    present = older.items != 0
    holders = np.bincount(older.items[present], minlength=size).astype(np.float64)
    repeaters = np.bincount(older.items[present & (older.counts > 1)], minlength=size)
    shop_rate = (repeaters.sum() + 1) / (holders.sum() + 2)
    rate_logits = _logit((repeaters + RATE_PRIOR * shop_rate) / (holders + RATE_PRIOR))
    rate_logits = rate_logits.astype(np.float32)

    labels = np.asarray([[item in items_after for item in row]
                         for row, items_after in zip(older.items.tolist(), newer)])
    x = features(older, rate_logits)[present].astype(np.float64)
    weights, bias = _logistic(x, labels[present].astype(np.float64))
    repeated = sum(len(items_after & set(row)) for row, items_after in zip(older.items.tolist(), newer))
    shop_repeat_rate = repeated / max(sum(len(items_after) for items_after in newer), 1)
    return BuyAgain(weights.astype(np.float32), float(bias), rate_logits,
                    new_item_weight * _new_item_rates(older.items, newer, item_counts),
                    float(shop_repeat_rate),
                    int(present.sum()))


def _logistic(x: np.ndarray, y: np.ndarray, steps: int = 30):
    """L2-regularised logistic regression by Newton's method on standardised
    features; returns the weights and bias on the original scale."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    theta = np.zeros(z.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(z @ theta, -30, 30)))
        gradient = z.T @ (p - y) + L2 * theta
        hessian = (z * (p * (1 - p))[:, None]).T @ z + L2 * np.eye(len(theta))
        theta -= np.linalg.solve(hessian, gradient)
    weights = theta[:-1] / scale
    return weights, theta[-1] - float(weights @ mean)


def _new_item_rates(older_items: np.ndarray, newer, item_counts) -> np.ndarray:
    """rates[r]: share of carved users whose r-th most popular not-had item is
    in their newer part (add-one smoothed, so an unseen hit is not a certain
    miss); made non-increasing."""
    order = np.argsort(-np.asarray(item_counts), kind="stable")
    order = order[order != 0]
    hits = np.zeros(NEW_ITEM_RANKS)
    for row, items_after in zip(older_items, newer):
        had = set(row[row != 0].tolist())
        ranked = [item for item in order[:NEW_ITEM_RANKS + len(had)] if item not in had]
        ranked = ranked[:NEW_ITEM_RANKS]
        hits[:len(ranked)] += [item in items_after for item in ranked]
    return np.minimum.accumulate((hits + 1) / (len(newer) + 2)).astype(np.float32)


def probabilities(model: BuyAgain, table: PastItems) -> np.ndarray:
    """[users, M] buy-again probabilities (numpy; padding included)."""
    logits = features(table, model.item_rate_logits) @ model.weights + model.bias
    return 1 / (1 + np.exp(-logits))


class BuyAgainTables(tf.Module):
    """The fitted model and each user's past items, as constants of the serving graph."""

    def __init__(self, model: BuyAgain, table: PastItems):
        super().__init__(name="buy_again")
        self.weights = tf.constant(model.weights, tf.float32)
        self.bias = tf.constant(model.bias, tf.float32)
        self.item_rate_logits = tf.constant(model.item_rate_logits, tf.float32)
        self.new_item_rates = tf.constant(model.new_item_rates, tf.float32)
        self.items = tf.constant(table.items, tf.int64)
        self.counts = tf.constant(table.counts, tf.float32)
        self.recency = tf.constant(table.recency, tf.float32)
        self.lengths = tf.constant(table.lengths, tf.float32)

    def user_past_items(self, user_index: tf.Tensor):
        """(items, counts, recency, lengths) of users by index (0: no user, no items)."""
        return tuple(tf.gather(table, user_index)
                     for table in (self.items, self.counts, self.recency, self.lengths))

    def probabilities(self, items, counts, recency, lengths) -> tf.Tensor:
        """The TF twin of `probabilities`."""
        x = tf.stack([tf.math.log1p(counts), tf.math.log1p(recency),
                      tf.gather(self.item_rate_logits, items),
                      tf.math.log1p(tf.broadcast_to(lengths[:, None], tf.shape(counts)))], axis=-1)
        return tf.sigmoid(tf.linalg.matvec(x, self.weights) + self.bias)


def past_items_of_history(history: tf.Tensor):
    """A request's history [batch, L] (item indices, most recent first, 0 pads)
    -> (items, counts, recency, lengths) as `BuyAgainTables.user_past_items`
    gives them, for callers that bring their own history."""
    history = tf.cast(history, tf.int64)
    length = tf.shape(history)[1]
    same = tf.equal(history[:, :, None], history[:, None, :])
    earlier = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0) & ~tf.eye(length, dtype=tf.bool)
    first = (history != 0) & ~tf.reduce_any(same & earlier[None], axis=2)
    counts = tf.reduce_sum(tf.cast(same, tf.float32), axis=2)
    recency = tf.cast(tf.broadcast_to(tf.range(length)[None, :], tf.shape(history)), tf.float32)
    lengths = tf.reduce_sum(tf.cast(history != 0, tf.float32), axis=1)
    return tf.where(first, history, 0), counts, recency, lengths


def mix_scores(scores: tf.Tensor, past: tf.Tensor, probability: tf.Tensor,
               new_item_rates: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """[batch, catalogue] towers' scores, the users' past items [batch, M]
    (0 pads; no item twice in a row) and their buy-again probabilities ->
    scores in which each past item scores its probability and the towers'
    top k new items the chance their rank earns (`new_item_rates`);
    everything else scores below both. Rows without past items are unchanged."""
    past = tf.cast(past, tf.int32)
    batch = tf.shape(scores)[0]
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(past))
    cells = tf.reshape(tf.stack([rows, past], axis=-1), [-1, 2])
    # Past items and index 0 (unknown; it also pads) leave the towers' ranking.
    unknown = tf.stack([tf.range(batch), tf.zeros([batch], tf.int32)], axis=-1)
    masked = tf.concat([cells, unknown], axis=0)
    new_only = tf.tensor_scatter_nd_update(
        scores, masked, tf.fill([tf.shape(masked)[0]], tf.constant(-np.inf, scores.dtype)))
    k = tf.clip_by_value(k, 1, tf.shape(scores)[1])
    top = tf.math.top_k(new_only, k=k)
    ranks = tf.range(k)
    rank_scores = tf.gather(new_item_rates, tf.minimum(ranks, tf.shape(new_item_rates)[0] - 1))
    # A tiny step per rank keeps the towers' order where the rates are equal.
    rank_scores = rank_scores - 1e-7 * tf.cast(ranks, tf.float32)
    rank_scores = tf.where(tf.math.is_finite(top.values), rank_scores[None, :], _BELOW)
    top_rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(top.indices))
    mixed = tf.tensor_scatter_nd_update(
        tf.fill(tf.shape(scores), tf.constant(_BELOW - 1.0, scores.dtype)),
        tf.reshape(tf.stack([top_rows, top.indices], -1), [-1, 2]), tf.reshape(rank_scores, [-1]))
    real = tf.reshape(past, [-1]) != 0
    mixed = tf.tensor_scatter_nd_update(mixed, tf.boolean_mask(cells, real),
                                        tf.boolean_mask(tf.reshape(probability, [-1]), real))
    # A user without past items keeps the towers' scores: the same top k,
    # and scores a client can compare with search's.
    return tf.where(tf.reduce_any(past != 0, axis=1)[:, None], mixed, scores)

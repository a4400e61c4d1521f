"""An approximate top-k over the catalogue from ops stock TF Serving has.

The catalogue's unit vectors are split into partitions by spherical k-means
(fitted at export on a sample, eagerly). A query scores the partitions'
centroids, reads only its `probes` nearest partitions, keeps the best
`shortlist` of their items by those (possibly bfloat16 or int8) vectors, and
the caller re-scores the shortlist exactly with the float32 catalogue. In the
graph that is a matmul, `top_k`, `gather` and a batched matmul: no custom op,
so stock TF Serving loads it (ScaNN would need its own TF Serving build).

Partitions are stored padded to one length, [partitions, capacity] rows and
[partitions, capacity, dim] vectors, so a query's cost is fixed:
probes x capacity vectors. k-means partitions are uneven, so an item whose
nearest partition is full goes to its next nearest with room (capacity is
`CAPACITY_FACTOR` times the mean size); the items that move lie between
partitions, where a query probing several finds them anyway.

The centroids are kept when the catalogue changes (`mmfuse catalog`,
`model_store.replace_catalogue`): `refresh` assigns every row again to the
centroids, so added items land in their nearest partition and removed ones
leave every partition. When the catalogue has grown or shrunk past what the
centroids were fitted for (`REFIT_RATIO`), it fits them again.
"""
import math
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

CAPACITY_FACTOR = 1.25
# Iterations of k-means, and the sample it is fitted on: points per partition.
ITERATIONS = 10
SAMPLE_PER_PARTITION = 32
# Nearest partitions an item may be placed in when nearer ones are full.
PLACEMENT_CHOICES = 16
# Refit the centroids when the catalogue is this many times larger or smaller
# than the one they were fitted on.
REFIT_RATIO = 4.0
DTYPES = ("float32", "bfloat16", "int8")
_CHUNK = 16384


def partitions_for(items: int) -> int:
    """Partitions derived from the catalogue's size: about 2 sqrt(items), so
    each holds about sqrt(items) / 2 (1M items: 2000 of 500)."""
    return max(1, min(items, round(2 * math.sqrt(items))))


def fit_centroids(vectors: np.ndarray, partitions: int, seed: int = 0,
                  iterations: int = ITERATIONS) -> np.ndarray:
    """[partitions, dim] unit centroids of spherical k-means over the unit
    `vectors` [n, dim], fitted on at most SAMPLE_PER_PARTITION * partitions
    of them. Each step assigns as `place` does, within the partitions'
    capacity, so the centroids move to where the items will be placed and
    few items end up outside their nearest partition."""
    rng = np.random.default_rng(seed)
    vectors = np.asarray(vectors, np.float32)
    partitions = max(1, min(partitions, len(vectors)))
    sample = vectors[rng.choice(len(vectors), min(len(vectors), SAMPLE_PER_PARTITION * partitions),
                                replace=False)]
    centroids = sample[rng.choice(len(sample), partitions, replace=False)]
    for _ in range(iterations):
        home = _balanced(*_nearest(sample, centroids, PLACEMENT_CHOICES), partitions)
        sums = np.zeros_like(centroids)
        np.add.at(sums, home, sample)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        # An empty partition takes a random point, so none stays empty.
        empty = norms[:, 0] == 0
        sums[empty] = sample[rng.choice(len(sample), int(empty.sum()))]
        centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return centroids.astype(np.float32)


def _nearest(vectors: np.ndarray, centroids: np.ndarray, count: int):
    """([n, count] the `count` centroids of highest inner product with each
    vector, best first; [n, count] those inner products)."""
    count = min(count, len(centroids))
    found, found_scores = [np.zeros((0, count), np.int32)], [np.zeros((0, count), np.float32)]
    for start in range(0, len(vectors), _CHUNK):
        top = tf.math.top_k(tf.matmul(vectors[start:start + _CHUNK], centroids, transpose_b=True),
                            k=count)
        found.append(top.indices.numpy())
        found_scores.append(top.values.numpy())
    return np.concatenate(found), np.concatenate(found_scores)


def _balanced(choices: np.ndarray, scores: np.ndarray, partitions: int) -> np.ndarray:
    """[n] the partition of each item given its nearest ones (`choices`,
    their `scores`; [n, c]): the nearest with room, a partition holding at
    most CAPACITY_FACTOR times the mean; the items nearest a partition get
    its room first. An item whose c partitions are all full goes to the
    emptiest."""
    capacity = max(1, math.ceil(CAPACITY_FACTOR * len(choices) / partitions))
    home = np.full(len(choices), -1)
    filled = np.zeros(partitions, np.int64)
    for choice in range(choices.shape[1]):
        waiting = np.flatnonzero(home < 0)
        if not len(waiting):
            break
        wanted = choices[waiting, choice]
        order = np.lexsort((-scores[waiting, choice], wanted))
        wanted, waiting = wanted[order], waiting[order]
        first = np.searchsorted(wanted, wanted, side="left")
        taken = np.arange(len(wanted)) - first < capacity - filled[wanted]
        home[waiting[taken]] = wanted[taken]
        filled += np.bincount(wanted[taken], minlength=partitions)
    for row in np.flatnonzero(home < 0):
        home[row] = int(np.argmin(filled))
        filled[home[row]] += 1
    return home


def place(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """[partitions, capacity] catalogue rows of each partition (0 pads) for
    the rows of `vectors` [n, dim] but row 0 (the unknown item), each in its
    nearest partition with room (`_balanced`)."""
    rows = np.arange(1, len(vectors))
    home = _balanced(*_nearest(vectors[rows], centroids, PLACEMENT_CHOICES), len(centroids))
    filled = np.bincount(home, minlength=len(centroids))
    table = np.zeros((len(centroids), max(int(filled.max(initial=0)), 1)), np.int64)
    order = np.argsort(home, kind="stable")
    slots = np.arange(len(order)) - np.searchsorted(home[order], home[order], side="left")
    table[home[order], slots] = rows[order]
    return table


def encode(vectors: np.ndarray, dtype: str) -> Tuple[np.ndarray, np.ndarray]:
    """(vectors stored as `dtype`, a scale per vector): int8 keeps each vector
    as round(127 v / max|v|) and its scale max|v| / 127; the others scale 1."""
    if dtype == "int8":
        scale = np.maximum(np.abs(vectors).max(axis=-1), 1e-12) / 127.0
        return np.round(vectors / scale[..., None]).astype(np.int8), scale.astype(np.float32)
    stored = tf.cast(tf.constant(vectors, tf.float32), dtype).numpy()
    return stored, np.ones(vectors.shape[:-1], np.float32)


class PartitionedIndex(tf.Module):
    """The partitions of a catalogue as variables (of unknown sizes, so that
    `refresh` can rewrite them after a catalogue edit) and the shortlist of a
    batch of queries."""

    def __init__(self, candidates: np.ndarray, partitions: Optional[int], probes: int,
                 shortlist: int, dtype: str = "float32"):
        super().__init__(name="index")
        candidates = np.asarray(candidates, np.float32)
        dim = candidates.shape[1]
        self.probes, self.shortlist_size, self.dtype = probes, shortlist, dtype
        # 0: derived from the catalogue's size (`partitions_for`) whenever the
        # centroids are fitted. A variable, so that a loaded model keeps it.
        self.partitions = tf.Variable(partitions or 0, trainable=False, dtype=tf.int64,
                                      name="partitions")
        self.centroids = tf.Variable(np.zeros([1, dim], np.float32), trainable=False,
                                     shape=[None, dim], name="centroids")
        self.rows = tf.Variable(np.zeros([1, 1], np.int64), trainable=False, shape=[None, None],
                                name="rows")
        self.vectors = tf.Variable(np.zeros([1, 1, dim], dtype), trainable=False,
                                   shape=[None, None, dim], name="vectors")
        self.scales = tf.Variable(np.zeros([1, 1], np.float32), trainable=False,
                                  shape=[None, None], name="scales")
        # Catalogue rows the centroids were fitted for (`refresh` refits past REFIT_RATIO).
        self.fitted_items = tf.Variable(0, trainable=False, dtype=tf.int64, name="fitted_items")
        refresh(self, candidates)

    def shortlist(self, query: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
        """[batch, size] catalogue rows (0 where a query's probed partitions
        hold fewer items) best first by the stored vectors, for unit
        `query` [batch, dim]."""
        centroids = self.centroids.value()
        probes = tf.minimum(self.probes, tf.shape(centroids)[0])
        near = tf.math.top_k(tf.matmul(query, centroids, transpose_b=True), k=probes).indices
        rows = tf.gather(self.rows.value(), near)  # [batch, probes, capacity]
        batch, dim = tf.shape(query)[0], tf.shape(query)[1]
        vectors = tf.reshape(tf.gather(self.vectors.value(), near), [batch, -1, dim])
        if self.dtype == "bfloat16":  # a bfloat16 product: half the memory read of float32
            scores = tf.cast(tf.linalg.matvec(vectors, tf.cast(query, tf.bfloat16)), tf.float32)
        else:
            scores = tf.linalg.matvec(tf.cast(vectors, tf.float32), query)
        if self.dtype == "int8":
            scores *= tf.reshape(tf.gather(self.scales.value(), near), [batch, -1])
        rows = tf.reshape(rows, [batch, -1])
        scores = tf.where(rows > 0, scores, -np.inf)
        top = tf.math.top_k(scores, k=tf.minimum(size, tf.shape(scores)[1]))
        return tf.where(tf.math.is_finite(top.values), tf.gather(rows, top.indices, batch_dims=1),
                        tf.zeros_like(top.indices, tf.int64))


def refresh(index, candidates: np.ndarray) -> None:
    """Rewrites `index`'s partitions (a PartitionedIndex, or one loaded from
    a SavedModel) for the catalogue `candidates` [n, dim] (row 0 unknown):
    the same centroids, unless there are none yet or the catalogue's size
    has moved past REFIT_RATIO from theirs."""
    candidates = np.asarray(candidates, np.float32)
    items = len(candidates) - 1
    fitted = int(index.fitted_items.numpy())
    if fitted == 0 or not 1 / REFIT_RATIO <= max(items, 1) / fitted <= REFIT_RATIO:
        partitions = int(index.partitions.numpy()) or partitions_for(items)
        index.centroids.assign(fit_centroids(candidates[1:], partitions))
        index.fitted_items.assign(items)
    rows = place(candidates, index.centroids.numpy())
    vectors, scales = encode(candidates[rows], _dtype_of(index))
    index.rows.assign(rows)
    index.vectors.assign(vectors)
    index.scales.assign(scales)


def _dtype_of(index) -> str:
    return index.vectors.dtype.name if index.vectors.dtype != tf.int8 else "int8"


def refresh_model(model) -> None:
    """After a change of a serving model's catalogue (`candidates`): its
    index, if it has one, refreshed for it."""
    index = getattr(model, "index", None)
    if index is not None and hasattr(index, "centroids"):
        refresh(index, model.candidates.numpy())

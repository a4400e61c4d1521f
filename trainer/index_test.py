"""The partitioned index on clustered unit vectors: its shortlist, re-scored
exactly, finds what the exact top-k finds; every item has one place; edits
of the catalogue are followed."""
import numpy as np
import pytest
import tensorflow as tf

from trainer import index

DIM = 16


def clustered(count, clusters=40, spread=0.35, seed=0):
    """Unit vectors around `clusters` random centres, with an empty row 0
    (the unknown item) as the serving catalogue has; the same centres
    whatever the seed."""
    centres = np.random.default_rng(0).standard_normal((clusters, DIM))
    rng = np.random.default_rng(seed + 1)
    rows = centres[rng.integers(0, clusters, count)] / np.sqrt(DIM) + \
        spread * rng.standard_normal((count, DIM)) / np.sqrt(DIM)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return np.concatenate([np.zeros((1, DIM)), rows]).astype(np.float32)


def top_rows(candidates, queries, rows, k):
    """The exact re-scoring of a shortlist: the best k rows of each."""
    scores = np.einsum("bsd,bd->bs", candidates[rows], queries)
    scores[rows == 0] = -np.inf
    return np.take_along_axis(rows, np.argsort(-scores, axis=1)[:, :k], axis=1)


def exact_rows(candidates, queries, k):
    scores = queries @ candidates.T
    scores[:, 0] = -np.inf
    return np.argsort(-scores, axis=1)[:, :k]


def recall(found, expected):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, expected)])


@pytest.mark.parametrize("dtype", index.DTYPES)
def test_the_shortlist_rescored_finds_the_exact_top_10(dtype):
    candidates = clustered(6000)
    queries = clustered(64, seed=1)[1:]
    built = index.PartitionedIndex(candidates, None, probes=12, shortlist=100, dtype=dtype)
    # 2 sqrt(6000) partitions, each at most CAPACITY_FACTOR times the mean.
    assert len(built.centroids.numpy()) == 155
    assert built.rows.numpy().shape[1] <= np.ceil(index.CAPACITY_FACTOR * 6000 / 155)
    shortlist = built.shortlist(tf.constant(queries), tf.constant(100)).numpy()
    assert shortlist.shape == (64, 100)
    assert recall(top_rows(candidates, queries, shortlist, 10),
                  exact_rows(candidates, queries, 10)) >= 0.95
    # Each query read 12 of 155 partitions: a tenth of the catalogue.
    assert 12 * built.rows.numpy().shape[1] < 6000 / 10


def test_every_item_has_one_place_within_the_capacity():
    candidates = clustered(1000)
    centroids = index.fit_centroids(candidates[1:], 20)
    table = index.place(candidates, centroids)
    assert sorted(table[table > 0].tolist()) == list(range(1, 1001))
    assert table.shape == (20, int(np.ceil(index.CAPACITY_FACTOR * 1000 / 20)))
    # Balanced k-means: nearly every item sits in its nearest partition.
    home = np.zeros(1001, int)
    partition, _ = np.nonzero(table)
    home[table[table > 0]] = partition
    nearest = np.argmax(candidates[1:] @ centroids.T, axis=1)
    assert np.mean(home[1:] == nearest) > 0.9


def test_an_added_item_is_found_and_a_removed_one_never():
    candidates = clustered(3000)
    built = index.PartitionedIndex(candidates, None, probes=8, shortlist=50)
    query = clustered(1, clusters=1, seed=7)[1:]
    first = built.shortlist(tf.constant(query), tf.constant(50)).numpy()[0]
    # Remove the query's best item: drop its row, as `mmfuse catalog remove` does.
    best = first[0]
    kept = np.delete(candidates, best, axis=0)
    # ... and add a copy of the query itself, far from where the centroids were fitted.
    grown = np.concatenate([kept, query])
    index.refresh(built, grown)
    found = built.shortlist(tf.constant(query), tf.constant(50)).numpy()[0]
    assert found[0] == len(grown) - 1
    assert np.isin(found[found > 0], np.arange(1, len(grown))).all()
    # The removed item's vector is in no partition.
    stored = built.vectors.numpy()[built.rows.numpy() > 0]
    assert not np.any(np.all(np.isclose(stored, candidates[best]), axis=1))


def test_more_asked_than_the_probed_partitions_hold_pads_with_row_0():
    candidates = clustered(200)
    built = index.PartitionedIndex(candidates, 10, probes=2, shortlist=20)
    slots = 2 * built.rows.numpy().shape[1]
    shortlist = built.shortlist(tf.constant(clustered(3, seed=2)[1:]), tf.constant(slots + 50))
    assert shortlist.shape == (3, slots)
    real = shortlist.numpy() > 0
    # Real rows first; the padding of partitions that are not full after them.
    assert all(not row[np.argmin(row):].any() or row.all() for row in real)


def test_the_centroids_are_fitted_again_when_the_catalogue_grows_4x():
    candidates = clustered(400)
    built = index.PartitionedIndex(candidates, None, probes=4, shortlist=20)
    before = built.centroids.numpy().copy()
    index.refresh(built, clustered(800))
    assert np.array_equal(built.centroids.numpy(), before)
    index.refresh(built, clustered(2000))
    assert len(built.centroids.numpy()) == index.partitions_for(2000)
    assert int(built.fitted_items.numpy()) == 2000

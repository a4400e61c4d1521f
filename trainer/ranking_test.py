"""Tests of trainer.ranking: retrieval metrics from the rank of the held-out item."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from trainer import ranking  # noqa: E402


def test_rank_one_scores_full_marks():
    assert ranking.rank_contributions(1) == {
        "mrr": 1.0,
        "recall@10": 1.0, "ndcg@10": 1.0,
        "recall@20": 1.0, "ndcg@20": 1.0,
        "recall@100": 1.0, "ndcg@100": 1.0,
    }


def test_rank_contributions_by_hand():
    # rank 3: 1/log2(4) = 0.5.
    assert ranking.rank_contributions(3, [2, 3]) == {
        "mrr": pytest.approx(1 / 3),
        "recall@2": 0.0, "ndcg@2": 0.0,
        "recall@3": 1.0, "ndcg@3": pytest.approx(0.5),  # k is inclusive
    }
    # rank 7: 1/log2(8) = 1/3.
    values = ranking.rank_contributions(7.0, [5, 10])
    assert values["ndcg@10"] == pytest.approx(1 / 3)
    assert values["ndcg@5"] == 0.0 and values["recall@5"] == 0.0
    assert values["recall@10"] == 1.0
    assert values["mrr"] == pytest.approx(1 / 7)


def test_no_ks_gives_only_mrr():
    assert ranking.rank_contributions(4, []) == {"mrr": 0.25}


def test_metric_names_follow_the_default_ks():
    assert ranking.DEFAULT_KS == (10, 20, 100)
    assert set(ranking.rank_contributions(500)) == {
        "mrr", "recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@100", "ndcg@100"}
    assert ranking.rank_contributions(500)["recall@100"] == 0.0


def test_metrics_from_ranks_by_hand():
    metrics = ranking.metrics_from_ranks([1, 3, 15, 1000], ks=[10, 20])
    assert metrics == {
        "mrr": pytest.approx((1 + 1 / 3 + 1 / 15 + 1 / 1000) / 4),
        "recall@10": pytest.approx(2 / 4),
        "ndcg@10": pytest.approx((1 + 0.5) / 4),
        "recall@20": pytest.approx(3 / 4),
        "ndcg@20": pytest.approx((1 + 0.5 + 1 / math.log2(16)) / 4),
    }


def test_metrics_from_ranks_accepts_a_numpy_array():
    """The training callback passes np.concatenate(...) of float ranks."""
    metrics = ranking.metrics_from_ranks(np.array([2.0, 4.0], dtype=np.float32))
    assert metrics["mrr"] == pytest.approx(0.375)
    assert metrics["recall@10"] == 1.0
    assert metrics["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / 2)


def test_metrics_are_means_so_duplicating_rows_changes_nothing():
    ranks = [2, 9, 30, 101]
    assert ranking.metrics_from_ranks(ranks * 3) == pytest.approx(ranking.metrics_from_ranks(ranks))


def test_every_metric_lies_between_zero_and_one_and_falls_with_rank():
    previous = None
    for rank in [1, 2, 5, 10, 11, 20, 21, 100, 101, 10_000]:
        values = ranking.rank_contributions(rank)
        assert all(0.0 <= v <= 1.0 for v in values.values())
        if previous:
            assert all(values[name] <= previous[name] for name in values)
        previous = values


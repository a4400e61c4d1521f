import math

import numpy as np
import pytest

from evaluation import metrics


def test_binary_list_metrics_by_hand():
    values = metrics.list_metrics(["a", "b", "c", "d"], {"b": 1.0, "d": 1.0}, ks=(1, 2, 4))
    ideal = 1.0 + 1.0 / math.log2(3)
    assert values["rr"] == 0.5
    assert (values["recall@1"], values["recall@2"], values["recall@4"]) == (0.0, 0.5, 1.0)
    assert (values["hit@1"], values["hit@2"], values["hit@4"]) == (0.0, 1.0, 1.0)
    assert values["ndcg@1"] == 0.0
    assert values["ndcg@2"] == pytest.approx((1.0 / math.log2(3)) / ideal)
    assert values["ndcg@4"] == pytest.approx((1.0 / math.log2(3) + 1.0 / math.log2(5)) / ideal)


def test_graded_ndcg_takes_the_ideal_order_of_the_relevant_gains():
    values = metrics.list_metrics(["a", "b", "c"], {"a": 1.0, "c": 3.0, "z": 2.0}, ks=(3,))
    # DCG: a at rank 1, c at rank 3; ideal: 3, 2, 1 at ranks 1, 2, 3.
    dcg = 1.0 / math.log2(2) + 3.0 / math.log2(4)
    ideal = 3.0 / math.log2(2) + 2.0 / math.log2(3) + 1.0 / math.log2(4)
    assert values["ndcg@3"] == pytest.approx(dcg / ideal)
    assert values["recall@3"] == pytest.approx(2 / 3)


def test_a_relevant_item_beyond_the_list_counts_nothing():
    values = metrics.list_metrics(["a", "b"], {"z": 1.0}, ks=(2,))
    assert values == {"rr": 0.0, "recall@2": 0.0, "ndcg@2": 0.0, "hit@2": 0.0}


@pytest.mark.parametrize("rank", [1, 3, 10, 11, 57])
def test_one_held_out_item_gives_the_evaluators_figures(rank):
    ranked = [f"other{i}" for i in range(1, rank)] + ["held_out"] + ["tail"] * 50
    ks = (10, 20, 100)
    values = metrics.list_metrics(ranked, {"held_out": 1.0}, ks)
    expected = metrics.rank_contributions(float(rank), ks)
    assert values["rr"] == pytest.approx(expected["mrr"])
    for k in ks:
        assert values[f"recall@{k}"] == expected[f"recall@{k}"]
        assert values[f"ndcg@{k}"] == pytest.approx(expected[f"ndcg@{k}"])


def test_bad_relevant_sets_are_refused():
    with pytest.raises(ValueError, match="at least one relevant"):
        metrics.list_metrics(["a"], {}, ks=(1,))
    with pytest.raises(ValueError, match="positive"):
        metrics.list_metrics(["a"], {"a": 0.0}, ks=(1,))


def test_mean_metrics():
    assert metrics.mean_metrics([{"x": 1.0, "y": 0.0}, {"x": 0.0, "y": 0.5}]) == {"x": 0.5, "y": 0.25}
    assert metrics.mean_metrics([]) == {}


def test_coverage_counts_distinct_items_in_any_top_k():
    lists = [["a", "b", "c"], ["a", "d", "b"]]
    assert metrics.coverage(lists, ks=(1, 2, 3), catalogue_size=8) == {
        "coverage@1": 1 / 8, "coverage@2": 3 / 8, "coverage@3": 4 / 8}


def test_diversity_is_mean_pairwise_jaccard_distance_over_items_with_attributes():
    attributes = {"a": {"x", "y"}, "b": {"x"}, "c": {"z"}}  # d has none
    lists = [["a", "b", "c", "d"], ["d", "a", "c"]]
    values = metrics.intra_list_diversity(lists, attributes, ks=(2, 4))
    # First list: top 2 is (a, b): 1 - 1/2. Top 4: (a,b) 0.5, (a,c) 1, (b,c) 1; d is left out.
    # Second list: top 2 is (d, a), no pair with attributes on both sides, so it is
    # left out; top 3 is (a, c): 1.
    assert values["diversity@2"] == pytest.approx(0.5)
    assert values["diversity@4"] == pytest.approx((2.5 / 3 + 1.0) / 2)


def test_diversity_is_none_without_attributes():
    assert metrics.intra_list_diversity([["a", "b"]], {}, ks=(2,)) == {"diversity@2": None}


def test_rank_one_scores_full_marks():
    assert metrics.rank_contributions(1) == {
        "mrr": 1.0,
        "recall@10": 1.0, "ndcg@10": 1.0,
        "recall@20": 1.0, "ndcg@20": 1.0,
        "recall@100": 1.0, "ndcg@100": 1.0,
    }


def test_rank_contributions_by_hand():
    # rank 3: 1/log2(4) = 0.5.
    assert metrics.rank_contributions(3, [2, 3]) == {
        "mrr": pytest.approx(1 / 3),
        "recall@2": 0.0, "ndcg@2": 0.0,
        "recall@3": 1.0, "ndcg@3": pytest.approx(0.5),  # k is inclusive
    }
    # rank 7: 1/log2(8) = 1/3.
    values = metrics.rank_contributions(7.0, [5, 10])
    assert values["ndcg@10"] == pytest.approx(1 / 3)
    assert values["ndcg@5"] == 0.0 and values["recall@5"] == 0.0
    assert values["recall@10"] == 1.0
    assert values["mrr"] == pytest.approx(1 / 7)


def test_no_ks_gives_only_mrr():
    assert metrics.rank_contributions(4, []) == {"mrr": 0.25}


def test_metric_names_follow_the_default_ks():
    assert metrics.DEFAULT_KS == (10, 20, 100)
    assert set(metrics.rank_contributions(500)) == {
        "mrr", "recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@100", "ndcg@100"}
    assert metrics.rank_contributions(500)["recall@100"] == 0.0


def test_metrics_from_ranks_by_hand():
    values = metrics.metrics_from_ranks([1, 3, 15, 1000], ks=[10, 20])
    assert values == {
        "mrr": pytest.approx((1 + 1 / 3 + 1 / 15 + 1 / 1000) / 4),
        "recall@10": pytest.approx(2 / 4),
        "ndcg@10": pytest.approx((1 + 0.5) / 4),
        "recall@20": pytest.approx(3 / 4),
        "ndcg@20": pytest.approx((1 + 0.5 + 1 / math.log2(16)) / 4),
    }


def test_metrics_from_ranks_accepts_a_numpy_array():
    """The training callback passes np.concatenate(...) of float ranks."""
    values = metrics.metrics_from_ranks(np.array([2.0, 4.0], dtype=np.float32))
    assert values["mrr"] == pytest.approx(0.375)
    assert values["recall@10"] == 1.0
    assert values["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / 2)


def test_metrics_are_means_so_duplicating_rows_changes_nothing():
    ranks = [2, 9, 30, 101]
    assert metrics.metrics_from_ranks(ranks * 3) == pytest.approx(metrics.metrics_from_ranks(ranks))


def test_every_metric_lies_between_zero_and_one_and_falls_with_rank():
    previous = None
    for rank in [1, 2, 5, 10, 11, 20, 21, 100, 101, 10_000]:
        values = metrics.rank_contributions(rank)
        assert all(0.0 <= v <= 1.0 for v in values.values())
        if previous:
            assert all(values[name] <= previous[name] for name in values)
        previous = values


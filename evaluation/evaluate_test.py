import math

import pytest

from dataset import pseudonyms
from dataset.contract import Dataset, Interaction, Item
from dataset.converters import write_dataset
from dataset.splits import EVAL, TRAIN
from evaluation import evaluate as evaluation
from evaluation import rankers
from evaluation.metrics import metrics_from_ranks
from mmfuse.cli import main

LOG3 = math.log2(3)


class FakeRanker(rankers.Ranker):
    """Fixed lists per user and per query; records the k it was asked for."""
    name = "fake"
    questions = frozenset({rankers.RECOMMEND, rankers.SEARCH})

    def __init__(self, user_lists, query_lists, query_scores=None):
        self.user_lists, self.query_lists = user_lists, query_lists
        self.query_scores = query_scores or {}
        self.asked = []

    def recommend(self, user_ids, k):
        self.asked.append(("recommend", list(user_ids), k))
        return rankers.Ranked([self.user_lists[user][:k] for user in user_ids], [])

    def search(self, queries, user_ids, k):
        self.asked.append(("search", list(queries), list(user_ids), k))
        return rankers.Ranked([self.query_lists[query][:k] for query in queries], [])

    def score_search(self, queries, user_ids, candidates):
        return [[self.query_scores[query].get(item, 0.0) for item in items]
                for query, items in zip(queries, candidates)]


def _dataset():
    items = {name: Item(name, title=name, attributes=(("colour", colour),))
             for name, colour in zip("abcde", ["red", "red", "blue", "blue", "green"])}
    # timestamp 1 = train, 2 = eval (the split is replaced in the tests).
    rows = [("u1", "a", 1, None, ""), ("u1", "b", 1, None, ""), ("u2", "c", 1, None, ""),
            ("u1", "c", 2, None, ""), ("u1", "a", 2, None, ""), ("u2", "d", 2, None, ""),
            ("", "e", 1, 3.0, "green"),
            ("", "a", 2, 3.0, "Red Mug"), ("", "b", 2, 1.0, "red mug"), ("", "c", 2, 2.0, "blue")]
    interactions = [Interaction(row=line, user_id=user, item_id=item, timestamp=timestamp,
                                rating=rating, query=query)
                    for line, (user, item, timestamp, rating, query) in enumerate(rows, start=2)]
    return Dataset("/data", items, interactions, {})


@pytest.fixture()
def split_by_timestamp(monkeypatch):
    monkeypatch.setattr(evaluation, "assign_splits", lambda rows, method: [
        TRAIN if row.timestamp == 1 else EVAL for row in rows])


def _ranker():
    return FakeRanker(
        user_lists={"u1": ["a", "c", "d", "b", "e"], "u2": ["c", "e", "d", "a", "b"]},
        query_lists={"Red Mug": ["b", "c", "a"], "blue": ["c", "a", "b"]},
        query_scores={"Red Mug": {"a": 0.1, "b": 0.9}})


def test_recommendation_metrics_average_over_held_out_rows(split_by_timestamp):
    result = evaluation.evaluate(_dataset(), _ranker(), ks=(1, 2))
    # Eval rows: u1-c at rank 2, u1-a at rank 1, u2-d at rank 3.
    assert (result["rows"], result["users"]) == (3, 2)
    assert result["recall@1"] == pytest.approx(1 / 3)
    assert result["recall@2"] == pytest.approx(2 / 3)
    assert result["ndcg@2"] == pytest.approx((1 / LOG3 + 1) / 3)
    # Lists stop at the largest k (2), so u2-d adds nothing to MRR.
    assert result["mrr"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # hit@k is per user: u1 has a held-out item in its top 1, u2 not even in its top 2.
    assert result["hit@1"] == result["hit@2"] == 0.5
    assert result["coverage@1"] == pytest.approx(2 / 5)  # a, c
    assert result["coverage@2"] == pytest.approx(3 / 5)  # a, c, e
    # Top 2: u1 (a, c) red vs blue: 1; u2 (c, e) blue vs green: 1.
    assert result["diversity@2"] == pytest.approx(1.0)
    assert "repeat_rows_left_out" not in result


def test_rows_agree_with_the_evaluators_ranks(split_by_timestamp):
    result = evaluation.evaluate(_dataset(), _ranker(), ks=(1, 2, 3))
    expected = metrics_from_ranks([2, 1, 3], ks=(1, 2, 3))
    for name, value in expected.items():
        assert result[name] == pytest.approx(value), name


def test_exclude_seen_drops_train_items_and_repeat_rows(split_by_timestamp):
    ranker = _ranker()
    result = evaluation.evaluate(_dataset(), ranker, ks=(1, 2), exclude_seen=True)
    # u1 without a, b: c, d, e; u2 without c: e, d, a, b. u1-a is a repeat of a train row.
    assert result["repeat_rows_left_out"] == 1
    assert (result["rows"], result["users"]) == (2, 2)
    assert result["recall@1"] == 0.5  # u1-c at rank 1, u2-d at rank 2
    assert result["recall@2"] == 1.0
    assert result["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert result["coverage@1"] == pytest.approx(2 / 5)  # c, e
    # Users were asked for k plus their number of seen items (the most in the batch).
    assert ranker.asked[0] == ("recommend", ["u2", "u1"], 2 + 2)


def test_search_groups_queries_and_grades_relevance(split_by_timestamp):
    ranker = _ranker()
    search = evaluation.evaluate(_dataset(), ranker, ks=(1, 2))["search"]
    # "Red Mug" and "red mug" are one query, asked once, without a user, in its first spelling.
    assert ranker.asked[-1] == ("search", ["Red Mug", "blue"], ["", ""], 2)
    assert (search["rows"], search["queries"]) == (3, 2)
    # Red Mug: relevant a (3), b (1); list b, c, a. blue: relevant c (2); list c, a.
    assert search["recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert search["ndcg@2"] == pytest.approx((1 / (3 + 1 / LOG3) + 1) / 2)
    assert search["hit@1"] == 1.0
    assert search["mrr"] == 1.0
    # Judged re-ranking: only Red Mug has judged items of different grades; b scores above a.
    assert search["judged_queries"] == 1
    assert search["judged_ndcg@2"] == pytest.approx((1 + 3 / LOG3) / (3 + 1 / LOG3))


def test_min_rating_narrows_the_relevant_items(split_by_timestamp):
    search = evaluation.evaluate(_dataset(), _ranker(), ks=(1,), min_rating=2.5)["search"]
    # Only Red Mug's a (3.0) is relevant; its list starts with b.
    assert search["queries"] == 1 and search["queries_without_relevant"] == 1
    assert search["recall@1"] == 0.0
    assert search["judged_queries"] == 1  # judged items are all kept


def test_a_ranker_that_cannot_recommend_is_reported(split_by_timestamp):
    class SearchOnly(FakeRanker):
        questions = frozenset({rankers.SEARCH})

    result = evaluation.evaluate(_dataset(), SearchOnly({}, _ranker().query_lists, {"Red Mug": {}}),
                                 ks=(1,))
    assert result["unanswered"] == ["recommend"]
    assert "recall@1" not in result and "search" in result


def _tiny_dataset(path):
    write_dataset(str(path), [{"item_id": "a", "title": "Red mug"}], (),
                  [{"user_id": "u1", "item_id": "a"}], ("user_id", "item_id"))
    return path


def test_cli_missing_model_is_exit_2(tmp_path, capsys):
    data = _tiny_dataset(tmp_path / "data")
    key = str(tmp_path / "user_key")
    pseudonyms.load_key(key, create=True)
    code = main(["evaluate", "--data", str(data), "--model", str(tmp_path / "no-model"),
                 "--user-key-file", key])
    assert code == 2
    err = capsys.readouterr().err
    assert "mmfuse evaluate: error" in err and "no-model" in err


def test_cli_bad_dataset_is_exit_2(tmp_path, capsys):
    code = main(["evaluate", "--data", str(tmp_path / "no-data"), "--model", str(tmp_path)])
    assert code == 2
    assert "no-data does not exist" in capsys.readouterr().err


def test_cli_bad_cutoffs_are_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--data", str(tmp_path), "--model", str(tmp_path), "--k", "10,x"])
    assert exit_info.value.code == 2
    assert "--k" in capsys.readouterr().err


def test_a_catalogue_only_dataset_splits_the_pipelines_self_searches():
    items = {f"i{n}": Item(f"i{n}", title=f"Product number {n}") for n in range(50)}
    items["untitled"] = Item("untitled")
    train, eval_rows = evaluation.split_rows(Dataset("/data", items, [], {}), "random")
    rows = train + eval_rows
    assert len(rows) == 50 and train and eval_rows
    assert all(row.query == items[row.item_id].title and not row.user_id for row in rows)

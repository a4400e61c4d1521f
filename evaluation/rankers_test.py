import math

import numpy as np
import pytest

from dataset.contract import Interaction, Item
from evaluation import rankers
from mmfuse.config import ExportSettings


def _rows(pairs):
    return [Interaction(row=line, user_id=user, item_id=item)
            for line, (user, item) in enumerate(pairs, start=2)]


def test_popularity_counts_train_rows_and_keeps_catalogue_order_on_ties():
    train = _rows([("u1", "b"), ("u2", "b"), ("u1", "d"), ("u3", "c")])
    ranker = rankers.Popularity(["a", "b", "c", "d"], train)
    ranked = ranker.recommend(["u1", "anyone"], k=3)
    assert ranked.item_ids == [["b", "c", "d"], ["b", "c", "d"]]
    assert ranked.scores[0] == [2.0, 1.0, 1.0]
    assert ranker.search(["whatever"], [""], k=1).item_ids == [["b"]]
    assert ranker.score_search(["q"], [""], [["d", "zzz"]]) == [[1.0, -math.inf]]


def test_own_history_puts_the_users_latest_items_first_then_popularity():
    train = [Interaction(row=2, user_id="u1", item_id="a", timestamp=10),
             Interaction(row=3, user_id="u1", item_id="c", timestamp=30),
             Interaction(row=4, user_id="u1", item_id="a", timestamp=40),  # a again, latest
             Interaction(row=5, user_id="u2", item_id="b", timestamp=5),
             Interaction(row=6, user_id="u3", item_id="b", timestamp=5)]
    ranker = rankers.OwnHistory(["a", "b", "c", "d"], train)
    # Popularity: a and b twice each (catalogue order breaks the tie), c once.
    assert ranker.recommend(["u1", "nobody"], k=3).item_ids == [["a", "c", "b"], ["a", "b", "c"]]


def test_ease_weights_are_the_closed_form_of_its_objective():
    pairs = [("u1", "a"), ("u1", "b"), ("u2", "b"), ("u2", "c"), ("u3", "a"), ("u3", "c"),
             ("u3", "d"), ("u4", "d"), ("u4", "a"), ("u1", "a")]  # the repeat counts once
    l2 = 0.7
    ranker = rankers.EASE(["a", "b", "c", "d"], _rows(pairs), l2=l2)
    users, items = ["u1", "u2", "u3", "u4"], ["a", "b", "c", "d"]
    x = np.zeros((4, 4))
    for user, item in pairs:
        x[users.index(user), items.index(item)] = 1.0
    # Column j of B, with B_jj = 0: ridge regression of item j on the other items.
    expected = np.zeros((4, 4))
    for j in range(4):
        others = [i for i in range(4) if i != j]
        design = x[:, others]
        expected[others, j] = np.linalg.solve(design.T @ design + l2 * np.eye(3),
                                              design.T @ x[:, j])
    np.testing.assert_allclose(ranker.weights, expected, rtol=1e-5, atol=1e-6)
    ranked = ranker.recommend(["u2", "stranger"], k=4)
    scores_u2 = x[1] @ expected
    assert ranked.item_ids[0] == [items[i] for i in np.argsort(-scores_u2, kind="stable")]
    assert ranked.scores[1] == [0.0] * 4  # no train rows: nothing to go on


def test_ease_refuses_a_catalogue_too_large_for_a_dense_item_matrix(monkeypatch):
    monkeypatch.setattr(rankers.EASE, "MAX_ITEMS", 3)
    with pytest.raises(ValueError, match="4 items are more than the 3"):
        rankers.EASE(["a", "b", "c", "d"], _rows([("u1", "a")]))


def test_ease_does_not_search():
    ranker = rankers.EASE(["a", "b"], _rows([("u1", "a")]))
    assert rankers.SEARCH not in ranker.questions
    with pytest.raises(NotImplementedError, match="ease does not search"):
        ranker.search(["q"], [""], k=1)


def test_tokenize():
    assert rankers.tokenize("Men's 2-in-1 CAFÉ  drill_bit, 1/2\"") == [
        "mens", "2", "in", "1", "cafe", "drill", "bit", "1", "2"]


def _catalogue():
    return {
        "hammer": Item("hammer", title="Claw hammer", description="A steel hammer for nails"),
        "drill": Item("drill", title="Cordless drill", description="Drill with two batteries",
                      attributes=(("brand", "Ryobi"),)),
        "bits": Item("bits", title="Drill bits", description="Ten bits for a drill"),
        "paint": Item("paint", title="White paint", attributes=(("colour", "white"),)),
        "empty": Item("empty"),
    }


def test_bm25_ranks_the_best_matching_item_first():
    ranker = rankers.BM25(_catalogue())
    ranked = ranker.search(["cordless drill", "ryobi", "hammer nails", "nothing matches"],
                           [""] * 4, k=2)
    assert ranked.item_ids[0][0] == "drill"
    assert ranked.item_ids[1][0] == "drill"  # attribute values are indexed
    assert ranked.item_ids[2][0] == "hammer"
    assert ranked.scores[3] == [0.0, 0.0]


def test_bm25_score_by_hand():
    k1, b = 1.2, 0.75
    ranker = rankers.BM25(_catalogue(), k1=k1, b=b)
    # Words of title, description and attribute values ("Ryobi", "white" included).
    lengths = {"hammer": 7, "drill": 7, "bits": 7, "paint": 3, "empty": 0}
    average = sum(lengths.values()) / 5
    # "drill": twice in item drill (title, description), twice in bits; 2 of 5 items have it.
    idf = math.log(1 + (5 - 2 + 0.5) / (2 + 0.5))
    expected = idf * 2 * (k1 + 1) / (2 + k1 * (1 - b + b * lengths["drill"] / average))
    (scores,) = ranker.score_search(["Drill"], [""], [["drill", "paint"]])
    assert scores[0] == pytest.approx(expected, rel=1e-5)
    assert scores[1] == 0.0


def test_bm25_does_not_recommend():
    with pytest.raises(NotImplementedError, match="bm25 does not recommend"):
        rankers.BM25(_catalogue()).recommend(["u1"], k=1)


def test_buy_again_mix_brings_back_what_users_rebuy_and_keeps_out_what_they_do_not():
    def shop(rebuy):
        rows, line = [], 2
        for user in range(40):
            for visit in range(6):
                item = f"s{user % 5}" if rebuy else f"i{(user + visit) % 30}"
                rows.append(Interaction(row=line, user_id=f"u{user}", item_id=item, timestamp=visit))
                line += 1
        return rows

    catalogue = [f"s{n}" for n in range(5)] + [f"i{n}" for n in range(30)]
    rebuying = shop(rebuy=True)
    mix = rankers.BuyAgainMix(rankers.Popularity(catalogue, rebuying), rebuying,
                              ExportSettings().new_item_weight)
    assert mix.name == "popularity+buy-again"
    assert mix.recommend(["u3"], k=3).item_ids[0][0] == "s3"
    once = shop(rebuy=False)
    mix = rankers.BuyAgainMix(rankers.Popularity(catalogue, once), once, ExportSettings().new_item_weight)
    had = {row.item_id for row in once if row.user_id == "u3"}
    assert not had & set(mix.recommend(["u3"], k=5).item_ids[0])

"""Tests of trainer/repeat_buying.py: the buy-again model learns whether a shop's
users rebuy, and its TF twin mixes past items into the towers' ranking."""
import collections

import numpy as np
import tensorflow as tf

from mmfuse.config import ExportSettings
from trainer import repeat_buying as rb

WEIGHT = ExportSettings().new_item_weight

ITEMS = 60


def histories(rebuy: bool, users: int = 80, length: int = 20, seed: int = 0):
    """Recent items [users + 1, RECENT] (row 0: no user) and each user's {item: rows}.
    Rebuying users come back to their own few staples; the others never buy twice."""
    rng = np.random.default_rng(seed)
    recent = np.zeros((users + 1, rb.RECENT), np.int64)
    counts = [{}]
    for user in range(1, users + 1):
        if rebuy:
            staples = rng.choice(np.arange(1, ITEMS), 4, replace=False)
            rows = [int(rng.choice(staples)) if rng.random() < 0.7 else int(rng.integers(1, ITEMS))
                    for _ in range(length)]
        else:
            rows = [int(item) for item in rng.choice(np.arange(1, ITEMS), length, replace=False)]
        recent[user, :length] = rows
        counts.append(dict(collections.Counter(rows)))
    item_counts = np.bincount(recent[recent != 0], minlength=ITEMS)
    return recent, counts, item_counts


def test_rebuying_shop_ranks_staples_first_and_the_towers_fill_the_rest():
    recent, counts, item_counts = histories(rebuy=True)
    model = rb.fit(recent, counts, item_counts, WEIGHT)
    assert model.shop_repeat_rate > 0.5
    tables = rb.BuyAgainTables(model, rb.past_items(recent, counts))
    past = tables.user_past_items(tf.constant([1, 2]))
    probability = tables.probabilities(*past)
    assert probability.numpy().max() > model.new_item_rates[0]
    scores = tf.random.uniform([2, ITEMS], seed=1)
    mixed = rb.mix_scores(scores, past[0], probability, tables.new_item_rates, tf.constant(10))
    best = tf.math.top_k(mixed, 10).indices.numpy()
    staples = [max(counts[user], key=counts[user].get) for user in (1, 2)]
    for row, staple in zip(best, staples):
        assert staple in row[:4]
        assert 0 not in row


def test_shop_without_repeats_keeps_past_items_out():
    recent, counts, item_counts = histories(rebuy=False)
    model = rb.fit(recent, counts, item_counts, WEIGHT)
    assert model.shop_repeat_rate == 0
    tables = rb.BuyAgainTables(model, rb.past_items(recent, counts))
    past = tables.user_past_items(tf.constant([3]))
    probability = tables.probabilities(*past)
    assert probability.numpy().max() < 0.01 < model.new_item_rates[9]
    scores = tf.random.uniform([1, ITEMS], seed=2)
    k = 10
    mixed = rb.mix_scores(scores, past[0], probability, tables.new_item_rates, tf.constant(k))
    best = tf.math.top_k(mixed, k).indices.numpy()[0]
    # The towers' order over the items the user never had.
    had = set(counts[3]) | {0}
    towers = [int(i) for i in np.argsort(-scores.numpy()[0]) if int(i) not in had][:k]
    assert best.tolist() == towers


def test_a_user_without_past_items_keeps_the_towers_scores():
    recent, counts, item_counts = histories(rebuy=True)
    tables = rb.BuyAgainTables(rb.fit(recent, counts, item_counts, WEIGHT), rb.past_items(recent, counts))
    past = tables.user_past_items(tf.constant([0, 1]))  # row 0: no user, no past items
    scores = tf.random.uniform([2, ITEMS], seed=3)
    mixed = rb.mix_scores(scores, past[0], tables.probabilities(*past), tables.new_item_rates,
                          tf.constant(10))
    np.testing.assert_array_equal(mixed[0], scores[0])
    assert not np.array_equal(mixed[1], scores[1])


def test_tf_twin_and_request_histories_match_numpy():
    recent, counts, item_counts = histories(rebuy=True, seed=3)
    model = rb.fit(recent, counts, item_counts, WEIGHT)
    table = rb.past_items(recent, counts)
    tables = rb.BuyAgainTables(model, table)
    users = np.arange(len(recent))
    np.testing.assert_allclose(tables.probabilities(*tables.user_past_items(users)).numpy(),
                               rb.probabilities(model, table), rtol=1e-5, atol=1e-6)
    # A history sent with a request gives the same past items (in its order).
    items, item_counts_, recency, lengths = rb.past_items_of_history(tf.constant(recent[1:3]))
    for row, user in enumerate((1, 2)):
        known = {int(i): (c, r) for i, c, r in zip(items.numpy()[row], item_counts_.numpy()[row],
                                                   recency.numpy()[row]) if i}
        assert known == {int(i): (table.counts[user, j], table.recency[user, j])
                         for j, i in enumerate(table.items[user]) if i}
        assert lengths.numpy()[row] == table.lengths[user]


def baskets(users: int = 80, visits: int = 5, size: int = 4, seed: int = 0):
    """Like `histories`, for a shop of baskets: each visit `size` distinct
    items, three of the user's six staples and one other. Also returns each
    user's last-visit rows (`size`)."""
    rng = np.random.default_rng(seed)
    recent = np.zeros((users + 1, rb.RECENT), np.int64)
    counts = [{}]
    for user in range(1, users + 1):
        staples = rng.choice(np.arange(1, ITEMS), 6, replace=False)
        rows = []
        for _ in range(visits):
            basket = [*rng.choice(staples, size - 1, replace=False), rng.integers(1, ITEMS)]
            rows = [int(item) for item in basket] + rows  # most recent first
        recent[user, :len(rows)] = rows
        counts.append(dict(collections.Counter(rows)))
    last_visit_rows = np.full(users + 1, size, np.int64)
    last_visit_rows[0] = 0
    return recent, counts, np.bincount(recent[recent != 0], minlength=ITEMS), last_visit_rows


def mean_probability(model, recent, counts, repeated: bool) -> float:
    """Mean probability of the users' past items had twice or more (`repeated`) or once."""
    tables = rb.BuyAgainTables(model, rb.past_items(recent, counts))
    users = list(range(1, len(recent)))
    items, *rest = tables.user_past_items(tf.constant(users))
    probability = tables.probabilities(items, *rest).numpy()
    chosen = [p for row, user in enumerate(users) for item, p in zip(items[row].numpy(), probability[row])
              if item and (counts[user][item] >= 2) == repeated]
    return float(np.mean(chosen))


def test_fitted_on_the_last_visit_a_staple_gets_its_chance_of_being_in_the_next_basket():
    recent, counts, item_counts, last_visit_rows = baskets()
    by_visit = rb.fit(recent, counts, item_counts, WEIGHT, last_visit_rows)
    # Each staple is in half of the baskets.
    assert 0.4 < mean_probability(by_visit, recent, counts, repeated=True) < 0.65
    assert mean_probability(by_visit, recent, counts, repeated=False) < 0.3
    # Carved by row, the rest of the last basket reads as "had, did not come back".
    by_row = rb.fit(recent, counts, item_counts, WEIGHT)
    assert mean_probability(by_row, recent, counts, repeated=True) < 0.25


def test_no_history_no_model():
    recent = np.zeros((3, rb.RECENT), np.int64)
    recent[1, 0] = 5
    assert rb.fit(recent, [{}, {5: 1}, {}], np.ones(10), WEIGHT) is None


def test_the_mix_is_served_from_a_saved_model(tmp_path):
    recent, counts, item_counts = histories(rebuy=True, seed=4)
    tables = rb.BuyAgainTables(rb.fit(recent, counts, item_counts, WEIGHT), rb.past_items(recent, counts))
    module = tf.Module()
    module.tables = tables
    module.candidates = tf.Variable(tf.random.normal([ITEMS, 8], seed=5))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.int32)])
    def recommend(user_index, k):
        scores = tf.matmul(tf.gather(module.candidates, user_index), module.candidates,
                           transpose_b=True)
        past = tables.user_past_items(user_index)
        mixed = rb.mix_scores(scores, past[0], tables.probabilities(*past), tables.new_item_rates, k)
        return tf.math.top_k(mixed, k).indices

    module.recommend = recommend
    expected = recommend(tf.constant([1, 2, 0], tf.int64), tf.constant(5)).numpy()
    tf.saved_model.save(module, str(tmp_path), signatures={"recommend": recommend})
    loaded = tf.saved_model.load(str(tmp_path)).signatures["recommend"]
    answer = loaded(user_index=tf.constant([1, 2, 0], tf.int64), k=tf.constant(5))
    np.testing.assert_array_equal(next(iter(answer.values())).numpy(), expected)


def test_a_higher_new_item_weight_leaves_more_slots_to_new_items():
    recent, counts, item_counts = histories(rebuy=True, seed=5)
    table = rb.past_items(recent, counts)
    users = tf.constant(np.arange(1, len(recent)))
    scores = tf.random.uniform([len(recent) - 1, ITEMS], seed=7)
    past_in_top = []
    for weight in (1.0, 200.0):
        tables = rb.BuyAgainTables(rb.fit(recent, counts, item_counts, weight), table)
        past = tables.user_past_items(users)
        mixed = rb.mix_scores(scores, past[0], tables.probabilities(*past), tables.new_item_rates,
                              tf.constant(10))
        top = tf.math.top_k(mixed, 10).indices.numpy()
        past_in_top.append(np.mean([len(set(row) & set(counts[user]))
                                    for user, row in enumerate(top, start=1)]))
    assert past_in_top[0] > past_in_top[1] + 1

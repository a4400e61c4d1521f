"""The item-to-item stage: EASE's closed form by item index, and the scores
it adds to the towers' on their scale."""
import numpy as np
import pytest
import tensorflow as tf

from dataset.contract import Interaction
from evaluation import rankers
from trainer import item_item


def _random_histories(users=40, items=12, seed=0):
    rng = np.random.default_rng(seed)
    histories = [{}]  # user index 0: no user
    for _ in range(users):
        had = rng.choice(np.arange(1, items), size=rng.integers(1, 6), replace=False)
        histories.append({int(item): int(rng.integers(1, 3)) for item in had})
    return histories


def test_fit_is_the_ease_baselines_model_by_item_index():
    histories = _random_histories()
    weights = item_item.fit(histories, 12, l2=3.0)
    rows = [Interaction(0, str(user), str(item)) for user, had in enumerate(histories)
            for item in had]
    ease = rankers.EASE([str(item) for item in range(1, 12)], rows, l2=3.0)
    np.testing.assert_allclose(weights[1:, 1:], ease.weights, atol=1e-5)
    assert not weights[0].any() and not weights[:, 0].any()
    assert not np.diag(weights).any()


def test_fit_without_histories_is_none_and_a_bad_l2_is_refused():
    assert item_item.fit([{}, {}], 5) is None
    with pytest.raises(ValueError, match="L2"):
        item_item.fit(_random_histories(), 12, l2=0.0)


def test_tower_spread_is_the_mean_spread_of_users_cosines():
    queries = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    candidates = np.array([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    # Each user's cosines over items 1..3: (1, 0, 1) and (0, 1, 1); row 0s left out.
    assert item_item.tower_spread(queries, candidates) == pytest.approx(np.std([1, 0, 1]))


def test_scores_follow_the_weights_on_the_towers_scale():
    weights = np.zeros((5, 5), np.float32)
    weights[1, 2], weights[1, 3], weights[2, 3] = 1.0, 0.5, 2.0
    stage = item_item.ItemItemStage(weights, np.zeros((1, 1), np.int64), weight=0.5, spread=0.2)
    # Rows: the unknown item, items 3, 2, 1, then an item the stage never saw.
    row_items = tf.constant([0, 3, 2, 1, 0], tf.int64)
    scores = stage.scores(tf.constant([[1, 1, 0], [1, 2, 0], [0, 0, 0], [4, 0, 0]]), row_items).numpy()
    # An item had twice counts once; the user's own items get nothing (item 2
    # for the second user); each row has the towers' spread times the weight.
    raw = np.array([[0, 0.5, 1.0, 0, 0], [0, 2.5, 0, 0, 0]])
    np.testing.assert_allclose(scores[:2], raw / raw.std(axis=1, keepdims=True) * 0.1, rtol=1e-5)
    # No items, or items that point nowhere: nothing added (and no NaN).
    assert not scores[2:].any()


def test_a_non_positive_weight_is_refused():
    with pytest.raises(ValueError, match="weight"):
        item_item.ItemItemStage(np.zeros((2, 2), np.float32), np.zeros((1, 1), np.int64), 0.0, 1.0)

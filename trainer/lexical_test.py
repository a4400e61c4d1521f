

import numpy as np
import tensorflow as tf

from dataset.contract import Item
from evaluation.rankers import BM25
from trainer import lexical

VOCABULARY_SIZE = 8
# Token indices per item (0: padding or a word outside the vocabulary); row 0
# is the empty "unknown" item.
ITEM_TOKENS = np.array([
    [0, 0, 0, 0, 0],
    [1, 2, 2, 3, 0],
    [2, 4, 0, 0, 0],
    [5, 1, 6, 6, 6],
    [7, 0, 3, 0, 0],
])


def _scores(query_tokens):
    entries, weights = lexical.bm25_weights(ITEM_TOKENS)
    return lexical.normalised_scores(entries, weights, len(ITEM_TOKENS), VOCABULARY_SIZE,
                                     tf.constant(query_tokens, tf.int64)).numpy()


def test_scores_are_the_baselines_bm25_divided_by_the_best():
    """The baseline indexes words; word i here is "w<i>", and a 0 is no word."""
    items = {str(row): Item(str(row), title=" ".join(f"w{token}" for token in tokens if token))
             for row, tokens in enumerate(ITEM_TOKENS) if row}
    queries = [[2, 0, 0], [6, 1, 0], [3, 3, 7], [1, 2, 4]]
    baseline = BM25(items)._query_scores(
        [" ".join(f"w{token}" for token in query if token) for query in queries], [""] * 4)
    expected = baseline / baseline.max(axis=1, keepdims=True)
    scores = _scores(queries)
    np.testing.assert_allclose(scores[:, 1:], expected, rtol=1e-5)
    assert np.all(scores[:, 0] == 0)
    assert np.all(scores.max(axis=1) == 1.0)


def test_padding_and_unknown_words_never_match():
    entries, _ = lexical.bm25_weights(ITEM_TOKENS)
    assert 0 not in entries[:, 1] and 0 not in entries[:, 0]
    np.testing.assert_array_equal(_scores([[0, 0, 0]]), np.zeros((1, len(ITEM_TOKENS))))


def test_a_query_matching_no_item_scores_zero_everywhere():
    """Divided by a best score of 0: zeros, not NaN, so the towers' order stands."""
    catalogue_without_word_7 = ITEM_TOKENS[:4]
    entries, weights = lexical.bm25_weights(catalogue_without_word_7)
    scores = lexical.normalised_scores(entries, weights, 4, VOCABULARY_SIZE,
                                       tf.constant([[7, 0]], tf.int64)).numpy()
    np.testing.assert_array_equal(scores, np.zeros((1, 4)))


def test_items_appended_after_the_table_have_no_words():
    """A grown catalogue (serving/model_store.py replace_catalogue): the new
    rows score 0 and the old ones as before."""
    entries, weights = lexical.bm25_weights(ITEM_TOKENS)
    grown = lexical.normalised_scores(entries, weights, len(ITEM_TOKENS) + 3, VOCABULARY_SIZE,
                                      tf.constant([[6, 1]], tf.int64)).numpy()
    np.testing.assert_allclose(grown[:, :len(ITEM_TOKENS)], _scores([[6, 1]]))
    assert np.all(grown[:, len(ITEM_TOKENS):] == 0)

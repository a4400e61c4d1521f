"""The towers fuse only the modalities a row has, into unit vectors."""


import numpy as np
import tensorflow as tf

from trainer.towers import (
    BagOfTokensEncoder,
    FeatureProjection,
    ItemTower,
    ModalityAttention,
    QueryTower,
    RecentItemsEncoder,
)
from transform import features as f

SIZES = {f.ITEM_VOCABULARY: 5, f.USER_VOCABULARY: 4, f.TOKEN_VOCABULARY: 9,
         f.ATTRIBUTE_VOCABULARY: 3}
DIM = 8


def _items(item_index, tokens, image_present, id_learned=None):
    batch = len(item_index)
    tokens = np.array([row + [0] * (f.ITEM_TEXT_LENGTH - len(row)) for row in tokens], np.int64)
    return {
        f.ITEM_INDEX: tf.constant(item_index, tf.int64),
        f.ITEM_TOKENS: tf.constant(tokens),
        f.ATTRIBUTE_TOKENS: tf.zeros([batch, f.ATTRIBUTES_LENGTH], tf.int64),
        f.ITEM_TEXT_EMBEDDING: tf.random.stateless_normal([batch, 384], seed=(1, 3)),
        f.ITEM_TEXT_EMBEDDING + "_present": tf.constant([float(any(row)) for row in tokens]),
        f.IMAGE_EMBEDDING: tf.random.stateless_uniform([batch, 1280], seed=(1, 2)),
        f.IMAGE_EMBEDDING + "_present": tf.constant(image_present, tf.float32),
        f.ITEM_ID_LEARNED: tf.constant([1.0] * batch if id_learned is None else id_learned),
    }


def _queries(user_index, time_of_interaction, has_time):
    batch = len(user_index)
    return {
        f.USER_INDEX: tf.constant(user_index, tf.int64),
        f.RECENT_ITEM_INDICES: tf.constant([[2, 3] + [0] * (f.RECENT_ITEMS_LENGTH - 2)] * batch, tf.int64),
        f.QUERY_TOKENS: tf.constant([[3] + [0] * (f.QUERY_LENGTH - 1)] * batch, tf.int64),
        f.QUERY_TEXT_EMBEDDING: tf.zeros([batch, 384]),
        f.QUERY_TEXT_EMBEDDING + "_present": tf.zeros([batch]),
        f.TIME_OF_INTERACTION: tf.constant(time_of_interaction, tf.float32),
        f.TIME_OF_INTERACTION + "_present": tf.constant(has_time, tf.float32),
    }


def test_bag_of_tokens_ignores_padding():
    encoder = BagOfTokensEncoder(9, DIM)
    vectors, present = encoder(tf.constant([[3, 4, 0, 0], [3, 4, 0, 7], [0, 0, 0, 0]], tf.int64))
    table = encoder.embedding.embeddings.numpy()
    np.testing.assert_allclose(vectors[0], (table[3] + table[4]) / 2, rtol=1e-6)
    assert not np.allclose(vectors[0], vectors[1])
    assert present.numpy().tolist() == [1.0, 1.0, 0.0]


def test_token_dropout_hides_tokens_in_training_only():
    tokens = tf.constant([[3, 4, 5, 6, 0, 0]] * 64, tf.int64)
    encoder = BagOfTokensEncoder(9, DIM, token_dropout=0.5)
    served, present = encoder(tokens)
    table = encoder.embedding.embeddings.numpy()
    np.testing.assert_allclose(served[0], table[3:7].mean(axis=0), rtol=1e-6)  # all words when serving
    trained, trained_present = encoder(tokens, training=True)
    # Rows lose different words, so identical rows encode differently; a row
    # that lost every word has no text.
    assert len({tuple(np.round(row, 5)) for row in trained.numpy()}) > 1
    emptied = trained_present.numpy() == 0
    np.testing.assert_allclose(trained.numpy()[emptied], 0.0)
    assert present.numpy().all()


def test_attention_ignores_absent_modalities():
    fusion = ModalityAttention(2, DIM)
    a, b = tf.random.stateless_normal([1, DIM], seed=(1, 1)), tf.fill([1, DIM], 5.0)
    fused, weights = fusion([(a, tf.ones([1])), (b, tf.zeros([1]))], return_attention=True)
    changed_absent = fusion([(a, tf.ones([1])), (-b, tf.zeros([1]))])
    np.testing.assert_allclose(fused, changed_absent, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tf.norm(fused, axis=-1), [1.0], rtol=1e-5)
    assert weights.shape == (1, 2) and weights[0, 1] == 0.0 and weights[0, 0] > 0.0


def test_modality_dropout_keeps_at_least_one_present_modality():
    fusion = ModalityAttention(3, DIM, modality_dropout=0.9)
    present = tf.constant([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]] * 200)
    dropped = fusion._drop_modalities(present).numpy()
    assert (dropped.sum(axis=1) >= 1).all()
    assert (dropped <= present.numpy()).all()  # never invents a modality
    assert dropped.mean() < present.numpy().mean() * 0.6


def test_modality_dropout_hides_or_keeps_a_group_as_a_whole():
    """The item tower's words, sentence and attributes are one modality: a
    row keeps all of its text or none, so it is often seen by its image alone."""
    fusion = ModalityAttention(5, DIM, modality_dropout=0.5, groups=[0, 1, 1, 1, 2])
    present = tf.constant([[1.0, 1.0, 1.0, 0.0, 1.0]] * 2000)
    dropped = fusion._drop_modalities(present).numpy()
    np.testing.assert_array_equal(dropped[:, 1], dropped[:, 2])
    assert (dropped[:, 3] == 0).all()  # an absent input stays absent within a kept group
    assert (dropped.sum(axis=1) >= 1).all()
    image_only = (dropped[:, [0, 1, 2]].sum(axis=1) == 0) & (dropped[:, 4] == 1)
    # 1/8 of rows drop both id and text, and a third of the 1/8 that drop all get the image back.
    assert 0.13 < image_only.mean() < 0.20


def test_a_never_trained_item_id_is_not_a_modality():
    """A new item's id embedding is still its random initial value: the item
    is placed by its content alone, as if it had no id."""
    tower = ItemTower(SIZES, BagOfTokensEncoder(SIZES[f.TOKEN_VOCABULARY], DIM), FeatureProjection(DIM), DIM)
    new_item = tower(_items([2], [[3, 4]], [1], id_learned=[0.0]))
    no_id = tower(_items([0], [[3, 4]], [1]))
    np.testing.assert_allclose(new_item, no_id, atol=1e-6)
    assert not np.allclose(tower(_items([2], [[3, 4]], [1])), no_id, atol=1e-3)


def test_item_tower_embeds_items_with_any_single_modality():
    tower = ItemTower(SIZES, BagOfTokensEncoder(SIZES[f.TOKEN_VOCABULARY], DIM), FeatureProjection(DIM), DIM)
    # id only, text only, image only: each gets its own unit vector.
    vectors = tower(_items([2, 0, 0], [[], [3, 4], []], [0, 0, 1])).numpy()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert len({tuple(np.round(v, 5)) for v in vectors}) == 3


def test_item_tower_ignores_modalities_left_out():
    tower = ItemTower(SIZES, BagOfTokensEncoder(SIZES[f.TOKEN_VOCABULARY], DIM), FeatureProjection(DIM), DIM,
                      modalities=("id",))
    with_content = tower(_items([2], [[3, 4]], [1]))
    without = tower(_items([2], [[]], [0]))
    np.testing.assert_allclose(with_content, without, rtol=1e-6)


def test_query_and_item_text_share_encoders():
    words, sentence = BagOfTokensEncoder(SIZES[f.TOKEN_VOCABULARY], DIM), FeatureProjection(DIM)
    items = ItemTower(SIZES, words, sentence, DIM)
    queries = QueryTower(SIZES, words, sentence, DIM)
    queries(_queries([1], [[0.0] * f.TIME_OF_INTERACTION_DIM], [0]))
    items(_items([1], [[3]], [0]))
    assert queries.words.embedding is items.words.embedding
    assert queries.sentence is items.sentence


def test_a_query_photo_goes_through_the_item_towers_photo_projection():
    words, sentence = BagOfTokensEncoder(SIZES[f.TOKEN_VOCABULARY], DIM), FeatureProjection(DIM)
    items = ItemTower(SIZES, words, sentence, DIM)
    queries = QueryTower(SIZES, words, sentence, DIM, image=items.image)
    assert queries.image is items.image
    no_photo = {**_queries([0, 0], [[0.0] * f.TIME_OF_INTERACTION_DIM] * 2, [0, 0]),
                f.IMAGE_EMBEDDING: tf.random.stateless_uniform([2, 1280], seed=(4, 5)),
                f.IMAGE_EMBEDDING + "_present": tf.zeros([2])}
    with_photo = {**no_photo, f.IMAGE_EMBEDDING + "_present": tf.constant([1.0, 0.0])}
    asked, not_asked = queries(with_photo).numpy(), queries(no_photo).numpy()
    assert not np.allclose(asked[0], not_asked[0], atol=1e-3)
    # A row whose photo is marked absent ignores the photo's values.
    np.testing.assert_allclose(asked[1], not_asked[1], rtol=1e-6)


def test_recent_items_encoder_masks_absent_items_and_users_without_history():
    encoder = RecentItemsEncoder(SIZES[f.ITEM_VOCABULARY], DIM, length=4)
    vectors, present = encoder(tf.constant([[2, 3, 0, 0], [2, 3, 4, 0], [0, 0, 0, 0]], tf.int64))
    np.testing.assert_array_equal(present.numpy(), [1, 1, 0])
    np.testing.assert_array_equal(vectors.numpy()[2], np.zeros(DIM))
    assert not np.allclose(vectors.numpy()[0], vectors.numpy()[1])
    # Padding is masked: what sits in an absent slot's embedding does not matter.
    again, _ = encoder(tf.constant([[2, 3, 0, 0]], tf.int64))
    encoder.item.embeddings[0].assign(tf.ones([DIM]) * 5.0)
    np.testing.assert_allclose(encoder(tf.constant([[2, 3, 0, 0]], tf.int64))[0], again, atol=1e-6)
    # Order matters: the most recent item is first.
    swapped, _ = encoder(tf.constant([[3, 2, 0, 0]], tf.int64))
    assert not np.allclose(swapped.numpy(), again.numpy())


def test_a_tower_of_any_modalities_has_only_built_weights():
    """An encoder for a modality left out would never be built, and Keras
    refuses to list the weights of an unbuilt layer (as the optimizer does)."""
    for modalities in (("id",), ("text",), ("image",), ("id", "text", "image")):
        words, sentence = BagOfTokensEncoder(SIZES[f.TOKEN_VOCABULARY], DIM), FeatureProjection(DIM)
        # The query tower always uses the shared text encoders.
        words(tf.zeros([1, 2], tf.int64))
        sentence(tf.zeros([1, 384]), tf.zeros([1]))
        tower = ItemTower(SIZES, words, sentence, DIM, modalities=modalities)
        tower(_items([2], [[3, 4]], [1]))
        assert tower.trainable_weights
        assert hasattr(tower, "image") == ("image" in modalities)


def test_recent_item_dropout_hides_items_in_training_only():
    history = tf.constant([[2, 3, 4, 1]] * 64, tf.int64)
    encoder = RecentItemsEncoder(SIZES[f.ITEM_VOCABULARY], DIM, length=4, item_dropout=0.5)
    served, present = encoder(history)
    np.testing.assert_allclose(encoder(history)[0], served)  # deterministic when serving
    assert present.numpy().all()
    trained, _ = encoder(history, training=True)
    # Rows lose different items, so identical histories encode differently.
    assert len({tuple(np.round(row, 5)) for row in trained.numpy()}) > 1


def test_a_query_without_time_ignores_the_time_values():
    """Serving requests carry no timestamp: with the flag 0 the "when" token is
    masked, so whatever sits in the time features gives the same vector."""
    tower = QueryTower(SIZES, BagOfTokensEncoder(SIZES[f.TOKEN_VOCABULARY], DIM), FeatureProjection(DIM), DIM,
                       time_dropout=0.5)
    times = [[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, -0.4, 0.9], [-0.7, -0.7, 0.8, 0.6]]
    without_time = tower(_queries([1, 1, 1], times, [0, 0, 0])).numpy()
    np.testing.assert_allclose(without_time[1:], without_time[[0, 0]], atol=1e-6)
    with_time = tower(_queries([1, 1, 1], times, [1, 1, 1])).numpy()
    assert not np.allclose(with_time[1], without_time[1], atol=1e-3)
    assert not np.allclose(with_time[1], with_time[2], atol=1e-3)


def test_time_dropout_hides_the_time_in_training_only():
    tower = QueryTower(SIZES, BagOfTokensEncoder(SIZES[f.TOKEN_VOCABULARY], DIM), FeatureProjection(DIM), DIM,
                       time_dropout=0.999999)
    timed = _queries([1], [[1.0, 0.0, -0.4, 0.9]], [1])
    untimed = _queries([1], [[1.0, 0.0, -0.4, 0.9]], [0])
    np.testing.assert_allclose(tower(timed, training=True), tower(untimed), atol=1e-6)
    assert not np.allclose(tower(timed), tower(untimed), atol=1e-3)


def test_by_default_the_query_tower_has_no_time_token():
    tower = QueryTower(SIZES, BagOfTokensEncoder(SIZES[f.TOKEN_VOCABULARY], DIM), FeatureProjection(DIM), DIM)
    timed = _queries([1], [[1.0, 0.0, -0.4, 0.9]], [1])
    untimed = _queries([1], [[1.0, 0.0, -0.4, 0.9]], [0])
    np.testing.assert_allclose(tower(timed), tower(untimed), atol=1e-6)
    assert tower.time_of_interaction is None

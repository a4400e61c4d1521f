"""The retrieval model on a tiny synthetic catalogue: the optional rating head
learns from rated rows only, and the export's user table asks at no time."""


import numpy as np
import pytest
import tensorflow as tf

from trainer.data import CATALOG_FEATURES, EMBEDDING_DIMS, QUERY_FEATURES
from trainer.model import Catalog, RetrievalModel, Users, no_text_queries, ranks_of_items
from transform import features as f

SIZES = {f.ITEM_VOCABULARY: 5, f.USER_VOCABULARY: 4, f.TOKEN_VOCABULARY: 9,
         f.ATTRIBUTE_VOCABULARY: 3}
DIM = 8


def tiny_model(rating_weight: float, **settings) -> RetrievalModel:
    """Items 1-3 have a photo; item 4 has none."""
    tf.keras.utils.set_random_seed(0)
    items = SIZES[f.ITEM_VOCABULARY]
    rng = np.random.default_rng(0)
    content = {
        f.ITEM_TOKENS: rng.integers(0, SIZES[f.TOKEN_VOCABULARY], [items, f.ITEM_TEXT_LENGTH]),
        f.ATTRIBUTE_TOKENS: np.zeros([items, f.ATTRIBUTES_LENGTH], np.int64),
    }
    for name in (f.ITEM_TEXT_EMBEDDING, f.IMAGE_EMBEDDING):
        content[name] = rng.normal(size=[items, EMBEDDING_DIMS[name]]).astype(np.float32)
        content[name + "_present"] = np.ones([items], np.float32)
    content[f.IMAGE_EMBEDDING][4] = 0.0
    content[f.IMAGE_EMBEDDING + "_present"][4] = 0.0
    recent_items = rng.integers(1, items, [SIZES[f.USER_VOCABULARY], f.RECENT_ITEMS_LENGTH])
    return RetrievalModel(Catalog(content), Users(recent_items), SIZES, DIM, rating_weight=rating_weight,
                          **settings)


def tiny_batch(unrated_label: float = 0.0):
    """Six interactions; the first four rated, the last two not (label `unrated_label`)."""
    user_index = tf.constant([1, 2, 3, 1, 2, 3], tf.int64)
    queries = no_text_queries(user_index, tf.constant(
        np.arange(6 * f.RECENT_ITEMS_LENGTH).reshape(6, -1) % SIZES[f.ITEM_VOCABULARY], tf.int64))
    queries[f.TIME_OF_INTERACTION] = tf.random.stateless_uniform([6, f.TIME_OF_INTERACTION_DIM],
                                                                 seed=(2, 3), minval=-1, maxval=1)
    queries[f.TIME_OF_INTERACTION + "_present"] = tf.ones([6])
    return {**queries, f.ITEM_INDEX: tf.constant([1, 2, 3, 4, 1, 2], tf.int64),
            f.RATING_LABEL: tf.constant([5.0, 1.0, 4.0, 2.0, unrated_label, unrated_label]),
            f.RATING_LABEL + "_present": tf.constant([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])}


def rating_mse(model: RetrievalModel, batch) -> float:
    query = model.query_tower({name: batch[name] for name in QUERY_FEATURES})
    predicted = model.predicted_ratings(query, model.item_tower(model.catalog.lookup(batch[f.ITEM_INDEX])))
    rated = batch[f.RATING_LABEL + "_present"] > 0
    return float(tf.reduce_mean(tf.square(tf.boolean_mask(predicted - batch[f.RATING_LABEL], rated))))


def test_rating_head_learns_the_ratings():
    model = tiny_model(rating_weight=1.0)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    batch = tiny_batch()
    before = rating_mse(model, batch)
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(30), epochs=1, verbose=0)
    assert rating_mse(model, batch) < 0.5 * before
    assert "rating_rmse" in history.history


def test_rows_without_a_rating_do_not_count():
    model = tiny_model(rating_weight=1.0)
    loss = model.compute_loss(tiny_batch(unrated_label=0.0))
    np.testing.assert_allclose(model.compute_loss(tiny_batch(unrated_label=1000.0)), loss, rtol=1e-6)


def test_rating_weight_0_builds_no_rating_head():
    plain, multi_task = tiny_model(rating_weight=0.0), tiny_model(rating_weight=1.0)
    histories = []
    for model in (plain, multi_task):
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
        histories.append(model.fit(tf.data.Dataset.from_tensors(tiny_batch()), epochs=1, verbose=0).history)
    assert not hasattr(plain, "rating_head")
    head = {id(variable) for variable in multi_task.rating_head.trainable_variables}
    assert head and head <= {id(variable) for variable in multi_task.trainable_variables}
    assert len(plain.trainable_variables) == len(multi_task.trainable_variables) - len(head)
    assert "rating_rmse" not in histories[0] and "rating_rmse" in histories[1]


@pytest.mark.parametrize("weight", [-0.5, float("nan")])
def test_a_negative_task_weight_is_refused(weight):
    with pytest.raises(ValueError, match="rating_weight must be a number >= 0"):
        tiny_model(weight)
    with pytest.raises(ValueError, match="photo_search_weight must be a number >= 0"):
        tiny_model(0.0, photo_search_weight=weight)
    with pytest.raises(ValueError, match="photo_item_weight must be a number >= 0"):
        tiny_model(0.0, photo_item_weight=weight)


def test_user_table_asks_at_no_time():
    """`recommend` reads the user table; `search` transforms a request without
    a timestamp: both must give the query of a row whose time is absent,
    whatever its time values."""
    model = tiny_model(rating_weight=0.0)
    batch = tiny_batch()
    batch[f.TIME_OF_INTERACTION + "_present"] = tf.zeros([6])
    batch[f.RECENT_ITEM_INDICES] = model.users.recent_items(batch[f.USER_INDEX])
    searched = model.query_tower({name: batch[name] for name in QUERY_FEATURES})
    recommended = tf.gather(model.user_embeddings(), batch[f.USER_INDEX])
    np.testing.assert_allclose(recommended, searched, atol=1e-6)


def test_catalog_marks_the_ids_training_has_seen():
    model = tiny_model(rating_weight=0.0)
    content = {name: model.catalog.content[name].numpy() for name in CATALOG_FEATURES}
    catalog = Catalog(content, interaction_counts=np.array([0, 3, 0, 1, 0]))
    np.testing.assert_array_equal(catalog.all_items()[f.ITEM_ID_LEARNED], [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(model.catalog.all_items()[f.ITEM_ID_LEARNED], [1, 1, 1, 1, 1])
    # Ids with fewer rows than id_min_rows are left to the item's content.
    catalog = Catalog(content, interaction_counts=np.array([0, 3, 0, 1, 5]), id_min_rows=3)
    np.testing.assert_array_equal(catalog.all_items()[f.ITEM_ID_LEARNED], [0, 1, 0, 0, 1])


@pytest.mark.parametrize("id_min_rows", [0, 2.5, "3"])
def test_id_min_rows_must_be_a_whole_number_of_rows(id_min_rows):
    model = tiny_model(rating_weight=0.0)
    content = {name: model.catalog.content[name].numpy() for name in CATALOG_FEATURES}
    with pytest.raises(ValueError, match="id_min_rows"):
        Catalog(content, interaction_counts=np.ones(5), id_min_rows=id_min_rows)


def test_a_photo_query_is_the_items_photo_asked_alone():
    model = tiny_model(rating_weight=0.0)
    queries = model.photo_queries(model.catalog.lookup(tf.constant([2, 3], tf.int64)))
    np.testing.assert_array_equal(queries[f.IMAGE_EMBEDDING],
                                  model.catalog.content[f.IMAGE_EMBEDDING].numpy()[[2, 3]])
    np.testing.assert_array_equal(queries[f.IMAGE_EMBEDDING + "_present"], [1, 1])
    for name in (f.USER_INDEX, f.RECENT_ITEM_INDICES, f.QUERY_TOKENS,
                 f.QUERY_TEXT_EMBEDDING + "_present", f.TIME_OF_INTERACTION + "_present"):
        assert not np.any(queries[name]), name


def test_the_photo_search_task_asks_each_item_with_a_photo_by_it():
    """Its loss is the retrieval loss of the rows' photo queries against the
    batch's items, counting the rows whose item has a photo (not row 3's,
    item 4)."""
    model = tiny_model(rating_weight=0.0, photo_search_weight=0.5)
    batch = tiny_batch()
    items = model.item_tower(model.catalog.lookup(batch[f.ITEM_INDEX]))
    photo_query = model.query_tower(model.photo_queries(model.catalog.lookup(batch[f.ITEM_INDEX])))
    has_photo = tf.constant([1.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    expected = model.task(model.query_tower({name: batch[name] for name in QUERY_FEATURES}), items,
                          candidate_ids=batch[f.ITEM_INDEX])
    expected += 0.5 * model.photo_search_task(photo_query, items, sample_weight=has_photo,
                                              candidate_ids=batch[f.ITEM_INDEX])
    np.testing.assert_allclose(model.compute_loss(batch), expected, rtol=1e-5)
    model.photo_search_weight = 0.0
    assert model.compute_loss(batch) < expected


def test_without_the_image_modality_there_is_no_photo_search_task():
    model = tiny_model(rating_weight=0.0, photo_search_weight=1.0, modalities=["id", "text"])
    assert model.query_tower.image is None and model.photo_search_weight == 0


@pytest.mark.parametrize("task_weight, held_still, moved", [
    # Photo queries learn to find the items where retrieval puts them.
    ("photo_search_weight", lambda model: model.item_tower.item_id.embedding.embeddings,
     lambda model: model.query_tower.modality_attention.feed_forward.trainable_variables[0]),
    # Photo-alone items learn to land where their rows' queries point.
    ("photo_item_weight", lambda model: model.query_tower.user_id.embedding.embeddings,
     lambda model: model.item_tower.modality_attention.feed_forward.trainable_variables[0]),
])
def test_each_photo_task_moves_one_side_only(task_weight, held_still, moved):
    """The held side's own embeddings (item ids, or user ids) get the same
    gradient with or without the task, while the other side's fusion gets
    another."""
    model = tiny_model(rating_weight=0.0, photo_search_weight=0.0)
    batch = tiny_batch()

    def gradients(weight):
        setattr(model, task_weight, weight)
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch)
        return [tf.convert_to_tensor(gradient)
                for gradient in tape.gradient(loss, [held_still(model), moved(model)])]

    (held_with, moved_with), (held_without, moved_without) = gradients(1.0), gradients(0.0)
    np.testing.assert_allclose(held_with, held_without, atol=1e-6)
    assert not np.allclose(moved_with, moved_without, atol=1e-6)


def test_the_photo_item_task_asks_each_rows_query_for_its_item_by_its_photo_alone():
    """Its loss is the retrieval loss of the rows' queries against the
    batch's items seen by their photo alone, counting the rows whose item
    has a photo (not row 3's, item 4)."""
    model = tiny_model(rating_weight=0.0, photo_search_weight=0.0, photo_item_weight=0.5)
    batch = tiny_batch()
    query = model.query_tower({name: batch[name] for name in QUERY_FEATURES})
    photo_alone = model.item_tower(model.catalog.lookup(batch[f.ITEM_INDEX]), shown=("image",))
    has_photo = tf.constant([1.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    expected = model.task(query, model.item_tower(model.catalog.lookup(batch[f.ITEM_INDEX])),
                          candidate_ids=batch[f.ITEM_INDEX])
    expected += 0.5 * model.photo_item_task(query, photo_alone, sample_weight=has_photo,
                                            candidate_ids=batch[f.ITEM_INDEX])
    np.testing.assert_allclose(model.compute_loss(batch), expected, rtol=1e-5)


def test_an_item_seen_by_its_photo_alone_is_placed_as_a_photo_only_item():
    model = tiny_model(rating_weight=0.0)
    index = tf.constant([1, 2], tf.int64)
    content = {name: model.catalog.content[name].numpy() for name in CATALOG_FEATURES}
    for name in (f.ITEM_TOKENS, f.ATTRIBUTE_TOKENS, f.ITEM_TEXT_EMBEDDING + "_present"):
        content[name] = np.zeros_like(content[name])
    photo_only = Catalog(content, interaction_counts=np.zeros(5))
    photo_alone = model.item_tower(model.catalog.lookup(index), shown=("image",))
    np.testing.assert_allclose(photo_alone, model.item_tower(photo_only.lookup(index)), atol=1e-6)
    assert not np.allclose(photo_alone, model.item_tower(model.catalog.lookup(index)), atol=1e-3)


@pytest.mark.parametrize("modalities", [["image"], ["id", "text"]])
def test_an_item_tower_without_photos_or_with_photos_alone_has_no_photo_item_task(modalities):
    model = tiny_model(rating_weight=0.0, photo_item_weight=1.0, modalities=modalities)
    assert model.photo_item_weight == 0


def test_an_item_the_model_does_not_know_ranks_after_the_whole_catalogue():
    """A next-day run's Evaluator ranks new items with the baseline model too,
    which knows them only as index 0."""
    scores = tf.constant([[9.0, 0.1, 0.3, 0.2], [9.0, 0.1, 0.3, 0.2]])
    ranks = ranks_of_items(scores, tf.constant([3, 0], tf.int64))
    np.testing.assert_array_equal(ranks.numpy(), [2.0, 4.0])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_with_float32_vectors_and_scores(policy):
    model = tiny_model(rating_weight=1.0, time_dropout=0.5, mixed_precision=policy)
    optimizer = tf.keras.optimizers.Adam(0.01)
    if policy == "mixed_float16":
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer)
    batch = tiny_batch()
    losses = model.fit(tf.data.Dataset.from_tensors(batch).repeat(10), epochs=3,
                       verbose=0).history["loss"]
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    assert model.query_tower.recent_items.item.compute_dtype == policy.split("_")[1]
    query = model.query_tower({name: batch[name] for name in QUERY_FEATURES})
    assert query.dtype == model.catalog_embeddings().dtype == tf.float32
    assert rating_mse(model, batch) >= 0
    # The policy was the towers' only; the process's stays float32.
    assert tf.keras.mixed_precision.global_policy().name == "float32"

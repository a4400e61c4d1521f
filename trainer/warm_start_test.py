"""Warm start: weights carried over, id embeddings copied by id into a new vocabulary."""
import os

import numpy as np
import tensorflow as tf

from trainer import warm_start
from trainer.data import EMBEDDING_DIMS
from trainer.model import Catalog, RetrievalModel, Users, no_text_queries
from transform import features as f

DIM = 8
OLD = {f.ITEM_VOCABULARY: [b"a", b"b", b"c", b"d"], f.USER_VOCABULARY: [b"u1", b"u2", b"u3"],
       f.TOKEN_VOCABULARY: [b"red", b"shirt", b"hat"], f.ATTRIBUTE_VOCABULARY: [b"colour=red"]}
# Items: one gone (b), one new (e), the rest at other lines; one new user.
NEW = {f.ITEM_VOCABULARY: [b"e", b"d", b"a", b"c"], f.USER_VOCABULARY: [b"u2", b"u1", b"u3", b"u4"],
       f.TOKEN_VOCABULARY: [b"red", b"shirt", b"hat", b"wool"], f.ATTRIBUTE_VOCABULARY: [b"colour=red"]}


def _model(vocabularies, seed):
    tf.keras.utils.set_random_seed(seed)
    sizes = {name: len(ids) + 1 for name, ids in vocabularies.items()}
    sizes[f.TOKEN_VOCABULARY] += f.WORD_OOV_BUCKETS  # as trainer.data.vocabulary_sizes
    items = sizes[f.ITEM_VOCABULARY]
    rng = np.random.default_rng(seed)
    content = {f.ITEM_TOKENS: rng.integers(0, sizes[f.TOKEN_VOCABULARY], [items, f.ITEM_TEXT_LENGTH]),
               f.ATTRIBUTE_TOKENS: np.ones([items, f.ATTRIBUTES_LENGTH], np.int64)}
    for name in (f.ITEM_TEXT_EMBEDDING, f.IMAGE_EMBEDDING):
        content[name] = rng.normal(size=[items, EMBEDDING_DIMS[name]]).astype(np.float32)
        content[name + "_present"] = np.ones([items], np.float32)
    recent = rng.integers(1, items, [sizes[f.USER_VOCABULARY], f.RECENT_ITEMS_LENGTH])
    model = RetrievalModel(Catalog(content), Users(recent), sizes, DIM)
    user_index = tf.constant([1, 2, 3], tf.int64)
    batch = no_text_queries(user_index, tf.gather(model.users.recent_items_by_user, user_index))
    batch[f.TIME_OF_INTERACTION] = tf.zeros([3, f.TIME_OF_INTERACTION_DIM])
    batch[f.TIME_OF_INTERACTION + "_present"] = tf.zeros([3])
    batch[f.ITEM_INDEX] = tf.constant([1, 2, 3], tf.int64)
    batch[f.RATING_LABEL] = batch[f.RATING_LABEL + "_present"] = tf.zeros([3])
    model.compute_loss(batch, training=True)  # builds every variable
    return model


def _saved_like_a_pushed_model(model, directory):
    """What warm_start reads of a pushed SavedModel: its variables (the model
    under `model`, saved as trainer/export.py saves it, where Keras names
    them by its `variables` lists) and the vocabulary assets."""
    root = tf.Module()
    root.model = model
    tf.saved_model.save(root, directory)
    os.makedirs(os.path.join(directory, "assets"), exist_ok=True)
    for name, ids in OLD.items():
        with open(os.path.join(directory, "assets", name), "wb") as handle:
            handle.write(b"\n".join(ids) + b"\n")
    open(os.path.join(directory, warm_start.MANIFEST), "w").write("{}")


def test_known_ids_are_copied_by_id_new_ids_stay_fresh_weights_carried_over(tmp_path):
    old = _model(OLD, seed=1)
    base = tmp_path / "serving" / "3"
    _saved_like_a_pushed_model(old, str(base))
    new = _model(NEW, seed=2)
    old_vars, new_vars = warm_start.variables_by_path(old), warm_start.variables_by_path(new)
    assert set(warm_start.VOCABULARY_TABLES) <= set(new_vars), "a table moved: update VOCABULARY_TABLES"
    fresh_item_table = new_vars["model/item_tower/item_id/embedding/embeddings"].numpy()

    assert warm_start.latest_blessed(str(tmp_path / "serving")) == str(base)
    report = warm_start.warm_start(new, str(base), NEW)

    items = "model/item_tower/item_id/embedding/embeddings"
    old_table, new_table = old_vars[items].numpy(), new_vars[items].numpy()
    for item in (b"a", b"c", b"d"):
        np.testing.assert_array_equal(new_table[NEW[f.ITEM_VOCABULARY].index(item) + 1],
                                      old_table[OLD[f.ITEM_VOCABULARY].index(item) + 1])
    np.testing.assert_array_equal(new_table[1], fresh_item_table[1])  # e is new
    users = "model/query_tower/user_id/embedding/embeddings"
    np.testing.assert_array_equal(new_vars[users].numpy()[1], old_vars[users].numpy()[2])  # u2
    assert report["ids_copied"][items] == 3 and report["new_ids"][items] == 1
    assert report["ids_copied"][users] == 3 and report["new_ids"][users] == 1
    words = "model/item_tower/words/embedding/embeddings"
    buckets = slice(-f.WORD_OOV_BUCKETS, None)
    np.testing.assert_array_equal(new_vars[words].numpy()[buckets], old_vars[words].numpy()[buckets])
    # Everything else, attention included, carried over whole.
    assert report["fresh"] == []
    shared = [path for path in new_vars if path not in warm_start.VOCABULARY_TABLES]
    assert any("attention" in path for path in shared)
    for path in shared:
        np.testing.assert_array_equal(new_vars[path].numpy(), old_vars[path].numpy())


def test_no_complete_push_no_warm_start(tmp_path):
    assert warm_start.latest_blessed(None) is None
    assert warm_start.latest_blessed(str(tmp_path / "absent")) is None
    (tmp_path / "7").mkdir()  # a push still being written: no manifest yet
    assert warm_start.latest_blessed(str(tmp_path)) is None


def test_hash_bucket_rows_are_copied_by_position_after_a_grown_vocabulary():
    old = np.arange(6, dtype=np.float32)[:, None]  # unknown, red, shirt, 3 buckets
    new = np.full([7, 1], -1.0, np.float32)  # unknown, red, wool, shirt, 3 buckets
    copied = warm_start.copy_rows_by_id(old, new, [b"red", b"shirt"], [b"red", b"wool", b"shirt"],
                                        buckets=3)
    assert copied == 2
    assert new[:, 0].tolist() == [0, 1, -1, 2, 3, 4, 5]

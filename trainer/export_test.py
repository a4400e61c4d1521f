"""The serving export on the tiny model of model_test.py, with a stand-in for
the Transform output: answers carry titles and attributes aligned with their
ids, say whether the user is known, and `similar_items` refuses an unknown id."""
import numpy as np
import pytest
import tensorflow as tf

from mmfuse.config import ExportSettings
from serving import client
from trainer import export, item_item, repeat_buying
from trainer import index as catalogue_index
from trainer.index import partitions_for as index_partitions
from trainer.model_test import SIZES, tiny_model
from transform import features as f

ITEMS = [b"p1", b"p2", b"p3", b"p4"]
USERS = [b"a1b2", b"c3d4", b"e5f6"]
TITLES = [b"", "Red mug, äußerst groß".encode(), b"Blue lamp", b"", b"Green shirt"]
ATTRIBUTES = [b"", b"colour=red, kind=mug", b"colour=blue", b"", b"colour=green, kind=shirt"]


class FakeTransformLayer(tf.Module):
    """What the Transform layer gives the serving graph for a request with a
    user and no words or photo."""

    def __init__(self, user_vocabulary: str):
        super().__init__()
        self._users = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
            user_vocabulary, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER), default_value=-1)

    def __call__(self, inputs):
        user_id = tf.sparse.to_dense(inputs[f.USER_ID], default_value="")[:, 0]
        rows = tf.shape(user_id, out_type=tf.int64)[0]

        def empty(dim):
            return tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0]), tf.stack([rows, dim]))

        return {f.USER_INDEX: self._users.lookup(user_id) + 1, f.ITEM_INDEX: tf.ones([rows], tf.int64),
                f.RECENT_ITEM_INDICES: tf.zeros([rows, f.RECENT_ITEMS_LENGTH], tf.int64),
                f.QUERY_TOKENS: tf.zeros([rows, f.QUERY_LENGTH], tf.int64),
                f.QUERY_TEXT_EMBEDDING: empty(384), f.IMAGE_EMBEDDING: empty(1280),
                f.TIME_OF_INTERACTION: tf.zeros([rows, f.TIME_OF_INTERACTION_DIM]),
                f.TIME_OF_INTERACTION + "_present": tf.zeros([rows])}


class FakeTransformOutput:
    def __init__(self, directory):
        self._vocabularies = {f.ITEM_VOCABULARY: ITEMS, f.USER_VOCABULARY: USERS,
                              f.TOKEN_VOCABULARY: [b"w%d" % i for i in range(8)],
                              f.ATTRIBUTE_VOCABULARY: [b"colour=red", b"colour=blue"]}
        self._files = {}
        for name, words in self._vocabularies.items():
            path = directory / name
            path.write_bytes(b"\n".join(words) + b"\n")
            self._files[name] = str(path)

    def vocabulary_by_name(self, name):
        return list(self._vocabularies[name])

    def vocabulary_file_by_name(self, name):
        return self._files[name]

    def vocabulary_size_by_name(self, name):
        return len(self._vocabularies[name])

    def raw_feature_spec(self):
        return {name: tf.io.VarLenFeature(tf.string) for name in (f.QUERY, f.USER_ID, f.IMAGE)}

    def transform_features_layer(self):
        return FakeTransformLayer(self._files[f.USER_VOCABULARY])


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    tft_output = FakeTransformOutput(tmp_path_factory.mktemp("transform"))
    assert [len(ITEMS) + 1, len(USERS) + 1] == [SIZES[f.ITEM_VOCABULARY], SIZES[f.USER_VOCABULARY]]
    display = export.display_tables({f.DISPLAY_TITLE: TITLES, f.DISPLAY_ATTRIBUTES: ATTRIBUTES},
                                    ExportSettings(title_length=12, attributes_length=60))
    return export.ServingModule(tiny_model(rating_weight=0.0), tft_output, 0.0, display)


def _strings(tensor):
    return [[value.decode() for value in row] for row in tensor.numpy()]


def test_shortened_cuts_characters_not_bytes_and_marks_the_cut():
    assert export.shortened(["Red mug, äußerst groß".encode(), b"short", b""], 12) == [
        "Red mug, äu…".encode(), b"short", b""]
    assert export.shortened([b"abc"], 0) == [b""]


@pytest.mark.parametrize("signature, inputs", [
    ("recommend", {"user_id": [b"a1b2", b"nobody"]}),
    ("search", {"query": [b"", b""], "user_id": [b"a1b2", b""]}),
    ("similar_items", {"item_id": [b"p1", b"p4"]}),
])
def test_titles_and_attributes_are_those_of_the_returned_ids(module, signature, inputs):
    answer = getattr(module, signature)(**{name: tf.constant(rows) for name, rows in inputs.items()},
                                        k=tf.constant(3))
    title_of = {item.decode(): title.decode() for item, title in
                zip(ITEMS, export.shortened(TITLES[1:], 12))}
    attributes_of = {item.decode(): text.decode() for item, text in zip(ITEMS, ATTRIBUTES[1:])}
    ids = _strings(answer["item_ids"])
    assert all(len(row) == 3 for row in ids)
    assert _strings(answer["titles"]) == [[title_of[item] for item in row] for row in ids]
    assert _strings(answer["attributes"]) == [[attributes_of[item] for item in row] for row in ids]


def test_known_user_tells_a_trained_user_from_an_unknown_or_anonymous_one(module):
    recommended = module.recommend(user_id=tf.constant([b"c3d4", b"u0001", b""]), k=tf.constant(2))
    assert recommended["known_user"].numpy().tolist() == [True, False, False]
    searched = module.search(query=tf.constant(["", ""]), user_id=tf.constant([b"e5f6", b""]),
                             k=tf.constant(2))
    assert searched["known_user"].numpy().tolist() == [True, False]


def test_similar_items_refuses_an_unknown_item_naming_it(module):
    with pytest.raises(tf.errors.InvalidArgumentError, match="unknown to the model.*no-such-item"):
        module.similar_items(item_id=tf.constant([b"p1", b"no-such-item"]), k=tf.constant(2))


def test_the_saved_signatures_have_the_display_outputs(module, tmp_path):
    path = str(tmp_path / "model")
    # The stand-in Transform layer knows no item content, which `embed_items`
    # (mmfuse catalog) needs: leave that function out of this save.
    module.embed_items = None
    try:
        tf.saved_model.save(module, path, signatures={
            "recommend": module.recommend, "search": module.search,
            "similar_items": module.similar_items, "image_search": module.image_search})
    finally:
        del module.embed_items
    loaded = tf.saved_model.load(path)
    for name, signature in loaded.signatures.items():
        outputs = set(signature.structured_outputs)
        assert {"item_ids", "scores", "titles", "attributes"} <= outputs, name
        assert ("known_user" in outputs) == (name in ("recommend", "search")), name
    answer = client.answer_from_outputs("recommend", 1, loaded.signatures["recommend"](
        user_id=tf.constant([b"a1b2"]), k=tf.constant(2)))
    assert answer.known_user == [True] and len(answer.titles[0]) == 2


# The partitioned index (trainer/index.py) in the signatures, on the tiny
# model's catalogue grown to GROWN_ITEMS clustered rows after its own four.
GROWN_ITEMS = 3000


def _buy_again_of_user_1(item_index: int) -> repeat_buying.BuyAgainTables:
    """User index 1 (a1b2) had item `item_index` and is near certain to want it again."""
    model = repeat_buying.BuyAgain(np.zeros(4, np.float32), 5.0, np.zeros(len(ITEMS) + 1, np.float32),
                                   np.full(repeat_buying.NEW_ITEM_RANKS, 0.1, np.float32), 0.5, 1)
    items = np.zeros((len(USERS) + 1, 1), np.int64)
    items[1, 0] = item_index
    ones = np.ones(items.shape, np.float32)
    return repeat_buying.BuyAgainTables(model, repeat_buying.PastItems(
        items, ones, ones * 0, np.ones(len(USERS) + 1, np.float32)))


def _grow(module, size: int) -> None:
    """The module's catalogue with clustered unit rows after its own, as
    model_store.replace_catalogue writes it."""
    own = module.candidates.numpy()
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((30, own.shape[1]))
    extra = centres[rng.integers(0, 30, size - len(own) + 1)] + 0.4 * rng.standard_normal(
        (size - len(own) + 1, own.shape[1]))
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    ids = np.array([b"<unknown>"] + ITEMS + [b"x%05d" % row for row in range(len(extra))], object)
    module.candidates.assign(np.concatenate([own, extra]).astype(np.float32))
    module.item_ids.assign(ids)
    for table in export.DISPLAY_TABLES.values():
        getattr(module, table).assign(np.concatenate([getattr(module, table).numpy(),
                                                      np.full(len(extra), b"", object)]))
    module.set_item_rows(tf.constant(ids))
    catalogue_index.refresh_model(module)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """(exact, partitioned) modules over the same grown catalogue, buy-again
    bringing back p3 to a1b2 (p3 placed opposite a1b2's query), BM25 in search."""
    tft_output = FakeTransformOutput(tmp_path_factory.mktemp("transform"))
    modules = []
    for kind in ("exact", "partitioned"):
        module = export.ServingModule(tiny_model(rating_weight=0.0), tft_output, 0.5,
                                      buy_again=_buy_again_of_user_1(3),
                                      settings=ExportSettings(index=kind, index_probes=12))
        _grow(module, GROWN_ITEMS)
        query = module.user_queries.numpy()[module.user_index(tf.constant([b"a1b2"])).numpy()[0]]
        candidates = module.candidates.numpy()
        candidates[3] = -query / np.linalg.norm(query)
        module.candidates.assign(candidates)
        catalogue_index.refresh_model(module)
        modules.append(module)
    return modules


def test_the_index_answers_as_the_exact_top_k_does(indexed):
    exact, partitioned = indexed
    assert len(partitioned.index.centroids.numpy()) == index_partitions(GROWN_ITEMS)
    asked = {"recommend": {"user_id": USERS + [b"nobody"]},
             "recommend_with_history": {"user_id": [b"", b""],
                                        "recent_item_ids": [[b"p1", b""], [b"p2", b"p4"]]},
             "search": {"query": [b"", b""], "user_id": [b"c3d4", b""]},
             "similar_items": {"item_id": [b"p1", b"p2", b"x00007"]}}
    found = expected = 0
    for signature, inputs in asked.items():
        inputs = {name: tf.constant(rows) for name, rows in inputs.items()}
        approximate = _strings(getattr(partitioned, signature)(**inputs, k=tf.constant(10))["item_ids"])
        exact_ids = _strings(getattr(exact, signature)(**inputs, k=tf.constant(10))["item_ids"])
        assert all(len(row) == 10 and len(set(row)) == 10 for row in approximate), signature
        found += sum(len(set(a) & set(b)) for a, b in zip(approximate, exact_ids))
        expected += 10 * len(exact_ids)
    assert found / expected >= 0.9
    # 12 of 2 sqrt(3000) partitions read: not a disguised exact top-k.
    assert len(partitioned.index.centroids.numpy()) > 100


def test_buy_again_brings_back_a_past_item_the_index_does_not_list(indexed):
    exact, partitioned = indexed
    user = tf.constant([b"a1b2"])
    query = export._rows(partitioned.user_queries, partitioned.user_index(user))
    listed = partitioned.index.shortlist(query, tf.constant(200)).numpy()
    assert 3 not in listed  # p3 is row 3
    for module in indexed:
        answer = _strings(module.recommend(user_id=user, k=tf.constant(5))["item_ids"])[0]
        assert answer[0] == "p3" and len(set(answer)) == 5


def test_more_than_the_shortlist_asked_is_answered_exactly(indexed):
    exact, partitioned = indexed
    k = tf.constant(GROWN_ITEMS - 1)
    answer = partitioned.similar_items(item_id=tf.constant([b"p1"]), k=k)["item_ids"]
    np.testing.assert_array_equal(answer.numpy(),
                                  exact.similar_items(item_id=tf.constant([b"p1"]), k=k)["item_ids"].numpy())


def _item_item_of_user_1(*items) -> item_item.ItemItemStage:
    """User index 1 (a1b2) had p1, whose item-to-item weights point, strongly,
    at `items` (indices, best first)."""
    weights = np.zeros((len(ITEMS) + 1,) * 2, np.float32)
    for place, item in enumerate(items):
        weights[1, item] = 1.0 - 0.1 * place
    user_items = np.zeros((len(USERS) + 1, 2), np.int64)
    user_items[1, 0] = 1
    return item_item.ItemItemStage(weights, user_items, weight=1.0, spread=100.0)


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """(without, with) the item-to-item stage pointing a1b2 at p4 then p3."""
    tft_output = FakeTransformOutput(tmp_path_factory.mktemp("transform"))
    model = tiny_model(rating_weight=0.0)
    return (export.ServingModule(model, tft_output, 0.0),
            export.ServingModule(model, tft_output, 0.0, item_item=_item_item_of_user_1(4, 3)))


def test_the_item_to_item_stage_moves_only_users_with_items(staged):
    towers, stage = staged
    users = tf.constant([b"a1b2", b"c3d4", b"nobody"])
    with_stage = _strings(stage.recommend(user_id=users, k=tf.constant(4))["item_ids"])
    alone = _strings(towers.recommend(user_id=users, k=tf.constant(4))["item_ids"])
    assert with_stage[0][:2] == ["p4", "p3"]
    assert with_stage[1:] == alone[1:]


def test_the_item_to_item_stage_reads_a_visitors_recent_items(staged):
    towers, stage = staged
    inputs = {"user_id": tf.constant([b"", b""]),
              "recent_item_ids": tf.constant([[b"p1", b""], [b"p2", b"unknown"]])}
    with_stage = _strings(stage.recommend_with_history(**inputs, k=tf.constant(4))["item_ids"])
    alone = _strings(towers.recommend_with_history(**inputs, k=tf.constant(4))["item_ids"])
    assert with_stage[0][:2] == ["p4", "p3"]
    assert with_stage[1] == alone[1]  # p2 points nowhere


def test_the_release_gate_ranks_as_recommend_with_the_stage_answers(staged, tmp_path):
    towers, _ = staged
    stage = export.ServingModule(towers.model, FakeTransformOutput(tmp_path), 0.0,
                                 item_item=_item_item_of_user_1(4, 3, 2))
    example = tf.train.Example()
    example.features.feature[f.USER_ID].bytes_list.value.append(b"a1b2")
    examples = tf.constant([example.SerializeToString()])
    # The stand-in Transform layer names item index 1 (p1) as every example's
    # item; the stage puts the three others before it, as recommend does.
    assert _strings(stage.recommend(user_id=tf.constant([b"a1b2"]), k=tf.constant(4))["item_ids"]
                    )[0][-1] == "p1"
    assert stage.rank_examples(examples)["rank"].numpy().tolist() == [4.0]
    assert towers.rank_examples(examples)["rank"].numpy().tolist() != [4.0]


def test_an_added_item_gets_no_item_to_item_score(tmp_path):
    tft_output = FakeTransformOutput(tmp_path)
    module = export.ServingModule(tiny_model(rating_weight=0.0), tft_output, 0.0,
                                  item_item=_item_item_of_user_1(4))
    _grow(module, 40)  # rows x00000... after the vocabulary's items: unknown to the stage
    scores = module._item_item_scores(tf.constant([1])).numpy()[0]
    assert scores[4] > 0 and not scores[len(ITEMS) + 1:].any()

"""Freshness on the sample's pushed model: `recommend_with_history` and
`mmfuse catalog add` / `remove` (issue #27), in-process, over the CLI and
through a running `mmfuse serve`."""
import csv
import json
import shutil
import time

import numpy as np
import pytest
import tensorflow as tf

from mmfuse.cli import main
from serving import catalog, client, model_store
from serving.server import ModelServer

pytestmark = pytest.mark.slow
EVERY = 100_000  # k: the signatures clip it to the catalogue


@pytest.fixture(scope="module")
def pushed(sample_run):
    base = sample_run["root"] / "out" / "serving" / "mmfuse"
    return base / str(model_store.versions(str(base))[0])


@pytest.fixture
def base(tmp_path, pushed):
    """A model base of its own holding a copy of the sample's first pushed version."""
    shutil.copytree(pushed, tmp_path / "mmfuse" / "1")
    return tmp_path / "mmfuse"


def _newest(base):
    return model_store.load_newest(str(base))[1]


def _history(model, user, recent, k=10):
    width = max(len(recent), 1)
    answer = model.signatures["recommend_with_history"](
        user_id=tf.constant([user]), k=tf.constant(k),
        recent_item_ids=tf.constant([recent + [""] * (width - len(recent))], tf.string))
    return ([item.decode() for item in answer["item_ids"].numpy()[0]], answer["scores"].numpy()[0],
            int(answer["unknown_recent_items"].numpy()[0]))


def test_empty_history_is_recommend_and_unknown_ids_are_counted(pushed):
    model = tf.saved_model.load(str(pushed))
    direct = model.signatures["recommend"](user_id=tf.constant(["u0001"]), k=tf.constant(10))
    ids, scores, unknown = _history(model, "u0001", [])
    assert ids == [item.decode() for item in direct["item_ids"].numpy()[0]] and unknown == 0
    np.testing.assert_allclose(scores, direct["scores"].numpy()[0], rtol=1e-4, atol=1e-5)
    unknown_ids, unknown_scores, unknown = _history(model, "u0001", ["no-such-item", "", "nor-this"])
    assert unknown_ids == ids and unknown == 2
    np.testing.assert_allclose(unknown_scores, scores, rtol=1e-4, atol=1e-5)


def test_recent_items_move_the_answer_for_users_and_visitors(pushed, sample_run):
    model = tf.saved_model.load(str(pushed))
    mugs = [item for item, row in sample_run["items"].items() if row["kind"] == "mug"][:5]
    user_ids, user_scores, _ = _history(model, "u0001", [])
    clicked_ids, clicked_scores, unknown = _history(model, "u0001", mugs)
    assert unknown == 0
    assert (clicked_ids, list(clicked_scores)) != (user_ids, list(user_scores))
    visitor, _, _ = _history(model, "", [])
    personal, _, _ = _history(model, "", mugs)
    assert personal != visitor  # how much better: benchmarks/live.py


def _new_items_csv(tmp_path, sample_run, rows):
    path = tmp_path / "new" / "items.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["item_id", "title", "description", "image", "colour", "kind"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _photo_twin(tmp_path, sample_run):
    """A new product: a sample item's photo (copied beside the CSV) and
    attributes under a new id and a title of words of its own."""
    source = next(row for row in sample_run["items"].values()
                  if row["image"] and row != sample_run["corrupt"])
    (tmp_path / "new").mkdir(parents=True, exist_ok=True)
    shutil.copy(sample_run["data"] / source["image"], tmp_path / "new" / "photo.jpg")
    return source, {"item_id": "new-zebra-mug", "title": "zebra striped novelty", "description": "",
                    "image": "photo.jpg", "colour": source["colour"], "kind": source["kind"]}


@pytest.fixture(scope="module")
def added(tmp_path_factory, pushed, sample_run):
    """`mmfuse catalog add` of one new product to a model base of its own
    holding the sample's first version, while a server watches the base.
    test_catalog_edits_chain, which edits it further, is the last to use it."""
    root = tmp_path_factory.mktemp("added")
    base = root / "mmfuse"
    shutil.copytree(pushed, base / "1")
    source, row = _photo_twin(root, sample_run)
    items_csv = _new_items_csv(root, sample_run, [row])
    before = model_store.file_manifest(str(base / "1"))
    server = ModelServer(str(base), port=0, poll_seconds=0.2, announce=lambda line: None)
    server.start()
    try:
        assert main(["catalog", "add", "--model-base", str(base), "--items", str(items_csv)]) == 0
        yield {"base": base, "source": source, "photo": root / "new" / "photo.jpg",
               "before": before, "server": server}
    finally:
        server.stop(grace=0)


def test_catalog_add_is_found_by_every_signature_and_served(added, sample_run):
    base, source = added["base"], added["source"]
    versions = model_store.versions(str(base))
    assert len(versions) == 2 and model_store.check_manifest(str(base / str(versions[-1])))
    assert model_store.file_manifest(str(base / "1")) == added["before"]  # never changes what it read
    model = _newest(base)
    search = model.signatures["search"](query=tf.constant(["zebra striped"]),
                                        user_id=tf.constant([""]), k=tf.constant(3))
    assert search["item_ids"].numpy()[0][0] == b"new-zebra-mug"
    # Its own photo finds it among the first fifth, well ahead of where
    # another kind's photo puts it: the sample's photos of one colour and kind
    # differ little, and the new title pulls the item away from them, by as
    # much as a tenth of the catalogue in some runs' training.
    everything = tf.constant(len(sample_run["items"]) + 1)
    other = next(row for row in sample_run["items"].values()
                 if row["image"] and row != sample_run["corrupt"] and row["kind"] != source["kind"])
    photos = (added["photo"].read_bytes(), (sample_run["data"] / other["image"]).read_bytes())
    ranks = [list(model.signatures["image_search"](image=tf.constant([photo]), k=everything)
                  ["item_ids"].numpy()[0]).index(b"new-zebra-mug") for photo in photos]
    assert ranks[0] < len(sample_run["items"]) // 5 and ranks[0] < ranks[1] // 2, ranks
    tenth = tf.constant(len(sample_run["items"]) // 10)
    similar = model.signatures["similar_items"](item_id=tf.constant(["new-zebra-mug",
                                                                     source["item_id"]]),
                                                k=tenth)
    own, related = similar["item_ids"].numpy()
    assert len(own) == tenth and b"new-zebra-mug" not in own
    assert b"new-zebra-mug" in related
    recommended = model.signatures["recommend"](user_id=tf.constant(["u0001"]),
                                                k=tf.constant(EVERY))
    assert b"new-zebra-mug" in recommended["item_ids"].numpy()[0]
    # The server that watched the base moves to the new version.
    server = added["server"]
    deadline = time.time() + 60
    while server.watcher.servable.version != versions[-1] and time.time() < deadline:
        time.sleep(0.2)
    assert server.watcher.servable.version == versions[-1]
    with client.connect(server.address) as channel:
        signature, inputs = client.question(text="zebra striped")
        answer = client.ask(channel, client.predict_request(signature, inputs, k=1))
    assert answer.item_ids == [["new-zebra-mug"]]


def test_a_catalog_version_warm_starts_the_next_training_like_the_version_it_came_from(added):
    """The next-day Trainer warm-starts from the newest version, which may be
    one `catalog add` wrote: the same tables and vocabularies must be found there."""
    from trainer import warm_start

    base = added["base"]
    original, edited = (str(base / str(version)) for version in model_store.versions(str(base)))
    assert warm_start.latest_blessed(str(base)) == edited
    assert warm_start.old_vocabularies(edited) == warm_start.old_vocabularies(original)
    readers = [tf.train.load_checkpoint(f"{path}/variables/variables") for path in (original, edited)]
    keys = [warm_start.checkpoint_keys(reader, warm_start.VOCABULARY_TABLES) for reader in readers]
    assert set(keys[1]) == set(keys[0]) and keys[0]
    for path in keys[0]:
        np.testing.assert_array_equal(readers[1].get_tensor(keys[1][path]),
                                      readers[0].get_tensor(keys[0][path]))


def test_catalog_edits_chain(added):
    """A version written by `catalog` can be edited again (it keeps embed_items)."""
    base = added["base"]
    result = catalog.remove_items(str(base), ["new-zebra-mug"])
    assert result["from_version"] == model_store.versions(str(base))[-2]
    model = _newest(base)
    assert b"new-zebra-mug" not in model.item_ids.numpy()
    with pytest.raises(tf.errors.InvalidArgumentError, match="unknown to the model.*new-zebra-mug"):
        model.signatures["similar_items"](item_id=tf.constant(["new-zebra-mug"]), k=tf.constant(EVERY))


def test_catalog_remove_is_never_answered_again(tmp_path, base, sample_run, capsys):
    items = sample_run["items"]
    gone = next(item for item, row in items.items() if row["image"] and row != sample_run["corrupt"])
    before = model_store.file_manifest(str(base / "1"))
    assert main(["catalog", "remove", "--model-base", str(base), gone]) == 0
    assert model_store.file_manifest(str(base / "1")) == before
    model = _newest(base)
    k = tf.constant(EVERY)
    photo = (sample_run["data"] / items[gone]["image"]).read_bytes()
    answers = [
        model.signatures["recommend"](user_id=tf.constant(["u0001", ""]), k=k),
        model.signatures["recommend_with_history"](
            user_id=tf.constant(["u0001"]), recent_item_ids=tf.constant([[gone]]), k=k),
        model.signatures["search"](query=tf.constant([items[gone]["title"]]),
                                   user_id=tf.constant([""]), k=k),
        model.signatures["image_search"](image=tf.constant([photo]), k=k),
        model.signatures["similar_items"](item_id=tf.constant([next(iter(items))]), k=k),
    ]
    for answer in answers:
        found = answer["item_ids"].numpy()
        assert gone.encode() not in found and found.shape[1] >= len(items) - 2
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"unknown to the model.*{gone}"):
        model.signatures["similar_items"](item_id=tf.constant([gone]), k=k)
    assert model.candidates.numpy().shape[0] == len(items)  # row 0 is the unknown item
    # Removing it again, or an id never there, is refused and writes nothing.
    versions = model_store.versions(str(base))
    assert main(["catalog", "remove", "--model-base", str(base), gone]) == 2
    assert gone in capsys.readouterr().err
    assert model_store.versions(str(base)) == versions


@pytest.mark.parametrize("change, message", [
    ({"item_id": "p0001"}, "line 2: field item_id"),  # in the sample's catalogue
    ({"image": "missing.jpg"}, "line 2: field image"),
    ({"title": "", "image": "", "colour": "", "kind": ""}, "line 2: item"),
])
def test_catalog_add_refuses_bad_rows(tmp_path, base, sample_run, capsys, change, message):
    _, row = _photo_twin(tmp_path, sample_run)
    items_csv = _new_items_csv(tmp_path, sample_run, [{**row, **change}])
    assert main(["catalog", "add", "--model-base", str(base), "--items", str(items_csv)]) == 2
    assert message in capsys.readouterr().err
    assert model_store.versions(str(base)) == [1]


def test_the_readme_catalog_commands_run_as_written(tmp_path, pushed, sample_run, monkeypatch,
                                                    capsys):
    from tests.readme_test import _readme_commands

    monkeypatch.chdir(tmp_path)
    shutil.copytree(pushed, tmp_path / "runs" / "sample" / "serving" / "mmfuse" / "1")
    _, row = _photo_twin(tmp_path, sample_run)
    _new_items_csv(tmp_path, sample_run, [row])
    for key, words in _readme_commands("mmfuse catalog add --items --model-base",
                                       "mmfuse catalog remove --model-base"):
        assert main(words[1:]) == 0, key
        assert json.loads(capsys.readouterr().out)["version"] > 1
    model = _newest(tmp_path / "runs" / "sample" / "serving" / "mmfuse")
    ids = set(model.item_ids.numpy()[1:])
    assert b"new-zebra-mug" in ids and not {b"p0007", b"p0042"} & ids


def test_predict_with_recent_items(base, capsys):
    assert main(["predict", "--model-base", str(base), "--user", "", "--recent",
                 "p0001,no-such-item", "--k", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("recommend_with_history anonymous visitor after 2 recent items")
    assert printed[1].startswith("1 recent item(s) unknown to the model")
    assert len(printed) == 2 + 3

"""`mmfuse serve` on the sample's pushed model, asked over TF Serving's gRPC
API as a client of real TF Serving would; then the release gate both ways
while queries flow: the next day's run (new items, more interactions) reuses
the first run's features, warm-starts from its model and is pushed and served
without a failed request; a crippled one (trained zero epochs) is refused and
not pushed. What the next-day run saves in time is benchmarks/next_day.py's
to measure: on a shared machine a wall-time comparison failed by load alone."""


import shutil
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from dataset import pseudonyms
from serving import client, model_store
from tests.mmfuse_runs import run_pipeline, user_key_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(sample_run, tmp_path_factory):
    # The next-day runs below write into a copy of the sample run's outputs:
    # the other tests read the original.
    root = tmp_path_factory.mktemp("next-day")
    shutil.copytree(sample_run["root"] / "out", root / "out", symlinks=True)
    shutil.copy(sample_run["user_key_file"], user_key_file(root / "out"))
    model_base = root / "out" / "serving" / "mmfuse"
    process = subprocess.Popen(
        [sys.executable, "-m", "mmfuse", "serve", "--model-base", str(model_base), "--port", "0",
         "--poll-seconds", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:  # "serving model mmfuse version N on 127.0.0.1:PORT"
        lines.append(line)
        if line.startswith("serving model"):
            break
    assert process.poll() is None, "".join(lines)
    address = lines[-1].split(" on ")[1].split()[0]
    # Keep reading the server's output, so that it never blocks on a full pipe.
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    channel = client.connect(address)
    yield {**sample_run, "root": root, "channel": channel, "model_base": str(model_base),
           "user_key": pseudonyms.load_key(sample_run["user_key_file"])}
    channel.close()
    process.terminate()
    process.wait(timeout=30)


def _ask(server, k=10, key=True, **question):
    """Asks as `mmfuse query` does: a user by its pseudonym under the run's key."""
    signature, inputs = client.question(**question, user_key=server["user_key"] if key else None)
    return client.ask(server["channel"], client.predict_request(signature, inputs, k=k))


def test_recommend_over_grpc(server):
    answer = _ask(server, user="u0001", k=7)
    assert answer.signature == "recommend"
    (ids,) = answer.item_ids
    assert len(ids) == len(set(ids)) == 7 and set(ids) <= set(server["items"])
    assert answer.model_version == model_store.versions(server["model_base"])[-1]
    assert answer.known_user == [True]


def test_answers_over_grpc_show_each_items_title_and_attributes(server):
    items = server["items"]
    for question in ({"user": "u0002"}, {"text": "blue lamp"}, {"item": "p0005"}):
        answer = _ask(server, k=5, **question)
        (ids,), (titles,), (attributes,) = answer.item_ids, answer.titles, answer.attributes
        assert titles == [items[item]["title"][:80] for item in ids], question
        # The sample's attribute columns, as `column=value` (export.attributes_length: 60).
        for item, shown in zip(ids, attributes):
            assert (f"colour={items[item]['colour']}" in shown) == bool(items[item]["colour"]), (
                item, shown)


def test_a_user_is_known_by_the_pseudonym_of_the_runs_key_only(server):
    """The model holds no raw user id: asked as is, u0001 is unknown and gets
    the cold-start answer; hashed with the run's key, it gets its own, the
    same answer the model gives its pseudonym directly."""
    raw = _ask(server, key=False, user="u0001")
    keyed = _ask(server, user="u0001")
    assert raw.known_user == [False] and keyed.known_user == [True]
    assert raw.item_ids == _ask(server, key=False, user="nobody-at-all").item_ids
    _, model = model_store.load_newest(server["model_base"])
    direct = model.signatures["recommend"](
        user_id=tf.constant([pseudonyms.pseudonym("u0001", server["user_key"])]), k=tf.constant(10))
    assert keyed.item_ids == [[item.decode() for item in direct["item_ids"].numpy()[0]]]


def test_an_unknown_similar_item_is_invalid_argument_naming_it(server):
    with pytest.raises(grpc.RpcError) as error:
        _ask(server, item="no-such-item")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no-such-item" in error.value.details() and "unknown" in error.value.details()
    assert _ask(server, item="p0001").item_ids


def test_search_over_grpc_finds_matching_items(server):
    items = server["items"]
    (ids,) = _ask(server, text="red mug").item_ids
    matching = [i for i in ids if items[i]["colour"] == "red" or items[i]["kind"] == "mug"]
    assert len(matching) >= 8, [(items[i]["colour"], items[i]["kind"]) for i in ids]


def test_answers_over_grpc_are_the_saved_models_own(server):
    """The server adds nothing and loses nothing: a photo's image search over
    gRPC gives exactly what the pushed SavedModel gives in-process (its quality
    is checked in pipeline_e2e_test.py)."""
    _, model = model_store.load_newest(server["model_base"])
    photo = next(row for row in server["items"].values()
                 if row["image"] and row != server["corrupt"])
    image = (server["data"] / photo["image"]).read_bytes()
    answer = _ask(server, image=image, k=5)
    direct = model.signatures["image_search"](image=tf.constant([image]), k=tf.constant(5))
    assert answer.item_ids == [[i.decode() for i in direct["item_ids"].numpy()[0]]]
    np.testing.assert_allclose(answer.scores, direct["scores"].numpy(), rtol=1e-5)


def test_similar_items_over_grpc(server):
    (ids,) = _ask(server, item="p0001").item_ids
    assert "p0001" not in ids and len(ids) == 10


def test_an_undecodable_image_is_invalid_argument_and_the_server_lives_on(server):
    with pytest.raises(grpc.RpcError) as error:
        _ask(server, image=b"not an image")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _ask(server, user="u0002").item_ids


def test_the_next_day_is_served_while_queries_flow_and_a_crippled_model_is_not_pushed(server):
    first = model_store.versions(server["model_base"])
    failures, versions_seen, stop = [], set(), threading.Event()

    def keep_asking():
        while not stop.is_set():
            try:
                versions_seen.add(_ask(server, user="u0003").model_version)
            except grpc.RpcError as error:  # any failure during the switch is a bug
                failures.append(f"{error.code()}: {error.details()}")
            # About 20 requests a second: steady traffic, without taking the
            # CPU from the pipeline runs this test waits for.
            stop.wait(0.05)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        _, second = run_pipeline(server["next_day"], server["root"] / "out", epochs=3)
        day1 = server["result"]
        cache = second["feature_cache"]
        # Every text and photo of day 1 is a hit; the misses are the 3 new
        # items' titles and photos and the new interactions' new queries.
        assert cache["hits"] >= day1["feature_cache"]["misses"] - 1
        assert 0 < cache["misses"] < cache["hits"] / 5 and cache["refused"] == 0
        assert second["warm_start"]["from_version"] == first[-1]
        assert second["warm_start"]["new_ids"]["model/item_tower/item_id/embedding/embeddings"] == 3
        assert second["blessed"] and second["pushed_model"]
        newest = model_store.versions(server["model_base"])[-1]
        assert newest not in first
        deadline = time.time() + 600  # loading and warming up a version is slow on a busy machine
        while newest not in versions_seen and time.time() < deadline and not failures:
            time.sleep(0.5)
    finally:
        stop.set()
        asker.join()
    assert not failures, failures[:5]
    assert newest in versions_seen and first[-1] in versions_seen
    status = model_service_pb2_grpc.ModelServiceStub(server["channel"]).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "mmfuse"}))
    assert [(v.version, v.state) for v in status.model_version_status] == [
        (newest, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]

    # The gate, the other way: an untrained model is refused, nothing is pushed,
    # and the server keeps answering with the version it had.
    stdout, crippled = run_pipeline(server["next_day"], server["root"] / "out", epochs=0,
                                    blessed=False)
    assert crippled["blessed"] is False and crippled["pushed_model"] is None
    # 300 items: the gate reads recall@30 (pipeline/release_gate.py).
    assert "recall@30" in crippled["blessing"]
    assert crippled["change_vs_baseline"]["recall@100"] < 0
    assert model_store.versions(server["model_base"])[-1] == newest
    assert _ask(server, user="u0003").model_version == newest

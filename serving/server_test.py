import logging
import os
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import client, model_store
from serving import server as server_module
from serving.conftest import TEST_MAX_REQUEST_BYTES, small_batches
from serving.server import MAX_REQUEST_ROWS, ModelServer


@pytest.fixture(scope="module")
def channel(server):
    with client.connect(f"127.0.0.1:{server.port}") as opened:
        yield opened


def _predict(channel, request):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)


def _refusal(channel, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        _predict(channel, request)
    return raised.value


def _png(value: int) -> bytes:
    return tf.io.encode_png(np.full((4, 4, 3), value, np.uint8)).numpy()


@pytest.mark.parametrize("asked", [
    {"user": "u0001"}, {"text": "red dress"}, {"text": "red dress", "user": "u0002"},
    {"item": "p0003"}, {"image": _png(200)},
])
def test_each_signature_answers_like_the_model_itself(channel, tiny_model, asked):
    signature, inputs = client.question(**asked)
    answer = client.ask(channel, client.predict_request(signature, inputs, k=4))
    direct = tf.saved_model.load(tiny_model).signatures[signature](
        k=tf.constant(4), **{name: tf.constant(rows) for name, rows in inputs.items()})
    assert (answer.signature, answer.model_version) == (signature, 1)
    assert answer.item_ids == [[item.decode() for item in direct["item_ids"].numpy()[0]]]
    np.testing.assert_allclose(answer.scores, direct["scores"].numpy(), rtol=1e-6)
    if signature == "similar_items":
        assert "p0003" not in answer.item_ids[0]


def test_rows_of_one_request_are_answered_separately(channel):
    # More rows than the test server's batches hold: the request is answered in parts.
    users = [f"u{index:04d}" for index in range(20)]
    together = client.ask(channel, client.predict_request("recommend", {"user_id": users}, k=3))
    alone = [client.ask(channel, client.predict_request("recommend", {"user_id": [user]}, k=3))
             for user in users]
    assert together.item_ids == [answer.item_ids[0] for answer in alone]


def test_k_and_an_anonymous_search_user_are_filled_in(channel):
    request = client.predict_request("search", {"query": ["red dress"]}, k=3)
    del request.inputs["k"]
    filled = client.ask(channel, request)
    anonymous = client.ask(channel, client.predict_request(
        "search", {"query": ["red dress"], "user_id": [""]}, k=10))
    assert len(filled.item_ids[0]) == 10
    assert filled.item_ids == anonymous.item_ids


def test_response_names_the_model_and_honours_the_output_filter(channel):
    request = client.predict_request("recommend", {"user_id": ["u0001"]}, k=2)
    request.output_filter.append("scores")
    response = _predict(channel, request)
    assert list(response.outputs) == ["scores"]
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("mmfuse", 1, "recommend")
    request.output_filter[:] = ["ranking"]
    refusal = _refusal(channel, request)
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "attributes,item_ids,known_user,scores,titles" in refusal.details()


def test_serving_default_is_the_default_signature(channel):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mmfuse"
    example = tf.train.Example(features=tf.train.Features(feature={
        "item_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"p0001"]))}))
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto([example.SerializeToString()]))
    response = _predict(channel, request)
    assert response.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(response.outputs["rank"]).tolist() == [1.0]


def _name_other(spec):
    spec.name = "other"


def _version_7(spec):
    spec.version.value = 7


def _label_stable(spec):
    spec.version_label = "stable"


def _signature_rank(spec):
    spec.signature_name = "rank"


@pytest.mark.parametrize("change, code, words", [
    (_name_other, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(other)"),
    (_version_7, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(mmfuse, 7)"),
    (_label_stable, grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label"),
    # What TF Serving answers for a signature the model does not have.
    (_signature_rank, grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "rank" not found'),
])
def test_unknown_model_version_or_signature_is_refused(channel, change, code, words):
    request = client.predict_request("recommend", {"user_id": ["u0001"]})
    change(request.model_spec)
    refusal = _refusal(channel, request)
    assert refusal.code() == code
    assert words in refusal.details()


def _recommend_with(**inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mmfuse"
    request.model_spec.signature_name = "recommend"
    for name, proto in inputs.items():
        request.inputs[name].CopyFrom(proto)
    return request


@pytest.mark.parametrize("bad_request, problem", [
    (_recommend_with(user=tf.make_tensor_proto(["u0001"])), "input tensor alias not found"),
    (_recommend_with(k=tf.make_tensor_proto(3)), "missing input: user_id"),
    (_recommend_with(user_id=tf.make_tensor_proto([1, 2])), "user_id has dtype int32"),
    (_recommend_with(user_id=tf.make_tensor_proto(["u0001"]), k=tf.make_tensor_proto(3, tf.int64)),
     "k has dtype int64"),
    (_recommend_with(user_id=tf.make_tensor_proto("u0001")), "user_id has shape []"),
    (_recommend_with(user_id=tf.make_tensor_proto(["u0001"]), k=tf.make_tensor_proto([3])),
     "k has shape [1]"),
    (_recommend_with(user_id=tf.make_tensor_proto(["u0001"]), k=tf.make_tensor_proto(10 ** 6)),
     "k may be at most"),
], ids=["unknown name", "missing", "dtype", "k dtype", "rank", "k rank", "k too large"])
def test_inputs_that_do_not_fit_the_signature_name_what_it_takes(channel, bad_request, problem):
    refusal = _refusal(channel, bad_request)
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in refusal.details()
    # The expectation comes from the signature itself.
    assert "k (int32, shape [])" in refusal.details()
    assert "user_id (string, shape [None])" in refusal.details()


def test_rows_of_different_counts_are_refused(channel):
    request = client.predict_request("search", {"query": ["a", "b"], "user_id": ["u0001"]})
    refusal = _refusal(channel, request)
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "query 2, user_id 1" in refusal.details()


def test_an_image_that_does_not_decode_is_invalid_and_harms_nothing(channel):
    bad = client.predict_request("image_search", {"image": [b"not an image"]})
    refusal = _refusal(channel, bad)
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image file format" in refusal.details()
    assert "[[{{node" not in refusal.details()
    good = client.predict_request("image_search", {"image": [_png(10)]})
    assert client.ask(channel, good).item_ids


def test_oversized_requests_are_refused_and_the_server_keeps_answering(channel):
    huge = client.predict_request("image_search", {"image": [b"x" * (TEST_MAX_REQUEST_BYTES + 1)]})
    assert _refusal(channel, huge).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    too_many = client.predict_request("recommend",
                                      {"user_id": ["u0001"] * (MAX_REQUEST_ROWS + 1)})
    refusal = _refusal(channel, too_many)
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_REQUEST_ROWS} rows" in refusal.details()
    assert client.ask(channel, client.predict_request("recommend", {"user_id": ["u0001"]})).item_ids


def test_model_metadata_is_the_saved_signature_defs(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "mmfuse"
    response = stub.GetModelMetadata(request)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_defs)
    assert {"recommend", "search", "similar_items", "image_search",
            "serving_default"} <= set(signature_defs.signature_def)
    search = signature_defs.signature_def["search"]
    assert set(search.inputs) == {"query", "user_id", "k"}
    assert set(search.outputs) == {"item_ids", "scores", "titles", "attributes", "known_user"}
    assert response.model_spec.version.value == 1
    request.metadata_field[:] = ["everything"]
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetModelMetadata(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_model_status_is_the_served_version(channel):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "mmfuse"
    [status] = stub.GetModelStatus(request).model_version_status
    assert (status.version, status.state, status.status.error_code) == (
        1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)
    request.model_spec.version.value = 2
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetModelStatus(request)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_apis_the_stand_in_lacks_are_unimplemented(channel):
    with pytest.raises(grpc.RpcError) as classify:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(
            classification_pb2.ClassificationRequest())
    with pytest.raises(grpc.RpcError) as reload:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest())
    assert classify.value.code() == reload.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _wait_for(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.filterwarnings("ignore:Unexpected end-group tag")  # the corrupt saved_model.pb
def test_a_new_version_is_swapped_in_only_once_complete_and_no_request_fails(
        model_base, tiny_model, monkeypatch, caplog):
    loads, load = [], server_module.Servable

    def counting_servable(name, version, path, config=None):
        loads.append(version)
        return load(name, version, path, config)

    monkeypatch.setattr(server_module, "Servable", counting_servable)
    announced = []
    served = ModelServer(model_base, port=0, poll_seconds=0.1,
                         batching_parameters=small_batches(), announce=announced.append)
    served.start()
    answered, failures, stop = [], [], threading.Event()

    def keep_asking():
        with client.connect(f"127.0.0.1:{served.port}") as opened:
            request = client.predict_request("recommend", {"user_id": ["u0001"]}, k=3)
            while not stop.is_set():
                try:
                    answered.append(client.ask(opened, request).model_version)
                except grpc.RpcError as error:
                    failures.append(error)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        version_2 = os.path.join(model_base, "2")
        shutil.copytree(os.path.join(tiny_model, "variables"), os.path.join(version_2, "variables"))
        time.sleep(0.5)
        assert served.watcher.servable.version == 1
        with caplog.at_level(logging.ERROR, logger="mmfuse.serving"):
            # Written beside the version and moved in, so that the watcher
            # never sees the file empty: that would be a change of files, and
            # the broken version would rightly be tried a second time.
            corrupt = os.path.join(model_base, "corrupt.pb")
            with open(corrupt, "wb") as handle:
                handle.write(b"half a protobuf")
            os.replace(corrupt, os.path.join(version_2, "saved_model.pb"))
            time.sleep(1.0)
        assert served.watcher.servable.version == 1
        assert loads.count(2) == 1, "a broken version is tried once until its files change"
        assert "version 2" in caplog.text and "still serving version 1" in caplog.text
        shutil.copy(os.path.join(tiny_model, "saved_model.pb"), version_2)
        _wait_for(lambda: served.watcher.servable.version == 2)
        _wait_for(lambda: answered[-1:] == [2])
        # Announced by the poller after the swap, so possibly a moment later.
        _wait_for(lambda: announced[-1].endswith("(was version 1)"))
    finally:
        stop.set()
        asker.join()
        served.stop(grace=0)
    assert not failures
    assert set(answered) == {1, 2} and answered == sorted(answered)


def test_a_version_that_does_not_match_its_manifest_is_skipped_and_the_last_keeps_answering(
        model_base, tiny_model, tmp_path, caplog):
    """Version 1 has no manifest (another tool's copy). While it is served,
    2 appears as an unfinished push, and 3 pushed with its manifest but with
    its variables cut in half, as an interrupted `cp -r` leaves them beside a
    whole saved_model.pb."""
    staged = str(tmp_path / "staged")
    model_store.push_version(tiny_model, staged)
    data = next(name for name in os.listdir(os.path.join(staged, "variables"))
                if name.startswith("variables.data"))
    with open(os.path.join(staged, "variables", data), "rb") as handle:
        content = handle.read()
    with open(os.path.join(staged, "variables", data), "wb") as handle:
        handle.write(content[: len(content) // 2])
    served = ModelServer(model_base, port=0, poll_seconds=0.1,
                         batching_parameters=small_batches(), announce=lambda line: None)
    with caplog.at_level(logging.INFO, logger="mmfuse.serving"):
        served.start()
        try:
            assert served.watcher.servable.version == 1
            assert "version 1 has no mmfuse_manifest.json (not pushed by mmfuse)" in caplog.text
            os.makedirs(os.path.join(model_base, "2"))
            with open(os.path.join(model_base, "2", model_store.PARTIAL_MANIFEST_FILE), "w") as handle:
                handle.write("{}")
            os.rename(staged, os.path.join(model_base, "3"))  # whole, so never seen half-moved
            data = os.path.join(model_base, "3", "variables", data)
            _wait_for(lambda: "version 3 at" in caplog.text)
            with client.connect(f"127.0.0.1:{served.port}") as opened:
                request = client.predict_request("recommend", {"user_id": ["u0001"]}, k=3)
                assert client.ask(opened, request).model_version == 1
                assert (f"version 3 at {model_base}/3 does not load (still serving version 1"
                        in caplog.text)
                assert (f"{data} has {len(content) // 2} bytes where mmfuse_manifest.json says "
                        f"{len(content)}" in caplog.text)
                assert "version 2 is an unfinished push" in caplog.text
                # The copy completes: the files now match, and version 3 is served.
                with open(data, "wb") as handle:
                    handle.write(content)
                _wait_for(lambda: served.watcher.servable.version == 3)
                assert client.ask(opened, request).model_version == 3
        finally:
            served.stop(grace=0)
    assert caplog.text.count("version 2 is an unfinished push") == 1


def test_without_a_loadable_version_the_server_waits_and_says_so(tmp_path, tiny_model):
    base = tmp_path / "mmfuse"
    base.mkdir()
    announced = []
    served = ModelServer(str(base), port=0, poll_seconds=0.1, announce=announced.append)
    served.start()
    try:
        with client.connect(f"127.0.0.1:{served.port}") as opened:
            with pytest.raises(grpc.RpcError) as raised:
                client.ask(opened, client.predict_request("recommend", {"user_id": ["u0001"]}))
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
            shutil.copytree(tiny_model, base / "5")
            # The poller announces just after it switches: wait for the line, not the switch.
            _wait_for(lambda: len(announced) >= 2)
            answer = client.ask(opened, client.predict_request("recommend", {"user_id": ["u0001"]}))
    finally:
        served.stop(grace=0)
    assert answer.model_version == 5
    assert "waiting" in announced[0]
    assert announced[1].startswith("serving model mmfuse version 5 on 127.0.0.1:")


def test_a_missing_base_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ModelServer(str(tmp_path / "nowhere"), port=0).start()


def test_an_unknown_similar_item_is_invalid_argument_naming_it_and_harms_no_other_request(channel):
    """The model refuses it in the graph (tf.debugging.Assert), as TF Serving
    would report it; batched with a good request, only the bad one fails."""
    bad = client.predict_request("similar_items", {"item_id": ["p0001", "no-such-item"]})
    good = client.predict_request("similar_items", {"item_id": ["p0002"]})
    results = {}

    def ask(name, request):
        try:
            results[name] = client.ask(channel, request)
        except grpc.RpcError as error:
            results[name] = error

    threads = [threading.Thread(target=ask, args=(name, request))
               for name, request in (("bad", bad), ("good", good))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refusal = results["bad"]
    assert isinstance(refusal, grpc.RpcError), refusal
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown to the model" in refusal.details() and "no-such-item" in refusal.details()
    assert "[[{{node" not in refusal.details() and "Graph execution" not in refusal.details()
    assert results["good"].item_ids and "p0002" not in results["good"].item_ids[0]


def test_answers_carry_the_titles_and_attributes_of_their_items(channel):
    from serving.conftest import ATTRIBUTES, TITLES

    answer = client.ask(channel, client.predict_request("recommend", {"user_id": ["x", "y"]}, k=3))
    for ids, titles, attributes in zip(answer.item_ids, answer.titles, answer.attributes):
        assert titles == [TITLES[item] for item in ids]
        assert attributes == [ATTRIBUTES[item] for item in ids]
    assert answer.known_user == [False, False]

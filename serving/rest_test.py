"""TF Serving's REST API beside the gRPC one: the same answers, TF Serving's
JSON formats, error bodies and HTTP codes, the same limits, and no request
that can crash or hang the server."""
import base64
import http.client
import json
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

from serving import client, rest
from serving.conftest import ITEMS, TEST_MAX_REQUEST_BYTES, USER_KEY, small_batches
from serving.server import MAX_REQUEST_ROWS, ModelServer
from tests.readme_test import REPOSITORY, run_curl_commands

PREDICT = "/v1/models/mmfuse:predict"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    """gRPC and REST on free ports over a base with version 1."""
    base = tmp_path_factory.mktemp("served") / "mmfuse"
    shutil.copytree(tiny_model, base / "1")
    server = ModelServer(str(base), port=0, rest_port=0, max_request_bytes=TEST_MAX_REQUEST_BYTES,
                         batching_parameters=small_batches(), announce=lambda line: None)
    server.start()
    yield server
    server.stop(grace=0)


@pytest.fixture(scope="module")
def channel(served):
    with client.connect(f"127.0.0.1:{served.port}") as opened:
        yield opened


def call(served, method: str, path: str, body=None, headers=None):
    """(HTTP status, JSON document) of one request."""
    connection = http.client.HTTPConnection("127.0.0.1", served.rest_port, timeout=30)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def predict(served, document, path=PREDICT):
    return call(served, "POST", path, document)


def _png(value: int) -> bytes:
    return tf.io.encode_png(np.full((4, 4, 3), value, np.uint8)).numpy()


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def _grpc_outputs(channel, signature, inputs, k):
    request = client.predict_request(signature, inputs, k=k)
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request,
                                                                                  timeout=10)
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def _assert_same(rest_outputs: dict, grpc_outputs: dict) -> None:
    assert set(rest_outputs) == set(grpc_outputs)
    for name, expected in grpc_outputs.items():
        if expected.dtype == object:
            expected = np.vectorize(bytes.decode, otypes=[object])(expected)
        # float32 written in its shortest exact form reads back as the same float32.
        np.testing.assert_array_equal(np.array(rest_outputs[name], dtype=expected.dtype),
                                      expected, err_msg=name)


# One question per signature: its inputs as the gRPC client sends them.
QUESTIONS = {
    "recommend": {"user_id": ["u0001", "u0002"]},
    "recommend_with_history": {"user_id": ["u0001", ""],
                               "recent_item_ids": [["p0003", "p0005"], ["p0007", "nope"]]},
    "search": {"query": ["red dress", "blue mug"], "user_id": ["u0002", ""]},
    "image_search": {"image": [_png(200), _png(10)]},
    "similar_items": {"item_id": ["p0003", "p0011"]},
}


def _json_inputs(inputs: dict) -> dict:
    return {name: [_b64(row) if isinstance(row, bytes) else row for row in rows]
            for name, rows in inputs.items()}


@pytest.mark.parametrize("signature", sorted(QUESTIONS))
def test_rest_answers_are_the_grpc_answers_in_both_formats(served, channel, signature):
    inputs = _json_inputs(QUESTIONS[signature])
    # Columnar: every input's whole tensor, k among them.
    status, answer = predict(served, {"signature_name": signature, "inputs": {**inputs, "k": 4}})
    assert status == 200, answer
    _assert_same(answer["outputs"], _grpc_outputs(channel, signature, QUESTIONS[signature], 4))
    # Rows: one object per row; k, a scalar, cannot be in a row and is left out (10).
    rows = [dict(zip(inputs, values)) for values in zip(*inputs.values())]
    status, answer = predict(served, {"signature_name": signature, "instances": rows})
    assert status == 200, answer
    grpc_outputs = _grpc_outputs(channel, signature, QUESTIONS[signature], 10)
    assert len(answer["predictions"]) == 2
    _assert_same({name: [row[name] for row in answer["predictions"]] for name in grpc_outputs},
                 grpc_outputs)


def test_a_row_cannot_carry_a_scalar_input(served):
    status, answer = predict(served, {"signature_name": "recommend",
                                      "instances": [{"user_id": "u0001", "k": 3}]})
    assert status == 400
    assert "input k has shape [1], expected []" in answer["error"]


def test_a_single_input_signature_takes_bare_values(served):
    example = tf.train.Example(features=tf.train.Features(feature={
        "item_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"p0001"]))}))
    serialized = _b64(example.SerializeToString())
    # Its one output comes back bare too.
    assert predict(served, {"instances": [serialized, serialized]}) == (
        200, {"predictions": [1.0, 1.0]})
    assert predict(served, {"inputs": [serialized]}) == (200, {"outputs": [1.0]})
    assert predict(served, {"signature_name": "serving_default", "inputs": serialized})[0] == 400


def test_a_version_in_the_path_is_the_served_one_or_not_found(served):
    question = {"signature_name": "similar_items", "inputs": {"item_id": ["p0003"], "k": 2}}
    assert predict(served, question, "/v1/models/mmfuse/versions/1:predict")[0] == 200
    assert predict(served, question, "/V1/MODELS/mmfuse/VERSIONS/1:predict")[0] == 200
    assert predict(served, question, "/v1/models/mmfuse/versions/2:predict") == (
        404, {"error": "Servable not found for request: Specific(mmfuse, 2)"})


def test_status_is_tf_servings(served):
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
        "error_code": "OK", "error_message": ""}}]}
    assert call(served, "GET", "/v1/models/mmfuse") == (200, expected)
    assert call(served, "GET", "/v1/models/mmfuse/versions/1") == (200, expected)
    assert call(served, "GET", "/v1/models/mmfuse/versions/3") == (
        404, {"error": "Could not find version 3 of model mmfuse"})
    assert call(served, "GET", "/v1/models/other") == (
        404, {"error": "Could not find any versions of model other"})


def test_metadata_is_the_grpc_signature_defs_as_json(served, channel):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "mmfuse"
    over_grpc = get_model_metadata_pb2.SignatureDefMap()
    prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
        request, timeout=10).metadata["signature_def"].Unpack(over_grpc)
    for path in ("/v1/models/mmfuse/metadata", "/v1/models/mmfuse/versions/1/metadata"):
        status, answer = call(served, "GET", path)
        assert status == 200
        assert answer["model_spec"] == {"name": "mmfuse", "signature_name": "", "version": "1"}
        over_rest = json_format.ParseDict(answer["metadata"]["signature_def"],
                                          get_model_metadata_pb2.SignatureDefMap())
        assert over_rest == over_grpc
        # Rendered as TF Serving renders it: proto field names, defaults included.
        k = answer["metadata"]["signature_def"]["signature_def"]["recommend"]["inputs"]["k"]
        assert k["dtype"] == "DT_INT32" and k["tensor_shape"] == {"dim": [],
                                                                  "unknown_rank": False}
    assert call(served, "GET", "/v1/models/mmfuse/versions/2/metadata")[0] == 404


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def _recommend(**document):
    return {"signature_name": "recommend", **document}


# (method, path, body) -> (HTTP status, words of the error), TF Serving's where it has them.
REFUSALS = {
    "bad JSON": ("POST", PREDICT, "{bad", 400, "JSON Parse error"),
    "empty body": ("POST", PREDICT, "", 400, "JSON Parse error: The document is empty"),
    "not UTF-8": ("POST", PREDICT, b'{"inputs": "\xff"}', 400, "JSON Parse error"),
    "deep nesting": ("POST", PREDICT, '{"inputs": ' + _nested(100_000) + "}", 400,
                     "JSON Parse error"),
    "not an object": ("POST", PREDICT, "[1, 2]", 400, "Is not object"),
    "signature not text": ("POST", PREDICT, {"signature_name": 100}, 400,
                           "'signature_name' key must be a string value."),
    "both formats": ("POST", PREDICT, _recommend(instances=[{}], inputs={}), 400,
                     "expecting only one of 'inputs' or 'instances'"),
    "no inputs": ("POST", PREDICT, _recommend(), 400, "Missing 'inputs' or 'instances' key"),
    "no rows": ("POST", PREDICT, _recommend(instances=[]), 400, "No values in 'instances'"),
    "rows not a list": ("POST", PREDICT, _recommend(instances={"user_id": "u1"}), 400,
                        "Expecting 'instances' to be an list/array"),
    "plain rows, two inputs": ("POST", PREDICT, _recommend(instances=["u0001"]), 400,
                               "instances is a plain list, but expecting list of objects"),
    "plain columns, two inputs": ("POST", PREDICT, _recommend(inputs=["u0001"]), 400,
                                  "inputs is a plain value/list, but expecting an object"),
    "rows naming other inputs": ("POST", PREDICT, _recommend(
        instances=[{"user_id": "u1"}, {"user_id": "u2", "k": 3}]), 400, "keys must be equal to"),
    "row then value": ("POST", PREDICT, _recommend(instances=[{"user_id": "u1"}, "u2"]), 400,
                       "Expecting object but got list at item 1"),
    "ragged rows": ("POST", PREDICT, {"signature_name": "recommend_with_history", "inputs": {
        "user_id": ["", ""], "recent_item_ids": [["p0001", "p0002"], ["p0003"]]}}, 400,
        "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    "rows of different shapes": ("POST", PREDICT, {
        "signature_name": "recommend_with_history", "instances": [
            {"user_id": "", "recent_item_ids": ["p0001", "p0002"]},
            {"user_id": "", "recent_item_ids": ["p0003"]}]}, 400,
        "Expecting shape [2] but got: [1]"),
    "value too deep": ("POST", PREDICT, _recommend(inputs={"user_id": [["u1"]]}), 400,
                       "input user_id has shape [1, 1], expected [None]"),
    "k as text": ("POST", PREDICT, _recommend(inputs={"user_id": ["u1"], "k": "3"}), 400,
                  'JSON Value: "3" Type: String is not of expected type: int32'),
    "k as bool": ("POST", PREDICT, _recommend(inputs={"user_id": ["u1"], "k": True}), 400,
                  "Type: True is not of expected type: int32"),
    "k as float": ("POST", PREDICT, _recommend(inputs={"user_id": ["u1"], "k": 3.0}), 400,
                   "Type: Number is not of expected type: int32"),
    "k beyond int32": ("POST", PREDICT, _recommend(inputs={"user_id": ["u1"], "k": 1 << 31}),
                       400, "is not of expected type: int32"),
    "k too large": ("POST", PREDICT, _recommend(inputs={"user_id": ["u1"], "k": 10 ** 6}), 400,
                    "k may be at most 1000"),
    "user as number": ("POST", PREDICT, _recommend(inputs={"user_id": [7]}), 400,
                       "Type: Number is not of expected type: string"),
    "unknown input": ("POST", PREDICT, _recommend(inputs={"user": ["u1"]}), 400,
                      "does not have named input: user"),
    "missing input": ("POST", PREDICT, _recommend(inputs={"k": 3}), 400, "missing input: user_id"),
    "bad base64": ("POST", PREDICT, {"signature_name": "image_search", "instances": [
        {"image": {"b64": "***"}}]}, 400, "Unable to base64 decode"),
    "base64 and more": ("POST", PREDICT, {"signature_name": "image_search", "instances": [
        {"image": {"b64": "AAAA", "more": 1}}]}, 400,
        "not formatted correctly for base64 data"),
    "lone surrogate": ("POST", PREDICT, '{"signature_name": "search", "instances": '
                       '[{"query": "\\ud800"}]}', 400, "is not valid UTF-8"),
    "not an image": ("POST", PREDICT, {"signature_name": "image_search", "instances": [
        {"image": _b64(b"not an image")}]}, 400, "input image"),
    "image too large": ("POST", PREDICT, {"signature_name": "image_search", "instances": [
        {"image": _b64(_png_header(5000, 5000))}]}, 400, "serving.max_image_pixels"),
    "text too long": ("POST", PREDICT, {"signature_name": "search", "instances": [
        {"query": "x" * 5000}]}, 400, "serving.max_text_bytes"),
    "too many rows": ("POST", PREDICT, _recommend(inputs={
        "user_id": ["u1"] * (MAX_REQUEST_ROWS + 1)}), 400, f"at most {MAX_REQUEST_ROWS} rows"),
    "too many encoder rows": ("POST", PREDICT, {"signature_name": "search", "inputs": {
        "query": ["red"] * 9}}, 400, "serving.max_encoder_rows"),
    "unknown item": ("POST", PREDICT, {"signature_name": "similar_items", "inputs": {
        "item_id": ["nope"]}}, 400, "unknown to the model"),
    "unknown signature": ("POST", PREDICT, {"signature_name": "rank", "instances": [1]}, 400,
                          'Serving signature key "rank" not found'),
    "unknown model": ("POST", "/v1/models/other:predict", _recommend(instances=[{}]), 404,
                      "Servable not found for request: Latest(other)"),
    "version label": ("POST", "/v1/models/mmfuse/labels/stable:predict", _recommend(
        instances=[{}]), 400, "Unrecognized servable version label: stable"),
    "version too large": ("POST", f"/v1/models/mmfuse/versions/{1 << 64}:predict", {}, 400,
                          "Failed to convert version"),
    "classify": ("POST", "/v1/models/mmfuse:classify", {"examples": []}, 501, ":classify"),
    "no model name": ("GET", "/v1/models", None, 400, "Missing model name in request."),
    "unknown path": ("GET", "/v1/foo", None, 400, "Malformed request: GET /v1/foo"),
    "predict by GET": ("GET", PREDICT, None, 400, "Malformed request"),
    "metadata by POST": ("POST", "/v1/models/mmfuse/metadata", {}, 400, "Malformed request"),
    "other method": ("DELETE", "/v1/models/mmfuse", None, 400,
                     "Malformed request: DELETE /v1/models/mmfuse"),
    "outside /v1/": ("GET", "/index.html", None, 404, "/index.html"),
}


@pytest.mark.parametrize("method, path, body, status, words", REFUSALS.values(),
                         ids=REFUSALS.keys())
def test_refusals_are_tf_servings_json_errors_and_harm_nothing(served, method, path, body,
                                                                status, words):
    answered, answer = call(served, method, path, body)
    assert (answered, list(answer)) == (status, ["error"]), answer
    assert words in answer["error"]
    assert "Traceback" not in answer["error"] and "[[{{node" not in answer["error"]
    assert predict(served, _recommend(instances=[{"user_id": "u0001"}]))[0] == 200


def _raw_exchange(port: int, request: bytes, seconds: float = 10.0) -> bytes:
    """What the server sends back for raw bytes, until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_an_oversized_body_is_refused_unread_and_the_connection_closed(served):
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: "
            f"{TEST_MAX_REQUEST_BYTES + 1}\r\n\r\n").encode()
    # No body follows: the refusal must not wait for it.
    answer = _raw_exchange(served.rest_port, head)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"serving.max_request_bytes" in answer and b"Connection: close" in answer
    # A client that waits for "100 Continue" before sending the body is refused at once.
    waiting = _raw_exchange(served.rest_port, head.replace(b"\r\n\r\n",
                                                           b"\r\nExpect: 100-continue\r\n\r\n"))
    assert waiting.startswith(b"HTTP/1.1 413 ")
    assert _raw_exchange(served.rest_port, f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\n"
                                           f"Transfer-Encoding: chunked\r\n\r\n".encode()
                         ).startswith(b"HTTP/1.1 411 ")
    assert _raw_exchange(served.rest_port, f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\n"
                                           f"Content-Length: -5\r\n\r\n".encode()
                         ).startswith(b"HTTP/1.1 400 ")
    assert predict(served, _recommend(instances=[{"user_id": "u0001"}]))[0] == 200


def test_one_connection_carries_many_requests(served):
    connection = http.client.HTTPConnection("127.0.0.1", served.rest_port, timeout=10)
    try:
        for item in ITEMS[:3]:
            connection.request("POST", PREDICT, json.dumps(
                {"signature_name": "similar_items", "inputs": {"item_id": [item], "k": 2}}))
            response = connection.getresponse()
            assert response.status == 200
            assert item not in json.loads(response.read())["outputs"]["item_ids"][0]
    finally:
        connection.close()


def test_outputs_are_written_as_tf_serving_writes_them():
    floats = np.array([[0.2, 1.0, np.nan, -np.inf]], np.float32)
    assert json.dumps(rest.json_values(floats, "scores")) == "[[0.2, 1.0, NaN, -Infinity]]"
    strings = np.array([[b"red", b"\xff\xfe"]], dtype=object)
    assert rest.json_values(strings, "titles") == [["red", {"b64": "//4="}]]
    assert rest.json_values(strings, "image_bytes") == [[{"b64": "cmVk"}, {"b64": "//4="}]]
    assert rest.predictions({"scores": floats[:, :2]}) == {"predictions": [[0.2, 1.0]]}
    with pytest.raises(rest.RequestError, match="inconsistent batch size"):
        rest.predictions({"a": np.zeros([2]), "b": np.zeros([3])})


@pytest.fixture
def rest_only(monkeypatch):
    """A REST server answering no model: for connection handling alone."""
    monkeypatch.setattr(rest, "MAX_CONNECTIONS", 1)
    monkeypatch.setattr(rest._Handler, "timeout", 1.0)
    server = rest.RestServer(None, "127.0.0.1", 0, 1000)
    server.start()
    yield server
    server.stop(grace=0)


def test_connections_beyond_the_limit_get_503_and_idle_ones_are_closed(rest_only):
    with socket.create_connection(("127.0.0.1", rest_only.port), timeout=10) as idle:
        time.sleep(0.2)  # its handler thread is waiting for the request
        busy = _raw_exchange(rest_only.port, b"GET /x HTTP/1.1\r\n\r\n")
        assert busy.startswith(b"HTTP/1.1 503 ")
        started = time.monotonic()
        assert idle.recv(100) == b""  # closed after the idle time-out, not at once, not never
        assert 0.5 < time.monotonic() - started < 5
    time.sleep(0.2)
    assert _raw_exchange(rest_only.port, b"GET /x HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")


def test_tls_and_rest_are_refused_together(tmp_path):
    with pytest.raises(ValueError, match="REST API is plaintext"):
        ModelServer(str(tmp_path), port=0, rest_port=0, tls_cert="cert.pem", tls_key="key.pem")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_readme_curl_commands_run_as_written(model_base, tmp_path):
    """`mmfuse serve --rest-port` as the README starts it, asked with the
    README's curl commands in a directory laid out as `make run` leaves it."""
    home = tmp_path / "home"
    (home / ".config" / "mmfuse").mkdir(parents=True)
    (home / ".config" / "mmfuse" / "user_key").write_bytes(USER_KEY)
    images = tmp_path / "runs" / "sample" / "sample-data" / "images"
    images.mkdir(parents=True)
    (images / "p0042.png").write_bytes(_png(120))
    port, rest_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mmfuse", "serve", "--model-base", model_base, "--port", str(port),
         "--rest-port", str(rest_port)],
        cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 120)
        assert ready, "mmfuse serve printed nothing in 120 s"
        assert process.stdout.readline().strip() == (
            f"serving model mmfuse version 1 on 127.0.0.1:{port}, REST on 127.0.0.1:{rest_port}")
        recommended, searched, by_image, similar = run_curl_commands(rest_port, str(tmp_path),
                                                                     str(home))
        # The user went as the pseudonym the model knows.
        assert recommended["predictions"][0]["known_user"] is True
        for answer in (recommended, searched, by_image):
            assert set(answer["predictions"][0]["item_ids"]) <= set(ITEMS)
        assert len(similar["outputs"]["item_ids"][0]) == 5
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", rest_port), timeout=5).close()
    finally:
        process.kill()

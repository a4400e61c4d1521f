import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

from mmfuse.cli import main
from dataset import pseudonyms
from serving import client
from serving.conftest import ATTRIBUTES, ITEMS, TITLES, USER_KEY

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("asked, signature, inputs", [
    ({"user": "u1"}, "recommend", {"user_id": ["u1"]}),
    ({"text": "red"}, "search", {"query": ["red"], "user_id": [""]}),
    ({"text": "red", "user": "u1"}, "search", {"query": ["red"], "user_id": ["u1"]}),
    ({"image": b"\x89PNG"}, "image_search", {"image": [b"\x89PNG"]}),
    ({"item": "p1"}, "similar_items", {"item_id": ["p1"]}),
])
def test_a_question_sends_every_input_its_signature_has(asked, signature, inputs):
    assert client.question(**asked) == (signature, inputs)
    request = client.predict_request(signature, inputs, k=5, model_name="shop")
    assert set(request.inputs) == set(inputs) | {"k"}
    assert request.inputs["k"].dtype == tf.int32.as_datatype_enum
    assert (request.model_spec.name, request.model_spec.signature_name) == ("shop", signature)


@pytest.mark.parametrize("asked", [{}, {"text": "red", "item": "p1"}, {"user": "u1", "item": "p1"},
                                   {"user": "u1", "image": b"x"}])
def test_anything_but_one_question_is_refused(asked):
    with pytest.raises(ValueError):
        client.question(**asked)


def test_with_the_key_a_user_is_asked_about_by_pseudonym():
    expected = pseudonyms.pseudonym("u1", USER_KEY)
    assert client.question(user="u1", user_key=USER_KEY) == ("recommend", {"user_id": [expected]})
    assert client.question(text="red", user="u1", user_key=USER_KEY)[1]["user_id"] == [expected]
    assert client.question(text="red", user_key=USER_KEY)[1]["user_id"] == [""]


def _query(server, *arguments):
    return main(["query", "--server", f"127.0.0.1:{server.port}", *arguments])


def _item_lines(printed):
    """(rank, id, title, attributes) of each item line `client.show` printed."""
    items = []
    for line in printed:
        rank, item, score, rest = line.split(None, 3)
        title, _, attributes = rest.partition("  [")
        float(score)
        items.append((rank, item, title, attributes.rstrip("]")))
    return items


def test_query_prints_each_item_with_its_title_and_attributes(server, capsys, user_key_file):
    assert _query(server, "--user", "u0001", "--k", "3", "--user-key-file", user_key_file) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "recommend user u0001 (model mmfuse version 1):"
    items = _item_lines(printed[1:])
    assert [rank for rank, *_ in items] == ["1.", "2.", "3."]
    assert all(item in ITEMS and title == TITLES[item] and attributes == ATTRIBUTES[item]
               for _, item, title, attributes in items)


def test_an_unknown_user_is_told_the_answer_is_the_cold_start_one(server, capsys, user_key_file):
    assert _query(server, "--user", "stranger", "--k", "2", "--user-key-file", user_key_file) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == ("user stranger is unknown to the model: cold-start answer (what a user "
                          "with no history is recommended)")
    assert len(_item_lines(printed[2:])) == 2
    # The same user id, asked without the key the model was trained with, is unknown too.
    other_key = os.path.join(os.path.dirname(user_key_file), "other_key")
    pseudonyms.load_key(other_key, create=True)
    assert _query(server, "--text", "red", "--user", "u0001", "--user-key-file", other_key) == 0
    assert "user u0001 is unknown to the model" in capsys.readouterr().out


def test_asking_about_a_user_needs_the_key_file(server, capsys, tmp_path):
    assert _query(server, "--user", "u0001", "--user-key-file", str(tmp_path / "none")) == 2
    error = capsys.readouterr().err
    assert "cannot read the user key file" in error and "Traceback" not in error


def test_query_with_recent_items_asks_recommend_with_history(server, capsys, user_key_file):
    assert _query(server, "--user", "u0001", "--recent", "p0003,no-such-item,p0005", "--k", "3",
                  "--json", "--user-key-file", user_key_file) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["signature"] == "recommend_with_history" and len(answer["item_ids"]) == 3
    # An anonymous visitor, and an empty history.
    assert _query(server, "--recent", "p0003", "--k", "2") == 0
    assert capsys.readouterr().out.startswith(
        "recommend_with_history anonymous visitor after 1 recent items")
    assert _query(server, "--user", "u0001", "--recent", "", "--json",
                  "--user-key-file", user_key_file) == 0
    assert len(json.loads(capsys.readouterr().out)["item_ids"]) == 10


def test_recent_item_rows_are_padded_and_unknown_ones_counted(server):
    signature, inputs = client.question(user="u1", recent=["p0002", "nope"])
    assert (signature, inputs) == ("recommend_with_history",
                                   {"user_id": ["u1"], "recent_item_ids": [["p0002", "nope"]]})
    request = client.predict_request(signature, {"user_id": ["u1", "u2"],
                                                 "recent_item_ids": [["p0002", "nope"], []]})
    assert tf.make_ndarray(request.inputs["recent_item_ids"]).tolist() == [
        [b"p0002", b"nope"], [b"", b""]]
    with client.connect(server.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=10)
    assert tf.make_ndarray(response.outputs["unknown_recent_items"]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="ask one question"):
        client.question(text="red", recent=["p0001"])


def test_query_json_is_one_line(server, capsys, user_key_file):
    assert _query(server, "--text", "red dress", "--k", "4", "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["signature"], answer["model_version"]) == ("search", 1)
    assert len(answer["item_ids"]) == len(answer["scores"]) == 4
    assert answer["scores"] == sorted(answer["scores"], reverse=True)
    assert answer["titles"] == [TITLES[item] for item in answer["item_ids"]]
    assert answer["attributes"] == [ATTRIBUTES[item] for item in answer["item_ids"]]
    assert answer["known_user"] is False  # anonymous
    assert _query(server, "--user", "u0002", "--json", "--user-key-file", user_key_file) == 0
    assert json.loads(capsys.readouterr().out)["known_user"] is True


def test_an_unknown_similar_item_is_invalid_argument_naming_it(server, capsys):
    assert _query(server, "--item", "no-such-item") == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("mmfuse query: INVALID_ARGUMENT: ") and "no-such-item" in error
    assert "\n" not in error and "[[{{node" not in error


def test_query_by_image_file(server, capsys, tmp_path):
    image = tmp_path / "photo.png"
    image.write_bytes(tf.io.encode_png(np.zeros((4, 4, 3), np.uint8)).numpy())
    assert _query(server, "--image", str(image), "--json") == 0
    assert json.loads(capsys.readouterr().out)["signature"] == "image_search"


def test_query_reports_the_servers_refusal(server, capsys):
    assert _query(server, "--item", "p0001", "--model-name", "other") == 1
    assert capsys.readouterr().err.strip() == (
        "mmfuse query: NOT_FOUND: Servable not found for request: Latest(other)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_query_without_a_server_says_so(capsys):
    assert main(["query", "--server", f"127.0.0.1:{_free_port()}", "--item", "p1",
                 "--timeout", "0.5"]) == 1
    error = capsys.readouterr().err
    assert "no gRPC server answers at 127.0.0.1:" in error
    assert "Traceback" not in error


def _predict(model_base, *arguments):
    return main(["predict", "--model-base", model_base, *arguments])


@pytest.mark.parametrize("asked", [["--user", "u0001"], ["--text", "red", "--user", "u0002"],
                                   ["--item", "p0003"], ["--image", "PNG"]])
def test_predict_asks_every_question_and_prints_what_query_prints(
        server, model_base, asked, capsys, tmp_path, user_key_file):
    if asked == ["--image", "PNG"]:
        image = tmp_path / "photo.png"
        image.write_bytes(tf.io.encode_png(np.full((4, 4, 3), 90, np.uint8)).numpy())
        asked = ["--image", str(image)]
    arguments = [*asked, "--k", "4", "--user-key-file", user_key_file]
    assert _predict(model_base, *arguments) == 0
    predicted = capsys.readouterr().out.splitlines()
    assert _query(server, *arguments) == 0
    queried = capsys.readouterr().out.splitlines()
    assert predicted == queried and len(predicted) == 5
    assert _predict(model_base, *arguments, "--json") == 0
    assert json.loads(capsys.readouterr().out)["titles"] == [title for _, _, title, _ in
                                                            _item_lines(predicted[1:])]


def test_predict_errors_are_one_line_without_a_traceback(model_base, tmp_path, capsys):
    empty_base = tmp_path / "empty"
    empty_base.mkdir()
    for arguments, code, words in [
            (["--model-base", str(tmp_path / "missing"), "--item", "p0001"], 2, "does not exist"),
            (["--model-base", str(empty_base), "--item", "p0001"], 2, "no model version"),
            (["--model-base", model_base, "--image", str(tmp_path / "none.png")], 2,
             "cannot read image"),
            (["--model-base", model_base, "--item", "nope"], 1, "INVALID_ARGUMENT"),
            (["--model-base", model_base], 2, "nothing asked")]:
        assert main(["predict", *arguments]) == code, arguments
        error = capsys.readouterr().err
        assert words in error and "Traceback" not in error and len(error.strip().splitlines()) == 1, error
        if words == "INVALID_ARGUMENT":
            assert "nope" in error


def test_query_input_errors(capsys, tmp_path):
    assert main(["query", "--server", "localhost:1", "--image", str(tmp_path / "none.jpg")]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["query", "--server", "localhost:1", "--user", "u1", "--item", "p1"]) == 2
    assert "ask one question" in capsys.readouterr().err


def test_serve_command_serves_until_sigterm(model_base):
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mmfuse", "serve", "--model-base", model_base, "--port", str(port)],
        cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 120)
        assert ready, "mmfuse serve printed nothing in 120 s"
        first_line = process.stdout.readline()
        assert first_line.strip() == f"serving model mmfuse version 1 on 127.0.0.1:{port}"
        with client.connect(f"127.0.0.1:{port}") as channel:
            answer = client.ask(channel, client.predict_request("recommend", {"user_id": ["u1"]}))
        assert len(answer.item_ids[0]) == 10
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "stopping" in process.stdout.read()
    finally:
        process.kill()

import threading

import numpy as np
import pytest
import tensorflow as tf

from serving.batching import (
    DEFAULT_PARAMETERS_FILE,
    Batcher,
    BatchingParameters,
    QueueFullError,
    read_batching_parameters,
)


def _parameters(max_batch_size=8, threads=1, max_enqueued_batches=10, timeout_micros=0):
    parameters = BatchingParameters()
    parameters.max_batch_size.value = max_batch_size
    parameters.num_batch_threads.value = threads
    parameters.max_enqueued_batches.value = max_enqueued_batches
    parameters.batch_timeout_micros.value = timeout_micros
    return parameters


class Model:
    """Doubles `x`, records each call's inputs; the first call waits for
    `release`, so that requests submitted meanwhile queue up."""

    def __init__(self):
        self.calls = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, inputs):
        self.calls.append(inputs)
        self.started.set()
        self.release.wait(10)
        if b"bad" in inputs["x"].tolist():
            raise tf.errors.InvalidArgumentError(None, None, "bad row")
        return {"y": inputs["x"] if inputs["x"].dtype == object else inputs["x"] * 2}


def _rows(*values):
    return {"x": np.array(values)}


def test_requests_queued_together_are_answered_by_one_call_and_split_back():
    model, batcher = Model(), Batcher(_parameters())
    try:
        first = batcher.submit("key", model, _rows(1), 1)
        assert model.started.wait(10)
        second = batcher.submit("key", model, _rows(2, 3), 2)
        third = batcher.submit("key", model, _rows(4), 1)
        model.release.set()
        assert first.result(10)["y"].tolist() == [2]
        assert second.result(10)["y"].tolist() == [4, 6]
        assert third.result(10)["y"].tolist() == [8]
    finally:
        batcher.stop()
    assert [call["x"].tolist() for call in model.calls] == [[1], [2, 3, 4]]


def test_batches_stop_at_max_batch_size_and_never_mix_keys():
    model, batcher = Model(), Batcher(_parameters(max_batch_size=3))
    try:
        batcher.submit("a", model, _rows(0), 1)
        assert model.started.wait(10)
        futures = [batcher.submit(key, model, _rows(value), 1)
                   for key, value in [("a", 1), ("b", 10), ("a", 2), ("a", 3), ("a", 4)]]
        model.release.set()
        assert [future.result(10)["y"].tolist() for future in futures] == [[2], [20], [4], [6], [8]]
    finally:
        batcher.stop()
    assert sorted(call["x"].tolist() for call in model.calls[1:]) == [[1, 2, 3], [4], [10]]


def test_a_request_larger_than_a_batch_is_answered_in_parts():
    model, batcher = Model(), Batcher(_parameters(max_batch_size=2))
    model.release.set()
    try:
        answer = batcher.run("key", model, {"x": np.arange(5), "k": np.array(3)}, 5)
    finally:
        batcher.stop()
    assert answer["y"].tolist() == [0, 2, 4, 6, 8]
    assert [call["x"].tolist() for call in model.calls] == [[0, 1], [2, 3], [4]]
    assert all(call["k"] == 3 for call in model.calls)


def test_a_bad_request_fails_alone_not_the_batch_it_joined():
    model, batcher = Model(), Batcher(_parameters())
    try:
        batcher.submit("key", model, {"x": np.array([b"ok"], object)}, 1)
        assert model.started.wait(10)
        good = batcher.submit("key", model, {"x": np.array([b"fine"], object)}, 1)
        bad = batcher.submit("key", model, {"x": np.array([b"bad"], object)}, 1)
        model.release.set()
        assert good.result(10)["y"].tolist() == [b"fine"]
        with pytest.raises(tf.errors.InvalidArgumentError):
            bad.result(10)
    finally:
        batcher.stop()


def test_a_full_queue_refuses_new_batches():
    model, batcher = Model(), Batcher(_parameters(max_enqueued_batches=1))
    try:
        batcher.submit("a", model, _rows(1), 1)
        assert model.started.wait(10)
        batcher.submit("a", model, _rows(2), 1)
        batcher.submit("a", model, _rows(3), 1)  # joins the waiting batch
        with pytest.raises(QueueFullError, match="max_enqueued_batches 1"):
            batcher.submit("b", model, _rows(4), 1)
    finally:
        model.release.set()
        batcher.stop()


def test_the_deployed_batching_file_is_what_mmfuse_serve_reads():
    parameters = read_batching_parameters(DEFAULT_PARAMETERS_FILE)
    assert parameters.max_batch_size.value >= 8
    assert parameters.num_batch_threads.value >= 1


@pytest.mark.parametrize("text, problem", [
    ("max_batch_size { value: 0 }", "max_batch_size must be at least 1"),
    ("allowed_batch_sizes: 8", "allowed_batch_sizes"),
    ("batch_timeout_micros { value: -5 }", "must not be negative"),
])
def test_batching_files_this_server_cannot_honour_are_refused(tmp_path, text, problem):
    path = tmp_path / "batching.config"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem) as raised:
        read_batching_parameters(str(path))
    assert str(path) in str(raised.value)

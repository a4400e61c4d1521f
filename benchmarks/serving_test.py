

import argparse
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from benchmarks import serving as bench


def test_sizes_parse():
    assert bench._sizes("pushed, 44000,1000000") == [None, 44000, 1000000]
    with pytest.raises(argparse.ArgumentTypeError):
        bench._sizes("44k")


def test_every_signature_gets_a_rotation_of_valid_requests():
    args = bench._parser().parse_args(["--users", "3", "--k", "5"])
    for signature in bench.SIGNATURES:
        requests = bench.requests_for(signature, args, ["p0001", "p0002"])
        assert requests and {request.model_spec.signature_name for request in requests} == {
            signature}
        assert all(request.inputs["k"].int_val == [5] for request in requests)


class FlakyService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Answers at once, except every fourth request, which fails."""

    def __init__(self):
        self.counter = itertools.count(1)
        self.lock = threading.Lock()

    def Predict(self, request, context):
        with self.lock:
            number = next(self.counter)
        if number % 4 == 0:
            context.abort(grpc.StatusCode.INTERNAL, "flaky")
        return predict_pb2.PredictResponse()


def test_drive_measures_answers_and_counts_errors():
    server = grpc.server(ThreadPoolExecutor(4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(FlakyService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        latencies, errors, seconds = bench.drive(f"127.0.0.1:{port}",
                                                 [predict_pb2.PredictRequest()], 2, 0.5)
    finally:
        server.stop(0)
    assert seconds >= 0.5
    assert len(latencies) > 10 and (latencies > 0).all()
    assert abs(errors - (len(latencies) + errors) / 4) <= 2


def _result(size, signature, latency_ms, answers):
    return bench.Result(size, signature, np.full(answers, latency_ms), errors=0, seconds=1.0)


def test_growth_compares_each_size_with_the_smallest():
    lines = bench.growth([_result(1000, "recommend", 2.0, 400), _result(300, "recommend", 1.0, 800),
                          _result(300, "search", 5.0, 100)])
    assert lines == ["recommend (exact) vs 300 items: 1,000 items: p50 x2.0, qps x0.50"]


def test_the_results_table_has_a_row_per_size_and_signature():
    table = bench.results_table([_result(300, "recommend", 7.7, 1027),
                                 _result(44000, "search", 38.3, 208)])
    lines = table.splitlines()
    assert lines[0] == ("| items | index | signature | p50 ms | p95 ms | p99 ms | answers/s | "
                        "recall vs exact | CPU ms/answer | errors |")
    assert lines[2].startswith("| 300 | exact | recommend | 7.7 | 7.7 | 7.7 | 1027 | nan |")
    assert lines[3].startswith("| 44,000 | exact | search | 38.3 |")


def test_indexes_and_the_stand_in_defaults():
    assert bench._indexes("exact, partitioned") == ["exact", "partitioned"]
    with pytest.raises(argparse.ArgumentTypeError):
        bench._indexes("scann")
    args = bench._parser().parse_args([])
    bench._defaults(args)
    assert (args.sizes, args.signatures) == ([44000, 1000000], ["recommend", "similar_items"])
    with pytest.raises(ValueError, match="stand-in model answers"):
        bench._defaults(bench._parser().parse_args(["--signatures", "search"]))


def test_recall_is_the_share_of_the_exact_answer_found_ties_included():
    assert bench.recall([(["a", "b"], [0.9, 0.5]), (["c", "d"], [0.9, 0.8])],
                        [(["a", "x"], [0.9, 0.7]), (["d", "c"], [0.9, 0.8])]) == 0.75
    # "y" scores what the exact answer's last does: as right as "x".
    assert bench.recall([(["a", "y"], [0.9, 0.7])], [(["a", "x"], [0.9, 0.7])]) == 1.0


def test_a_json_line_has_the_issue_keys():
    result = _result(1000, "recommend", 2.0, 10)
    result.index, result.recall_vs_exact = "partitioned", 0.97
    assert bench.Result.as_json(result) == {
        "size": 1000, "index": "partitioned", "signature": "recommend", "p50_ms": 2.0,
        "p99_ms": 2.0, "qps": 10.0, "recall_vs_exact": 0.97, "errors": 0}


def test_the_stand_in_model_answers_with_either_index(tmp_path):
    users = [b"u1", b"u2", b"u3"]
    base = bench.stand_in_model_base(3000, users, str(tmp_path))
    answers = {}
    for index in bench.INDEXES:
        model = tf.saved_model.load(str(tmp_path / bench.index_variant(base, index, str(tmp_path))
                                        / "1"))
        answer = model.signatures["recommend"](user_id=tf.constant(users + [b"nobody"]),
                                               k=tf.constant(10))
        assert answer["known_user"].numpy().tolist() == [True, True, True, False]
        answers[index] = list(zip(answer["item_ids"].numpy().tolist(),
                                  answer["scores"].numpy().tolist()))[:3]
        similar = model.signatures["similar_items"](item_id=tf.constant([b"item00000001"]),
                                                    k=tf.constant(10))["item_ids"].numpy()
        assert b"item00000001" not in similar[0] and len(set(similar[0])) == 10
    assert bench.recall(answers["partitioned"], answers["exact"]) >= 0.9



import argparse
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
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
    assert lines == ["recommend vs 300 items: 1,000 items: p50 x2.0, qps x0.50"]


def test_the_results_table_has_a_row_per_size_and_signature():
    table = bench.results_table([_result(300, "recommend", 7.7, 1027),
                                 _result(44000, "search", 38.3, 208)])
    lines = table.splitlines()
    assert lines[0] == ("| items | signature | p50 ms | p95 ms | p99 ms | answers/s | "
                        "CPU ms/answer | errors |")
    assert lines[2].startswith("| 300 | recommend | 7.7 | 7.7 | 7.7 | 1027 |")
    assert lines[3].startswith("| 44,000 | search | 38.3 |")

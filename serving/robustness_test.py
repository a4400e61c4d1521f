"""A live `mmfuse serve` (a subprocess under an address-space limit, so that
a request that makes it balloon fails the test, not the machine) against
generated malformed Predict requests, and under load across hot swaps."""
import io
import os
import random
import resource
import select
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from mmfuse.config import ServingSettings
from serving import client, model_store
from serving.server import MAX_K, MAX_REQUEST_ROWS

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_REQUEST_BYTES = 1 << 20
# Address space, not resident memory: TensorFlow and gRPC reserve far more
# than they touch (this server idles near 2.5 GiB of it at ~300 MiB resident).
ADDRESS_SPACE_LIMIT = 5 << 30
LIMITS = ServingSettings()
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
EXHAUSTED, PRECONDITION = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION
SIGNATURES = {"recommend": ("user_id",), "search": ("query", "user_id"),
              "similar_items": ("item_id",), "image_search": ("image",)}


class LiveServer:
    def __init__(self, process, port):
        self.process, self.port = process, port

    def memory(self) -> str:
        with open(f"/proc/{self.process.pid}/status") as handle:
            sizes = dict(line.split(":", 1) for line in handle if line.startswith(("VmRSS", "VmPeak")))
        return (f"server {int(sizes['VmRSS'].split()[0]) >> 10} MiB resident, address space "
                f"peak {int(sizes['VmPeak'].split()[0]) >> 10} MiB (limit {ADDRESS_SPACE_LIMIT >> 20})")


def _limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def start_server(model_base: str, log_path: str) -> LiveServer:
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mmfuse", "serve", "--model-base", model_base, "--port", "0",
         "--poll-seconds", "0.2", "--max-request-bytes", str(MAX_REQUEST_BYTES)],
        cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=log, text=True,
        env={**os.environ, "PYTHONPATH": REPOSITORY}, preexec_fn=_limit_address_space)
    log.close()
    ready, _, _ = select.select([process.stdout], [], [], 180)
    line = process.stdout.readline() if ready else ""
    if " on 127.0.0.1:" not in line:
        process.kill()
        with open(log_path) as handle:
            raise AssertionError(f"mmfuse serve did not start: {line!r}\n{handle.read()[-3000:]}")
    # The rest of its output is not read: keep the pipe from filling.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    return LiveServer(process, int(line.split(" on 127.0.0.1:")[1].split()[0]))


def stop_server(server: LiveServer) -> int:
    server.process.terminate()
    try:
        return server.process.wait(30)
    finally:
        server.process.kill()


# --- the malformed requests ---------------------------------------------------

def _strings(values, sizes=None) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=list(values))
    for size in ([len(values)] if sizes is None else sizes):
        proto.tensor_shape.dim.add(size=size)
    return proto


def _int32(value, sizes=()) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[value])
    for size in sizes:
        proto.tensor_shape.dim.add(size=size)
    return proto


def _png(width=4, height=4, value=100) -> bytes:
    return tf.io.encode_png(np.full((height, width, 3), value, np.uint8)).numpy()


def _png_header(width, height) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def _many_frames_gif() -> bytes:
    """A small GIF that decodes to 17 million pixels: 17 frames of 1000x1000."""
    from PIL import Image

    frames = [Image.fromarray(np.full((1000, 1000, 3), value * 10, np.uint8))
              for value in range(17)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    return out.getvalue()


def _good_rows(signature, rows, rng):
    values = {"user_id": [f"u{rng.randrange(100):04d}".encode() for _ in range(rows)],
              "query": [rng.choice([b"red dress", b"shoes", b""]) for _ in range(rows)],
              "item_id": [f"p{rng.randrange(1, 13):04d}".encode() for _ in range(rows)],
              "image": [_png(value=rng.randrange(256)) for _ in range(rows)]}
    return {name: _strings(values[name]) for name in SIGNATURES[signature]}


def good_request(signature="recommend", rows=1, rng=None, k=5) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mmfuse"
    request.model_spec.signature_name = signature
    for name, proto in _good_rows(signature, rows, rng or random.Random(0)).items():
        request.inputs[name].CopyFrom(proto)
    request.inputs["k"].CopyFrom(_int32(k))
    return request


def malformed_requests(rng: random.Random):
    """(kind, request, the status codes TF Serving would answer) without end."""
    wrong_dtypes = [types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_FLOAT, types_pb2.DT_BOOL,
                    types_pb2.DT_DOUBLE, types_pb2.DT_INVALID, 999, types_pb2.DT_HALF]
    huge_sizes = [[200_000_000], [2 ** 31], [2 ** 62], [MAX_REQUEST_ROWS + 1], [2 ** 40, 2 ** 30],
                  [LIMITS.max_encoder_rows + 1]]
    negative_sizes = [[-1], [-2 ** 62], [3, -1], [-7]]
    bad_images = [b"", b"not an image", b"\x89PNG\r\n\x1a\n", _png()[:30], _png()[:-20],
                  b"\xff\xd8\xff\xe0" + bytes(40), b"GIF89a" + b"\xff\xff\xff\xff",
                  b"BM" + bytes(30), _png_header(23170, 23170), _png_header(5000, 5000),
                  b"GIF89a\xff\xff\xff\xff" + bytes(20),
                  b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x03" + bytes(20),
                  _many_frames_gif()]
    while True:
        signature = rng.choice(list(SIGNATURES))
        request = good_request(signature, rng.randrange(1, 4), rng)
        names = SIGNATURES[signature]
        name = rng.choice(names)
        kind = rng.randrange(14)
        expected = {INVALID}
        if kind == 0:
            change = rng.randrange(5)
            if change == 0:
                request.model_spec.name = rng.choice(["", "other", "mmfuse2", "MMFUSE"])
                expected = {NOT_FOUND}
            elif change == 1:
                request.model_spec.version.value = rng.choice([0, 2, 99, -1, 2 ** 62])
                expected = {NOT_FOUND}
            elif change == 2:
                request.model_spec.version_label = rng.choice(["stable", "", "canary"])
            elif change == 3:
                request.model_spec.signature_name = rng.choice(["rank", "recommend ", "x" * 300])
                expected = {PRECONDITION}
            else:
                request.model_spec.Clear()
                expected = {NOT_FOUND}
            kind_name = "model spec"
        elif kind == 1:
            required = name if name != "user_id" or signature != "search" else "query"
            del request.inputs[required]
            kind_name = "missing input"
        elif kind == 2:
            request.inputs[rng.choice(["users", "k2", "", "image ", "examples"])].CopyFrom(
                _strings([b"x"]))
            kind_name = "extra input"
        elif kind == 3:
            proto = request.inputs[rng.choice(list(names) + ["k"])]
            proto.dtype = rng.choice([dtype for dtype in wrong_dtypes + [types_pb2.DT_STRING]
                                      if dtype != proto.dtype])
            kind_name = "wrong dtype"
        elif kind == 4:
            if rng.random() < 0.5:
                request.inputs[name].tensor_shape.Clear()  # rank 0
                if rng.random() < 0.5:
                    request.inputs[name].tensor_shape.unknown_rank = True
            else:
                request.inputs["k"].tensor_shape.dim.add(size=rng.choice([0, 1, 3]))
            kind_name = "wrong shape"
        elif kind == 5:
            shape = request.inputs[name].tensor_shape
            shape.Clear()
            for size in rng.choice(huge_sizes):
                shape.dim.add(size=size)
            if shape.dim[0].size == LIMITS.max_encoder_rows + 1 and len(shape.dim) == 1 \
                    and signature not in ("search", "image_search"):
                shape.dim[0].size = MAX_REQUEST_ROWS + 1
            kind_name = "huge declared size"
        elif kind == 6:
            shape = request.inputs[name].tensor_shape
            shape.Clear()
            for size in rng.choice(negative_sizes):
                shape.dim.add(size=size)
            kind_name = "negative size"
        elif kind == 7:
            request.inputs["k"].CopyFrom(_int32(rng.choice(
                [0, -1, -(2 ** 31), MAX_K + 1, 2 ** 31 - 1, rng.randrange(-1000, 1)])))
            kind_name = "bad k"
        elif kind == 8:
            request.inputs[name].string_val[0] = b"x" * rng.choice(
                [LIMITS.max_text_bytes + 1, 10_000, 100_000])
            kind_name = "long string"
        elif kind == 9:
            request = good_request("image_search", rng.randrange(1, 4), rng)
            request.inputs["image"].string_val[rng.randrange(len(
                request.inputs["image"].string_val))] = rng.choice(bad_images)
            kind_name = "bad image"
        elif kind == 10:
            request.inputs[name].string_val.append(b"x" * (MAX_REQUEST_BYTES + rng.randrange(99)))
            expected = {EXHAUSTED}
            kind_name = "oversized message"
        elif kind == 11:
            if len(names) > 1:
                request.inputs[names[1]].CopyFrom(_strings([b"a"] * 5))
                request.inputs[names[0]].CopyFrom(_strings([b"b"] * 2))
            else:
                request.inputs[name].string_val.extend([b"extra"] * 3)  # more values than shape
            kind_name = "rows disagree"
        elif kind == 12:
            proto = request.inputs["k"]
            proto.ClearField("int_val")
            proto.tensor_content = bytes(rng.choice([1, 3, 8, 12]))
            kind_name = "bad tensor content"
        else:
            request.output_filter.append(rng.choice(["ranks", "", "item_ids", "scores"]))
            if request.output_filter[0] in ("item_ids", "scores"):
                request.output_filter.append(request.output_filter[0])  # duplicate
            kind_name = "bad output filter"
        yield kind_name, request, expected


# --- the tests ------------------------------------------------------------------

# A minute or more with the server's start: in CI's run, not `make test-fast`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_model):
    base = tmp_path_factory.mktemp("live") / "mmfuse"
    model_store.push_version(tiny_model, str(base / "1"))
    log_path = str(base.parent / "server.log")
    server = start_server(str(base), log_path)
    server.log_path = log_path
    yield server, str(base)
    assert stop_server(server) == 0


def _log(server) -> str:
    with open(server.log_path) as handle:
        return handle.read()


def test_malformed_requests_get_tf_servings_status_and_harm_nothing(live):
    server, _ = live
    cases = malformed_requests(random.Random(26))
    tried, handled, failures = 0, {}, []
    with client.connect(f"127.0.0.1:{server.port}", 30) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        good = good_request()
        while tried < 1200:
            kind, request, expected = next(cases)
            tried += 1
            try:
                stub.Predict(request, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
            if code in expected:
                handled[kind] = handled.get(kind, 0) + 1
            else:
                failures.append(f"{kind}: {code.name}, expected {expected}: {request}"[:600])
            # The server still answers a good request after each.
            assert stub.Predict(good, timeout=30).outputs["item_ids"].tensor_shape.dim
    print(f"\nmalformed requests: {tried} tried, {sum(handled.values())} handled, "
          f"{len(failures)} failed; by kind {sorted(handled.items())}; {server.memory()}")
    assert not failures, "\n".join(failures[:20])
    assert server.process.poll() is None
    # Refusals are answers, not failures of the server: no traceback logged.
    assert "Traceback" not in _log(server) and "Predict failed" not in _log(server)


def test_thirty_seconds_of_load_across_two_swaps_and_a_truncated_version(live, tiny_model,
                                                                         tmp_path):
    server, base = live
    failures, answered, stop = [], [], threading.Event()

    def ask(seed):
        rng = random.Random(seed)
        with client.connect(f"127.0.0.1:{server.port}", 30) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                signature = rng.choice(list(SIGNATURES))
                rows = rng.randrange(1, LIMITS.max_encoder_rows + 1)
                try:
                    response = stub.Predict(good_request(signature, rows, rng), timeout=30)
                    answered.append(response.model_spec.version.value)
                except grpc.RpcError as error:
                    failures.append(f"{signature}: {error.code().name}: {error.details()}")

    def push(version, truncate=False):
        staged = str(tmp_path / f"staged-{version}")
        model_store.push_version(tiny_model, staged)
        if truncate:
            variables = os.path.join(staged, "variables")
            data = next(name for name in os.listdir(variables) if name.startswith("variables.data"))
            with open(os.path.join(variables, data), "r+b") as handle:
                handle.truncate(os.path.getsize(handle.name) // 2)
        os.rename(staged, os.path.join(base, str(version)))

    askers = [threading.Thread(target=ask, args=(seed,)) for seed in range(6)]
    started = time.monotonic()
    for thread in askers:
        thread.start()
    try:
        for at, version, truncate in ((6, 2, False), (13, 3, True), (20, 4, False)):
            time.sleep(max(0.0, started + at - time.monotonic()))
            push(version, truncate)
        time.sleep(max(0.0, started + 30 - time.monotonic()))
    finally:
        stop.set()
        for thread in askers:
            thread.join()
        shutil.rmtree(os.path.join(base, "3"), ignore_errors=True)
    print(f"\nload: {len(answered)} answered, {len(failures)} failed, versions "
          f"{sorted(set(answered))}; {server.memory()}")
    assert not failures, failures[:10]
    assert set(answered) == {1, 2, 4}, "2 and 4 swapped in, the truncated 3 never served"
    assert answered[-1] == 4
    assert server.process.poll() is None
    assert "version 3 at" in _log(server) and "does not load" in _log(server)

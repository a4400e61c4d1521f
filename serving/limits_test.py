"""What one request may cost: declared shapes, rows, text and image sizes are
checked before anything is materialised or decoded, and a slow signature's
queue does not hold up the others."""
import io
import struct
import threading
import time
import zlib

import grpc
import numpy as np
import pytest
from PIL import Image
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from mmfuse.config import ServingSettings
from serving import client
from serving.batching import QueuePerName
from serving.conftest import small_batches
from serving.image_header import ImageHeaderError, frame_count, image_size

LIMITS = ServingSettings()


@pytest.fixture(scope="module")
def stub(server):
    with client.connect(f"127.0.0.1:{server.port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _strings(sizes, values=(b"u0001",)) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=list(values))
    for size in sizes:
        proto.tensor_shape.dim.add(size=size)
    return proto


def _request(signature: str, **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mmfuse"
    request.model_spec.signature_name = signature
    for name, proto in inputs.items():
        request.inputs[name].CopyFrom(proto)
    return request


def _refused(stub, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request, timeout=10)
    return raised.value


def png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG of that size: all the server reads before refusing it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def test_a_huge_declared_shape_is_refused_before_it_is_materialised(stub):
    request = _request("recommend", user_id=_strings([200_000_000]))
    assert len(request.SerializeToString()) < 100
    started = time.monotonic()
    refusal = _refused(stub, request)
    assert time.monotonic() - started < 5  # it took 20 s, then MemoryError, under 5 GiB
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1024 rows" in refusal.details()


@pytest.mark.parametrize("sizes", [[-1], [-5], [2, -3]])
def test_negative_dimensions_are_invalid_not_internal(stub, sizes):
    refusal = _refused(stub, _request("recommend", user_id=_strings(sizes)))
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "may not be negative" in refusal.details() or "expected [None]" in refusal.details()


@pytest.mark.parametrize("k", [0, -1, -(2 ** 31)])
def test_k_below_one_is_invalid(stub, k):
    request = client.predict_request("recommend", {"user_id": ["u0001"]}, k=k)
    refusal = _refused(stub, request)
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"k must be at least 1, not {k}" in refusal.details()


def test_encoder_signatures_take_few_rows_the_others_many(stub):
    rows = LIMITS.max_encoder_rows + 1
    refusal = _refused(stub, client.predict_request("search", {"query": ["a"] * rows,
                                                               "user_id": [""] * rows}))
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "serving.max_encoder_rows" in refusal.details()
    answer = stub.Predict(client.predict_request("recommend", {"user_id": ["u1"] * rows}),
                          timeout=10)
    assert answer.outputs["item_ids"].tensor_shape.dim[0].size == rows


def test_long_text_is_refused(stub):
    query = "x" * (LIMITS.max_text_bytes + 1)
    refusal = _refused(stub, client.predict_request("search", {"query": [query], "user_id": [""]}))
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "serving.max_text_bytes" in refusal.details()
    stub.Predict(client.predict_request("search", {"query": [query[:100]], "user_id": [""]}),
                 timeout=10)


def test_an_image_too_large_to_decode_is_refused_from_its_header(stub):
    refusal = _refused(stub, client.predict_request("image_search",
                                                    {"image": [png_header(23170, 23170)]}))
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "23170x23170 pixels" in refusal.details()
    unknown = _refused(stub, client.predict_request("image_search", {"image": [b"GIF8"]}))
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT


def _encoded(kind: str, width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(out, format=kind)
    return out.getvalue()


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "GIF", "BMP"])
def test_image_sizes_are_read_from_headers(kind):
    assert image_size(_encoded(kind, 37, 21)) == (kind, 37, 21)


def test_every_frame_of_a_gif_counts():
    frames = [Image.fromarray(np.full((20, 30, 3), value, np.uint8)) for value in (0, 90, 180)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    assert (image_size(out.getvalue()), frame_count(out.getvalue())) == (("GIF", 30, 20), 3)
    assert frame_count(_encoded("GIF", 5, 5)) == frame_count(_encoded("PNG", 5, 5)) == 1


def test_a_gif_of_many_small_frames_is_refused(stub):
    frames = [Image.fromarray(np.full((1000, 1000, 3), value % 256, np.uint8))
              for value in range(20)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    refusal = _refused(stub, client.predict_request("image_search", {"image": [out.getvalue()]}))
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "in 20 frames" in refusal.details()


def test_progressive_jpeg_and_bad_headers():
    out = io.BytesIO()
    Image.fromarray(np.zeros((9, 300, 3), np.uint8)).save(out, format="JPEG", progressive=True)
    assert image_size(out.getvalue()) == ("JPEG", 300, 9)
    for bad in (b"", b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"BM12", b"\xff\xd8\x00\x00\x00\x00",
                b"not an image"):
        with pytest.raises(ImageHeaderError):
            image_size(bad)


def test_a_slow_signature_does_not_hold_up_the_others():
    queues = QueuePerName(small_batches())
    release = threading.Event()

    def slow(inputs):
        release.wait(10)
        return inputs

    try:
        slow_answers = [threading.Thread(
            target=queues.run, args=("image_search", "slow", slow, {"x": np.zeros(1)}, 1))
            for _ in range(4)]
        for thread in slow_answers:
            thread.start()
        started = time.monotonic()
        answer = queues.run("recommend", "fast", lambda inputs: inputs, {"x": np.ones(2)}, 2)
        assert time.monotonic() - started < 3
        assert answer["x"].tolist() == [1, 1]
    finally:
        release.set()
        for thread in slow_answers:
            thread.join()
        queues.stop()

"""Asking the model over TF Serving's gRPC Predict API.

Requests carry every input their signature has (`k` always, an empty
`user_id` for an anonymous search), so they work unchanged against real
`tensorflow_model_server`, which fills in nothing, as well as `mmfuse serve`.
"""


from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

DEFAULT_K = 10
DEFAULT_MODEL_NAME = "mmfuse"
DEFAULT_TIMEOUT_S = 10.0
Strings = Sequence[Union[str, bytes]]


@dataclass
class Answer:
    """One Predict response: per request row, the items best first."""
    signature: str
    model_version: int
    item_ids: List[List[str]]
    scores: List[List[float]]


def question(*, user: Optional[str] = None, text: Optional[str] = None,
             image: Optional[bytes] = None, item: Optional[str] = None,
             recent: Optional[Sequence[str]] = None
             ) -> Tuple[str, Dict[str, list]]:
    """The signature and its inputs (one row) that ask one question: a user's
    recommendations (with `recent`, the items the user, or an anonymous
    visitor without `user`, just interacted with, newest first), a text
    search (personalised when `user` is given), an image search (encoded
    JPEG/PNG bytes) or the items similar to an item."""
    asked = [name for name, value in (("text", text), ("image", image), ("item", item),
                                      ("recent", recent)) if value is not None]
    if len(asked) > 1 or (user is not None and (image is not None or item is not None)):
        raise ValueError("ask one question: a user (optionally with recent items), recent items, "
                         "a text (optionally with a user), an image or an item")
    if recent is not None:
        return "recommend_with_history", {"user_id": [user or ""],
                                          "recent_item_ids": [list(recent)]}
    if text is not None:
        return "search", {"query": [text], "user_id": [user or ""]}
    if image is not None:
        return "image_search", {"image": [image]}
    if item is not None:
        return "similar_items", {"item_id": [item]}
    if user is not None:
        return "recommend", {"user_id": [user]}
    raise ValueError("nothing asked: give a user, a text, an image or an item")


def predict_request(signature: str, inputs: Dict[str, Strings], k: int = DEFAULT_K,
                    model_name: str = DEFAULT_MODEL_NAME) -> predict_pb2.PredictRequest:
    """A PredictRequest for one of the signatures: `inputs` maps each string
    input to its rows (all of the same length; a row of `recent_item_ids` is a
    list, padded here with "" to the longest); `k` is sent as int32."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for name, rows in inputs.items():
        rows = list(rows)
        if rows and isinstance(rows[0], (list, tuple)):
            width = max(len(row) for row in rows)
            rows = [list(row) + [""] * (width - len(row)) for row in rows]
            shape = [len(rows), width]
            rows = [value for row in rows for value in row]
        else:
            shape = [len(rows)]
        request.inputs[name].CopyFrom(tf.make_tensor_proto(rows, dtype=tf.string, shape=shape))
    request.inputs["k"].CopyFrom(tf.make_tensor_proto(k, dtype=tf.int32))
    return request


def parse_answer(response: predict_pb2.PredictResponse) -> Answer:
    return Answer(
        signature=response.model_spec.signature_name,
        model_version=response.model_spec.version.value,
        item_ids=[[item.decode() for item in row]
                  for row in tf.make_ndarray(response.outputs["item_ids"]).tolist()],
        scores=tf.make_ndarray(response.outputs["scores"]).tolist())


def connect(server: str, timeout: float = DEFAULT_TIMEOUT_S) -> grpc.Channel:
    """A channel to HOST:PORT, once it is ready; ConnectionError when nothing
    answers there within `timeout` seconds."""
    channel = grpc.insecure_channel(server, options=[("grpc.max_receive_message_length", -1)])
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        channel.close()
        raise ConnectionError(
            f"no gRPC server answers at {server} (waited {timeout:g} s)") from None
    return channel


def ask(channel: grpc.Channel, request: predict_pb2.PredictRequest,
        timeout: float = DEFAULT_TIMEOUT_S) -> Answer:
    """Sends one Predict request; a failure raises grpc.RpcError (code(), details())."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return parse_answer(stub.Predict(request, timeout=timeout))

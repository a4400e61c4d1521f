"""Asking the model over TF Serving's gRPC Predict API, and showing its answers.

Requests carry every input their signature has (`k` always, an empty
`user_id` for an anonymous search), so they work unchanged against real
`tensorflow_model_server`, which fills in nothing, as well as `mmfuse serve`.
A user id is sent as its pseudonym (dataset/pseudonyms.py): the model knows
users by those alone. `show` and `as_json` format an answer for `mmfuse query`
and `mmfuse predict` alike.
"""


import json
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from dataset import pseudonyms

DEFAULT_K = 10
DEFAULT_MODEL_NAME = "mmfuse"
DEFAULT_TIMEOUT_S = 10.0
Strings = Sequence[Union[str, bytes]]


@dataclass
class Answer:
    """One Predict response: per request row, the items best first, with
    their titles and attributes (empty from a model exported without them),
    and for `recommend` and `search` whether each row's user is known."""
    signature: str
    model_version: int
    item_ids: List[List[str]]
    scores: List[List[float]]
    titles: List[List[str]] = field(default_factory=list)
    attributes: List[List[str]] = field(default_factory=list)
    known_user: Optional[List[bool]] = None
    unknown_recent_items: Optional[List[int]] = None  # recommend_with_history only


def question(*, user: Optional[str] = None, text: Optional[str] = None,
             image: Optional[bytes] = None, item: Optional[str] = None,
             user_key: Optional[bytes] = None, recent: Optional[Sequence[str]] = None
             ) -> Tuple[str, Dict[str, list]]:
    """The signature and its inputs (one row) that ask one question: a user's
    recommendations (with `recent`, the items the user, or an anonymous
    visitor without `user`, just interacted with, newest first), a text
    search (personalised when `user` is given), an image search (encoded
    JPEG/PNG bytes) or the items similar to an item. With `user_key` (the
    pipeline's, `pseudonyms.load_key`) the user is sent as the pseudonym the
    model knows; without it, as given."""
    asked = [name for name, value in (("text", text), ("image", image), ("item", item),
                                      ("recent", recent)) if value is not None]
    if len(asked) > 1 or (user is not None and (image is not None or item is not None)):
        raise ValueError("ask one question: a user (optionally with recent items), recent items, "
                         "a text (optionally with a user), an image or an item")
    if user is not None and user_key is not None:
        user = pseudonyms.pseudonym(user, user_key)
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


def answer_from_outputs(signature: str, model_version: int, outputs: Mapping[str, object]) -> Answer:
    """An Answer from a signature's outputs (numpy arrays or eager tensors)."""
    arrays = {name: value.numpy() if hasattr(value, "numpy") else np.asarray(value)
              for name, value in outputs.items()}

    def strings(name: str) -> List[List[str]]:
        if name not in arrays:
            return [[""] * len(row) for row in arrays["item_ids"]]
        return [[value.decode("utf-8", "replace") for value in row] for row in arrays[name].tolist()]

    return Answer(signature=signature, model_version=model_version,
                  item_ids=strings("item_ids"), scores=arrays["scores"].tolist(),
                  titles=strings("titles"), attributes=strings("attributes"),
                  known_user=(arrays["known_user"].tolist() if "known_user" in arrays else None),
                  unknown_recent_items=(arrays["unknown_recent_items"].tolist()
                                        if "unknown_recent_items" in arrays else None))


def ask_saved_model(model, version: int, signature: str, inputs: Dict[str, Strings],
                    k: int = DEFAULT_K) -> Answer:
    """The Answer of a loaded SavedModel (`model_store.load_newest`) to one
    question (`question`), asked in this process as `mmfuse predict` asks it;
    tf.errors.OpError for inputs the graph refuses, as the server would."""
    outputs = model.signatures[signature](
        k=tf.constant(k, tf.int32),
        **{name: tf.constant(rows, tf.string) for name, rows in inputs.items()})
    return answer_from_outputs(signature, version, outputs)


def parse_answer(response: predict_pb2.PredictResponse) -> Answer:
    return answer_from_outputs(
        response.model_spec.signature_name, response.model_spec.version.value,
        {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()})


def subject(signature: str, *, user: Optional[str] = None, text: Optional[str] = None,
            image: Optional[str] = None, item: Optional[str] = None,
            recent: Optional[Sequence[str]] = None) -> str:
    """What was asked, in words: `user u0001`, `'red mug' for user u0001`..."""
    described = {"recommend": f"user {user}", "search": repr(text),
                 "recommend_with_history": (f"user {user}" if user else "anonymous visitor")
                 + f" after {len(recent or [])} recent items",
                 "image_search": f"image {image}", "similar_items": f"item {item}"}[signature]
    if signature == "search" and user:
        described += f" for user {user}"
    return described


def show(answer: Answer, asked: str, source: str, user: Optional[str] = None) -> List[str]:
    """The lines a person reads for the first row of `answer`: what was asked
    of which model (`source`), a note when `user` is unknown to the model, then
    each item best first: rank, id, score, title and attributes."""
    lines = [f"{answer.signature} {asked} ({source} version {answer.model_version}):"]
    if user and answer.known_user is not None and not answer.known_user[0]:
        lines.append(f"user {user} is unknown to the model: cold-start answer (what a user with "
                     "no history is recommended)")
    if answer.unknown_recent_items and answer.unknown_recent_items[0]:
        lines.append(f"{answer.unknown_recent_items[0]} recent item(s) unknown to the model, "
                     "left out")
    titles = answer.titles[0] if answer.titles else []
    attributes = answer.attributes[0] if answer.attributes else []
    for rank, (item_id, score) in enumerate(zip(answer.item_ids[0], answer.scores[0]), start=1):
        line = f"  {rank:2d}. {item_id}  {score:.4f}"
        title = titles[rank - 1] if rank <= len(titles) else ""
        attribute_text = attributes[rank - 1] if rank <= len(attributes) else ""
        if title:
            line += f"  {title}"
        if attribute_text:
            line += f"  [{attribute_text}]"
        lines.append(line)
    return lines


def as_json(answer: Answer) -> str:
    """The first row of `answer` as one JSON line."""
    document = {"signature": answer.signature, "model_version": answer.model_version,
                "item_ids": answer.item_ids[0], "scores": answer.scores[0],
                "titles": answer.titles[0] if answer.titles else [],
                "attributes": answer.attributes[0] if answer.attributes else []}
    if answer.known_user is not None:
        document["known_user"] = answer.known_user[0]
    if answer.unknown_recent_items is not None:
        document["unknown_recent_items"] = answer.unknown_recent_items[0]
    return json.dumps(document)


def tls_credentials(ca: Optional[str] = None, cert: Optional[str] = None,
                    key: Optional[str] = None) -> grpc.ChannelCredentials:
    """TLS to the server: `ca` a PEM file of the CA(s) to trust (None: the
    system's), `cert` and `key` this client's certificate for mutual TLS."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")

    def read(path):
        if path is None:
            return None
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror}") from None

    return grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=read(key),
                                        certificate_chain=read(cert))


def connect(server: str, timeout: float = DEFAULT_TIMEOUT_S,
            credentials: Optional[grpc.ChannelCredentials] = None) -> grpc.Channel:
    """A channel to HOST:PORT (over TLS with `credentials`), once it is ready;
    ConnectionError when nothing answers there within `timeout` seconds."""
    options = [("grpc.max_receive_message_length", -1)]
    channel = (grpc.insecure_channel(server, options=options) if credentials is None
               else grpc.secure_channel(server, credentials, options=options))
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

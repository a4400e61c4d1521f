"""TF Serving's REST API for `mmfuse serve --rest-port`, beside the gRPC one.

It answers what `tensorflow_model_server --rest_api_port` answers, with the
JSON formats of TF Serving's REST API (its json_tensor.cc) and the HTTP codes
its HTTP server maps each status to:

    POST /v1/models/<name>[/versions/<v>]:predict   {"instances": ...} or {"inputs": ...}
    GET  /v1/models/<name>[/versions/<v>]            the version's status
    GET  /v1/models/<name>[/versions/<v>]/metadata   its SignatureDefs

Requests go through the same ServedModel as gRPC requests (serving/server.py):
the same served version, checks, limits and batch queues. Where it differs
from TF Serving: a row may leave out `k` and a search its `user_id`, as over
gRPC; an input name the signature lacks is refused, not ignored; a string
output that is not UTF-8 comes back as {"b64": ...} (JSON cannot carry it);
a body over serving.max_request_bytes is refused with 413 before it is read;
`:classify` and `:regress` answer 501, as Classify and Regress do over gRPC.
A version label (/labels/<l>) is refused as TF Serving refuses one it was
not configured with: no labels are. It is plaintext, as TF Serving's is.
"""
import base64
import contextlib
import json
import logging
import re
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from serving.server import (DEFAULT_SIGNATURE, Arrays, RequestError, ServedModel, Signature,
                            answer_status)

# The paths TF Serving's handler takes (http_rest_api_util.cc), case-insensitive;
# any other path under /v1/ is a "Malformed request", any path elsewhere a 404.
API_PATH = re.compile(r"/v1/.*", re.I)
PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)", re.I)
MODEL_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?", re.I)
# TF Serving's HTTP status for each status code (http_server.cc).
HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500, grpc.StatusCode.UNAUTHENTICATED: 401,
}
MAX_VERSION = (1 << 63) - 1
# Connections served at once; more are answered 503 at once. A connection
# whose client sends nothing for IDLE_SECONDS is closed.
MAX_CONNECTIONS = 128
IDLE_SECONDS = 30.0
_BUSY_BODY = b'{"error": "too many connections open; try again"}'
_TOO_MANY_CONNECTIONS = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(_BUSY_BODY), _BUSY_BODY))
# JSON values quoted in error messages are cut there, as TF Serving cuts them.
MAX_QUOTED_CHARS = 256
BASE64_KEY = "b64"
# String outputs whose name ends so are always sent as base64, as TF Serving does.
BYTES_SUFFIX = "_bytes"
# How each input dtype is read from JSON, as TF Serving reads it: the
# TensorProto field, the Python type a JSON value must have, and the range
# of integers (the narrower ones are read as int32).
_INT32, _INT64 = (-(1 << 31), 1 << 31), (-(1 << 63), 1 << 63)
_JSON_FIELDS = {
    tf.float32: ("float_val", (int, float), None), tf.float64: ("double_val", (int, float), None),
    tf.int8: ("int_val", int, _INT32), tf.int16: ("int_val", int, _INT32),
    tf.int32: ("int_val", int, _INT32), tf.uint8: ("int_val", int, _INT32),
    tf.int64: ("int64_val", int, _INT64), tf.uint32: ("uint32_val", int, (0, 1 << 32)),
    tf.uint64: ("uint64_val", int, (0, 1 << 64)), tf.bool: ("bool_val", bool, None),
}
_JSON_TYPE_NAMES = {type(None): "Null", dict: "Object", list: "Array", str: "String",
                    int: "Number", float: "Number"}

log = logging.getLogger("mmfuse.serving")


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _quoted(value) -> str:
    return json.dumps(value, ensure_ascii=False)[:MAX_QUOTED_CHARS]


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return _JSON_TYPE_NAMES[type(value)]


# --- JSON to TensorProtos --------------------------------------------------

def _is_base64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(BASE64_KEY), str)


def _is_named(value) -> bool:
    """An object naming inputs, as opposed to a value (a {"b64": ...} is one)."""
    return isinstance(value, dict) and not _is_base64(value)


def _dense_shape(value) -> List[int]:
    """The shape a JSON value declares: the lengths of its first lists."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _leaves(value, shape: List[int]) -> list:
    """The values of a JSON array that must be dense of `shape`, in row-major
    order (level by level, so that no nesting can exhaust the stack)."""
    level = [value]
    for depth, size in enumerate(shape):
        inner = []
        for item in level:
            if not isinstance(item, list):
                raise _invalid(f"JSON Value: {_quoted(item)} found at incorrect level: {depth + 1} "
                               f"in the JSON DOM. Expected at level: {len(shape)}")
            if len(item) != size:
                raise _invalid(f"Encountered list at unexpected size: {len(item)} at level: "
                               f"{depth} expected size: {size}")
            inner.extend(item)
        level = inner
    if any(isinstance(item, list) for item in level):
        raise _invalid(f"Encountered list at unexpected level: {len(shape)} expected < "
                       f"{len(shape)}")
    return level


def _string(value) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (\ud800), as TF Serving's parser refuses
            raise _invalid(f"JSON Value: {_quoted(value)} is not valid UTF-8 text") from None
    if not isinstance(value, dict):
        raise _type_error(value, tf.string)
    if not _is_base64(value):
        raise _invalid(f"JSON Value: {_quoted(value)} not formatted correctly for base64 data")
    text = value[BASE64_KEY]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        raise _invalid("Unable to base64 decode") from None


def _number(value, dtype: tf.DType):
    _, kind, bounds = _JSON_FIELDS[dtype]
    # JSON's true is no number, nor 1 a bool.
    if (isinstance(value, bool) != (kind is bool)) or not isinstance(value, kind):
        raise _type_error(value, dtype)
    if bounds is not None and not bounds[0] <= value < bounds[1]:
        raise _type_error(value, dtype)
    return value


def _type_error(value, dtype: tf.DType) -> RequestError:
    return _invalid(f"JSON Value: {_quoted(value)} Type: {_json_type(value)} is not of expected "
                    f"type: {dtype.name}")


def _tensor(values: list, shape: List[int], dtype: tf.DType) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    proto.tensor_shape.dim.extend(proto.tensor_shape.Dim(size=size) for size in shape)
    if dtype == tf.string:
        proto.string_val.extend(_string(value) for value in values)
    elif dtype in _JSON_FIELDS:
        getattr(proto, _JSON_FIELDS[dtype][0]).extend(_number(value, dtype) for value in values)
    else:
        raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                           f"Conversion of JSON Value: {_quoted(values[:1])} to type: "
                           f"{dtype.name}")
    return proto


def _input_dtype(signature: Signature, name: str) -> tf.DType:
    if name not in signature.inputs:
        raise _invalid(f"JSON object: does not have named input: {name}. "
                       f"{signature.describe()}")
    return signature.inputs[name].dtype


def _instances(instances: list, signature: Signature) -> Dict[str, tensor_pb2.TensorProto]:
    """The row format: one JSON value (or object of named values) per row,
    stacked into one tensor per input; every row must name the same inputs,
    each of the same shape."""
    named = _is_named(instances[0])
    if not named and len(signature.inputs) > 1:
        raise _invalid("instances is a plain list, but expecting list of objects as multiple "
                       "input tensors required as per tensorinfo_map. " + signature.describe())
    shapes: Dict[str, List[int]] = {}
    values: Dict[str, list] = {}
    for index, instance in enumerate(instances):
        if named != _is_named(instance):
            expected, got = ("object", "list") if named else ("value/list", "object")
            raise _invalid(f"Expecting {expected} but got {got} at item {index} of input list")
        row = instance if named else {next(iter(signature.inputs)): instance}
        if index and set(row) != set(shapes):
            raise _invalid(f"Failed to process element: {index} of 'instances' list. JSON "
                           f"object: {_quoted(row)} keys must be equal to: "
                           f"{','.join(sorted(shapes))}")
        for name, value in row.items():
            try:
                _input_dtype(signature, name)
                shape = _dense_shape(value)
                if index and shape != shapes[name]:
                    raise _invalid(f"Expecting shape {shapes[name]} but got: {shape}")
                shapes[name] = shape
                values.setdefault(name, []).extend(_leaves(value, shape))
            except RequestError as error:
                raise _invalid(f"Failed to process element: {index} key: {name} of "
                               f"'instances' list. Error: {error.message}") from None
    return {name: _tensor(values[name], [len(instances)] + shape, signature.inputs[name].dtype)
            for name, shape in shapes.items()}


def _inputs(inputs, signature: Signature) -> Dict[str, tensor_pb2.TensorProto]:
    """The columnar format: each input's whole tensor, by name, or bare when
    the signature has one input."""
    if not _is_named(inputs):
        if len(signature.inputs) > 1:
            raise _invalid("inputs is a plain value/list, but expecting an object as multiple "
                           "input tensors required as per tensorinfo_map. "
                           + signature.describe())
        inputs = {next(iter(signature.inputs)): inputs}
    tensors = {}
    for name, value in inputs.items():
        shape = _dense_shape(value)
        tensors[name] = _tensor(_leaves(value, shape), shape, _input_dtype(signature, name))
    return tensors


def request_tensors(document: dict, signature: Signature
                    ) -> Tuple[bool, Dict[str, tensor_pb2.TensorProto]]:
    """(whether it is the row format, the input TensorProtos) of a predict
    request's JSON document, as TF Serving's FillPredictRequestFromJson reads
    them; RequestError(INVALID_ARGUMENT) saying what does not fit."""
    if "instances" in document and "inputs" in document:
        raise _invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' "
                       "keys to exist")
    if "instances" in document:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise _invalid("Expecting 'instances' to be an list/array")
        if not instances:
            raise _invalid("No values in 'instances' array")
        return True, _instances(instances, signature)
    if "inputs" in document:
        return False, _inputs(document["inputs"], signature)
    raise _invalid("Missing 'inputs' or 'instances' key")


# --- Outputs to JSON ----------------------------------------------------------

def _json_string(value: bytes, as_bytes: bool):
    if not as_bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {BASE64_KEY: base64.b64encode(value).decode("ascii")}


def json_values(array: np.ndarray, name: str):
    """An output tensor as nested JSON lists, as TF Serving writes it: float32
    in its shortest exact decimal form (0.2, not 0.20000000298023224), strings
    as text or, when not UTF-8 or named *_bytes, as {"b64": ...}."""
    if array.dtype == object:
        as_bytes = name.endswith(BYTES_SUFFIX)
        flat = [_json_string(value, as_bytes) for value in array.ravel()]
    elif array.dtype == np.float32:
        flat = [float(str(value)) for value in array.ravel()]
    else:
        return array.tolist()
    return np.array(flat, dtype=object).reshape(array.shape).tolist()


def predictions(outputs: Arrays) -> dict:
    """The row format's answer: one value (or object of named values) per row."""
    sizes = set()
    for name, array in sorted(outputs.items()):
        if array.ndim == 0:
            raise _invalid(f"Tensor name: {name} has no shape information ")
        sizes.add(len(array))
        if len(sizes) > 1:
            raise _invalid(f"Tensor name: {name} has inconsistent batch size: {len(array)} "
                           f"expecting: {min(sizes - {len(array)})}")
    columns = {name: json_values(array, name) for name, array in sorted(outputs.items())}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    rows = range(sizes.pop()) if sizes else range(0)
    return {"predictions": [{name: column[row] for name, column in columns.items()}
                            for row in rows]}


def columnar_outputs(outputs: Arrays) -> dict:
    """The columnar format's answer: each output's whole tensor, by name, or
    bare when there is one."""
    columns = {name: json_values(array, name) for name, array in sorted(outputs.items())}
    return {"outputs": next(iter(columns.values())) if len(columns) == 1 else columns}


def proto_json(message) -> dict:
    """A response proto as TF Serving's REST API renders it: protobuf's JSON
    mapping with proto field names and default values."""
    return json_format.MessageToDict(message, including_default_value_fields=True,
                                     preserving_proto_field_name=True)


# --- Requests ----------------------------------------------------------------

class RestApi:
    """The REST API over a ServedModel, apart from HTTP: one (method, path,
    body) in, one (HTTP status, JSON document) out. A document that is not
    an answer is {"error": message}, as TF Serving's."""

    def __init__(self, model: ServedModel):
        self._model = model

    def answer(self, method: str, path: str, body: bytes) -> Tuple[int, dict]:
        try:
            return 200, self._answer(method, path, body)
        except Exception as error:  # noqa: BLE001 - every failure is answered as TF Serving does
            code, message = answer_status(error, f"REST {method} {path}")
            return HTTP_STATUS.get(code, 500), {"error": message}

    def _answer(self, method: str, path: str, body: bytes) -> dict:
        if method == "POST" and PREDICT_PATH.fullmatch(path):
            name, version, label, verb = PREDICT_PATH.fullmatch(path).groups()
            spec = _model_spec(name, version, label)
            if verb == "predict":
                return self._predict(spec, body)
            if verb in ("classify", "regress"):
                raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"mmfuse serve does not implement :{verb}; the model's "
                                   "signatures answer :predict")
        elif method == "GET" and MODEL_PATH.fullmatch(path):
            name, version, label, metadata = MODEL_PATH.fullmatch(path).groups()
            if not name:
                raise _invalid("Missing model name in request.")
            spec = _model_spec(name, version, label)
            if metadata:
                return self._metadata(spec)
            return proto_json(self._model.status(
                get_model_status_pb2.GetModelStatusRequest(model_spec=spec)))
        raise _invalid(f"Malformed request: {method} {path}")

    def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> dict:
        document = parse_json(body)
        signature_name = document.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise _invalid(f"JSON Value: {_quoted(document)} not formatted correctly. "
                           "'signature_name' key must be a string value.")
        # Held until answered: the version stays loaded while it runs.
        servable = self._model.watcher.find(spec)
        signature = servable.signature(signature_name or DEFAULT_SIGNATURE)
        row_format, inputs = request_tensors(document, signature)
        outputs = self._model.run(signature, inputs)
        return predictions(outputs) if row_format else columnar_outputs(outputs)

    def _metadata(self, spec: model_pb2.ModelSpec) -> dict:
        response = self._model.metadata(get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=["signature_def"]))
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_defs)
        return {"model_spec": proto_json(response.model_spec),
                "metadata": {"signature_def": proto_json(signature_defs)}}


def _model_spec(name: str, version: Optional[str], label: Optional[str]) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=unquote(name))
    if version is not None:
        if int(version) > MAX_VERSION:
            raise _invalid(f"Failed to convert version: {version} to numeric.")
        spec.version.value = int(version)
    if label is not None:
        spec.version_label = unquote(label)
    return spec


def parse_json(body: bytes) -> dict:
    """A request body's JSON object; RequestError(INVALID_ARGUMENT) saying why not."""
    if not body:
        raise _invalid("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise _invalid(f"JSON Parse error: {error}") from None
    if not isinstance(document, dict):
        raise _invalid(f"JSON Value: {_quoted(document)} Is not object")
    return document


# --- HTTP --------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    """One connection: reads each request's body (bounded), answers it as
    RestApi does."""
    protocol_version = "HTTP/1.1"
    server_version = "mmfuse-serve"
    timeout = IDLE_SECONDS
    server: "RestServer"

    def _handle(self) -> None:
        path = urlsplit(self.path).path
        body = self._body()
        if body is None:
            return
        if not API_PATH.fullmatch(path):
            self._send(404, {"error": f"Not found: {path} (the REST API is under /v1/)"})
            return
        with self.server.in_flight():
            if self.server.stopping:
                self.close_connection = True
                self._send(503, {"error": "the server is stopping"})
            else:
                self._send(*self.server.api.answer(self.command, path, body))

    # http.server's names; TF Serving answers "Malformed request" for methods
    # other than GET and POST.
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

    def _body(self) -> Optional[bytes]:
        """The request's body, or None when it was refused (and answered)."""
        refusal = self._refusal()
        if refusal is not None:
            return self._refuse(*refusal)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if len(body) < length:  # the client went away
            self.close_connection = True
            return None
        return body

    def handle_expect_100(self) -> bool:
        # A client that waits for "100 Continue" is refused before it sends the body.
        refusal = self._refusal()
        if refusal is not None:
            self._refuse(*refusal)
            return False
        return super().handle_expect_100()

    def _refusal(self) -> Optional[Tuple[int, str]]:
        """(HTTP status, message) when the body is not to be read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return 411, "send the body with a Content-Length, not chunked"
        text = self.headers.get("Content-Length") or "0"
        if not text.isdigit():
            return 400, f"bad Content-Length: {text}"
        if int(text) > self.server.max_request_bytes:
            return 413, (f"the request body has {text} bytes, more than the "
                         f"{self.server.max_request_bytes} allowed (serving.max_request_bytes)")
        return None

    def _refuse(self, status: int, message: str) -> None:
        """Answers without reading the body, so the connection cannot be reused."""
        self.close_connection = True
        self._send(status, {"error": message})
        return None

    def _send(self, status: int, document: dict) -> None:
        # NaN and Infinity as TF Serving writes them.
        try:
            body = json.dumps(document, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate of the request, quoted in an error
            body = json.dumps(document).encode("ascii")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # noqa: A002 - http.server's signature
        log.debug("REST %s: " + format, self.address_string(), *args)


class RestServer(ThreadingHTTPServer):
    """The REST API on host:port (0: a free one), one thread per connection,
    at most MAX_CONNECTIONS at once."""
    daemon_threads = True

    def __init__(self, model: ServedModel, host: str, port: int, max_request_bytes: int):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.api = RestApi(model)
        self.max_request_bytes = max_request_bytes
        self.port = self.server_address[1]
        self.stopping = False
        self._connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._requests = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self.serve_forever, name="rest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float) -> None:
        """Stops accepting connections and lets the requests in flight finish
        (up to `grace` s); a kept-alive connection's next request gets 503."""
        self.stopping = True
        self.shutdown()
        with self._idle:
            self._idle.wait_for(lambda: self._requests == 0, timeout=grace)
        self.server_close()

    @contextlib.contextmanager
    def in_flight(self):
        """Counts a request as in flight while the `with` block runs."""
        with self._idle:
            self._requests += 1
        try:
            yield
        finally:
            with self._idle:
                self._requests -= 1
                self._idle.notify_all()

    def server_bind(self) -> None:
        # Without HTTPServer's reverse DNS lookup of the host, which can stall.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        if not self._connections.acquire(blocking=False):
            try:
                request.sendall(_TOO_MANY_CONNECTIONS)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def handle_error(self, request, client_address) -> None:
        # A client that hung up or sent garbage: nothing to mend, no traceback on stderr.
        log.debug("REST connection from %s failed", client_address, exc_info=True)

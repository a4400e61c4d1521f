"""`mmfuse serve`: a local stand-in for TensorFlow Serving's gRPC API (and,
with `serving.rest_port`, its REST API: serving/rest.py).

It implements `tensorflow.serving.PredictionService` (Predict,
GetModelMetadata) and `tensorflow.serving.ModelService` (GetModelStatus) with
TF Serving's own protos, status codes and error messages, over a model base
directory in TF Serving's layout, so that a client written against it works
unchanged against `tensorflow_model_server` (serving/deploy/ runs that one).
Where it differs, it is more lenient: a request may leave out `k` (10 is used)
and `search` may leave out `user_id` (anonymous), as docs/design.md promises.

The newest complete version is served; a newer one is loaded, warmed up and
only then swapped in, so requests in flight finish on the version they
started with. A version that does not load, or whose files do not match its
manifest (serving/model_store.py), is logged and skipped, and tried again only
once its files change; one without a manifest loads with a warning.
"""
import ctypes
import ctypes.util
import dataclasses
import functools
import gc
import logging
import math
import os
import signal
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import rewriter_config_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from mmfuse.config import ServingSettings
from pipeline.fingerprint import files_state
from serving import model_store
from serving.batching import (DEFAULT_PARAMETERS_FILE, QueueFullError, QueuePerName,
                              read_batching_parameters)
from serving.client import DEFAULT_K
from serving.image_header import ImageHeaderError, frame_count, image_size

DEFAULT_SIGNATURE = "serving_default"
# Bounds on one request, so that its answer fits in memory: rows, and items
# per row (TF Serving has neither; k clamps to the catalogue size anyway).
MAX_REQUEST_ROWS = 1024
MAX_K = 1000
# Declared elements of one input tensor, checked before it is materialised
# (a 64-byte TensorProto can declare [200000000] and carry one string).
MAX_INPUT_ELEMENTS = 1 << 20
# Signatures that run the text/image encoders: rows capped by
# serving.max_encoder_rows. Inputs that are not text (serving.max_text_bytes).
ENCODER_SIGNATURES = ("search", "image_search")
IMAGE_INPUTS = ("image",)
UNLIMITED_TEXT_INPUTS = IMAGE_INPUTS + ("examples",)
DEFAULT_MAX_REQUEST_BYTES = 16 << 20
# gRPC handler threads mostly wait for their batch; TF Serving recommends
# about twice the batch size in concurrent callers for batching to fill up.
HANDLER_THREADS = 64

log = logging.getLogger("mmfuse.serving")
# TensorFlow's error codes are the canonical status codes gRPC uses.
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
Arrays = Dict[str, np.ndarray]


class RequestError(Exception):
    """A request the server refuses, with the gRPC status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def graph_error_text(error: Exception) -> str:
    """What went wrong, without the graph-execution preamble and node names
    TensorFlow wraps around an op's message."""
    text = error.message if isinstance(error, tf.errors.OpError) else str(error)
    noise = ("Graph execution error:", "<stack traces unavailable>", "Detected at node", "[[{{node")
    kept = [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith(noise)]
    return " ".join(kept) or f"{type(error).__name__}: {text}"


def _ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """tf.make_ndarray, with a fast path for the strings and scalars every
    request carries (tf.make_ndarray costs tens of microseconds each)."""
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if proto.dtype == types_pb2.DT_STRING and len(proto.string_val) == math.prod(shape):
        return np.array(list(proto.string_val), dtype=object).reshape(shape)
    if proto.dtype == types_pb2.DT_INT32 and not shape and len(proto.int_val) == 1:
        return np.array(proto.int_val[0], np.int32)
    return tf.make_ndarray(proto)


def _tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """tf.make_tensor_proto for the string and numeric arrays signatures
    return, a few times faster."""
    if array.dtype == object:
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=array.ravel().tolist())
    else:
        proto = tensor_pb2.TensorProto(dtype=tf.as_dtype(array.dtype).as_datatype_enum,
                                       tensor_content=np.ascontiguousarray(array).tobytes())
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=size)
                                  for size in array.shape)
    return proto


def _shape_text(shape: tf.TensorShape) -> str:
    return "[" + ", ".join(str(size) for size in shape.as_list()) + "]"


class Signature:
    """One signature of a loaded version: validates a request's inputs against
    the signature's own input specs, and runs it on numpy arrays."""

    def __init__(self, name: str, signature_def, session: tf.compat.v1.Session):
        self.name = name
        self.inputs: Dict[str, tf.TensorSpec] = {
            key: tf.TensorSpec(tf.TensorShape(info.tensor_shape), tf.as_dtype(info.dtype))
            for key, info in signature_def.inputs.items()}
        self.outputs = sorted(signature_def.outputs)
        self._input_order = sorted(self.inputs)
        # What TF Serving does: Session::Run from the SignatureDef's tensor
        # names. A callable skips the feed and fetch bookkeeping of each
        # run; both together cost about half of what calling the restored
        # tf.function did (1.3 against 2.5 ms for a 44k-item `recommend`).
        self._run = session.make_callable(
            [signature_def.outputs[key].name for key in self.outputs],
            [signature_def.inputs[key].name for key in self._input_order])

    def __call__(self, inputs: Arrays) -> Arrays:
        return dict(zip(self.outputs, self._run(*[inputs[name] for name in self._input_order])))

    def describe(self) -> str:
        expected = ", ".join(f"{name} ({spec.dtype.name}, shape {_shape_text(spec.shape)})"
                             for name, spec in sorted(self.inputs.items()))
        return f'Signature "{self.name}" takes {expected}.'

    def prepare(self, request_inputs, limits: ServingSettings = ServingSettings()
                ) -> Tuple[Arrays, int]:
        """The request's TensorProtos -> numpy arrays, defaults filled in, and
        the number of rows; RequestError(INVALID_ARGUMENT) naming what this
        signature expects when they do not fit, or what limit they exceed.
        Declared shapes are checked before anything is materialised."""
        extra = sorted(set(request_inputs) - set(self.inputs))
        if extra:
            raise self._invalid(f"input tensor alias not found in signature: {', '.join(extra)}.")
        max_rows = (min(limits.max_encoder_rows, MAX_REQUEST_ROWS)
                    if self.name in ENCODER_SIGNATURES else MAX_REQUEST_ROWS)
        arrays = {name: self._parse(name, proto, max_rows) for name, proto in request_inputs.items()}
        self._check_contents(arrays, limits)
        self._fill_defaults(arrays)
        missing = sorted(set(self.inputs) - set(arrays))
        if missing:
            raise self._invalid(f"missing input: {', '.join(missing)}.")
        rows = {name: len(value) for name, value in arrays.items() if value.ndim}
        if len(set(rows.values())) > 1:
            raise self._invalid("the inputs' first dimensions (batch sizes) differ: "
                                + ", ".join(f"{name} {size}" for name, size in sorted(rows.items()))
                                + ".")
        if "k" in arrays and arrays["k"].ndim == 0 and arrays["k"] > MAX_K:
            raise self._invalid(f"k may be at most {MAX_K}, not {arrays['k']}.")
        if "k" in arrays and arrays["k"].ndim == 0 and arrays["k"] < 1:
            raise self._invalid(f"k must be at least 1, not {arrays['k']}.")
        return arrays, next(iter(rows.values()), 1)

    def output_names(self, output_filter: Iterable[str]) -> list:
        chosen = list(output_filter)
        for name in chosen:
            if name not in self.outputs:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"output tensor alias not found in signature: {name}. Outputs "
                                   f"expected to be in the set {{{','.join(self.outputs)}}}.")
        if len(set(chosen)) != len(chosen):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"duplicate output tensor alias in output_filter: {chosen}")
        return chosen or self.outputs

    def batch_key(self, inputs: Arrays) -> tuple:
        """Requests with equal keys can be answered by one call: same
        signature of the same version, same scalar inputs (k)."""
        return (self,) + tuple((name, value.item() if value.ndim == 0 else value.shape[1:])
                               for name, value in sorted(inputs.items()))

    def warm_up(self) -> None:
        """One call with an empty-string / one-valued row, so the first real
        request does not pay for graph optimisation."""
        self({name: np.full([1 if size is None else size for size in spec.shape.as_list()],
                            b"" if spec.dtype == tf.string else 1, spec.dtype.as_numpy_dtype)
              for name, spec in self.inputs.items()})

    def _parse(self, name: str, proto, max_rows: int) -> np.ndarray:
        spec = self.inputs[name]
        try:
            dtype = tf.dtypes.as_dtype(proto.dtype)
        except TypeError:
            dtype = None
        if dtype != spec.dtype:
            raise self._invalid(f"input {name} has dtype {dtype.name if dtype else proto.dtype}, "
                                f"expected {spec.dtype.name}.")
        sizes = [dim.size for dim in proto.tensor_shape.dim]
        if any(size < 0 for size in sizes):
            raise self._invalid(f"input {name} has shape {sizes}: a dimension may not be "
                                "negative.")
        shape = tf.TensorShape(sizes)
        if proto.tensor_shape.unknown_rank or not spec.shape.is_compatible_with(shape):
            raise self._invalid(f"input {name} has shape {_shape_text(shape)}, expected "
                                f"{_shape_text(spec.shape)}.")
        if sizes and sizes[0] > max_rows:
            setting = " (serving.max_encoder_rows)" if max_rows < MAX_REQUEST_ROWS else ""
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f'signature "{self.name}" takes at most {max_rows} rows a '
                               f"request{setting}, not {sizes[0]}")
        if math.prod(sizes) > MAX_INPUT_ELEMENTS:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name} declares {math.prod(sizes)} elements, more than "
                               f"the {MAX_INPUT_ELEMENTS} one input may have")
        try:
            return _ndarray(proto)
        except (ValueError, TypeError) as error:
            raise self._invalid(f"tensor parsing error: {name}: {error}.") from None

    def _check_contents(self, arrays: Arrays, limits: ServingSettings) -> None:
        """Text lengths, and image sizes from their headers (before the graph decodes them)."""
        for name, value in arrays.items():
            if value.dtype != object:
                continue
            if name in IMAGE_INPUTS:
                for image in value.ravel():
                    self._check_image(name, image, limits.max_image_pixels)
            elif name not in UNLIMITED_TEXT_INPUTS:
                longest = max((len(text) for text in value.ravel()), default=0)
                if longest > limits.max_text_bytes:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"input {name} has a value of {longest} bytes, more than "
                                       f"the {limits.max_text_bytes} allowed "
                                       "(serving.max_text_bytes)")

    @staticmethod
    def _check_image(name: str, image: bytes, max_pixels: int) -> None:
        try:
            kind, width, height = image_size(image)
        except ImageHeaderError as error:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name}: {error}") from None
        frames = frame_count(image)
        if width * height * frames > max_pixels:
            of_frames = f" in {frames} frames" if frames > 1 else ""
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name} is a {kind} of {width}x{height} pixels{of_frames}, "
                               f"more than the {max_pixels} allowed (serving.max_image_pixels)")

    def _fill_defaults(self, arrays: Arrays) -> None:
        if "k" in self.inputs and "k" not in arrays:
            arrays["k"] = np.array(DEFAULT_K, self.inputs["k"].dtype.as_numpy_dtype)
        if self.name == "search" and "user_id" not in arrays and "query" in arrays:
            arrays["user_id"] = np.full(arrays["query"].shape, b"", object)

    def _invalid(self, problem: str) -> RequestError:
        return RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{problem} {self.describe()}")


def session_config(intra_op_threads: int = 0, inter_op_threads: int = 0) -> tf.compat.v1.ConfigProto:
    """Threads for running a version's graph, as TF Serving's
    --tensorflow_{intra,inter}_op_parallelism set them (0: TensorFlow's
    choice), with one difference: inter-op 0 runs a batch's ops in the batch
    thread itself, not in a pool. On two cores, handing each op to a pool
    thread and back cost up to 40% of `recommend`'s throughput (44k items,
    8 clients), and the run-to-run spread was wide.
    """
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra_op_threads,
                                      inter_op_parallelism_threads=inter_op_threads or -1)
    # Grappler's memory optimizer (GPU swapping and recomputation, nothing to
    # do on CPU inference) prints a PredictCost warning for every new subgraph.
    config.graph_options.rewrite_options.memory_optimization = (
        rewriter_config_pb2.RewriterConfig.NO_MEM_OPT)
    return config


class Servable:
    """One loaded and warmed-up version of the model."""

    def __init__(self, name: str, version: int, path: str,
                 config: Optional[tf.compat.v1.ConfigProto] = None):
        self.name = name
        self.version = version
        self.path = path
        # Closed when the last request holding this version lets it go.
        self._session = tf.compat.v1.Session(graph=tf.Graph(), config=config or session_config())
        with self._session.graph.as_default():
            self.signature_defs = tf.compat.v1.saved_model.loader.load(
                self._session, [tf.saved_model.SERVING], path).signature_def
        self.signatures = {key: Signature(key, signature_def, self._session)
                           for key, signature_def in self.signature_defs.items()}
        for signature in self.signatures.values():
            try:
                signature.warm_up()
            except tf.errors.InvalidArgumentError:
                # The graph ran and refused the made-up input (serving_default
                # wants an example that names an item): warm enough. Any other
                # error means the version cannot serve.
                pass

    def signature(self, name: str) -> Signature:
        if name not in self.signatures:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{name}" not found. This model has: '
                               f'{", ".join(sorted(self.signatures))}.')
        return self.signatures[name]


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def release_memory() -> None:
    """Gives back what replaced versions held: a graph is a web of reference
    cycles (freed by gc, not when the last request lets go), and glibc keeps
    freed heap pages in its arenas unless asked to return them."""
    gc.collect()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


class VersionWatcher:
    """Keeps `servable` on the newest version under `model_base` that loads."""

    def __init__(self, model_base: str, model_name: str,
                 config: Optional[tf.compat.v1.ConfigProto] = None):
        self.model_base = model_base
        self.model_name = model_name
        self.config = config
        self.servable: Optional[Servable] = None
        self._failed: Dict[int, tuple] = {}
        self._incomplete = set()
        # Replaced versions, until the last request holding one has let it go.
        self._retired: List[weakref.ref] = []

    def poll(self) -> bool:
        """Loads a version newer than the served one, if there is one that
        loads; True when it switched."""
        if any(retired() is None for retired in self._retired):
            self._retired = [retired for retired in self._retired if retired() is not None]
            release_memory()
        try:
            found = model_store.version_dirs(self.model_base)
        except FileNotFoundError as error:
            log.warning("%s", error)
            return False
        served = self.servable.version if self.servable else -1
        failed = False
        for version in reversed(found):
            if version <= served:
                break
            path = os.path.join(self.model_base, str(version))
            if model_store.is_unfinished_push(path):
                if version not in self._incomplete:
                    log.warning("version %d is an unfinished push (%s, no %s): not loaded; if no "
                                "push is running, its Pusher was stopped and the next push "
                                "removes it", version, model_store.PARTIAL_MANIFEST_FILE,
                                model_store.MANIFEST_FILE)
                    self._incomplete.add(version)
                continue
            if not tf.io.gfile.exists(os.path.join(path, model_store.SAVED_MODEL_FILE)):
                if version not in self._incomplete:
                    log.info("version %d is not complete yet (no %s)", version,
                             model_store.SAVED_MODEL_FILE)
                    self._incomplete.add(version)
                continue
            # Retried only once its files have changed (a copy still being written).
            state = files_state(path)
            if self._failed.get(version) == state:
                continue
            try:
                if not model_store.check_manifest(path):
                    log.warning("version %d has no %s (not pushed by mmfuse): loading it without "
                                "checking its files", version, model_store.MANIFEST_FILE)
                servable = Servable(self.model_name, version, path, self.config)
            except Exception as error:  # noqa: BLE001 - any failure: keep what is served
                log.error("version %d at %s does not load (%s; tried again when its files "
                          "change): %s", version, path,
                          f"still serving version {served}" if served >= 0 else "nothing served",
                          graph_error_text(error))
                self._failed[version] = state
                failed = True
                continue
            self._failed.pop(version, None)
            if self.servable is not None:
                self._retired.append(weakref.ref(self.servable))
            self.servable = servable
            del servable
            release_memory()
            return True
        if failed:  # what the failed load had built
            release_memory()
        return False

    def find(self, model_spec) -> Servable:
        """The servable a request's ModelSpec names, or NOT_FOUND as TF Serving says it."""
        if model_spec.WhichOneof("version_choice") == "version_label":
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Unrecognized servable version label: {model_spec.version_label}")
        servable = self.servable
        wanted = model_spec.version.value if model_spec.HasField("version") else None
        if (servable is None or model_spec.name != servable.name
                or wanted not in (None, servable.version)):
            asked = (f"Latest({model_spec.name})" if wanted is None
                     else f"Specific({model_spec.name}, {wanted})")
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: {asked}")
        return servable


def answer_status(error: Exception, method: str) -> Tuple[grpc.StatusCode, str]:
    """The status TF Serving answers for what went wrong with a request (the
    server itself never fails because of one); `method` names the call in the
    log. Call it in the `except` block: an unexpected error is logged with its
    traceback."""
    if isinstance(error, RequestError):
        return error.code, error.message
    if isinstance(error, tf.errors.OpError):
        # As TF Serving: the graph's own status (INVALID_ARGUMENT for an
        # image that does not decode, RESOURCE_EXHAUSTED for memory...).
        code, message = _STATUS_CODES[error.error_code], graph_error_text(error)
        if code != grpc.StatusCode.INVALID_ARGUMENT:
            log.error("%s failed: %s", method, message)
        return code, message
    if isinstance(error, QueueFullError):
        return grpc.StatusCode.UNAVAILABLE, str(error)
    log.exception("%s failed", method)
    return grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"


def _answers_errors(method):
    """Turns what a request can go wrong with into a gRPC status."""

    @functools.wraps(method)
    def handler(self, request, context):
        try:
            return method(self, request)
        except Exception as error:  # noqa: BLE001 - every failure is answered as a status
            code, message = answer_status(error, method.__name__)
        # gRPC carries the message in a header, which has a size limit.
        context.abort(code, message[:2000])

    return handler


class ServedModel:
    """What the gRPC API (here) and the REST API (serving/rest.py) answer:
    Predict, GetModelMetadata and GetModelStatus on the watcher's served
    version, each request checked by Signature.prepare and batched."""

    def __init__(self, watcher: VersionWatcher, batcher: QueuePerName,
                 limits: ServingSettings = ServingSettings()):
        self.watcher = watcher
        self._batcher = batcher
        self._limits = limits

    def run(self, signature: Signature, request_inputs) -> Arrays:
        """The signature's outputs for a request's TensorProtos. The caller
        holds the signature's Servable meanwhile, so that its version stays
        loaded."""
        inputs, rows = signature.prepare(request_inputs, self._limits)
        return self._batcher.run(signature.name, signature.batch_key(inputs), signature, inputs,
                                 rows)

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        servable = self.watcher.find(request.model_spec)
        signature = servable.signature(request.model_spec.signature_name or DEFAULT_SIGNATURE)
        outputs = signature.output_names(request.output_filter)
        answer = self.run(signature, request.inputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature.name
        for name in outputs:
            response.outputs[name].CopyFrom(_tensor_proto(answer[name]))
        return response

    def metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                 ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        servable = self.watcher.find(request.model_spec)
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"metadata_field must be exactly ['signature_def'], not {fields}")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in servable.signature_defs.items():
            signature_defs.signature_def[key].CopyFrom(signature_def)
        response.metadata["signature_def"].Pack(signature_defs)
        return response

    def status(self, request: get_model_status_pb2.GetModelStatusRequest
               ) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        servable = self.watcher.servable
        if servable is None or spec.name != servable.name:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {spec.name}")
        if spec.HasField("version") and spec.version.value != servable.version:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find version {spec.version.value} of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = servable.version
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        status.status.SetInParent()  # error_code OK, as TF Serving sends it
        return response


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify, Regress and MultiInference are
    left to the base class, which answers UNIMPLEMENTED."""

    def __init__(self, model: ServedModel):
        self._model = model

    @_answers_errors
    def Predict(self, request):
        return self._model.predict(request)

    @_answers_errors
    def GetModelMetadata(self, request):
        return self._model.metadata(request)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus; HandleReloadConfigRequest is left UNIMPLEMENTED (the
    served model follows its base directory instead)."""

    def __init__(self, model: ServedModel):
        self._model = model

    @_answers_errors
    def GetModelStatus(self, request):
        return self._model.status(request)


def server_credentials(settings: ServingSettings) -> Optional[grpc.ServerCredentials]:
    """TLS credentials from serving.tls_* (what TF Serving's --ssl_config_file
    holds), or None for plaintext; ValueError or OSError naming the problem."""
    if not (settings.tls_cert or settings.tls_key or settings.tls_client_ca):
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ValueError("TLS needs both serving.tls_cert and serving.tls_key")
    key, cert = _read_pem(settings.tls_key), _read_pem(settings.tls_cert)
    client_ca = _read_pem(settings.tls_client_ca) if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def _read_pem(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise OSError(f"cannot read {path}: {error.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{path} is not PEM (no -----BEGIN line)")
    return data


class ModelServer:
    """The gRPC server over one model base directory, with its version poller,
    and beside it the REST API when `rest_port` is set (serving/rest.py).

    `settings` are serving's (mmfuse/config.py); keyword overrides replace
    single ones, e.g. ModelServer(base, port=0)."""

    def __init__(self, model_base: str, settings: Optional[ServingSettings] = None, *,
                 model_name: Optional[str] = None, batching_parameters=None,
                 config: Optional[tf.compat.v1.ConfigProto] = None,
                 announce: Callable[[str], None] = functools.partial(print, flush=True),
                 **overrides):
        settings = dataclasses.replace(settings or ServingSettings(), **overrides)
        if settings.poll_seconds <= 0 or settings.max_request_bytes <= 0:
            raise ValueError("the poll interval and the request size limit must be positive")
        self.settings = settings
        self.model_base = model_base
        self.model_name = model_name or os.path.basename(os.path.normpath(model_base))
        self.host = settings.host
        self.port = settings.port
        self.poll_seconds = settings.poll_seconds
        self.announce = announce
        self.rest_port = settings.rest_port
        if self.rest_port is not None and (settings.tls_cert or settings.tls_key
                                           or settings.tls_client_ca):
            raise ValueError("serving.rest_port cannot be combined with serving.tls_*: the REST "
                             "API is plaintext, as TF Serving's is")
        self._rest = None
        self._credentials = server_credentials(settings)
        self.watcher = VersionWatcher(
            model_base, self.model_name,
            config or session_config(settings.intra_op_threads, settings.inter_op_threads))
        if batching_parameters is None:
            batching_parameters = read_batching_parameters(
                settings.batching_parameters_file or DEFAULT_PARAMETERS_FILE)
        self.batcher = QueuePerName(batching_parameters)
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=HANDLER_THREADS, thread_name_prefix="grpc"),
            options=[("grpc.max_receive_message_length", settings.max_request_bytes)])
        self.model = ServedModel(self.watcher, self.batcher, settings)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.model), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.model), self._server)
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="version-poller", daemon=True)

    @property
    def address(self) -> str:
        return _address(self.host, self.port)

    def start(self) -> None:
        """Loads the newest version, then listens (port 0: a free port)."""
        if not tf.io.gfile.isdir(self.model_base):
            raise FileNotFoundError(f"model base directory {self.model_base} does not exist")
        self.watcher.poll()
        try:
            if self._credentials is None:
                self.port = self._server.add_insecure_port(self.address)
            else:
                self.port = self._server.add_secure_port(self.address, self._credentials)
        except RuntimeError as error:
            raise OSError(f"cannot listen on {self.address}: {error}") from None
        self._server.start()
        if self.rest_port is not None:
            self._start_rest()
        if self.watcher.servable is None:
            self.announce(f"no model version under {self.model_base} loads yet; waiting for one "
                          f"(listening on {self._listening()})")
        else:
            self._announce_serving()
        self._poller.start()

    def stop(self, grace: float = 5.0) -> None:
        """Stops accepting requests, lets those in flight finish (up to `grace` s)."""
        self._stopping.set()
        stopped = self._server.stop(grace)
        if self._rest is not None:
            self._rest.stop(grace)
        stopped.wait()
        self.batcher.stop()

    def _start_rest(self) -> None:
        from serving.rest import RestServer  # rest.py builds on this module

        try:
            self._rest = RestServer(self.model, self.host, self.rest_port,
                                    self.settings.max_request_bytes)
        except OSError as error:
            self._server.stop(0)
            raise OSError(f"cannot listen on {_address(self.host, self.rest_port)} for REST: "
                          f"{error.strerror or error}") from None
        self.rest_port = self._rest.port
        self._rest.start()

    def _listening(self) -> str:
        """Where it listens, as the announcements say it."""
        transport = ""
        if self._credentials is not None:
            transport = " with mutual TLS" if self.settings.tls_client_ca else " with TLS"
        rest = "" if self._rest is None else f", REST on {_address(self.host, self.rest_port)}"
        return f"{self.address}{transport}{rest}"

    def _announce_serving(self, previous: Optional[int] = None) -> None:
        servable = self.watcher.servable
        was = "" if previous is None else f" (was version {previous})"
        self.announce(f"serving model {servable.name} version {servable.version} on "
                      f"{self._listening()}{was}")

    def _poll(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            previous = self.watcher.servable.version if self.watcher.servable else None
            try:
                switched = self.watcher.poll()
            except Exception:  # noqa: BLE001 - a bad poll must not end polling
                log.exception("polling %s failed", self.model_base)
                continue
            if switched:
                self._announce_serving(previous)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(model_base: str, settings: ServingSettings, model_name: Optional[str] = None) -> None:
    """Serves until SIGTERM or SIGINT, then drains the requests in flight."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = ModelServer(model_base, settings, model_name=model_name)
    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())
    server.start()
    # A timed wait, so that the main thread regularly gets to run the handlers.
    while not stop.wait(1.0):
        pass
    server.announce(f"stopping: finishing the requests in flight on {server.address}")
    server.stop()

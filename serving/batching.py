"""Server-side batching, as TF Serving's `--enable_batching` does it.

Concurrent requests for the same signature (and the same scalar inputs, such
as `k`) are merged into one call of the model and the answer is split back
into rows. Every call makes one pass over the whole catalogue (and, for text
and images, runs the Transform graph), so merging eight requests costs little
more than one: batching is what lets two CPU cores answer hundreds of
questions a second.

The parameters are TF Serving's `BatchingParameters`, read from the same text
file that `tensorflow_model_server --batching_parameters_file` reads
(serving/deploy/batching.config), with TF Serving's scheduling rule: a free
batch thread takes the oldest open batch once it is full or has waited
`batch_timeout_micros`; while all threads are busy, new requests keep joining
the open batch.
"""
import collections
import os
import threading
import time
from concurrent.futures import Future
from typing import Callable, Dict, Hashable, List

import numpy as np
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

DEFAULT_PARAMETERS_FILE = os.path.join(os.path.dirname(__file__), "deploy", "batching.config")

Arrays = Dict[str, np.ndarray]


def _batching_parameters_class():
    """tensorflow.serving.BatchingParameters (session_bundle_config.proto),
    declared here because the tensorflow-serving-api wheel leaves that proto
    out. Only the fields this batcher honours are declared, so a file using
    another one is refused rather than silently half-applied."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    int64_value = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    fields = [
        descriptor_pb2.FieldDescriptorProto(name=name, number=number, type=int64_value,
                                            type_name=".google.protobuf.Int64Value")
        for number, name in enumerate(
            ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"),
            start=1)
    ]
    pool.Add(descriptor_pb2.FileDescriptorProto(
        name="mmfuse/batching_parameters.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
        message_type=[descriptor_pb2.DescriptorProto(name="BatchingParameters", field=fields)]))
    descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


BatchingParameters = _batching_parameters_class()


def read_batching_parameters(path: str):
    """The BatchingParameters text proto at `path`; a clear ValueError if it
    does not parse or sets a value that cannot work."""
    try:
        with open(path) as handle:
            parameters = text_format.Parse(handle.read(), BatchingParameters())
    except OSError as error:
        raise ValueError(f"cannot read batching parameters {path}: {error.strerror}") from None
    except text_format.ParseError as error:
        raise ValueError(f"batching parameters {path}: {error}") from None
    for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
        if parameters.HasField(name) and getattr(parameters, name).value < 1:
            raise ValueError(f"batching parameters {path}: {name} must be at least 1")
    if parameters.batch_timeout_micros.value < 0:
        raise ValueError(f"batching parameters {path}: batch_timeout_micros must not be negative")
    return parameters


class QueueFullError(Exception):
    """More batches are waiting than max_enqueued_batches allows."""


class _Batch:
    def __init__(self, key: Hashable, run: Callable[[Arrays], Arrays]):
        self.key = key
        self.run = run
        self.tasks: List[Arrays] = []
        self.task_rows: List[int] = []
        self.futures: List[Future] = []
        self.rows = 0
        self.opened = time.monotonic()

    def add(self, inputs: Arrays, rows: int) -> Future:
        future = Future()
        self.tasks.append(inputs)
        self.task_rows.append(rows)
        self.futures.append(future)
        self.rows += rows
        return future


class Batcher:
    """Runs `run(inputs)` calls on `num_batch_threads` threads, merging the
    calls submitted under one key along their first dimension.

    Inputs of rank 0 are not merged: callers put their values in the key, so
    that only requests that agree on them share a batch."""

    def __init__(self, parameters=None, name: str = "batch"):
        parameters = parameters if parameters is not None else BatchingParameters()
        # Unset fields take TF Serving's defaults.
        self.max_batch_size = parameters.max_batch_size.value if parameters.HasField(
            "max_batch_size") else 1000
        self.timeout = parameters.batch_timeout_micros.value / 1e6
        self.max_enqueued_batches = parameters.max_enqueued_batches.value if parameters.HasField(
            "max_enqueued_batches") else 10
        threads = parameters.num_batch_threads.value if parameters.HasField(
            "num_batch_threads") else os.cpu_count()
        self._open: Dict[Hashable, _Batch] = {}
        self._full = collections.deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{index}", daemon=True)
                         for index in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, key: Hashable, run: Callable[[Arrays], Arrays], inputs: Arrays,
               rows: int) -> Future:
        """Queues one request of `rows` rows; the future gives its own rows of
        the answer, or the exception its batch raised."""
        with self._changed:
            if self._stopping:
                raise RuntimeError("the batcher is stopped")
            batch = self._open.get(key)
            if batch is not None and batch.rows + rows > self.max_batch_size:
                self._full.append(self._open.pop(key))
                batch = None
            if batch is None:
                if len(self._open) + len(self._full) >= self.max_enqueued_batches:
                    raise QueueFullError(
                        f"{len(self._open) + len(self._full)} batches are already waiting "
                        f"(max_enqueued_batches {self.max_enqueued_batches})")
                batch = self._open[key] = _Batch(key, run)
            future = batch.add(inputs, rows)
            if batch.rows >= self.max_batch_size:
                self._full.append(self._open.pop(key))
            self._changed.notify()
        return future

    def run(self, key: Hashable, run: Callable[[Arrays], Arrays], inputs: Arrays,
            rows: int) -> Arrays:
        """Answers one request of any size: one larger than max_batch_size is
        cut into batch-sized parts (as TF Serving's large batch splitting
        does), so that no call of the model holds more rows than that, and
        its memory stays bounded whatever the catalogue."""
        if rows <= self.max_batch_size:
            return self.submit(key, run, inputs, rows).result()
        parts = []
        for start in range(0, rows, self.max_batch_size):
            part = {name: value[start:start + self.max_batch_size] if value.ndim else value
                    for name, value in inputs.items()}
            parts.append(self.submit(key, run, part, min(self.max_batch_size, rows - start)))
        answers = [part.result() for part in parts]
        return {name: np.concatenate([answer[name] for answer in answers]) for name in answers[0]}

    def stop(self) -> None:
        """Finishes the queued batches, then ends the threads."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()

    def _next_batch(self):
        """The batch a free thread should run now, or how long to wait for one."""
        if self._full:
            return self._full.popleft(), None
        if not self._open:
            return None, None
        oldest = min(self._open.values(), key=lambda batch: batch.opened)
        wait = oldest.opened + self.timeout - time.monotonic()
        if wait <= 0 or self._stopping:
            return self._open.pop(oldest.key), None
        return None, wait

    def _work(self) -> None:
        while True:
            with self._changed:
                batch, wait = self._next_batch()
                while batch is None:
                    if self._stopping:
                        return
                    self._changed.wait(wait)
                    batch, wait = self._next_batch()
            _run_batch(batch)


class QueuePerName:
    """One Batcher, with its own threads, per queue name (a signature's):
    a cheap `recommend` never waits behind a batch of `image_search`es, as it
    did in one shared queue (5.1 s behind a 128-image request). Each queue
    takes the same parameters; the model's ops share the intra-op threads."""

    def __init__(self, parameters=None):
        self._parameters = parameters
        self._batchers: Dict[str, Batcher] = {}
        self._lock = threading.Lock()
        self._stopped = False

    def batcher(self, name: str) -> Batcher:
        with self._lock:
            if self._stopped:
                raise RuntimeError("the batcher is stopped")
            if name not in self._batchers:
                self._batchers[name] = Batcher(self._parameters, name=f"batch-{name}")
            return self._batchers[name]

    def run(self, name: str, key: Hashable, run: Callable[[Arrays], Arrays], inputs: Arrays,
            rows: int) -> Arrays:
        return self.batcher(name).run(key, run, inputs, rows)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            batchers = list(self._batchers.values())
        for batcher in batchers:
            batcher.stop()


def _run_batch(batch: _Batch) -> None:
    if len(batch.tasks) == 1:
        _settle(batch.futures[0], batch.run, batch.tasks[0])
        return
    merged = {name: (np.concatenate([task[name] for task in batch.tasks])
                     if batch.tasks[0][name].ndim else batch.tasks[0][name])
              for name in batch.tasks[0]}
    try:
        outputs = batch.run(merged)
    except tf.errors.InvalidArgumentError:
        # One bad request (an image that does not decode) must not fail the
        # others it was merged with: answer each alone, so the error lands
        # on the request that caused it.
        for future, task in zip(batch.futures, batch.tasks):
            _settle(future, batch.run, task)
        return
    except Exception as error:  # noqa: BLE001 - handed to every waiting request
        for future in batch.futures:
            future.set_exception(error)
        return
    start = 0
    for future, rows in zip(batch.futures, batch.task_rows):
        future.set_result({name: value[start:start + rows] for name, value in outputs.items()})
        start += rows


def _settle(future: Future, run: Callable[[Arrays], Arrays], inputs: Arrays) -> None:
    try:
        future.set_result(run(inputs))
    except Exception as error:  # noqa: BLE001 - handed to the waiting request
        future.set_exception(error)

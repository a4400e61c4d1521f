"""Latency and throughput of `mmfuse serve` over gRPC, per signature and
catalogue size.

Starts `mmfuse serve` as a subprocess on a pushed model and drives it with
`--clients` concurrent closed-loop clients (threads, each with its own
channel, each sending its next request as soon as the last is answered) for
`--seconds` per signature after a warm-up, then prints p50/p95/p99 latency and
queries per second. Besides the model as pushed, it serves copies with larger
catalogues (`--sizes`): the same graph and signatures, the model's own items
first and then random unit embeddings up to the size (the answers are
meaningless, the cost is real), to show how the cost grows with the catalogue.

    .venv/bin/python -m benchmarks.serving --model-base runs/sample/serving/mmfuse \\
        [--sizes pushed,44000,1000000] [--results benchmarks/RESULTS.md]

The clients run on the same machine as the server and take part of its CPU.
The table, with its command, date, commit and machine, replaces the `serving`
section of `--results`.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Set

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from benchmarks import results as results_file
from serving import client, model_store

SIGNATURES = ("recommend", "search", "similar_items", "image_search")
QUERIES = ("red dress", "running shoes for men", "wooden table", "blue cotton shirt",
           "leather bag", "summer hat", "kitchen knife set", "warm winter jacket")
SERVER_START_TIMEOUT_S = 600


@dataclass
class Result:
    catalogue_size: int
    signature: str
    latencies_ms: np.ndarray
    errors: int
    seconds: float
    # CPU seconds the server and the clients spent while measuring.
    server_cpu_s: float = float("nan")
    client_cpu_s: float = float("nan")

    @property
    def qps(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def cpu_ms_per_answer(self) -> float:
        """Server and client CPU per answer: what the machine's cores can
        carry when nothing else runs (cores * 1000 / this = answers a second)."""
        return (self.server_cpu_s + self.client_cpu_s) * 1000 / max(len(self.latencies_ms), 1)

    def percentile(self, q: float) -> float:
        if not len(self.latencies_ms):
            return float("nan")
        return float(np.percentile(self.latencies_ms, q))


def _sizes(text: str) -> List[Optional[int]]:
    """'pushed,44000,1000000' -> [None, 44000, 1000000]; None is the model as pushed."""
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if part == "pushed":
            sizes.append(None)
        elif part.isdigit() and int(part) > 1:
            sizes.append(int(part))
        else:
            raise argparse.ArgumentTypeError(
                f"--sizes takes 'pushed' and item counts above 1, comma-separated, not {part!r}")
    return sizes


def _signatures(text: str) -> List[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SIGNATURES))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"--signatures takes a subset of {','.join(SIGNATURES)}")
    return chosen


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model-base", default="runs/sample/serving/mmfuse",
                        help="TF Serving model base directory of a pushed model")
    parser.add_argument("--sizes", type=_sizes, default=_sizes("pushed,44000,1000000"),
                        help="catalogue sizes: 'pushed' (as is) and item counts")
    parser.add_argument("--signatures", type=_signatures, default=list(SIGNATURES))
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per signature")
    parser.add_argument("--warm-up-seconds", type=float, default=2.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--serve-options", default="",
                        help="more options for mmfuse serve, e.g. '--batching-parameters-file F "
                             "--tensorflow-intra-op-parallelism 2'")
    parser.add_argument("--users", type=int, default=200,
                        help="recommend/search ask for users u0001..uNNNN")
    parser.add_argument("--results", default=results_file.DEFAULT_RESULTS, metavar="FILE",
                        help="Markdown file whose serving section is replaced by the table "
                             "(default: benchmarks/RESULTS.md)")
    return parser


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _unit_rows(count: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def grown_model_base(version_dir: str, item_ids: np.ndarray, candidates: np.ndarray, size: int,
                     workdir: str) -> str:
    """A model base holding the model at `version_dir` with a catalogue of
    `size` rows: its own rows (`item_ids`, `candidates`) first, random unit
    embeddings after them."""
    if size < len(candidates):
        raise ValueError(f"the pushed catalogue has {len(candidates)} rows; sizes below it "
                         f"are not a sweep ({size})")
    extra = size - len(candidates)
    base = os.path.join(workdir, f"catalogue-{size}", "mmfuse")
    model_store.replace_catalogue(
        version_dir, os.path.join(base, os.path.basename(version_dir)),
        np.concatenate([item_ids, np.array([b"bench%08d" % index for index in range(extra)],
                                           dtype=object)]),
        np.concatenate([candidates, _unit_rows(extra, candidates.shape[1], seed=size)]))
    return base


def catalogue_rows(version_dir: str) -> int:
    """Rows of a version's catalogue (row 0, "unknown", included), read from
    its checkpoint without loading the model."""
    shapes = dict(tf.train.list_variables(os.path.join(version_dir, "variables", "variables")))
    return shapes["candidates/.ATTRIBUTES/VARIABLE_VALUE"][0]


class ServerProcess:
    """`mmfuse serve` in a subprocess, ready once GetModelStatus says AVAILABLE."""

    def __init__(self, model_base: str, options: Sequence[str] = ()):
        self.port = _free_port()
        command = [sys.executable, "-m", "mmfuse", "serve", "--model-base", model_base,
                   "--port", str(self.port), *options]
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.address = f"127.0.0.1:{self.port}"

    def wait_until_available(self, model_name: str) -> int:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        with grpc.insecure_channel(self.address) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = model_name
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self.log.seek(0)
                    raise RuntimeError("mmfuse serve ended:\n" + self.log.read().decode()[-3000:])
                try:
                    return stub.GetModelStatus(request, timeout=1).model_version_status[0].version
                except grpc.RpcError:
                    time.sleep(0.5)
        raise TimeoutError(f"mmfuse serve did not become ready in {SERVER_START_TIMEOUT_S} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def _test_images(count: int) -> List[bytes]:
    """Small JPEGs of coloured noise: what decoding and the image encoder cost."""
    rng = np.random.default_rng(0)
    return [tf.io.encode_jpeg(rng.integers(0, 256, (320, 320, 3), dtype=np.uint8)).numpy()
            for _ in range(count)]


def requests_for(signature: str, args, item_ids: Sequence[str],
                 model_name: str = client.DEFAULT_MODEL_NAME) -> List[predict_pb2.PredictRequest]:
    """A rotation of one-row requests, built up front so that the clients
    spend their time waiting for the server, not building protos."""
    users = [f"u{index:04d}" for index in range(1, args.users + 1)]
    if signature == "recommend":
        questions = [{"user": user} for user in users]
    elif signature == "search":
        questions = [{"text": query, "user": user if index % 2 else None}
                     for index, (query, user) in enumerate(zip(QUERIES * len(users), users))]
    elif signature == "similar_items":
        questions = [{"item": item} for item in item_ids]
    else:
        questions = [{"image": image} for image in _test_images(8)]
    requests = []
    for asked in questions:
        name, inputs = client.question(**asked)
        requests.append(client.predict_request(name, inputs, args.k, model_name))
    return requests


def drive(address: str, requests: List[predict_pb2.PredictRequest], clients: int,
          seconds: float) -> tuple:
    """Closed-loop load from `clients` threads for `seconds`: (latencies in
    ms, errors, measured seconds)."""
    stop_at = time.perf_counter() + seconds
    latencies: List[List[float]] = [[] for _ in range(clients)]
    errors = [0] * clients

    def run(index: int) -> None:
        with grpc.insecure_channel(address) as channel:
            predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
            position = index
            while True:
                started = time.perf_counter()
                if started >= stop_at:
                    return
                try:
                    predict(requests[position % len(requests)], timeout=30)
                    latencies[index].append((time.perf_counter() - started) * 1000)
                except grpc.RpcError:
                    errors[index] += 1
                position += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return np.array([value for values in latencies for value in values]), sum(errors), \
        time.perf_counter() - started


def benchmark(args) -> List[Result]:
    versions = model_store.versions(args.model_base)
    if not versions:
        raise FileNotFoundError(f"no model version under {args.model_base}")
    version_dir = os.path.join(args.model_base, str(versions[-1]))
    results = []
    workdir = tempfile.mkdtemp(prefix="mmfuse-bench-")
    try:
        # All models first, so that a model that cannot be grown fails before any measuring.
        item_ids, candidates = model_store.read_catalogue(version_dir)
        # similar_items refuses ids its vocabulary lacks, as grown rows' are.
        known_items = {item.decode() for item in item_ids[1:]}
        bases = [(catalogue_rows(version_dir), args.model_base) if size is None else
                 (size, grown_model_base(version_dir, item_ids, candidates, size, workdir))
                 for size in args.sizes]
        for rows, base in bases:
            results += _measure(args, base, rows - 1, known_items)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _process_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _measure(args, model_base: str, items: int, known_items: Set[str]) -> List[Result]:
    results = []
    server = ServerProcess(model_base, shlex.split(args.serve_options))
    try:
        model_name = os.path.basename(os.path.normpath(model_base))
        version = server.wait_until_available(model_name)
        print(f"catalogue of {items:,} items (model version {version}), {args.clients} clients, "
              f"load average {os.getloadavg()[0]:.2f} before:", flush=True)
        with client.connect(server.address) as channel:
            seeds = client.ask(channel, client.predict_request(
                "recommend", {"user_id": ["u0001", "u0002"]}, 50, model_name))
        seed_items = ([item for row in seeds.item_ids for item in row if item in known_items]
                      or sorted(known_items)[:100])
        for signature in args.signatures:
            requests = requests_for(signature, args, seed_items, model_name)
            drive(server.address, requests, args.clients, args.warm_up_seconds)
            server_cpu, client_cpu = _cpu_seconds(server.process.pid), _process_cpu_seconds()
            latencies, errors, seconds = drive(server.address, requests, args.clients,
                                               args.seconds)
            results.append(Result(items, signature, latencies, errors, seconds,
                                  _cpu_seconds(server.process.pid) - server_cpu,
                                  _process_cpu_seconds() - client_cpu))
            print("  " + format_result(results[-1]), flush=True)
    finally:
        server.stop()
    return results


def format_result(result: Result) -> str:
    return (f"{result.signature:<14} p50 {result.percentile(50):7.2f} ms  "
            f"p95 {result.percentile(95):7.2f} ms  p99 {result.percentile(99):7.2f} ms  "
            f"{result.qps:7.1f} qps  CPU/answer {result.cpu_ms_per_answer():5.2f} ms "
            f"({result.server_cpu_s / result.seconds * 100:3.0f}% server, "
            f"{result.client_cpu_s / result.seconds * 100:3.0f}% clients)  "
            f"({len(result.latencies_ms)} answers, {result.errors} errors)")


def growth(results: List[Result]) -> List[str]:
    """Per signature: how p50 latency and throughput change from the smallest
    catalogue to each larger one."""
    lines = []
    for signature in dict.fromkeys(result.signature for result in results):
        ordered = sorted((result for result in results if result.signature == signature),
                         key=lambda result: result.catalogue_size)
        smallest = ordered[0]
        steps = [f"{result.catalogue_size:,} items: "
                 f"p50 x{result.percentile(50) / smallest.percentile(50):.1f}, "
                 f"qps x{result.qps / smallest.qps:.2f}" for result in ordered[1:]]
        if steps:
            lines.append(f"{signature} vs {smallest.catalogue_size:,} items: " + "; ".join(steps))
    return lines


def results_table(results: List[Result]) -> str:
    """The figures as a Markdown table, a row per catalogue size and signature."""
    return results_file.markdown_table(
        ["items", "signature", "p50 ms", "p95 ms", "p99 ms", "answers/s", "CPU ms/answer", "errors"],
        [[f"{result.catalogue_size:,}", result.signature, f"{result.percentile(50):.1f}",
          f"{result.percentile(95):.1f}", f"{result.percentile(99):.1f}", f"{result.qps:.0f}",
          f"{result.cpu_ms_per_answer():.2f}", result.errors] for result in results])


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    started, date, machine = time.time(), results_file.today(), results_file.machine()
    try:
        results = benchmark(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"benchmarks.serving: error: {error}", file=sys.stderr)
        return 2
    print("\ncost growth with catalogue size:")
    growth_lines = growth(results)
    for line in growth_lines:
        print("  " + line)
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.serving"]
                         + list(sys.argv[1:] if argv is None else argv))
    print("\nreproduce with: " + command)
    results_file.write_section(args.results, "serving", results_file.render_section(
        "Serving latency and throughput (benchmarks/serving.py)", command,
        [results_table(results)],
        measured=results_file.measured_line(date, results_file.commit(), machine,
                                            time.time() - started),
        notes=[f"{args.clients} closed-loop gRPC clients on the same machine, {args.seconds:g} s "
               "per signature after a warm-up. CPU ms/answer is the server's and the clients' "
               "CPU per answer: two dedicated cores carry about 2000 / that figure answers a "
               "second.", *(f"- {line}" for line in growth_lines)]))
    print(f"results: {args.results}")
    return 1 if any(result.errors for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Latency, throughput and recall of `mmfuse serve` over gRPC, per catalogue
size, top-k index and signature.

Starts `mmfuse serve` as a subprocess and drives it with `--clients`
concurrent closed-loop clients (threads, each with its own channel, each
sending its next request as soon as the last is answered) for `--seconds`
per signature after a warm-up, then prints p50/p95/p99 latency and queries
per second. Each size is served with each top-k of `--indexes` (`exact`:
every item scored; `partitioned`: trainer/index.py), and `recall_vs_exact`
compares the first `--recall-requests` answers' top k with the exact ones.

The model is a pushed one (`--model-base`: its own catalogue, `pushed`, and
copies grown to `--sizes` by synthetic items near its own, each a copy of one
of them moved by noise) or, without `--model-base`, a stand-in that answers
`recommend` and `similar_items` with the export's own catalogue and top-k
code (trainer/export.py CatalogueModule) over a synthetic catalogue: unit
vectors in groups of about 100 around centres that themselves gather around
64 directions, users drawn like items. The answers are meaningless, the cost
is real, and the recall is that of a catalogue with groups of similar items
asked by users whose best items lie in several groups.

    .venv/bin/python -m benchmarks.serving --sizes 1000000 --signatures recommend --json
    .venv/bin/python -m benchmarks.serving --model-base runs/sample/serving/mmfuse \\
        [--sizes pushed,44000,1000000] [--indexes exact,partitioned] [--results FILE]

The clients run on the same machine as the server and take part of its CPU.
The table, with its command, date, commit and machine, replaces the `serving`
section of `--results`; `--json` also prints one JSON line per size, index
and signature.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import json
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
from dataset import pseudonyms
from mmfuse.config import ExportSettings, PipelineSettings
from serving import client, model_store
from trainer import export

SIGNATURES = ("recommend", "search", "similar_items", "image_search")
# What the stand-in model (no --model-base) answers.
STAND_IN_SIGNATURES = ("recommend", "similar_items")
INDEXES = ("exact", "partitioned")
# index_from_items of each index (trainer/export.py CatalogueModule).
_INDEX_FROM_ITEMS = {"exact": 2 ** 62, "partitioned": 1}
STAND_IN_DIM = 64
# Spread of a synthetic item around its centre: cosine ~0.9 to it, about
# what the nearest neighbour of a trained fashion catalogue's items has.
ITEM_SPREAD = 0.5
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
    index: str = "exact"
    # Share of the exact top k that this index's answers hold (same requests).
    recall_vs_exact: float = float("nan")

    def as_json(self) -> dict:
        return {"size": self.catalogue_size, "index": self.index, "signature": self.signature,
                "p50_ms": round(self.percentile(50), 3), "p99_ms": round(self.percentile(99), 3),
                "qps": round(self.qps, 1), "recall_vs_exact": round(self.recall_vs_exact, 4),
                "errors": self.errors}

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


def _indexes(text: str) -> List[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    if not chosen or set(chosen) - set(INDEXES):
        raise argparse.ArgumentTypeError(f"--indexes takes a subset of {','.join(INDEXES)}")
    return chosen


def _signatures(text: str) -> List[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SIGNATURES))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"--signatures takes a subset of {','.join(SIGNATURES)}")
    return chosen


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model-base", default=None,
                        help="TF Serving model base directory of a pushed model; left out: a "
                             "stand-in model over a synthetic catalogue (recommend, similar_items)")
    parser.add_argument("--sizes", type=_sizes, default=None,
                        help="catalogue sizes: 'pushed' (as is) and item counts (default: "
                             "pushed,44000,1000000; without --model-base 44000,1000000)")
    parser.add_argument("--signatures", type=_signatures, default=None,
                        help=f"default: {','.join(SIGNATURES)}; without --model-base "
                             f"{','.join(STAND_IN_SIGNATURES)}")
    parser.add_argument("--indexes", type=_indexes, default=list(INDEXES),
                        help="top-k of each size: exact, partitioned (trainer/index.py)")
    parser.add_argument("--recall-requests", type=int, default=200,
                        help="requests whose answers are compared with the exact ones (ties "
                             "with the exact k-th score count as found)")
    parser.add_argument("--index-dtype", default="float32", choices=("float32", "bfloat16", "int8"),
                        help="the stand-in model's export.index_dtype (a pushed model keeps its own)")
    parser.add_argument("--json", action="store_true",
                        help="also print one JSON line per size, index and signature")
    parser.add_argument("--user-key-file", default=PipelineSettings().user_key_file,
                        help="the key the model's users were pseudonymised with")
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


def near_rows(count: int, centres: np.ndarray, spread: float, seed: int) -> np.ndarray:
    """`count` unit vectors, each a random one of `centres` [n, dim] moved by
    Gaussian noise of norm about `spread`."""
    rng = np.random.default_rng(seed)
    rows = centres[rng.integers(0, len(centres), count)] + spread * rng.standard_normal(
        (count, centres.shape[1]), dtype=np.float32) / np.sqrt(centres.shape[1])
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def synthetic_catalogue(size: int, users: int, dim: int = STAND_IN_DIM, seed: int = 0):
    """(items [size, dim], users [users, dim]): items in groups of about 100
    around centres, which gather around 64 directions (kinds of item); a
    user is drawn around a direction as a group's centre is, a taste for a
    kind of item with no group of its own, so that its best items come from
    several groups (a user drawn like an item finds them in one)."""
    directions = near_rows(64, np.eye(dim, dtype=np.float32), 10.0, seed)
    centres = near_rows(max(size // 100, 1), directions, 1.0, seed + 1)
    return (near_rows(size, centres, ITEM_SPREAD, seed + 2),
            near_rows(users, directions, 1.0, seed + 3))


def grown_model_base(version_dir: str, item_ids: np.ndarray, candidates: np.ndarray, size: int,
                     workdir: str) -> str:
    """A model base holding the model at `version_dir` with a catalogue of
    `size` rows: its own rows (`item_ids`, `candidates`) first, then copies
    of them moved by noise (`near_rows`)."""
    if size < len(candidates):
        raise ValueError(f"the pushed catalogue has {len(candidates)} rows; sizes below it "
                         f"are not a sweep ({size})")
    extra = size - len(candidates)
    base = os.path.join(workdir, f"catalogue-{size}", "mmfuse")
    model_store.replace_catalogue(
        version_dir, os.path.join(base, os.path.basename(version_dir)),
        np.concatenate([item_ids, np.array([b"bench%08d" % index for index in range(extra)],
                                           dtype=object)]),
        np.concatenate([candidates, near_rows(extra, candidates[1:], ITEM_SPREAD, seed=size)]))
    return base


class StandInModel(export.CatalogueModule):
    """The export's catalogue, index and top-k (trainer/export.py) with
    `recommend` (a user's vector from a table, by pseudonym) and
    `similar_items` (inherited): the serving cost of a model without one."""

    def __init__(self, items: np.ndarray, users: np.ndarray, user_ids: Sequence[bytes],
                 settings: ExportSettings = ExportSettings()):
        item_ids = [b"<unknown>"] + [b"item%08d" % row for row in range(1, len(items) + 1)]
        super().__init__(item_ids, np.concatenate([np.zeros_like(items[:1]), items]), None,
                         settings)
        self.user_queries = tf.Variable(np.concatenate([np.zeros_like(users[:1]), users]),
                                        trainable=False, name="user_queries")
        self.users = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(user_ids)), tf.range(1, len(user_ids) + 1, dtype=tf.int64)), 0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int32)])
    def recommend(self, user_id, k):
        user_index = self.users.lookup(user_id)
        answer = self._ranked(export._rows(self.user_queries, user_index), k)
        answer["known_user"] = user_index > 0
        return answer


def stand_in_model_base(size: int, user_ids: Sequence[bytes], workdir: str,
                        index_dtype: str = "float32") -> str:
    """A model base of a `StandInModel` over `synthetic_catalogue(size)`."""
    items, users = synthetic_catalogue(size, len(user_ids))
    model = StandInModel(items, users, user_ids, ExportSettings(index_dtype=index_dtype))
    base = os.path.join(workdir, f"stand-in-{size}", "mmfuse")
    tf.saved_model.save(model, os.path.join(base, "1"), signatures={
        "recommend": model.recommend, "similar_items": model.similar_items})
    return base


def index_variant(model_base: str, index: str, workdir: str) -> str:
    """A model base holding the newest version of `model_base` answering
    with `index` (its `index_from_items` set so)."""
    version = model_store.versions(model_base)[-1]
    model = tf.saved_model.load(os.path.join(model_base, str(version)))
    if index != "exact" and not hasattr(model, "index_from_items"):
        raise ValueError(f"{model_base} has no partitioned index: it was exported with "
                         "export.index=exact, or before there was one")
    if hasattr(model, "index_from_items"):
        model.index_from_items.assign(_INDEX_FROM_ITEMS[index])
    base = os.path.join(workdir, os.path.basename(os.path.dirname(model_base)) + "-" + index,
                        "mmfuse")
    tf.saved_model.save(model, os.path.join(base, str(version)), signatures=model.signatures)
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


def user_ids(args) -> List[str]:
    return [f"u{index:04d}" for index in range(1, args.users + 1)]


def requests_for(signature: str, args, item_ids: Sequence[str],
                 model_name: str = client.DEFAULT_MODEL_NAME,
                 user_key: Optional[bytes] = None) -> List[predict_pb2.PredictRequest]:
    """A rotation of one-row requests, built up front so that the clients
    spend their time waiting for the server, not building protos. Users go
    as their pseudonyms under `user_key` (None: as they are)."""
    users = user_ids(args)
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
        name, inputs = client.question(**asked, user_key=user_key)
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
    user_key = pseudonyms.load_key(args.user_key_file, create=args.model_base is None)
    results = []
    workdir = tempfile.mkdtemp(prefix="mmfuse-bench-")
    try:
        if args.model_base is None:
            users = [pseudonyms.pseudonym(user, user_key).encode() for user in user_ids(args)]
            for size in args.sizes:
                base = stand_in_model_base(size, users, workdir, args.index_dtype)
                known = {b"item%08d" % row for row in range(1, min(size, 1000) + 1)}
                results += _measure_size(args, base, size, {item.decode() for item in known},
                                         user_key, workdir)
            return results
        versions = model_store.versions(args.model_base)
        if not versions:
            raise FileNotFoundError(f"no model version under {args.model_base}")
        version_dir = os.path.join(args.model_base, str(versions[-1]))
        item_ids, candidates = model_store.read_catalogue(version_dir)
        # similar_items refuses ids its vocabulary lacks, as grown rows' are.
        known_items = {item.decode() for item in item_ids[1:]}
        for size in args.sizes:
            if size is None:
                rows, base = catalogue_rows(version_dir), args.model_base
            else:
                rows, base = size, grown_model_base(version_dir, item_ids, candidates, size, workdir)
            results += _measure_size(args, base, rows - 1, known_items, user_key, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def _measure_size(args, model_base: str, items: int, known_items: Set[str], user_key: bytes,
                  workdir: str) -> List[Result]:
    """Every index of `args.indexes` at one size, with each one's recall
    against the exact answers (asked of an exact server when exact is not
    measured)."""
    results, answers = [], {}
    for index in args.indexes:
        measured, answers[index] = _measure(args, index_variant(model_base, index, workdir), items,
                                            known_items, user_key, index)
        results += measured
    if "exact" not in answers:
        answers["exact"] = _measure(args, index_variant(model_base, "exact", workdir), items,
                                    known_items, user_key, "exact", timed=False)[1]
    for result in results:
        result.recall_vs_exact = recall(answers[result.index][result.signature],
                                        answers["exact"][result.signature])
    return results


# Scores this close are a tie: either item is a right answer.
TIE = 1e-5


def recall(found: List[tuple], expected: List[tuple]) -> float:
    """Mean share of each expected answer (item ids, scores) that the found
    one holds, counting a found item that scores at least the expected
    answer's last (a tie with it, ann-benchmarks' rule) as held."""
    shares = []
    for (ids, scores), (expected_ids, expected_scores) in zip(found, expected):
        if len(expected_ids):
            held = [item in expected_ids or score >= expected_scores[-1] - TIE
                    for item, score in zip(ids, scores)]
            shares.append(min(sum(held), len(expected_ids)) / len(expected_ids))
    return float(np.mean(shares)) if shares else float("nan")


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _process_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _measure(args, model_base: str, items: int, known_items: Set[str], user_key: bytes,
             index: str, timed: bool = True):
    """(results per signature, {signature: item ids of the first
    `--recall-requests` answers}) of one served model."""
    results, answers = [], {}
    server = ServerProcess(model_base, shlex.split(args.serve_options))
    try:
        model_name = os.path.basename(os.path.normpath(model_base))
        version = server.wait_until_available(model_name)
        if timed:
            print(f"catalogue of {items:,} items, {index} top-k (model version {version}), "
                  f"{args.clients} clients, load average {os.getloadavg()[0]:.2f} before:",
                  flush=True)
        with client.connect(server.address) as channel:
            seeds = client.ask(channel, client.predict_request(
                "similar_items", {"item_id": sorted(known_items)[:2]}, 50, model_name))
            seed_items = ([item for row in seeds.item_ids for item in row if item in known_items]
                          or sorted(known_items)[:100])
            for signature in args.signatures:
                requests = requests_for(signature, args, seed_items, model_name, user_key)
                answers[signature] = [
                    (answer.item_ids[0], answer.scores[0]) for answer in
                    (client.ask(channel, request) for request in requests[:args.recall_requests])]
                if not timed:
                    continue
                drive(server.address, requests, args.clients, args.warm_up_seconds)
                server_cpu, client_cpu = _cpu_seconds(server.process.pid), _process_cpu_seconds()
                latencies, errors, seconds = drive(server.address, requests, args.clients,
                                                   args.seconds)
                results.append(Result(items, signature, latencies, errors, seconds,
                                      _cpu_seconds(server.process.pid) - server_cpu,
                                      _process_cpu_seconds() - client_cpu, index))
                print("  " + format_result(results[-1]), flush=True)
    finally:
        server.stop()
    return results, answers


def format_result(result: Result) -> str:
    return (f"{result.index:<11} {result.signature:<14} p50 {result.percentile(50):7.2f} ms  "
            f"p95 {result.percentile(95):7.2f} ms  p99 {result.percentile(99):7.2f} ms  "
            f"{result.qps:7.1f} qps  CPU/answer {result.cpu_ms_per_answer():5.2f} ms "
            f"({result.server_cpu_s / result.seconds * 100:3.0f}% server, "
            f"{result.client_cpu_s / result.seconds * 100:3.0f}% clients)  "
            f"({len(result.latencies_ms)} answers, {result.errors} errors)")


def growth(results: List[Result]) -> List[str]:
    """Per signature and index: how p50 latency and throughput change from
    the smallest catalogue to each larger one."""
    lines = []
    for signature, index in dict.fromkeys((result.signature, result.index) for result in results):
        ordered = sorted((result for result in results
                          if (result.signature, result.index) == (signature, index)),
                         key=lambda result: result.catalogue_size)
        smallest = ordered[0]
        steps = [f"{result.catalogue_size:,} items: "
                 f"p50 x{result.percentile(50) / smallest.percentile(50):.1f}, "
                 f"qps x{result.qps / smallest.qps:.2f}" for result in ordered[1:]]
        if steps:
            lines.append(f"{signature} ({index}) vs {smallest.catalogue_size:,} items: "
                         + "; ".join(steps))
    return lines


def results_table(results: List[Result]) -> str:
    """The figures as a Markdown table, a row per catalogue size, index and signature."""
    return results_file.markdown_table(
        ["items", "index", "signature", "p50 ms", "p95 ms", "p99 ms", "answers/s",
         "recall vs exact", "CPU ms/answer", "errors"],
        [[f"{result.catalogue_size:,}", result.index, result.signature,
          f"{result.percentile(50):.1f}", f"{result.percentile(95):.1f}",
          f"{result.percentile(99):.1f}", f"{result.qps:.0f}", f"{result.recall_vs_exact:.3f}",
          f"{result.cpu_ms_per_answer():.2f}", result.errors] for result in results])


def _defaults(args) -> None:
    """Sizes and signatures left out, by whether a pushed model is measured;
    what the stand-in model cannot answer is refused (ValueError)."""
    stand_in = args.model_base is None
    if args.sizes is None:
        args.sizes = _sizes("44000,1000000" if stand_in else "pushed,44000,1000000")
    if args.signatures is None:
        args.signatures = list(STAND_IN_SIGNATURES if stand_in else SIGNATURES)
    if stand_in and None in args.sizes:
        raise ValueError("'pushed' needs --model-base")
    if stand_in and set(args.signatures) - set(STAND_IN_SIGNATURES):
        raise ValueError(f"the stand-in model answers {', '.join(STAND_IN_SIGNATURES)}; "
                         "give --model-base for the others")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    started, date, machine = time.time(), results_file.today(), results_file.machine()
    try:
        _defaults(args)
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
    if args.json:
        for result in results:
            print(json.dumps(result.as_json()))
    catalogue = ("a stand-in model (trainer/export.py's catalogue and top-k, `recommend` from a "
                 "table of user vectors) over a synthetic catalogue: groups of ~100 similar items"
                 if args.model_base is None else
                 f"the model pushed at {args.model_base}, grown by noisy copies of its own items")
    results_file.write_section(args.results, "serving", results_file.render_section(
        "Serving latency and throughput (benchmarks/serving.py)", command,
        [results_table(results)],
        measured=results_file.measured_line(date, results_file.commit(), machine,
                                            time.time() - started),
        notes=[f"Served: {catalogue}. {args.clients} closed-loop gRPC clients on the same "
               f"machine, {args.seconds:g} s per signature after a warm-up. Recall vs exact: "
               f"the share of the exact top {args.k} that the same request's answer holds "
               f"(first {args.recall_requests} requests). CPU ms/answer is the server's and the clients' "
               "CPU per answer: two dedicated cores carry about 2000 / that figure answers a "
               "second.", *(f"- {line}" for line in growth_lines)]))
    print(f"results: {args.results}")
    return 1 if any(result.errors for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())

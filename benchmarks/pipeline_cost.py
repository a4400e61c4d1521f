"""What one pipeline run costs as the catalogue grows, by component, and a
model of the cost beyond the sizes this machine can run.

For each of `--sizes` it writes the synthetic catalogue (dataset/synthetic.py)
into OUT/data-N and runs `mmfuse run` on it into a fresh OUT/run-N (a
subprocess, its output in OUT/run-N.log; a log that already ends with the
run's result is reused, so an interrupted benchmark resumes). Each component's
wall time comes from the run's progress lines ("Transform done in 1:23"), the
encoders' share of the Transform from its bars ("encoding new or changed
photos: 100% (8812/8812), in 2:41").

Then it measures the encoders directly (`encode` below, one subprocess per
setting, since TensorFlow's thread pools are fixed when it starts): texts and
photos of the largest catalogue, through the functions the Transform's feature
cache calls, at each `--encoder-settings` batch size and intra-/inter-op
thread count, as wall time and as CPU time. Items per CPU second is the
throughput of one core, and barely moves when other jobs share the machine;
items per wall second does. It also times the exact top-k the Trainer's
per-epoch evaluation and the Evaluator run per eval row over the catalogue.

The cost model (`cost_model`) fits, per component, a fixed time plus a time
per unit of what the component scales with (`DRIVERS`: items, interactions,
training rows x epochs; nothing for the small steps) through the runs, and
extrapolates to `--model-items` on 2 and 16 cores and on Dataflow with
`--dataflow-workers` workers; ASSUMPTIONS says what it assumes. It writes
benchmarks/RESULTS.md, section `pipeline-cost`.

    python -m benchmarks.pipeline_cost --sizes 1000,10000 --set trainer.epochs=3
"""
import argparse
import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from benchmarks import results
from mmfuse.config import load_config

REPO = results.REPO
SECTION = "pipeline-cost"
PYTHON = sys.executable

# A progress line of `mmfuse run` (mmfuse/progress.py): a step's end, a bar's end.
STEP_DONE = re.compile(r"^\[mmfuse\] (\S+) done in ((?:\d+:)?\d+:\d\d)(?: \(cached\))?\s*$")
BAR_DONE = re.compile(r"^\[mmfuse\]\s+(.+?): 100% \((\d+)/(\d+)\), in ((?:\d+:)?\d+:\d\d)\s*$")
# A bar's label (its start) -> the part of its component it times. The
# encoders' parts are modelled from their own measurement, not fitted.
BARS = {"encoding new or changed texts": "Transform: encode texts",
        "encoding new or changed photos": "Transform: encode photos",
        "training steps": "Trainer: training steps",
        "ranking eval rows": "Evaluator: ranking eval rows"}
ENCODERS = ("Transform: encode texts", "Transform: encode photos")

# The run's time outside its components: starting, and the dataset check
# before TFX (it reads every row and every photo's header), in one process.
OUTSIDE = "(start, dataset check)"
# What each part of a run grows with, beyond its fixed time. "rows": items +
# interactions (ExampleGen, statistics and tf.Transform's passes read every
# row; the Trainer's export and the Evaluator load the catalogue and users);
# "training": training interactions x epochs; "eval_rows". A component's part
# timed by a bar is split out of it. Parts not named here (ImportSchemaGen,
# ExampleValidator, AnomaliesGate, Pusher, the resolver) are taken as fixed.
DRIVERS = {"FileBasedExampleGen": "rows", "StatisticsGen": "rows", "Transform": "rows",
           "Trainer": "rows", "Trainer: training steps": "training", "Evaluator": "rows",
           "Evaluator: ranking eval rows": "eval_rows", OUTSIDE: "rows"}
# Parts that are nothing but their units' work: fitted through zero.
PROPORTIONAL = ("Trainer: training steps", "Evaluator: ranking eval rows")
# The exact ranking of every eval row against the whole catalogue (eval rows x
# items): modelled from the measured top-k cost, not fitted.
TRAINER_SQUARE = "Trainer: each epoch's eval, rows x items"
EVALUATOR_SQUARE = "Evaluator: rows x items"
# Parts whose work runs in Beam (parallel over workers); the Trainer and the
# feature cache's encoders run in one process (its threads).
BEAM = ("FileBasedExampleGen", "StatisticsGen", "Transform", "Evaluator",
        "Evaluator: ranking eval rows", EVALUATOR_SQUARE)
TRAINER = ("Trainer", "Trainer: training steps")
EVAL_SHARE = 0.2  # pipeline.split random: 20% of the interactions are eval rows
TRAIN_SHARE = 1 - EVAL_SHARE

ASSUMPTIONS = (
    "Each component's time is a fixed part plus a part proportional to the rows it reads "
    "(items + interactions), fitted through the runs (a negative slope from noise counts "
    "as 0); the Trainer's training steps (training rows x epochs) and the Evaluator's "
    "ranking of eval rows, timed by their own bars, are proportional to their rows; the "
    "small steps are fixed.",
    "The encoders (in the Transform) cost texts / text rate + photos / photo rate, from "
    "the direct measurement at the default threads; on more cores, the per-core rate x "
    "cores x the efficiency measured from 1 to 2 threads.",
    "The Trainer's per-epoch evaluation (at most `trainer.epoch_eval_rows` eval rows, an "
    "even sample) and the Evaluator (every eval row) also rank against the whole "
    "catalogue: rows x items x the measured top-k cost per (row, item) pair, once per "
    "epoch and once in the Evaluator. It is taken out of the measured runs' bars before "
    "the fit and added back at the target's size: the Evaluator's grows with the square "
    "of the catalogue, the Trainer's, past the cap, with the items alone.",
    "Beam's per-unit work ran on about one core here (the local DirectRunner, "
    "`pipeline.beam_args` []); on c cores or workers' cores it divides by c x "
    "BEAM_EFFICIENCY (assumed, not measured here). The Trainer's per-unit work "
    "divides by its machine's cores over the 2 it had here (linear: optimistic).",
    "Dataflow: N workers of DATAFLOW_WORKER_CORES vCPUs run the Beam steps, each Beam "
    "step pays DATAFLOW_STARTUP_S to start its workers; the Trainer and the feature "
    "cache's encoders run in their own pods with `resources` cores (Transform 4, "
    "Trainer 4), so more workers do not speed them up. With `transform.feature_cache_dir: "
    "\"\"` the encoders run inside tf.Transform's Beam job, on the workers.",
    "The synthetic catalogue's proportions hold: USERS_PER_ITEM users an item, "
    "MEAN_INTERACTIONS rows a user, about 88% of items with text and 90% with a photo.",
)
BEAM_EFFICIENCY = 0.75
DATAFLOW_WORKER_CORES = 4
DATAFLOW_STARTUP_S = 240.0
POD_CORES = {"Transform": 4, "Trainer": 4}


def parse_seconds(text: str) -> int:
    """"1:23" -> 83, "1:02:03" -> 3723 (progress.duration's format)."""
    parts = [int(part) for part in text.split(":")]
    if len(parts) not in (2, 3):
        raise ValueError(f"not a duration: {text!r}")
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds


def parse_run_log(lines: Sequence[str]) -> Dict[str, object]:
    """Component -> seconds, bar part (BARS) -> (count, seconds), and the
    run's final JSON line, from `mmfuse run`'s output."""
    components: Dict[str, int] = {}
    bars: Dict[str, Tuple[int, int]] = {}
    summary = None
    for line in lines:
        line = line.rstrip("\n")
        step = STEP_DONE.match(line)
        if step:
            components[step.group(1)] = components.get(step.group(1), 0) + parse_seconds(step.group(2))
            continue
        bar = BAR_DONE.match(line)
        part = bar and next((name for label, name in BARS.items()
                             if bar.group(1).startswith(label)), None)
        if part:
            bars[part] = (int(bar.group(3)), parse_seconds(bar.group(4)))
            continue
        if line.startswith("{"):
            try:
                summary = json.loads(line)
            except ValueError:
                pass
    return {"components": components, "bars": bars, "summary": summary}


# -- the encoders, measured directly (run in a subprocess: `encode`)

def read_encoder_inputs(data_dir: str, limit: int) -> Tuple[List[bytes], List[bytes]]:
    """The first `limit` item texts (as the feature cache keys them) and photo files."""
    from transform.cached_executor import item_text
    texts, photos = [], []
    with open(os.path.join(data_dir, "items.csv"), encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            text = item_text(row.get("title", "").encode(), row.get("description", "").encode())
            if text and len(texts) < limit:
                texts.append(text)
            if row.get("image") and len(photos) < limit:
                with open(os.path.join(data_dir, row["image"]), "rb") as image:
                    photos.append(image.read())
            if len(texts) >= limit and len(photos) >= limit:
                break
    if not texts or not photos:
        raise ValueError(f"{data_dir}: no item text or no photo to encode")
    return texts, photos


def _eager_image_encode(batch: List[bytes]):
    """The feature cache's photo encoding before it was one traced graph:
    preprocess_batch run eagerly, then the encoder (for comparison)."""
    import tensorflow as tf
    from transform import image_preprocessor
    from transform.preprocessing import _shared_image_encoder
    return _shared_image_encoder()(image_preprocessor.preprocess_batch(tf.constant(batch))).numpy()


def encode(data_dir: str, batch: int, intra: int, inter: int, limit: int,
           eager: bool = False) -> Dict[str, object]:
    """Encodes `limit` texts and photos of `data_dir` in batches of `batch`
    through the feature cache's own encode functions (with `eager`, the
    photos the old way too); wall and CPU seconds."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    from transform import cached_executor
    texts, photos = read_encoder_inputs(data_dir, limit)
    measured: Dict[str, object] = {"batch": batch, "intra": intra, "inter": inter}
    functions = [("text", cached_executor._text_encode, texts),
                 ("image", cached_executor._image_encode, photos)]
    if eager:
        functions.append(("image_eager", _eager_image_encode, photos))
    for name, function, contents in functions:
        function(contents[:batch])  # builds the encoder and traces its graph
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(contents), batch):
            function(contents[start:start + batch])
        measured[name] = {"items": len(contents), "wall_s": time.perf_counter() - wall,
                          "cpu_s": time.process_time() - cpu}
    measured["load"] = os.getloadavg()[0]
    return measured


def top_k_cost(items: int = 100_000, rows: int = 256, dim: int = 64, k: int = 100) -> Dict[str, float]:
    """CPU and wall seconds per (eval row, catalogue item) pair of scoring
    and ranking, as the evaluation does: a matrix product and a top-k."""
    import numpy as np
    import tensorflow as tf
    generator = np.random.default_rng(0)
    candidates = tf.constant(generator.standard_normal((items, dim), dtype=np.float32))
    queries = tf.constant(generator.standard_normal((rows, dim), dtype=np.float32))
    step = tf.function(lambda q: tf.math.top_k(tf.matmul(q, candidates, transpose_b=True), k).indices)
    step(queries).numpy()
    wall, cpu = time.perf_counter(), time.process_time()
    repeats = 5
    for _ in range(repeats):
        step(queries).numpy()
    pairs = repeats * rows * items
    return {"cpu_s_per_pair": (time.process_time() - cpu) / pairs,
            "wall_s_per_pair": (time.perf_counter() - wall) / pairs}


def measure_encoders(data_dir: str, settings: Sequence[Tuple[int, int, int]], limit: int,
                     log) -> List[Dict[str, object]]:
    """`encode` at each (batch, intra, inter), each in a fresh process."""
    measured = []
    for index, (batch, intra, inter) in enumerate(settings):
        command = [PYTHON, "-m", "benchmarks.pipeline_cost", "encode", "--data", data_dir,
                   "--batch", str(batch), "--intra", str(intra), "--inter", str(inter),
                   "--limit", str(limit), *(["--eager"] if index == 0 else [])]
        print(f"[pipeline-cost] {shlex.join(command)}", file=log, flush=True)
        output = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=_env(),
                                check=True).stdout
        measured.append(json.loads(output.strip().splitlines()[-1]))
    return measured


def throughput(measured: Dict[str, object], name: str) -> Dict[str, float]:
    part = measured[name]
    return {"per_s": part["items"] / part["wall_s"], "per_cpu_s": part["items"] / part["cpu_s"]}


# -- the cost model

def units(items: int, interactions: int, epochs: int) -> Dict[str, float]:
    """What the components scale with, for a catalogue of this size."""
    return {"rows": items + interactions, "training": TRAIN_SHARE * interactions * epochs,
            "eval_rows": EVAL_SHARE * interactions}


def split_parts(components: Dict[str, float], bars: Dict[str, Tuple[int, int]]
                ) -> Dict[str, float]:
    """Components with the parts their bars timed taken out, and those parts."""
    parts = dict(components)
    for part, (_, seconds) in bars.items():
        component = part.split(":")[0]
        if component in parts:
            parts[component] = max(parts[component] - seconds, 0.0)
            parts[part] = float(seconds)
    return parts


def fit(points: Sequence[Tuple[float, float]], through_zero: bool = False
        ) -> Tuple[float, float]:
    """(fixed, per unit) through (units, seconds) points: the least-squares
    line, its parts clipped at 0 (`through_zero`: no fixed part); one point:
    all of it per unit."""
    if not points:
        raise ValueError("no runs to fit")
    if through_zero:
        return 0.0, max(sum(x * y for x, y in points) / sum(x * x for x, _ in points), 0.0)
    if len({x for x, _ in points}) == 1:
        x, y = points[0]
        return 0.0, (sum(y for _, y in points) / len(points)) / x if x else 0.0
    n = len(points)
    mean_x, mean_y = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in points)
             / sum((x - mean_x) ** 2 for x, _ in points))
    slope = max(slope, 0.0)
    return max(mean_y - slope * mean_x, 0.0), slope


PLATFORMS_HELP = "measured: this machine as run; cores: local, c cores; dataflow: N workers"


def platform(kind: str, cores: int = 0, workers: int = 0, encoders_on_workers: bool = False
             ) -> Dict[str, object]:
    """Where a run would run: the cores its Beam steps, Trainer and encoders
    get, and what each Beam step pays to start."""
    if kind == "measured":
        return {"beam_cores": None, "trainer_cores": cores, "encoder_cores": cores,
                "startup_s": 0.0}
    if kind == "cores":
        return {"beam_cores": cores, "trainer_cores": cores, "encoder_cores": cores,
                "startup_s": 0.0}
    if kind == "dataflow":
        worker_cores = workers * DATAFLOW_WORKER_CORES
        return {"beam_cores": worker_cores, "trainer_cores": POD_CORES["Trainer"],
                "encoder_cores": worker_cores if encoders_on_workers else POD_CORES["Transform"],
                "startup_s": DATAFLOW_STARTUP_S}
    raise ValueError(f"unknown platform {kind!r} ({PLATFORMS_HELP})")


def without_top_k(runs: Sequence[Dict[str, object]], pair_cpu_s: float, cores: int,
                  efficiency: float) -> List[Dict[str, object]]:
    """The runs with the exact top-k over the catalogue taken out of the bars
    that paid it (the model adds it back at the target's size: TRAINER_SQUARE,
    EVALUATOR_SQUARE): each epoch's eval rows, as many as the run's
    `trainer.epoch_eval_rows` kept (runs from before the setting kept all), in
    the training steps, and every eval row in the Evaluator's ranking."""
    adjusted = []
    for run in runs:
        eval_rows = run["bars"].get("Evaluator: ranking eval rows", (0, 0))[0]
        epoch_rows = min(eval_rows, run.get("epoch_eval_rows") or eval_rows)
        seconds_per_row = pair_cpu_s * run["items"] / (cores * efficiency)
        parts = dict(run["parts"])
        for part, rows in (("Trainer: training steps", run["epochs"] * epoch_rows),
                           ("Evaluator: ranking eval rows", eval_rows)):
            if part in parts:
                parts[part] = max(parts[part] - rows * seconds_per_row, 0.0)
        adjusted.append({**run, "parts": parts})
    return adjusted


def fitted_components(runs: Sequence[Dict[str, object]]) -> Dict[str, Tuple[str, float, float]]:
    """Part -> (driver, fixed seconds, seconds per unit) through the runs'
    parts; the encoders are left out (modelled from their own measurement)."""
    names = sorted({name for run in runs for name in run["parts"]} - set(ENCODERS))
    fitted = {}
    for name in names:
        driver = DRIVERS.get(name)
        points = [(units(run["items"], run["interactions"], run["epochs"])[driver]
                   if driver else 1.0, float(run["parts"][name]))
                  for run in runs if name in run["parts"]]
        if driver:
            fitted[name] = (driver, *fit(points, through_zero=name in PROPORTIONAL))
        else:
            fitted[name] = ("", sum(s for _, s in points) / len(points), 0.0)
    return fitted


def cost_model(fitted: Dict[str, Tuple[str, float, float]], encoders: Dict[str, float],
               pair_cpu_s: float, target: Dict[str, float], epochs: int, measured_cores: int,
               where: Dict[str, object], epoch_eval_rows: Optional[int] = None
               ) -> Dict[str, float]:
    """Seconds per component of a run on `target` ("items", "interactions",
    "texts", "photos") at `where` (`platform`).

    fitted: `fitted_components` of the measured runs, which ran on
        `measured_cores` cores with Beam's in-process DirectRunner (about one core).
    encoders: "text_per_core_s", "image_per_core_s" (items per CPU second)
        and "thread_efficiency" (rate at the default threads / cores x rate at one).
    pair_cpu_s: CPU seconds to score and rank one (eval row, item) pair.
    epoch_eval_rows: the eval rows each epoch's evaluation ranks at the most
        (`trainer.epoch_eval_rows`); None: all.
    """
    target_units = units(target["items"], target["interactions"], epochs)
    efficiency = encoders["thread_efficiency"]
    beam_cores, trainer_cores = where["beam_cores"], where["trainer_cores"]
    model = {}
    for name, (driver, fixed, per_unit) in fitted.items():
        variable = per_unit * target_units[driver] if driver else 0.0
        if name in BEAM:
            if beam_cores is not None:
                variable /= beam_cores * BEAM_EFFICIENCY
            if ":" not in name:  # once per Beam step, not per part of it
                fixed += where["startup_s"]
        elif name in TRAINER:
            variable *= measured_cores / trainer_cores
        model[name] = fixed + variable
    # The exact top-k over the catalogue: each epoch in the Trainer, once in the Evaluator.
    pairs = target_units["eval_rows"] * target["items"]
    if "Trainer" in model:
        epoch_rows = min(target_units["eval_rows"], epoch_eval_rows or target_units["eval_rows"])
        model[TRAINER_SQUARE] = (epochs * epoch_rows * target["items"] * pair_cpu_s
                                 / (trainer_cores * efficiency))
    if "Evaluator" in model:
        model[EVALUATOR_SQUARE] = pairs * pair_cpu_s / ((beam_cores or measured_cores) * efficiency)
    rate = where["encoder_cores"] * efficiency
    model[ENCODERS[0]] = target["texts"] / (encoders["text_per_core_s"] * rate)
    model[ENCODERS[1]] = target["photos"] / (encoders["image_per_core_s"] * rate)
    return model


# -- running it

def _env() -> Dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}


def _load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def run_size(out: str, size: int, overrides: Sequence[str], log) -> Dict[str, object]:
    """Writes OUT/data-N (once) and runs `mmfuse run` on it into a fresh
    OUT/run-N, unless OUT/run-N.log already holds its result."""
    from dataset.synthetic import write_synthetic_dataset
    data, run_dir, log_path = (os.path.join(out, f"{name}-{size}") for name in ("data", "run", "run"))
    log_path += ".log"
    summary_path = data + ".json"
    if not os.path.exists(summary_path):
        print(f"[pipeline-cost] writing {size} synthetic items into {data}", file=log, flush=True)
        shutil.rmtree(data, ignore_errors=True)
        with open(summary_path + ".tmp", "w") as handle:
            json.dump(write_synthetic_dataset(data, size), handle)
        os.replace(summary_path + ".tmp", summary_path)
    with open(summary_path) as handle:
        dataset = json.load(handle)
    parsed = _parse_file(log_path)
    load_path = os.path.join(out, f"run-{size}.load")
    if not (parsed["summary"] and parsed["summary"].get("wall_time_s")):
        shutil.rmtree(run_dir, ignore_errors=True)
        command = [PYTHON, "-m", "mmfuse", "run", "--data", data, "--out", run_dir,
                   "--set", f"pipeline.user_key_file={os.path.join(out, 'user_key')}",
                   *[a for override in overrides for a in ("--set", override)]]
        print(f"[pipeline-cost] {shlex.join(command)} (log: {log_path})", file=log, flush=True)
        with open(load_path, "w") as handle:
            handle.write(f"load {_load()} at start\n")
        with open(log_path, "w") as handle:
            subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=_env())
        with open(load_path, "a") as handle:
            handle.write(f"load {_load()} at end\n")
        parsed = _parse_file(log_path)
    if not parsed["summary"]:
        raise RuntimeError(f"the run on {size} items did not finish; see {log_path} and "
                           f"{os.path.join(run_dir, 'mmfuse.log')}")
    loads = open(load_path).read().split("\n") if os.path.exists(load_path) else []
    trainer = parsed["summary"]["config"]["trainer"]
    epochs = trainer["epochs"]
    components = dict(parsed["components"])
    components[OUTSIDE] = max(parsed["summary"]["wall_time_s"] - sum(components.values()), 0.0)
    parts = split_parts(components, parsed["bars"])
    return {"items": dataset["items"], "interactions": dataset["interactions"],
            "images": dataset["images"], "epochs": epochs,
            "epoch_eval_rows": trainer.get("epoch_eval_rows"), "components": components,
            "bars": parsed["bars"], "parts": parts,
            "wall_s": parsed["summary"]["wall_time_s"], "blessed": parsed["summary"]["blessed"],
            "metrics": parsed["summary"].get("metrics", {}),
            "load": " / ".join(line.replace("load ", "") for line in loads if line)}


def _read_json(path: str) -> Dict[str, object]:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _parse_file(path: str) -> Dict[str, object]:
    if not os.path.exists(path):
        return {"components": {}, "bars": {}, "summary": None}
    with open(path, encoding="utf-8", errors="replace") as handle:
        return parse_run_log(handle.readlines())


def parse_settings(text: str) -> List[Tuple[int, int, int]]:
    """"32:0:0,64:0:0" -> [(32, 0, 0), (64, 0, 0)]: batch, intra, inter threads."""
    settings = []
    for part in text.split(","):
        try:
            batch, intra, inter = (int(value) for value in part.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"encoder setting {part!r} is not BATCH:INTRA:INTER (e.g. 32:0:0)") from None
        if batch < 1 or intra < 0 or inter < 0:
            raise argparse.ArgumentTypeError(f"encoder setting {part!r}: batch >= 1, threads >= 0")
        settings.append((batch, intra, inter))
    return settings


def parse_sizes(text: str) -> List[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes takes item counts like 1000,10000, not {text!r}") from None
    if not sizes or sizes[0] < 10:
        raise argparse.ArgumentTypeError("each size needs at least 10 items")
    return sizes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("1000,10000"),
                        help="catalogue sizes to run the pipeline on (at least two to tell a "
                        "component's fixed time from its time per unit)")
    parser.add_argument("--out", default=os.path.join(REPO, "runs", "cost"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="passed to every mmfuse run")
    parser.add_argument("--encoder-settings", type=parse_settings,
                        default=parse_settings("32:0:0,16:0:0,128:0:0,32:1:1"),
                        help="BATCH:INTRA:INTER thread settings to measure the encoders at; "
                        "the first is the pipeline's (cached_executor.ENCODE_BATCH, TF's "
                        "default threads 0:0); one with INTRA 1 gives the one-thread rate")
    parser.add_argument("--encoder-items", type=int, default=512,
                        help="texts and photos encoded per setting")
    parser.add_argument("--remeasure", action="store_true",
                        help="measure the encoders again even if OUT/pipeline_cost.json holds "
                        "a measurement at the same settings")
    parser.add_argument("--model-items", type=int, default=1_000_000)
    parser.add_argument("--dataflow-workers", type=int, default=10)
    parser.add_argument("--results", default=results.DEFAULT_RESULTS, metavar="FILE")
    commands = parser.add_subparsers(dest="command")
    worker = commands.add_parser("encode", help="(internal) measure the encoders at one setting")
    worker.add_argument("--data", required=True)
    worker.add_argument("--batch", type=int, required=True)
    worker.add_argument("--intra", type=int, required=True)
    worker.add_argument("--inter", type=int, required=True)
    worker.add_argument("--limit", type=int, required=True)
    worker.add_argument("--eager", action="store_true",
                        help="also the photos with eager preprocessing (the path before)")
    return parser


def encoder_rates(measured: Sequence[Dict[str, object]]) -> Dict[str, float]:
    """The model's encoder rates from the measurements: the first setting's
    items per CPU second, and its CPU efficiency against one thread."""
    default = measured[0]
    single = next((m for m in measured if m["intra"] == 1 and m["batch"] == default["batch"]), None)
    efficiency = 1.0
    if single is not None:
        efficiency = min(1.0, (throughput(default, "image")["per_cpu_s"]
                               / throughput(single, "image")["per_cpu_s"]))
        rates = {name: throughput(single, name)["per_cpu_s"] for name in ("text", "image")}
    else:
        rates = {name: throughput(default, name)["per_cpu_s"] for name in ("text", "image")}
    return {"text_per_core_s": rates["text"], "image_per_core_s": rates["image"],
            "thread_efficiency": efficiency}


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = _parser().parse_args(argv)
    if options.command == "encode":
        print(json.dumps(encode(options.data, options.batch, options.intra, options.inter,
                                options.limit, options.eager)))
        return 0
    if options.dataflow_workers < 1 or options.model_items < 1:
        raise SystemExit("--dataflow-workers and --model-items must be at least 1")
    out = os.path.abspath(options.out)
    os.makedirs(out, exist_ok=True)
    started, date, machine, commit = time.time(), results.today(), results.machine(), results.commit()
    cores = os.cpu_count() or 1
    runs = []
    resumed = [size for size in options.sizes
               if (_parse_file(os.path.join(out, f"run-{size}.log"))["summary"] or {}).get("wall_time_s")]
    for size in options.sizes:
        runs.append(run_size(out, size, options.overrides, sys.stdout))
        print(f"[pipeline-cost] {size} items: {json.dumps(runs[-1])}", flush=True)
    largest = runs[-1]
    previous = _read_json(os.path.join(out, "pipeline_cost.json"))
    if (not options.remeasure and previous.get("top_k") and previous.get("encoders")
            and [(m["batch"], m["intra"], m["inter"]) for m in previous["encoders"]]
            == list(options.encoder_settings)):
        # Measured by an earlier invocation into OUT: a resumed benchmark keeps them.
        measured, pair = previous["encoders"], previous["top_k"]
        encoder_load = f"{measured[0]['load']:.1f} (an earlier measurement into {out})"
        resumed.append("encoders")
    else:
        encoder_load = _load()
        measured = measure_encoders(os.path.join(out, f"data-{options.sizes[-1]}"),
                                    options.encoder_settings, options.encoder_items, sys.stdout)
        pair = top_k_cost()
    rates = encoder_rates(measured)
    epochs = largest["epochs"]
    scale = options.model_items / largest["items"]
    text_count = largest["bars"].get(ENCODERS[0], (largest["items"], 0))[0]
    photo_count = largest["bars"].get(ENCODERS[1], (largest["images"], 0))[0]
    target = {"items": options.model_items, "interactions": largest["interactions"] * scale,
              "texts": text_count * scale, "photos": photo_count * scale}
    fitted = fitted_components(without_top_k(runs, pair["cpu_s_per_pair"], cores,
                                             rates["thread_efficiency"]))
    epoch_eval_rows = load_config(None, options.overrides).trainer.epoch_eval_rows
    workers = options.dataflow_workers
    platforms = [(f"{cores} cores (as run here)", platform("measured", cores)),
                 ("16 cores, one machine", platform("cores", 16)),
                 (f"Dataflow, {workers} workers", platform("dataflow", workers=workers)),
                 (f"Dataflow, {workers} workers, encoders on the workers",
                  platform("dataflow", workers=workers, encoders_on_workers=True))]
    models = [(name, cost_model(fitted, rates, pair["cpu_s_per_pair"], target, epochs, cores, where,
                                epoch_eval_rows))
              for name, where in platforms]
    report = _write(options, runs, measured, rates, pair, fitted, target, models,
                    [where for _, where in platforms], epochs, resumed,
                    date, commit, machine, encoder_load, time.time() - started)
    with open(os.path.join(out, "pipeline_cost.json"), "w") as handle:
        json.dump({"runs": runs, "encoders": measured, "rates": rates, "top_k": pair,
                   "fitted": fitted, "target": target, "models": models}, handle, indent=1)
    print(report)
    return 0


def _write(options, runs, measured, rates, pair, fitted, target, models, wheres, epochs, resumed,
           date, commit, machine, encoder_load, wall_s) -> str:
    sizes = [run["items"] for run in runs]
    names = [name for name in ("FileBasedExampleGen", "StatisticsGen", "ImportSchemaGen",
                               "ExampleValidator", "AnomaliesGate", "Transform", "Trainer",
                               "Evaluator", "Pusher") if any(name in run["components"] for run in runs)]
    names += sorted({n for run in runs for n in run["components"]} - set(names))
    rows = []
    for name in names:
        rows.append([name] + [_seconds(run["components"].get(name)) for run in runs])
        for part in BARS.values():
            if part.startswith(name + ":"):
                rows.append([f"of which {part.split(': ')[1]} (count)"] + [
                    f"{run['bars'][part][1]} ({run['bars'][part][0]})"
                    if part in run["bars"] else None for run in runs])
    rows.append(["**whole run** (wall_time_s)"] + [f"{run['wall_s']:.0f}" for run in runs])
    rows.append(["interactions"] + [run["interactions"] for run in runs])
    rows.append(["gate recall (blessed)"] + [
        f"{run['metrics'].get('release_recall', float('nan')):.3f} ({run['blessed']})" for run in runs])
    rows.append(["load average at start / end"] + [run["load"] for run in runs])
    runs_table = results.markdown_table(["component, s"] + [f"{size} items" for size in sizes], rows)
    encoder_rows = []
    for m in measured:
        text, image = throughput(m, "text"), throughput(m, "image")
        encoder_rows.append([m["batch"], m["intra"] or "all", m["inter"] or "all",
                             f"{text['per_s']:.0f}", f"{text['per_cpu_s']:.0f}",
                             f"{image['per_s']:.1f}", f"{image['per_cpu_s']:.1f}", f"{m['load']:.1f}"])
        if "image_eager" in m:
            eager = throughput(m, "image_eager")
            encoder_rows.append([f"{m['batch']}, photos preprocessed eagerly (before)",
                                 m["intra"] or "all", m["inter"] or "all", None, None,
                                 f"{eager['per_s']:.1f}", f"{eager['per_cpu_s']:.1f}",
                                 f"{m['load']:.1f}"])
    encoder_table = results.markdown_table(
        ["batch", "intra-op threads", "inter-op threads", "texts/s", "texts per CPU s",
         "photos/s", "photos per CPU s", "load average"], encoder_rows)
    model_rows = []
    order = [OUTSIDE, "FileBasedExampleGen", "StatisticsGen", "Transform", *ENCODERS, "Trainer",
             "Trainer: training steps", TRAINER_SQUARE, "Evaluator",
             "Evaluator: ranking eval rows", EVALUATOR_SQUARE]
    parts = sorted({part for _, model in models for part in model},
                   key=lambda part: (order.index(part) if part in order else len(order), part))
    # The small steps (schema, validation, gate, resolver, Pusher) take seconds.
    shown = [part for part in parts if any(model.get(part, 0.0) >= 1.0 for _, model in models)]
    for part in shown:
        model_rows.append([part] + [results.duration(model.get(part, 0.0)) for _, model in models])
    if len(shown) < len(parts):
        model_rows.append([f"{len(parts) - len(shown)} steps under 1 s each"] + [""] * len(models))
    totals = [sum(model.values()) for _, model in models]
    model_rows.append(["**total**"] + [f"**{results.duration(total)}**" for total in totals])
    model_rows.append(["dominant component"] + [
        max(by_component(model).items(), key=lambda item: item[1])[0] for _, model in models])
    model_rows.append(["dominant part"] + [max(model, key=model.get) for _, model in models])
    core_hours = [total * where["trainer_cores"] / 3600 if where["startup_s"] == 0
                  else _dataflow_core_hours(model, where)
                  for total, (_, model), where in zip(totals, models, wheres)]
    model_rows.append(["core-hours"] + [f"{hours:.1f}" for hours in core_hours])
    model_table = results.markdown_table(
        ["at " + f"{options.model_items:,} items"] + [name for name, _ in models], model_rows)
    flat = [name for name, (driver, _, per_unit) in fitted.items()
            if driver and not per_unit and name not in PROPORTIONAL]
    fit_rows = [[name, driver or "(fixed)", f"{fixed:.0f}", f"{per_unit * 1e6:.1f}" if driver else "-"]
                for name, (driver, fixed, per_unit) in fitted.items()]
    fit_table = results.markdown_table(["component", "grows with", "fixed s", "µs per unit"], fit_rows)
    command = shlex.join(["python", "-m", "benchmarks.pipeline_cost", "--sizes",
                          ",".join(map(str, sizes)),
                          *[a for o in options.overrides for a in ("--set", o)]])
    notes = [
        *([f"Resumed: the runs at {', '.join(str(size) for size in resumed if size != 'encoders')} "
           f"items{' and the encoder measurement' if 'encoders' in resumed else ''} came from "
           f"earlier invocations into the same --out (their logs); each run's load average is in "
           f"its column, the machine's above is this invocation's."] if resumed else []),
        f"Taken on a shared machine: other engineers' benchmarks ran at the same time (load "
        f"averages in the tables; 2 cores), so wall times are longer than on an idle machine, "
        f"by a different amount each. The per-CPU-second rates are much less affected.",
        f"Runs: the synthetic catalogue (dataset/synthetic.py: {runs[-1]['interactions']:,} "
        f"interactions at {sizes[-1]:,} items), `trainer.epochs={epochs}`, everything else at "
        f"its default; one fresh run directory per size. Component times are the run's "
        f"progress lines (whole seconds); the encoders' are their bars in the Transform.",
        f"Encoders, measured directly on {options.encoder_items} texts and photos of the "
        f"{sizes[-1]:,}-item catalogue through the feature cache's encode functions, each "
        f"setting in a fresh process (load average {encoder_load} before). Per CPU second is "
        f"per core. One exact top-k of an eval row over the catalogue costs "
        f"{pair['cpu_s_per_pair'] * 1e9:.2f} CPU ns per item.",
        f"Model at {options.model_items:,} items: {target['interactions']:,.0f} interactions, "
        f"{target['texts']:,.0f} texts and {target['photos']:,.0f} photos to encode (the "
        f"largest run's proportions), {epochs} epochs; encoder rates "
        f"{rates['text_per_core_s']:.0f} texts and {rates['image_per_core_s']:.1f} photos per "
        f"core-second at one thread, thread efficiency {rates['thread_efficiency']:.2f}.",
        *([f"Not separable from noise at these sizes: {', '.join(flat)} took no longer on "
           f"the larger catalogue, so the fit counts only their fixed time and the model "
           f"underestimates them at {options.model_items:,} items."] if flat else []),
        "Assumptions: " + " ".join(f"({i}) {text}" for i, text in enumerate(ASSUMPTIONS, 1))
        + f" BEAM_EFFICIENCY {BEAM_EFFICIENCY}, DATAFLOW_WORKER_CORES {DATAFLOW_WORKER_CORES}, "
        f"DATAFLOW_STARTUP_S {DATAFLOW_STARTUP_S:.0f}.",
    ]
    text = results.render_section(
        "Pipeline cost by component and size (benchmarks/pipeline_cost.py)", command,
        ["Measured runs:", runs_table, "The fit (fixed part + part per unit):", fit_table,
         "Encoder throughput:", encoder_table, "Modelled one run:", model_table],
        measured=results.measured_line(date, commit, machine, None if resumed else wall_s),
        notes=notes)
    results.write_section(options.results, SECTION, text)
    return text


def by_component(model: Dict[str, float]) -> Dict[str, float]:
    """A model's seconds summed over each component's parts ("Trainer: ...")."""
    totals: Dict[str, float] = {}
    for name, seconds in model.items():
        component = name.split(":")[0]
        totals[component] = totals.get(component, 0.0) + seconds
    return totals


def _seconds(value) -> Optional[str]:
    return None if value is None else f"{value:.0f}"


def _dataflow_core_hours(model: Dict[str, float], where: Dict[str, object]) -> float:
    """Core-hours billed on Dataflow: each Beam step's workers while it runs
    (the Transform's from its Beam job on), the Trainer's and Transform's pods
    for their whole steps, one core for each small step."""
    workers_cores = where["beam_cores"]
    hours = 0.0
    for name, seconds in model.items():
        component = name.split(":")[0]
        if name in BEAM:
            cores = workers_cores + POD_CORES.get(component, 0)
        elif name in ENCODERS:
            on_workers = where["encoder_cores"] == workers_cores
            cores = POD_CORES["Transform"] + (workers_cores if on_workers else 0)
        else:
            cores = POD_CORES.get(component, 1)
        hours += seconds * cores / 3600
    return hours


if __name__ == "__main__":
    sys.exit(main())

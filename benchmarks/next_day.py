"""The next-day run: what retraining costs when a little has changed.

From a dataset directory (e.g. `mmfuse convert movielens-100k ...`) it makes
two days: day 2 is the whole dataset; day 1 lacks `--new-items` of the items
(drawn at random, with their interactions) and the latest interactions, so
that day 2 has `--new-interactions` more of them than day 1. Then, each an
`mmfuse run` in a subprocess:

1. `day1`: day 1 into OUT/next-day (a cold start: fills the feature cache and
   pushes the first blessed model);
2. `next-day`: day 2 into OUT/next-day: the feature cache encodes only the new
   items' text and photos, and the Trainer warm-starts from day 1's model;
3. `full`: day 2 into a fresh OUT/full: what day 2 costs without anything kept.

It prints and writes (benchmarks/RESULTS.md, section `next-day`) each run's
wall time, the feature cache's hits and misses, the warm start, and the gate's
recall on the eval split.
"""
import argparse
import csv
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from benchmarks import results

REPO = results.REPO
SECTION = "next-day"


def make_days(source: str, out: str, new_items: float, new_interactions: float,
              seed: int = 0) -> Dict[str, object]:
    """Writes OUT/day1 and OUT/day2 (images hard-linked) and returns their
    sizes. A catalogue without interactions (fashion) changes by its items only."""
    item_header, items = _read_csv(os.path.join(source, "items.csv"))
    interactions_path = os.path.join(source, "interactions.csv")
    has_interactions = os.path.exists(interactions_path)
    header, interactions = _read_csv(interactions_path) if has_interactions else ([], [])
    rng = random.Random(seed)
    held_items = {row[0] for row in rng.sample(items, max(1, round(new_items * len(items))))}
    day1_rows = []
    if interactions:
        item_column = header.index("item_id")
        time_column = header.index("timestamp") if "timestamp" in header else None
        # Day 2 has `new_interactions` more rows than day 1: day 1 keeps n / (1 + share).
        keep = round(len(interactions) / (1 + new_interactions))
        order = sorted(range(len(interactions)),
                       key=lambda i: (int(interactions[i][time_column]) if time_column is not None
                                      and interactions[i][time_column] else 0, i))
        day1_rows = [i for i in order if interactions[i][item_column] not in held_items][:keep]
    days = {"day1": ([r for r in items if r[0] not in held_items],
                     [interactions[i] for i in sorted(day1_rows)]),
            "day2": (items, interactions)}
    for day, (day_items, day_interactions) in days.items():
        directory = os.path.join(out, day)
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        os.makedirs(directory)
        files = [("items.csv", item_header, day_items)]
        if has_interactions:
            files.append(("interactions.csv", header, day_interactions))
        for name, head, rows in files:
            with open(os.path.join(directory, name), "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows([head] + rows)
        for entry in os.listdir(source):
            if entry not in ("items.csv", "interactions.csv"):
                _hard_link(os.path.join(source, entry), os.path.join(directory, entry))
    return {"items": (len(days["day1"][0]), len(items)),
            "interactions": (len(days["day1"][1]), len(interactions))}


def _read_csv(path: str):
    """(header, rows) of a CSV file."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def _hard_link(source: str, target: str) -> None:
    """Hard-links a file or a tree (copies across file systems): a dataset
    refuses image paths that a symlink leads out of its directory."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if os.path.isdir(source):
        shutil.copytree(source, target, copy_function=link)
    else:
        link(source, target)


def mmfuse_run(data: str, out: str, log_path: str, overrides: Sequence[str]) -> Dict:
    command = [sys.executable, "-m", "mmfuse", "run", "--data", data, "--out", out,
               *[argument for override in overrides for argument in ("--set", override)]]
    print(f"[next-day] {shlex.join(command)} (log: {log_path})", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    started = time.time()
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    seconds = time.time() - started
    summary = _last_json_line(log_path) or {}
    return {"exit": code, "wall_s": seconds, **summary}


def _last_json_line(path: str) -> Optional[Dict]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = [line for line in handle if line.startswith("{")]
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _row(name: str, run: Dict) -> List[object]:
    metrics = run.get("metrics") or {}
    cache = run.get("feature_cache") or {}
    warm = run.get("warm_start")
    return [name, f"{run['wall_time_s']:.0f}" if run.get("wall_time_s") else None,
            cache.get("hits"), cache.get("misses"),
            f"version {warm['from_version']}" if warm else "no",
            f"{metrics['release_recall']:.4f}" if "release_recall" in metrics else None,
            f"recall@{int(metrics['release_k'])}" if "release_k" in metrics else None,
            run.get("blessed")]


HEADER = ["run", "wall_s", "cache hits", "cache misses", "warm start", "gate recall", "at",
          "blessed"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.next_day", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a dataset directory (the whole of day 2)")
    parser.add_argument("--out", default=os.path.join(REPO, "runs", "next-day"))
    parser.add_argument("--name", default=None, help="the data set's name in the results "
                        "(default: the --data directory's name)")
    parser.add_argument("--new-items", type=float, default=0.01)
    parser.add_argument("--new-interactions", type=float, default=0.10)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="passed to every mmfuse run")
    parser.add_argument("--runs", default="day1,next-day,full", type=lambda text: text.split(","),
                        help="which of day1, next-day, full to run (a run whose log has its "
                        "result is not run again)")
    parser.add_argument("--results", default=results.DEFAULT_RESULTS, metavar="FILE")
    return parser


RUNS = (("day1", "day1", "next-day"), ("next-day", "day2", "next-day"), ("full", "day2", "full"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = _parser().parse_args(argv)
    out = os.path.abspath(options.out)
    name = options.name or os.path.basename(os.path.abspath(options.data).rstrip("/"))
    started, date, machine, commit = time.time(), results.today(), results.machine(), results.commit()
    logs = {run: os.path.join(out, f"{run}.log") for run, _, _ in RUNS}
    fresh = not any(os.path.exists(path) for path in logs.values())
    if fresh or not os.path.isdir(os.path.join(out, "day2")):
        for directory in ("next-day", "full"):
            shutil.rmtree(os.path.join(out, directory), ignore_errors=True)
        make_days(options.data, out, options.new_items, options.new_interactions)
    # A run whose log ends with its result is not run again: an interrupted
    # benchmark resumes, and `--runs full` can run beside the others.
    runs = {}
    for run_name, day, run_out in RUNS:
        if run_name in options.runs and not (os.path.exists(logs[run_name])
                                             and _last_json_line(logs[run_name])):
            if run_name == "next-day" and not _last_json_line(logs["day1"]):
                print("[next-day] the next-day run needs day1's result first", file=sys.stderr)
                return 1
            runs[run_name] = mmfuse_run(os.path.join(out, day), os.path.join(out, run_out),
                                        logs[run_name], options.overrides)
        elif os.path.exists(logs[run_name]):
            runs[run_name] = {"exit": None, **(_last_json_line(logs[run_name]) or {})}
        if run_name in runs:
            print(f"[next-day] {run_name}: {json.dumps(_row(run_name, runs[run_name]))}", flush=True)
    if not all(runs.get(run, {}).get("wall_time_s") for run, _, _ in RUNS):
        print("[next-day] not every run has finished; results not written", file=sys.stderr)
        return 1
    sizes = {"items": [_count_rows(os.path.join(out, day, "items.csv")) for day in ("day1", "day2")],
             "interactions": [_count_rows(os.path.join(out, day, "interactions.csv"))
                              for day in ("day1", "day2")]}
    ratio = runs["next-day"]["wall_time_s"] / runs["full"]["wall_time_s"]
    table = results.markdown_table(HEADER, [_row(n, runs[n]) for n, _, _ in RUNS])
    print(table)
    print(f"next-day / full wall time: {ratio:.2f}")
    command = shlex.join(["python", "-m", "benchmarks.next_day", "--data", options.data,
                          "--out", options.out,
                          *[a for o in options.overrides for a in ("--set", o)]])
    interactions = (f"{sizes['interactions'][0]} interactions",
                    f"{sizes['interactions'][1]} interactions ({options.new_interactions:.0%} more)")
    if not sizes["interactions"][1]:
        interactions = ("no interactions (it trains on searches made from the catalogue)",) * 2
    notes = [f"{name}: day 1 {sizes['items'][0]} items, {interactions[0]}; "
             f"day 2 {sizes['items'][1]} items ({options.new_items:.0%} new), {interactions[1]}. "
             f"`day1`: day 1 into an empty run directory; `next-day`: day 2 into day 1's, "
             f"reusing its feature cache and warm-starting from its blessed model "
             f"(`trainer.warm_start_epochs` instead of `trainer.epochs`); `full`: day 2 into a "
             f"fresh run directory. wall_s: the run's `wall_time_s`. Next-day / full: "
             f"**{ratio:.2f}**. The runs ran one after another; other jobs on the machine (load "
             f"average above, at the start) lengthen each by a different amount."]
    results.write_section(options.results, f"{SECTION}-{name}", results.render_section(
        f"Next-day run, {name} (benchmarks/next_day.py)", command, [table],
        measured=results.measured_line(date, commit, machine, time.time() - started), notes=notes))
    with open(os.path.join(out, "next_day.json"), "w") as handle:
        json.dump({"sizes": sizes, "runs": runs, "ratio": ratio}, handle, indent=1)
    return 0


def _count_rows(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, newline="", encoding="utf-8") as handle:
        return sum(1 for _ in csv.reader(handle)) - 1


if __name__ == "__main__":
    sys.exit(main())

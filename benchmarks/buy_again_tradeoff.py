"""The buy-again mix's trade-off: past items against items new to the customer.

`export.new_item_weight` decides how many of `recommend`'s slots the user's
past items take from the towers' new ones. This benchmark measures, on a
dataset with timestamps (e.g. `mmfuse convert online-retail ...`), each
customer's last purchase held out, recall@20 overall, on repeats and on items
new to the customer for each weight in `--weights`, with EASE standing in for
the towers (as `ease+buy-again` in benchmarks/quality.py) and, for reference,
the customer's own past items (`own-history`) and EASE alone. It does so on
two splits:

- validation: the training rows alone, each customer's last training purchase
  held out: where a weight may be chosen;
- eval: the split benchmarks/quality.py reports (never to choose on).

A row meets the Live issue's goal when its recall@20 is above own-history's
and its recall@20 on new items at or above EASE's, on the same split.

    .venv/bin/python -m benchmarks.buy_again_tradeoff --data DIR [--weights 3,4.7,6,7.5]

The table, with its command, date, commit and machine, replaces the
`buy-again-tradeoff-<name>` section of `--results`.
"""
import argparse
import dataclasses
import os
import shlex
import sys
import time
from typing import Dict, List, Optional, Sequence

from benchmarks import results
from benchmarks.quality import EASE_L2
from dataset.contract import Dataset, read_dataset
from evaluation import rankers
from evaluation.evaluate import evaluate, split_rows

SECTION = "buy-again-tradeoff"
COLUMNS = ("recall@20", "recall@20_repeat", "recall@20_new")
HEADER = ["split", "variant", *COLUMNS, "meets the goal"]


def carves(dataset: Dataset) -> Dict[str, Dataset]:
    """{"validation": the training rows alone, "eval": the whole dataset}; each
    is split by its last purchase per customer."""
    train, _ = split_rows(dataset, "last")
    return {"validation": dataclasses.replace(dataset, interactions=train), "eval": dataset}


def measure(dataset: Dataset, weights: Sequence[float]) -> List[Dict[str, object]]:
    """One row per split and variant: the split, the variant and COLUMNS."""
    rows = []
    items = list(dataset.items)
    for split, data in carves(dataset).items():
        train, _ = split_rows(data, "last")
        ease = rankers.EASE(items, train, l2=EASE_L2)
        variants = [("own-history", rankers.OwnHistory(items, train)), ("ease", ease)]
        variants += [(f"ease+buy-again, weight {weight:g}", rankers.BuyAgainMix(ease, train, weight))
                     for weight in weights]
        for name, ranker in variants:
            figures = evaluate(data, ranker, "last", (20,))
            rows.append({"split": split, "variant": name,
                         **{column: figures.get(column) for column in COLUMNS}})
    return rows


def meets_goal(row: Dict[str, object], rows: Sequence[Dict[str, object]]) -> Optional[bool]:
    """Whether a mix row beats own-history overall and stays at or above EASE
    on new items, on its split; None for the reference rows."""
    if not str(row["variant"]).startswith("ease+buy-again"):
        return None
    reference = {other["variant"]: other for other in rows if other["split"] == row["split"]}
    return (row["recall@20"] > reference["own-history"]["recall@20"]
            and row["recall@20_new"] >= reference["ease"]["recall@20_new"])


def _weights(text: str) -> List[float]:
    try:
        weights = [float(weight) for weight in text.split(",") if weight.strip()]
    except ValueError:
        weights = []
    if not weights or any(weight < 0 for weight in weights):
        raise argparse.ArgumentTypeError(f"--weights takes comma-separated non-negative numbers, "
                                         f"not {text!r}")
    return weights


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.buy_again_tradeoff",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a dataset directory with timestamps")
    parser.add_argument("--name", help="the data set's name in the results (default: the "
                        "--data directory's name)")
    parser.add_argument("--weights", type=_weights, default=_weights("3,4.7,6,7.5"),
                        help="values of export.new_item_weight to measure")
    parser.add_argument("--results", default=results.DEFAULT_RESULTS, metavar="FILE")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = _parser().parse_args(argv)
    name = options.name or os.path.basename(os.path.abspath(options.data).rstrip("/"))
    started, date, machine, commit = time.time(), results.today(), results.machine(), results.commit()
    try:
        dataset = read_dataset(options.data, check_images=False)
    except ValueError as error:
        print(f"benchmarks.buy_again_tradeoff: error: {error}", file=sys.stderr)
        return 2
    rows = measure(dataset, options.weights)
    table = results.markdown_table(HEADER, [
        [row["split"], row["variant"], *(f"{row[column]:.4f}" for column in COLUMNS),
         {True: "yes", False: "no", None: ""}[meets_goal(row, rows)]] for row in rows])
    print(table)
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.buy_again_tradeoff",
                          "--data", options.data,
                          *(["--name", options.name] if options.name else []),
                          "--weights", ",".join(f"{weight:g}" for weight in options.weights)])
    results.write_section(options.results, f"{SECTION}-{name}", results.render_section(
        f"Buy-again trade-off, {name} (benchmarks/buy_again_tradeoff.py)", command, [table],
        measured=results.measured_line(date, commit, machine, time.time() - started),
        notes=[f"{name} (`--data`: a dataset directory as `mmfuse convert` writes it): each "
               "customer's last purchase held out; validation: the training "
               "rows alone, each customer's last training purchase held out. EASE (L2 "
               f"{EASE_L2:g}) stands in for the towers. Meets the goal: recall@20 above "
               "own-history's and recall@20 on new items at or above EASE's, on the same split."]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

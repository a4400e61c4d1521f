"""Fashion text -> image on a validation carve of the training products: for
comparing model changes without looking at the benchmark's held-out products.

    .venv/bin/python -m benchmarks.fashion_validation --out runs/benchmark \\
        [--config FILE.yaml] [--set section.key=value ...] [--epochs 20] \\
        [--variant "trainer.learning_rate_schedule=constant" --variant "" ...] \\
        [--seeds 42,7,1] [--results benchmarks/RESULTS.md]

It needs an earlier `benchmarks.quality --datasets fashion --out OUT` run: it
reads that run's converted catalogue (OUT/data/fashion) and its newest
Transform output. Another 20% of the products with a photo that the benchmark
trains on (md5 of the id + "#validation") become validation products: their
training and eval rows are dropped, and their words, sentence embedding and
attributes are blanked in the catalogue split, as the held-out products' are.
The held-out products stay as the benchmark has them and are never asked.
The Trainer (`trainer.run.run_fn`) trains on the rest and exports; the
benchmark's queries, built from the validation products, rank those products
only (`quality.text_to_image_precision`). Each run gives precision@10 over the
benchmark's 50 queries and over the query of every (colour, article type) pair
that 10 or more validation products have.

The Trainer's configuration is that of `--config` and `--set`
(mmfuse/config.py), with `--epochs` (default 20, the carve's protocol) as
`--set trainer.epochs=N` and the older `--settings '{"embedding_dim": 128}'`
(Trainer settings as JSON) as `--set trainer.embedding_dim=128`; a `--set`
given explicitly wins over both. Each `--variant` (overrides separated by
spaces; "" is the configuration as given) is trained once per seed of
`--seeds` (default: trainer.seed), and the table, a row per variant and a
column per seed, replaces the `fashion-validation` section of `--results`.
"""
import argparse
import collections
import glob
import json
import os
import shlex
import shutil
import sys
import time
from typing import Collection, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs

from benchmarks import quality, results
from dataset.contract import Dataset, read_dataset
from evaluation import rankers
from mmfuse.config import Config, ConfigError, flag_overrides, load_config, settings_of
from trainer.run import run_fn
from transform import features as f

VALIDATION_FRACTION = 0.2
WIDE_MIN_PRODUCTS = 10
EPOCHS = 20
SPLITS = ("train", "eval", "catalog", "users")
# The item text the model reads: blanked, as an empty title and attributes
# are by the Transform.
TEXT_TOKENS = (f.ITEM_TOKENS, f.ATTRIBUTE_TOKENS)
TEXT_EMBEDDING = f.ITEM_TEXT_EMBEDDING


def validation_products(catalogue: Dataset) -> Dict[str, Dict[str, str]]:
    """Id -> true attributes of the validation products: trained on by the
    benchmark (not held out), with a photo."""
    return {item.item_id: dict(item.attributes) for item in catalogue.items.values()
            if item.image_path and not quality.is_held_out(item.item_id)
            and quality.md5_share(item.item_id + "#validation") < VALIDATION_FRACTION}


def carve(examples_dir: str, out_dir: str, item_indices: Collection[int]) -> Dict[str, int]:
    """Copies the transformed splits to OUT_DIR/Split-<name>/part.gz with the
    rows of `item_indices` dropped from train and eval and their text blanked
    in the catalogue. Returns how many rows each split kept, dropped, blanked."""
    counts = collections.Counter()
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for split in SPLITS:
        files = sorted(tf.io.gfile.glob(os.path.join(examples_dir, f"Split-{split}", "*")))
        if not files:
            raise FileNotFoundError(f"no transformed examples in {examples_dir}/Split-{split}")
        os.makedirs(os.path.join(out_dir, f"Split-{split}"), exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(out_dir, f"Split-{split}", "part.gz"), options) as out:
            for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
                example = tf.train.Example.FromString(record.numpy())
                feature = example.features.feature
                index = feature[f.ITEM_INDEX].int64_list.value[0] if f.ITEM_INDEX in feature else 0
                if index in item_indices and split in ("train", "eval"):
                    counts[f"{split}_dropped"] += 1
                    continue
                if index in item_indices and split == "catalog":
                    for name in TEXT_TOKENS:
                        tokens = feature[name].int64_list.value
                        tokens[:] = [0] * len(tokens)
                    del feature[TEXT_EMBEDDING].float_list.value[:]
                    counts["catalog_blanked"] += 1
                counts[split] += 1
                out.write(example.SerializeToString())
    return dict(counts)


def _newest(transform_dir: str, artifact: str) -> str:
    runs = glob.glob(os.path.join(transform_dir, artifact, "*"))
    if not runs:
        raise FileNotFoundError(f"no {artifact} under {transform_dir}: run benchmarks.quality "
                                "--datasets fashion with this --out first")
    return max(runs, key=lambda path: int(os.path.basename(path)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fashion_validation",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the benchmarks.quality run's --out")
    parser.add_argument("--config", metavar="FILE.yaml", help="the Trainer's configuration")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one setting (repeatable)")
    parser.add_argument("--epochs", type=int, default=EPOCHS,
                        help="shorthand for --set trainer.epochs=N (default %(default)s)")
    parser.add_argument("--settings", default="{}",
                        help="older shorthand: Trainer settings as JSON, e.g. "
                             "'{\"embedding_dim\": 128}'")
    parser.add_argument("--variant", dest="variants", action="append",
                        metavar="'KEY=VALUE ...'",
                        help="a variant of the configuration to compare (repeatable; '' is the "
                             "configuration as given; default: that one alone)")
    parser.add_argument("--seeds", type=quality._seeds,
                        help="comma-separated Trainer seeds, each variant trained once per seed "
                             "(default: trainer.seed)")
    parser.add_argument("--fashion-limit", type=int,
                        help="the --fashion-limit of the benchmarks.quality run, if it had one")
    parser.add_argument("--results", default=results.DEFAULT_RESULTS, metavar="FILE",
                        help="Markdown file whose fashion-validation section is replaced "
                             "(default: benchmarks/RESULTS.md)")
    return parser


def base_overrides(options) -> List[str]:
    """`--epochs` and `--settings` as `--set`s, then the `--set`s given, which win."""
    try:
        trainer = json.loads(options.settings)
    except ValueError as error:
        raise ConfigError(f"--settings is not JSON: {error}") from None
    if not isinstance(trainer, dict):
        raise ConfigError(f"--settings takes a JSON object of Trainer settings, not {trainer!r}")
    return [f"trainer.epochs={options.epochs}",
            *flag_overrides([(f"trainer.{key}", value) for key, value in trainer.items()]),
            *options.overrides]


def run_configs(options) -> List[Tuple[str, List[Tuple[int, Config]]]]:
    """(variant label, [(seed, configuration)]) for every run asked for, all
    checked before the first one trains."""
    base = base_overrides(options)
    seeds = options.seeds or [load_config(options.config, base).trainer.seed]
    runs = []
    for variant in options.variants or [""]:
        overrides = shlex.split(variant)
        runs.append((variant or "as configured", [
            (seed, load_config(options.config, base + overrides + [f"trainer.seed={seed}"]))
            for seed in seeds]))
    return runs


def trainer_config(config: Config) -> Dict[str, Dict]:
    """The Trainer's `custom_config` for `config`, as the pipeline passes it."""
    return {"trainer": settings_of(config.trainer), "export": settings_of(config.export)}


Figures = Tuple[Optional[float], Optional[float]]


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None


def results_table(rows: Dict[str, Dict[int, Figures]], seeds: Sequence[int]) -> str:
    """A row per variant, a column per seed and the mean: precision@10 over
    the 50 pairs / over the pairs with WIDE_MIN_PRODUCTS+ products ("-": no
    such pair)."""
    def cell(pair) -> str:
        return " / ".join("-" if value is None else f"{value:.3f}" for value in pair)
    table = []
    for label, by_seed in rows.items():
        figures = [by_seed[seed] for seed in seeds]
        mean = tuple(_mean(values) for values in zip(*figures))
        table.append([label, *map(cell, figures), *([cell(mean)] if len(seeds) > 1 else [])])
    return results.markdown_table(
        ["variant", *(f"seed {seed}" for seed in seeds), *(["mean"] if len(seeds) > 1 else [])],
        table)


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = _parser().parse_args(argv)
    try:
        runs = run_configs(options)
    except ConfigError as error:
        print(f"benchmarks.fashion_validation: error: {error}", file=sys.stderr)
        return 2
    started, date, machine = time.time(), results.today(), results.machine()
    catalogue_dir = quality._fashion_dir(options)
    transform_dir = os.path.join(options.out, "fashion", "runs", "pipeline", "Transform")
    graph = _newest(transform_dir, "transform_graph")
    examples = _newest(transform_dir, "transformed_examples")
    products = validation_products(read_dataset(os.path.join(options.out, "data", catalogue_dir),
                                                check_images=False))
    position = {item_id.decode(): index + 1 for index, item_id in
                enumerate(tft.TFTransformOutput(graph).vocabulary_by_name(f.ITEM_VOCABULARY))}
    work = os.path.join(options.out, "fashion-validation")
    counts = carve(examples, os.path.join(work, "examples"), {position[item] for item in products})
    print(f"validation products: {len(products)}; rows {json.dumps(counts)}", flush=True)

    split = os.path.join(work, "examples", "Split-{}", "*").format
    figures: Dict[str, Dict[int, Figures]] = {}
    queries = wide_queries = 0
    for index, (label, configs) in enumerate(runs):
        for seed, config in configs:
            serving_dir = os.path.join(work, "serving", f"{index}-seed{seed}")
            shutil.rmtree(serving_dir, ignore_errors=True)
            run_started = time.time()
            tf.keras.backend.clear_session()
            run_fn(FnArgs(train_files=[split("train"), split("catalog"), split("users")],
                          eval_files=[split("eval")], transform_graph_path=graph,
                          serving_model_dir=serving_dir,
                          model_run_dir=os.path.join(work, "logs", f"{index}-seed{seed}"),
                          custom_config=trainer_config(config)))
            ranker = rankers.SavedModelRanker(serving_dir)
            result = quality.text_to_image_precision(ranker, products)
            # Every pair with enough products for a full top 10: about three times
            # the benchmark's queries, so less of a figure is which pairs were asked.
            wide = quality.text_to_image_precision(ranker, products,
                                                   min_products=WIDE_MIN_PRODUCTS)
            queries, wide_queries = result["queries"], wide["queries"]
            figures.setdefault(label, {})[seed] = (result["precision@10"], wide["precision@10"])
            print(json.dumps({"variant": label, "seed": seed,
                              "precision@10": result["precision@10"],
                              "queries": result["queries"],
                              f"precision@10, pairs of {WIDE_MIN_PRODUCTS}+": wide["precision@10"],
                              "wide_queries": wide_queries,
                              "validation_products": len(products),
                              "train_s": round(time.time() - run_started)}), flush=True)
    seeds = [seed for seed, _ in runs[0][1]]
    command = ".venv/bin/python -m benchmarks.fashion_validation " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    results.write_section(options.results, "fashion-validation", results.render_section(
        "Fashion validation carve (benchmarks/fashion_validation.py)", command,
        [results_table(figures, seeds)],
        measured=results.measured_line(date, results.commit(), machine, time.time() - started),
        notes=[f"Precision@10 of text -> image over the {len(products):,} validation products: "
               f"the {queries} most frequent (colour, article type) pairs / the "
               f"{wide_queries} pairs with {WIDE_MIN_PRODUCTS}+ products."]))
    print("reproduce: " + command)
    print(f"results: {options.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

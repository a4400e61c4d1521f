"""Fashion text -> image on a validation carve of the training products: for
comparing model changes without looking at the benchmark's held-out products.

    .venv/bin/python -m benchmarks.fashion_validation --out /tmp/qbf4 \\
        [--epochs 20] [--settings '{"embedding_dim": 128}']

It needs an earlier `benchmarks.quality --datasets fashion --out OUT` run: it
reads that run's converted catalogue (OUT/data/fashion) and its newest
Transform output. Another 20% of the products with a photo that the benchmark
trains on (md5 of the id + "#validation") become validation products: their
training and eval rows are dropped, and their words, sentence embedding and
attributes are blanked in the catalogue split, as the held-out products' are.
The held-out products stay as the benchmark has them and are never asked.
The Trainer (`trainer.run.run_fn`, with `--settings` over its defaults) trains
on the rest and exports; the benchmark's queries, built from the validation
products, rank those products only (`quality.text_to_image_precision`). It
prints precision@10 over the benchmark's 50 queries and over the query of
every (colour, article type) pair that 10 or more validation products have.
"""
import argparse
import collections
import glob
import json
import os
import shlex
import sys
import time
from typing import Collection, Dict, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs

from benchmarks import quality
from dataset.contract import Dataset, read_dataset
from evaluation import rankers
from trainer.run import run_fn
from transform import features as f

VALIDATION_FRACTION = 0.2
WIDE_MIN_PRODUCTS = 10
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the benchmarks.quality run's --out")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--settings", default="{}", help="Trainer settings (JSON) over the defaults")
    options = parser.parse_args(argv)
    settings = json.loads(options.settings)

    transform_dir = os.path.join(options.out, "fashion", "runs", "pipeline", "Transform")
    graph = _newest(transform_dir, "transform_graph")
    examples = _newest(transform_dir, "transformed_examples")
    products = validation_products(read_dataset(os.path.join(options.out, "data", "fashion"),
                                                     check_images=False))
    position = {item_id.decode(): index + 1 for index, item_id in
                enumerate(tft.TFTransformOutput(graph).vocabulary_by_name(f.ITEM_VOCABULARY))}
    work = os.path.join(options.out, "fashion-validation")
    counts = carve(examples, os.path.join(work, "examples"), {position[item] for item in products})
    print(f"validation products: {len(products)}; rows {json.dumps(counts)}", flush=True)

    split = os.path.join(work, "examples", "Split-{}", "*").format
    serving_dir = os.path.join(work, "serving")
    started = time.time()
    run_fn(FnArgs(train_files=[split("train"), split("catalog"), split("users")],
                  eval_files=[split("eval")], transform_graph_path=graph,
                  serving_model_dir=serving_dir, model_run_dir=os.path.join(work, "logs"),
                  custom_config={"epochs": options.epochs, **settings}))
    ranker = rankers.SavedModelRanker(serving_dir)
    result = quality.text_to_image_precision(ranker, products)
    # Every pair with enough products for a full top 10: about three times
    # the benchmark's queries, so less of a figure is which pairs were asked.
    wide = quality.text_to_image_precision(ranker, products, min_products=WIDE_MIN_PRODUCTS)
    print(json.dumps({"settings": settings, "epochs": options.epochs,
                      "precision@10": round(result["precision@10"], 4),
                      "queries": result["queries"],
                      f"precision@10, pairs of {WIDE_MIN_PRODUCTS}+": round(wide["precision@10"], 4),
                      "wide_queries": wide["queries"], "validation_products": len(products),
                      "train_s": round(time.time() - started)}))
    print("reproduce: .venv/bin/python -m benchmarks.fashion_validation "
          + shlex.join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

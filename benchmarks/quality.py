"""Quality benchmark: the model's variants against the baselines on the real data sets.

    .venv/bin/python -m benchmarks.quality [--datasets movielens,movielens-validation,fashion,
                                                       home-depot,online-retail]
        [--variants popularity,own-history,ease,ease+buy-again,bm25,id,text,image,fusion,
                    fusion+buy-again,fusion-towers] [--epochs 5]
        [--config FILE.yaml] [--set section.key=value ...] [--seeds 42]
        [--out runs/benchmark] [--data-root ../shared/data] [--skip-runs]
        [--results benchmarks/RESULTS.md]

Per data set it converts the raw data into OUT/data/<data set> (once), runs each
variant, prints one table per protocol (with the wall time of training and of
evaluating) and, last, the command that reproduces them; OUT/quality.json keeps
the figures, and the data set's section of RESULTS.md (`--results`) is replaced
by these tables with their command, date, commit and machine.

Variants. Baselines, fitted on the train split of the data set's split (random;
online-retail: last): `popularity`, `own-history` (the user's own past items,
latest first, then popularity), `ease` (L2 500), `ease+buy-again` (EASE with the
user's past items mixed in as the exported `recommend` mixes them, the model
fitted on the train rows), `bm25` (search over item text). Models, each
`mmfuse run --data D --out OUT/<data set>/runs` in a subprocess (log in
OUT/<data set>/<variant>.log) with the configuration of `--config` and `--set`
(mmfuse/config.py; `--epochs E` is `--set trainer.epochs=E`) and the variant's
`trainer.modalities`, and then evaluated on the model that run trained (its
`candidate_model`, blessed or not: the gate compares each variant with the one
before it, which is not what a benchmark asks; `gate.min_recall` is 0 so that
no run stops on it): `id` (modalities id: the plain TFRS two-tower model),
`text`, `image`, `fusion` (id,text,image), each with `export.buy_again` false
(the towers' ranking alone), and `fusion+buy-again` (fusion whose `recommend`
mixes in the user's past items, trainer/repeat_buying.py); `fusion-towers` is
the fusion+buy-again run's model ranked by its towers alone (`recommend`
without the buy-again mix, as `export.buy_again` false serves it; no second
run, and its train_s is that run's). The variants share one run
directory, so TFX's cache runs ExampleGen and Transform (the encoders) once per
data set.
`--seeds 42,7` trains each model variant once per seed (`trainer.seed`: the
seed changes the Trainer's initialisation, dropout and shuffling, not the
split) and its row gives the mean over the seeds, each seed's first figure in
the note: on fashion's 50 queries two seeds of one model differ by a few
hundredths, more than some of the changes a table is read for.
`--skip-runs` evaluates what the logged earlier runs trained.

Protocols (all figures from evaluation/, see evaluation/evaluate.py):

- movielens (MovieLens-100K, random split): recommendation recall@10/20/100,
  ndcg@10/20, coverage@100, averaged over held-out ratings; once with each
  user's train items excluded from their lists, once without (the TFRS
  tutorial's protocol and the pipeline Evaluator's).
- movielens-validation (not in the default list): the same protocols on a
  validation carve, MovieLens's train rows alone split 80/20 again, on which
  settings are chosen (the eval split's figures are only reported).
- fashion (44k products, no interactions): text -> image retrieval. A fixed 20%
  of the products that have an image (md5 of the id) are held out: the
  benchmark writes the dataset variant OUT/data/fashion-text-hidden in which
  their title AND attribute cells are empty (attributes feed the item tower's
  text modality, and the query words are attribute values, so leaving them
  would let text match text), keeping only the image. The pipeline trains a
  catalogue-only dataset on each product as a search for itself, by its title
  and by one to three of its attribute values (dataset/contract.py), so it
  sees only the other 80% in training, while every held-out product is in the
  catalogue through its image alone. The query form below is one of the forms
  those attribute searches take; no held-out product's attributes are used.
  Queries: "<colour> <article type>" for the 50 most frequent (colour, article
  type) pairs among the held-out products.
  Each query ranks the held-out products only (the ranker scores all of them;
  the top 10 are kept): precision@10 = share of those 10 with both the colour
  and the article type of the query (from the original catalogue). "chance" is
  the share of held-out products that match, averaged over the queries.
  Image search: the photos of 500 held-out products (fixed by md5 of the id)
  are asked (`image_search`) over the whole catalogue; precision@10 = share of
  the top 10, the photo's own product left out, with both its colour and its
  article type. "chance" is the share of the other products that match.
- home-depot (search relevance judgements, anonymous queries; the random split
  splits by query text, so every eval query is unseen): judged re-ranking
  nDCG@10 (each eval query's judged products ordered by the ranker, gain =
  relevance 1-3), and over the whole catalogue recall@100 and nDCG@10 with the
  products judged relevance >= 2.5 as the relevant ones. Popularity is close to
  a random order here (most products are judged once), a reference point for
  the judged nDCG, whose floor is high with gains 1-3.
- online-retail (UCI Online Retail, not in the default list; `pipeline.split`
  last): each customer's last purchase (every line of their latest invoice
  time) is held out; recall@k over the held-out lines with past items allowed
  in the lists, also apart for the lines that repeat an item of the customer's
  train rows (recall@20_repeat) and for the others (recall@20_new).
- sample (the embedded sample dataset; not in the default list): the
  recommendation protocols and search, a quick smoke test of this script.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import results
from dataset import pseudonyms
from dataset.contract import Dataset, read_dataset
from dataset.converters import FASHION_ATTRIBUTES, convert, write_dataset
from dataset.sample import write_sample_dataset
from evaluation import rankers
from evaluation.evaluate import evaluate, split_rows
from evaluation.metrics import DEFAULT_KS
from mmfuse.config import Config, ConfigError, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINES = ("popularity", "own-history", "ease", "ease+buy-again", "bm25")
MODEL_MODALITIES = {"id": "id", "text": "text", "image": "image", "fusion": "id,text,image",
                    "fusion+buy-again": "id,text,image"}
# Only this variant's `recommend` mixes in the user's past items (export.buy_again).
BUY_AGAIN_VARIANTS = ("fusion+buy-again",)
# The towers' own ranking of another variant's model (its `recommend` without
# the buy-again mix: what export.buy_again=false serves), so one run gives both.
TOWERS_OF = {"fusion-towers": "fusion+buy-again"}
VARIANTS = BASELINES + tuple(MODEL_MODALITIES) + tuple(TOWERS_OF)
EASE_L2 = 500.0
HELD_OUT_FRACTION = 0.2
FASHION_QUERIES = 50
FASHION_PHOTO_QUERIES = 500
HOME_DEPOT_RELEVANT = 2.5
# Runs with the configuration's own seed keep the log name without a seed.
DEFAULT_SEED = Config().trainer.seed


@dataclasses.dataclass
class Table:
    title: str
    columns: List[str]
    rows: List[Dict[str, object]] = dataclasses.field(default_factory=list)

    def header(self) -> List[str]:
        return ["variant", *self.columns, "train_s", "eval_s", "note"]

    def cells(self) -> List[List[str]]:
        return [[_cell(row.get(name), name) for name in self.header()] for row in self.rows]

    def render(self) -> str:
        cells = [self.header()] + self.cells()
        widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
        lines = ["  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip()
                 for line in cells]
        return "\n".join([self.title, *lines])

    def markdown(self) -> str:
        return f"**{self.title}**\n\n" + results.markdown_table(self.header(), self.cells())


def _cell(value, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if column.endswith("_s") else f"{value:.4f}"
    return str(value)


@dataclasses.dataclass
class Protocol:
    title: str
    question: str  # rankers.RECOMMEND, SEARCH or IMAGE_SEARCH
    columns: List[str]
    measure: Callable[[Dataset, rankers.Ranker], Dict[str, object]]
    # The figures of a ranker that picks at random, first in the table.
    chance: Optional[Callable[[], Dict[str, object]]] = None


@dataclasses.dataclass
class DataSpec:
    prepare: Callable[[argparse.Namespace], str]  # -> the dataset directory runs and evaluation use
    protocols: List[Protocol]
    not_applicable: Dict[str, str]  # variant -> why
    split: str = "random"  # the runs' pipeline.split and the baselines' train rows


# --- Data ---------------------------------------------------------------------------------

def _converted(options, name: str, converter: str, source: str, limit: Optional[int] = None) -> str:
    """OUT/data/<name>, converted from the raw data set on first use."""
    dst = os.path.join(options.out, "data", name)
    if not os.path.exists(os.path.join(dst, "items.csv")):
        _progress(f"converting {source} into {dst}")
        convert(converter, os.path.join(options.data_root, source), dst, limit=limit)
    return dst


def _fashion_dir(options) -> str:
    """OUT/data/fashion, or OUT/data/fashion-first<N> with --fashion-limit N."""
    return "fashion" if options.fashion_limit is None else f"fashion-first{options.fashion_limit}"


def _prepare_movielens(options) -> str:
    return _converted(options, "movielens", "movielens-100k", "movielens-100k")


def _prepare_movielens_validation(options) -> str:
    """A validation carve of MovieLens: only the rows of its random split's
    train side, split 80/20 again, so settings are chosen without the eval
    rows. The random split hashes (user, item, time): every time one second
    later keeps each user's order and draws an independent split. (Search
    rows, split by their text, would all stay train: MovieLens has none.)"""
    original = _prepare_movielens(options)
    dst = os.path.join(options.out, "data", "movielens-validation")
    if os.path.exists(os.path.join(dst, "interactions.csv")):
        return dst
    dataset = read_dataset(original, check_images=False)
    train, _ = split_rows(dataset, "random")
    items = [{"item_id": item.item_id, "title": item.title, "description": item.description,
              "image": link_image(item.image_path, dst) if item.image_path else "",
              **dict(item.attributes)} for item in dataset.items.values()]
    rows = [{"user_id": row.user_id, "item_id": row.item_id, "query": row.query,
             "timestamp": "" if row.timestamp is None else row.timestamp + 1,
             "rating": "" if row.rating is None else row.rating} for row in train]
    attributes = sorted({name for item in dataset.items.values() for name, _ in item.attributes})
    write_dataset(dst, items, attributes, rows, ("user_id", "item_id", "timestamp", "rating", "query"))
    return dst


def _prepare_online_retail(options) -> str:
    return _converted(options, "online-retail", "online-retail", "online-retail")


def _prepare_home_depot(options) -> str:
    return _converted(options, "home-depot", "home-depot", "home-depot-search-relevance")


def _prepare_sample(options) -> str:
    dst = os.path.join(options.out, "data", "sample")
    if not os.path.exists(os.path.join(dst, "items.csv")):
        write_sample_dataset(dst)
    return dst


def md5_share(text: str) -> float:
    """A fixed, evenly spread number in [0, 1) for `text`."""
    return int.from_bytes(hashlib.md5(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def is_held_out(item_id: str) -> bool:
    return md5_share(item_id) < HELD_OUT_FRACTION


def link_image(src: str, dataset_dir: str) -> str:
    """Hard-links (or copies, across file systems) the image `src` into
    `dataset_dir`/images and returns its path there: a dataset refuses image
    paths that lead out of its directory."""
    relative = "images/" + os.path.basename(src)
    dst = os.path.join(dataset_dir, relative)
    if not os.path.exists(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:  # another file system
            shutil.copyfile(src, dst)
    return relative


def _prepare_fashion(options) -> str:
    """The catalogue with the held-out products' text and attributes hidden
    (the module docstring), its images hard-linked in."""
    original = _converted(options, _fashion_dir(options), "fashion-small",
                          "fashion-product-images-small", options.fashion_limit)
    dst = os.path.join(options.out, "data", _fashion_dir(options) + "-text-hidden")
    if os.path.exists(os.path.join(dst, "items.csv")):
        return dst
    os.makedirs(dst, exist_ok=True)
    rows = []
    for item in read_dataset(original, check_images=False).items.values():
        image = link_image(item.image_path, dst) if item.image_path else ""
        row = {"item_id": item.item_id, "title": item.title, "image": image,
               **dict(item.attributes)}
        if item.image_path and is_held_out(item.item_id):
            row.update({"title": "", **{name: "" for name in FASHION_ATTRIBUTES}})
        rows.append(row)
    write_dataset(dst, rows, FASHION_ATTRIBUTES)
    return dst


# --- Protocols ----------------------------------------------------------------------------

RECOMMENDATION_COLUMNS = ["recall@10", "recall@20", "recall@100", "ndcg@10", "ndcg@20",
                          "coverage@100"]


def _recommendation(exclude_seen: bool) -> Callable:
    def measure(dataset, ranker):
        result = evaluate(dataset, ranker, "random", DEFAULT_KS, exclude_seen)
        return {name: result.get(name) for name in RECOMMENDATION_COLUMNS}
    return measure


RETAIL_COLUMNS = ["recall@20", "recall@20_repeat", "recall@20_new", "recall@10", "recall@100",
                  "ndcg@20", "repeat_rows", "new_rows"]


def _last_purchase(dataset, ranker):
    result = evaluate(dataset, ranker, "last", DEFAULT_KS)
    return {name: result.get(name) for name in RETAIL_COLUMNS}


def _search(dataset, ranker):
    search = evaluate(dataset, ranker, "random", DEFAULT_KS).get("search", {})
    return {name: search.get(name) for name in ("recall@10", "recall@100", "ndcg@10",
                                                "judged_ndcg@10")}


def _home_depot(dataset, ranker):
    search = evaluate(dataset, ranker, "random", (10, 100),
                      min_rating=HOME_DEPOT_RELEVANT)["search"]
    return {"judged_ndcg@10": search.get("judged_ndcg@10"), "recall@100": search.get("recall@100"),
            "ndcg@10": search.get("ndcg@10"), "queries": search.get("queries"),
            "judged_queries": search.get("judged_queries")}


def _fashion_original(options) -> Dataset:
    """The catalogue as converted, attributes and all (the model sees the
    held-out products' photos only)."""
    return _read_once(os.path.join(options.out, "data", _fashion_dir(options)))


@functools.lru_cache(maxsize=None)
def _read_once(dataset_dir: str) -> Dataset:
    return read_dataset(dataset_dir, check_images=False)


def _fashion_held_out(options) -> Dict[str, Dict[str, str]]:
    """The held-out products' ids and true attributes."""
    return {item.item_id: dict(item.attributes) for item in _fashion_original(options).items.values()
            if item.image_path and is_held_out(item.item_id)}


def fashion_queries(products: Dict[str, Dict[str, str]], min_products: Optional[int] = None):
    """(query text, colour, article type) for the FASHION_QUERIES most
    frequent pairs among `products` (id -> true attributes), or, given
    `min_products`, for every pair that many products or more have."""
    pairs = collections.Counter((attributes["colour"], attributes["article_type"])
                                for attributes in products.values()
                                if attributes.get("colour") and attributes.get("article_type"))
    chosen = (pairs.most_common(FASHION_QUERIES) if min_products is None else
              [(pair, count) for pair, count in pairs.most_common() if count >= min_products])
    return [(f"{colour} {article_type}", colour, article_type) for (colour, article_type), _ in chosen]


def _matches(attributes, colour, article_type) -> bool:
    return attributes.get("colour") == colour and attributes.get("article_type") == article_type


def text_to_image_precision(ranker: rankers.Ranker, products: Dict[str, Dict[str, str]],
                            min_products: Optional[int] = None):
    """Each of `fashion_queries(products, min_products)` ranks `products`
    only; precision@10."""
    queries = fashion_queries(products, min_products)
    if not queries:  # too few products for any pair: no figure, not a zero
        return {"precision@10": None, "queries": 0, "held_out": len(products)}
    candidates = list(products)
    scores = ranker.score_search([text for text, _, _ in queries], [""] * len(queries),
                                 [candidates] * len(queries))
    precision = []
    for (_, colour, article_type), item_scores in zip(queries, scores):
        order = sorted(range(len(candidates)), key=lambda i: -item_scores[i])[:10]
        precision.append(sum(_matches(products[candidates[i]], colour, article_type)
                             for i in order) / 10)
    return {"precision@10": sum(precision) / len(precision), "queries": len(queries),
            "held_out": len(products)}


def _fashion_text_to_image(options):
    def measure(dataset, ranker):
        return text_to_image_precision(ranker, _fashion_held_out(options))
    return measure


def _fashion_chance(options) -> Dict[str, object]:
    held_out = _fashion_held_out(options)
    queries = fashion_queries(held_out)
    shares = [sum(_matches(attributes, colour, article_type) for attributes in held_out.values())
              / len(held_out) for _, colour, article_type in queries]
    return {"precision@10": sum(shares) / len(shares), "queries": len(queries),
            "held_out": len(held_out), "note": "share of held-out products matching"}


def _fashion_photo_queries(options) -> List[str]:
    """Every held-out product with a colour and an article type, in a fixed
    order (md5 of the id), the first FASHION_PHOTO_QUERIES of them."""
    held_out = _fashion_held_out(options)
    asked = [item_id for item_id, attributes in held_out.items()
             if attributes.get("colour") and attributes.get("article_type")]
    asked.sort(key=lambda item_id: hashlib.md5(item_id.encode("utf-8")).hexdigest())
    return asked[:FASHION_PHOTO_QUERIES]


def _fashion_photo_to_look_alikes(options):
    def measure(dataset, ranker):
        original = _fashion_original(options)
        asked = _fashion_photo_queries(options)
        photos = []
        for item_id in asked:
            with open(original.items[item_id].image_path, "rb") as photo:
                photos.append(photo.read())
        # The photo's own product is in the catalogue (by that photo alone): one more, then left out.
        ranked = ranker.image_search(photos, 11)
        precision = []
        for item_id, found in zip(asked, ranked.item_ids):
            attributes = dict(original.items[item_id].attributes)
            others = [other for other in found if other != item_id][:10]
            precision.append(sum(_matches(dict(original.items[other].attributes),
                                          attributes["colour"], attributes["article_type"])
                                 for other in others) / 10)
        return {"precision@10": sum(precision) / len(precision), "queries": len(asked)}
    return measure


def _fashion_photo_chance(options) -> Dict[str, object]:
    original = _fashion_original(options)
    pairs = collections.Counter((attributes.get("colour"), attributes.get("article_type"))
                                for attributes in (dict(item.attributes)
                                                   for item in original.items.values()))
    asked = _fashion_photo_queries(options)
    shares = []
    for item_id in asked:
        attributes = dict(original.items[item_id].attributes)
        shares.append((pairs[(attributes["colour"], attributes["article_type"])] - 1)
                      / (len(original.items) - 1))
    return {"precision@10": sum(shares) / len(shares), "queries": len(asked),
            "note": "share of the other products matching"}


def _specs(options) -> Dict[str, DataSpec]:
    recommendation = [
        Protocol("random split, seen items excluded", rankers.RECOMMEND, RECOMMENDATION_COLUMNS,
                 _recommendation(True)),
        Protocol("random split, seen items not excluded (TFRS tutorial, Evaluator)",
                 rankers.RECOMMEND, RECOMMENDATION_COLUMNS, _recommendation(False)),
    ]
    return {
        "movielens": DataSpec(_prepare_movielens, recommendation,
                              {"bm25": "no search rows"}),
        "movielens-validation": DataSpec(_prepare_movielens_validation, recommendation,
                                         {"bm25": "no search rows"}),
        "online-retail": DataSpec(_prepare_online_retail, [
            Protocol("each customer's last purchase held out, past items allowed",
                     rankers.RECOMMEND, RETAIL_COLUMNS, _last_purchase)],
            {"bm25": "no search rows", "image": "no images"}, split="last"),
        "fashion": DataSpec(_prepare_fashion, [
            Protocol("text -> image over held-out products", rankers.SEARCH,
                     ["precision@10", "queries", "held_out"], _fashion_text_to_image(options),
                     functools.partial(_fashion_chance, options)),
            Protocol("photo -> look-alikes over the whole catalogue", rankers.IMAGE_SEARCH,
                     ["precision@10", "queries"], _fashion_photo_to_look_alikes(options),
                     functools.partial(_fashion_photo_chance, options))],
            {name: "no interactions" for name in ("popularity", "own-history", "ease",
                                                  "ease+buy-again",
                                                  "fusion+buy-again", "fusion-towers")}
            | {"bm25": "held-out products have no text"}),
        "home-depot": DataSpec(_prepare_home_depot, [
            Protocol(f"unseen queries (whole catalogue: relevant = relevance >= "
                     f"{HOME_DEPOT_RELEVANT})", rankers.SEARCH,
                     ["judged_ndcg@10", "recall@100", "ndcg@10", "queries", "judged_queries"],
                     _home_depot)],
            {"ease": "anonymous queries, no users; 55k items", "image": "no images",
             "ease+buy-again": "anonymous queries, no users; 55k items",
             "own-history": "anonymous queries, no users",
             "fusion+buy-again": "anonymous queries, no users",
             "fusion-towers": "anonymous queries, no users"}),
        "sample": DataSpec(_prepare_sample, recommendation + [
            Protocol("search", rankers.SEARCH, ["recall@10", "recall@100", "ndcg@10", "judged_ndcg@10"], _search)],
            {}),
    }


# --- Variants -----------------------------------------------------------------------------

def _baseline(variant: str, dataset: Dataset, split: str, config: Config) -> rankers.Ranker:
    """A baseline fitted on the split's train rows; `config` sets what it shares
    with the model runs (the buy-again mix's weight)."""
    if variant == "bm25":
        return rankers.BM25(dataset.items)
    train, _ = split_rows(dataset, split)
    if variant == "popularity":
        return rankers.Popularity(list(dataset.items), train)
    if variant == "own-history":
        return rankers.OwnHistory(list(dataset.items), train)
    if variant == "ease+buy-again":
        return rankers.BuyAgainMix(rankers.EASE(list(dataset.items), train, l2=EASE_L2), train,
                                   config.export.new_item_weight)
    return rankers.EASE(list(dataset.items), train, l2=EASE_L2)


def _model_run(options, name: str, data_dir: str, variant: str, seed: int, split: str = "random"):
    """(the variant's trained model path or None, training seconds, note)."""
    out = os.path.join(options.out, name, "runs")
    suffix = "" if seed == DEFAULT_SEED else f"-seed{seed}"
    log_path = os.path.join(options.out, name, f"{variant}{suffix}.log")
    seconds = None
    if not options.skip_runs:
        os.makedirs(out, exist_ok=True)
        command = [sys.executable, "-m", "mmfuse", "run", "--data", data_dir, "--out", out,
                   *(["--config", options.config] if options.config else []),
                   *[argument for override in run_overrides(options, variant, seed, split)
                     for argument in ("--set", override)]]
        _progress(f"{name}/{variant}: {shlex.join(command)} (log: {log_path})")
        started = time.time()
        with open(log_path, "w") as log:
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        seconds = time.time() - started
        if code not in (0, 3):
            return None, seconds, f"mmfuse run failed (exit {code}, see {log_path})"
    summary = _last_json_line(log_path)
    if summary is None or not summary.get("candidate_model"):
        return None, seconds, f"no finished run (see {log_path})"
    return summary["candidate_model"], seconds or summary.get("wall_time_s"), ""


def user_overrides(options) -> List[str]:
    """The `--set`s the user asked for, `--epochs` first so that a `--set` wins."""
    return ([] if options.epochs is None else [f"trainer.epochs={options.epochs}"]) + list(
        options.overrides)


def run_overrides(options, variant: str, seed: int, split: str = "random") -> List[str]:
    """The `--set`s of one model run: the user's, then what the benchmark fixes
    (the variant's modalities and buy-again, the seed, no release floor, no
    warm start: the variants share a run directory, and each must train from
    scratch, not from the one before; the data set's split unless random), so
    those win."""
    return user_overrides(options) + [
        f"trainer.modalities={MODEL_MODALITIES[variant]}",
        f"export.buy_again={str(variant in BUY_AGAIN_VARIANTS).lower()}",
        f"trainer.seed={seed}", "gate.min_recall=0", "trainer.warm_start=false"] + (
            [] if split == "random" else [f"pipeline.split={split}"])


def _last_json_line(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        for line in reversed(handle.read().splitlines()):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:
                    return None
    return None


def _measure(spec: DataSpec, dataset: Dataset, ranker: rankers.Ranker, train_s, note: str,
             label: str) -> List[Dict[str, object]]:
    """One row per protocol: `ranker`'s figures."""
    rows = []
    for protocol in spec.protocols:
        if protocol.question not in ranker.questions:
            rows.append({"train_s": train_s, "note": f"{ranker.name} does not {protocol.question}"})
            continue
        started = time.time()
        values = protocol.measure(dataset, ranker)
        rows.append({**values, "train_s": train_s, "eval_s": time.time() - started,
                     "note": note})
        _progress(f"{label}, {protocol.title}: {json.dumps(values)}")
    return rows


def mean_over_seeds(rows_by_seed: Dict[int, Dict[str, object]], first_column: str) -> Dict[str, object]:
    """One protocol's rows of one variant, a row per seed -> one row.

    Figures are averaged over the seeds that gave them; the note lists each
    seed's `first_column` and says which seeds gave no figures, and why.
    The per-seed rows stay under "seeds" (quality.json).
    """
    if len(rows_by_seed) == 1:
        return dict(next(iter(rows_by_seed.values())))
    measured = {seed: row for seed, row in rows_by_seed.items()
                if row.get(first_column) is not None}
    row: Dict[str, object] = {"seeds": {str(seed): row for seed, row in rows_by_seed.items()}}
    for name in {name for values in measured.values() for name in values}:
        values = [values[name] for values in measured.values() if values.get(name) is not None]
        if values and all(isinstance(value, float) for value in values):
            row[name] = sum(values) / len(values)
        elif values and all(value == values[0] for value in values):
            row[name] = values[0]
    notes = [f"mean of {len(measured)} seed{'s' if len(measured) > 1 else ''}: "
             + ", ".join(f"{seed} {values[first_column]:.4f}" for seed, values in measured.items())
             if measured else "no seed gave figures"]
    notes += [f"seed {seed}: {values.get('note')}" for seed, values in rows_by_seed.items()
              if seed not in measured]
    row["note"] = "; ".join(notes)
    return row


# (data set, variant, seed) -> what `_model_run` gave, so that a run serves
# both its variant and its towers' variant.
_TRAINED: Dict[tuple, tuple] = {}


def _run_variant(options, name: str, spec: DataSpec, data_dir: str, dataset: Dataset,
                 variant: str, tables: List[Table]) -> None:
    def add(values):
        for table, row in zip(tables, values):
            table.rows.append({"variant": variant, **row})

    if variant in spec.not_applicable:
        add([{"note": f"n/a: {spec.not_applicable[variant]}"}] * len(tables))
        return
    if variant in BASELINES:
        started = time.time()
        try:
            ranker = _baseline(variant, dataset, spec.split,
                               load_config(options.config, user_overrides(options)))
        except ValueError as error:
            add([{"note": f"n/a: {error}"}] * len(tables))
            return
        add(_measure(spec, dataset, ranker, time.time() - started, "", f"{name}/{variant}"))
        return
    rows_by_seed = {}
    base = TOWERS_OF.get(variant, variant)
    for seed in options.seeds:
        key = (name, base, seed)
        if key not in _TRAINED:
            _TRAINED[key] = _model_run(options, name, data_dir, base, seed, spec.split)
        model, train_s, note = _TRAINED[key]
        if model is None:
            rows_by_seed[seed] = [{"train_s": train_s, "note": note}] * len(tables)
            continue
        # The run's user key: the model knows users by their pseudonyms.
        key_file = load_config(options.config,
                               run_overrides(options, base, seed)).pipeline.user_key_file
        user_key = pseudonyms.load_key(key_file)
        ranker = (rankers.TowersRanker(model, user_key=user_key) if variant in TOWERS_OF
                  else rankers.SavedModelRanker(model, user_key=user_key))
        label = f"{name}/{variant}" + ("" if len(options.seeds) == 1 else f" (seed {seed})")
        rows_by_seed[seed] = [{**row, "model": ranker.path}
                              for row in _measure(spec, dataset, ranker, train_s, "", label)]
    add([mean_over_seeds({seed: rows[index] for seed, rows in rows_by_seed.items()},
                         protocol.columns[0])
         for index, protocol in enumerate(spec.protocols)])


def _progress(message: str) -> None:
    print(f"[quality] {message}", file=sys.stderr, flush=True)


def _names(text: str, known: Sequence[str], option: str) -> List[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{option} takes a comma-separated subset of {','.join(known)}, not {text!r}")
    return names


def _seeds(text: str) -> List[int]:
    try:
        seeds = [int(seed) for seed in text.split(",") if seed.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds takes distinct comma-separated whole numbers, "
                                         f"not {text!r}")
    return seeds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality",
                                     description=__doc__.split("\n")[0])
    datasets = ("movielens", "movielens-validation", "fashion", "home-depot", "online-retail", "sample")
    parser.add_argument("--datasets", default="movielens,fashion,home-depot",
                        type=lambda text: _names(text, datasets, "--datasets"))
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        type=lambda text: _names(text, VARIANTS, "--variants"))
    parser.add_argument("--epochs", type=int,
                        help="shorthand for --set trainer.epochs=N (default: the configuration's)")
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="configuration of the model runs (mmfuse/config.py)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one setting of the model runs, "
                        "e.g. --set trainer.embedding_dim=128 (repeatable)")
    parser.add_argument("--out", default=os.path.join(REPO, "runs", "benchmark"))
    parser.add_argument("--data-root", default=os.environ.get(
        "MMFUSE_DATA_DIR", os.path.join(os.path.dirname(REPO), "shared", "data")),
                        help="the raw data sets (default: $MMFUSE_DATA_DIR or ../shared/data)")
    parser.add_argument("--fashion-limit", type=int,
                        help="fashion: only the first N products, for a quick look (the protocol "
                             "as specified uses all of them)")
    parser.add_argument("--seeds", type=_seeds,
                        help="comma-separated Trainer seeds: each model variant is trained once "
                             "per seed and its row is the mean (default: trainer.seed)")
    parser.add_argument("--skip-runs", action="store_true",
                        help="evaluate the models that the logged earlier runs into OUT trained, instead of training")
    parser.add_argument("--results", default=results.DEFAULT_RESULTS, metavar="FILE",
                        help="Markdown file whose section of each data set is replaced by its "
                             "tables (default: benchmarks/RESULTS.md)")
    return parser


SECTION_TITLES = {"movielens": "MovieLens-100K: recommendation",
                  "movielens-validation": "MovieLens-100K validation carve: recommendation",
                  "fashion": "Fashion: text -> image and image search",
                  "home-depot": "Home Depot: search",
                  "online-retail": "Online Retail: buying again", "sample": "The embedded sample"}


def reproduce_command(options, datasets: Sequence[str]) -> str:
    return shlex.join([
        ".venv/bin/python", "-m", "benchmarks.quality", "--datasets", ",".join(datasets),
        "--variants", ",".join(options.variants),
        *([] if options.epochs is None else ["--epochs", str(options.epochs)]),
        *([] if options.config is None else ["--config", options.config]),
        *[argument for override in options.overrides for argument in ("--set", override)],
        "--out", options.out, "--data-root", options.data_root,
        *([] if options.seeds == [DEFAULT_SEED] else ["--seeds", ",".join(map(str, options.seeds))]),
        *([] if options.fashion_limit is None else ["--fashion-limit", str(options.fashion_limit)]),
        *(["--skip-runs"] if options.skip_runs else [])])


def _write_results(options, name: str, tables: List[Table], measured: str) -> None:
    """Replaces the data set's section of `--results` (a --fashion-limit run
    has a section of its own, so it never replaces the whole catalogue's)."""
    section = _fashion_dir(options) if name == "fashion" else name
    title = SECTION_TITLES[name] + ("" if section == name else f" ({section})")
    results.write_section(options.results, f"quality-{section}", results.render_section(
        f"{title} (benchmarks/quality.py)", reproduce_command(options, [name]),
        [table.markdown() for table in tables], measured=measured,
        notes=["Protocols: the docstring of benchmarks/quality.py. train_s: the variant's "
               "whole `mmfuse run` (the first model variant's includes ExampleGen and "
               "Transform, which the others reuse) or the baseline's fitting."]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = _parser().parse_args(argv)
    options.out = os.path.abspath(options.out)
    try:  # a bad setting stops the benchmark now, not in its first model run
        options.seeds = options.seeds or [
            load_config(options.config, user_overrides(options)).trainer.seed]
        for variant in set(options.variants) & set(MODEL_MODALITIES):
            for seed in options.seeds:
                load_config(options.config, run_overrides(options, variant, seed))
    except ConfigError as error:
        print(f"benchmarks.quality: error: {error}", file=sys.stderr)
        return 2
    specs = _specs(options)
    commit = results.commit()
    figures = {}
    for name in options.datasets:
        spec = specs[name]
        started, date, machine = time.time(), results.today(), results.machine()
        try:
            data_dir = spec.prepare(options)
            dataset = read_dataset(data_dir, check_images=False)
        except ValueError as error:  # DatasetError included: a missing or broken raw data set
            print(f"benchmarks.quality: error: {name}: {error}", file=sys.stderr)
            return 2
        tables = [Table(f"{name}: {protocol.title}", protocol.columns)
                  for protocol in spec.protocols]
        for table, protocol in zip(tables, spec.protocols):
            if protocol.chance:
                table.rows.append({"variant": "chance", **protocol.chance()})
        for variant in options.variants:
            _run_variant(options, name, spec, data_dir, dataset, variant, tables)
        for table in tables:
            print(table.render() + "\n", flush=True)
        figures[name] = [dataclasses.asdict(table) for table in tables]
        _write_results(options, name, tables,
                       results.measured_line(date, commit, machine, time.time() - started))
    os.makedirs(options.out, exist_ok=True)
    with open(os.path.join(options.out, "quality.json"), "w") as handle:
        json.dump(figures, handle, indent=1)
    print("reproduce: " + reproduce_command(options, options.datasets))
    print(f"results: {options.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Freshness benchmark: request-time history and catalogue updates without retraining.

    .venv/bin/python -m benchmarks.live [--datasets movielens,fashion] [--epochs 5]
        [--fashion-epochs 10] [--fashion-limit 10000] [--recent 5]
        [--out runs/live] [--data-root ../shared/data] [--skip-runs]
        [--results benchmarks/RESULTS.md]

movielens (issue #27 part 1): every user's last rating (by time) is held out,
and the `--recent` ratings just before it are what the user did since the
model was trained: known at request time, in no training row (the dataset
written to OUT/data/movielens-live has neither). One `mmfuse run` (fusion)
trains on the rest. Each user's held-out movie is then ranked among all movies,
the user's other movies left out, by `recommend` (the history training saw)
and by `recommend_with_history` with the recent ratings (newest first);
then as an anonymous visitor (user_id ""), with those recent items and with
none. recall@k: share of users whose held-out movie is in the top k.

fashion (issue #27 part 3): the first `--fashion-limit` products and
quality.py's held-out 20% (photo only: their title and attributes hidden, as in
its text -> image protocol). "trained with": one `mmfuse run` on the whole
catalogue (quality.py's fashion protocol). "added after training": a run on
the catalogue without the held-out products, which `mmfuse catalog add` then
adds (serving/catalog.py). Both are measured with quality.py's own fashion
measures: text -> image precision@10 over the held-out products and image
search precision@10 with held-out products' photos over the whole catalogue.
"""
from __future__ import annotations

import argparse
import collections
import os
import shlex
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence


from benchmarks import quality, results
from dataset.contract import read_dataset
from dataset.converters import FASHION_ATTRIBUTES, write_dataset

REPO = results.REPO
DATASETS = ("movielens", "fashion")
KS = (10, 100)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.live",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        type=lambda text: quality._names(text, DATASETS, "--datasets"))
    parser.add_argument("--epochs", type=int, default=5, help="MovieLens run's trainer.epochs")
    parser.add_argument("--fashion-epochs", type=int, default=10,
                        help="the fashion runs' trainer.epochs")
    parser.add_argument("--fashion-limit", type=int, default=10000,
                        help="fashion: the first N products")
    parser.add_argument("--recent", type=int, default=5,
                        help="MovieLens: ratings before the held-out one known at request time")
    parser.add_argument("--out", default=os.path.join(REPO, "runs", "live"))
    parser.add_argument("--data-root", default=os.environ.get(
        "MMFUSE_DATA_DIR", os.path.join(os.path.dirname(REPO), "shared", "data")))
    parser.add_argument("--skip-runs", action="store_true",
                        help="measure what the logged earlier runs into OUT trained")
    parser.add_argument("--results", default=results.DEFAULT_RESULTS, metavar="FILE")
    return parser


def _run_options(options, epochs: int) -> argparse.Namespace:
    """What quality.py's helpers read (`_model_run`, the fashion data)."""
    return argparse.Namespace(out=options.out, data_root=options.data_root, config=None,
                              overrides=[], epochs=epochs, skip_runs=options.skip_runs,
                              fashion_limit=options.fashion_limit)


def _trained(run_options, name: str, data_dir: str) -> str:
    model, seconds, note = quality._model_run(run_options, name, data_dir, "fusion",
                                              quality.DEFAULT_SEED)
    if model is None:
        raise RuntimeError(f"{name}: {note}")
    quality._progress(f"{name}: trained in {seconds or 0:.0f} s: {model}")
    return model


# --- MovieLens: request-time history --------------------------------------------------

def live_split(dataset, recent: int):
    """(training rows, {user: (held-out item, recent items newest first, items to leave
    out of the user's list)}): each user's last rating held out, the `recent` before it
    known at request time only."""
    by_user = collections.defaultdict(list)
    for position, row in enumerate(dataset.interactions):
        by_user[row.user_id].append((row.timestamp or 0, position, row))
    training, asked = [], {}
    for user, rows in by_user.items():
        rows = [row for _, _, row in sorted(rows, key=lambda entry: entry[:2])]
        if len(rows) < recent + 2:
            training.extend(rows)
            continue
        held_out, before = rows[-1], rows[-1 - recent:-1]
        training.extend(rows[:-1 - recent])
        seen = {row.item_id for row in rows[:-1]} - {held_out.item_id}
        asked[user] = (held_out.item_id, [row.item_id for row in reversed(before)], seen)
    return training, asked


def _prepare_movielens_live(options) -> tuple:
    source = quality._converted(_run_options(options, options.epochs), "movielens",
                                "movielens-100k", "movielens-100k")
    dataset = read_dataset(source, check_images=False)
    training, asked = live_split(dataset, options.recent)
    dst = os.path.join(options.out, "data", f"movielens-live{options.recent}")
    if not os.path.exists(os.path.join(dst, "interactions.csv")):
        items = []
        for item in dataset.items.values():
            items.append({"item_id": item.item_id, "title": item.title,
                          "description": item.description,
                          "image": quality.link_image(item.image_path, dst) if item.image_path else "",
                          **dict(item.attributes)})
        attributes = sorted({name for item in dataset.items.values() for name, _ in item.attributes})
        write_dataset(dst, items, attributes,
                      [{"user_id": row.user_id, "item_id": row.item_id, "timestamp": row.timestamp,
                        "rating": row.rating} for row in training],
                      ("user_id", "item_id", "timestamp", "rating"))
    return dst, asked


def recall_of(model, user_ids: Sequence[str], recent: Optional[Sequence[Sequence[str]]],
              truths: Sequence[tuple], batch: int = 64) -> Dict[str, float]:
    """recall@KS of each row's held-out item (`truths`: (item, items to leave
    out)) by `recommend` (`recent` None) or `recommend_with_history`."""
    import tensorflow as tf

    hits = {k: 0 for k in KS}
    unknown = 0
    every = tf.constant(2**31 - 1, tf.int32)  # the signatures clip k to the catalogue
    for start in range(0, len(user_ids), batch):
        rows = range(start, min(start + batch, len(user_ids)))
        ids = tf.constant([user_ids[i] for i in rows])
        if recent is None:
            answer = model.signatures["recommend"](user_id=ids, k=every)
        else:
            width = max([len(recent[i]) for i in rows])
            padded = [list(recent[i]) + [""] * (width - len(recent[i])) for i in rows]
            answer = model.signatures["recommend_with_history"](
                user_id=ids, k=every,
                recent_item_ids=tf.constant(padded, tf.string, shape=[len(rows), width]))
            unknown += int(answer["unknown_recent_items"].numpy().sum())
        for i, ranked in zip(rows, answer["item_ids"].numpy()):
            held_out, seen = truths[i]
            order = [item for item in (item.decode() for item in ranked) if item not in seen]
            rank = order.index(held_out) + 1 if held_out in order else len(order) + 1
            for k in KS:
                hits[k] += rank <= k
    figures = {f"recall@{k}": hits[k] / len(user_ids) for k in KS}
    figures["unknown recent items"] = unknown
    return figures


def movielens(options) -> str:
    data_dir, asked = _prepare_movielens_live(options)
    model_path = _trained(_run_options(options, options.epochs), "live-movielens", data_dir)
    import tensorflow as tf

    from serving import model_store  # noqa: F401  (registers the text ops)

    model = tf.saved_model.load(model_path)
    users = sorted(asked)
    history = [asked[user][1] for user in users]
    truths = [(asked[user][0], asked[user][2]) for user in users]
    anonymous = [""] * len(users)
    rows = [
        ("`recommend` (history as trained)", recall_of(model, users, None, truths)),
        ("`recommend_with_history`, the recent items", recall_of(model, users, history, truths)),
        ("anonymous visitor, no items", recall_of(model, anonymous, [[]] * len(users), truths)),
        ("anonymous visitor, the recent items", recall_of(model, anonymous, history, truths)),
    ]
    header = ["question", *[f"recall@{k}" for k in KS]]
    cells = [[name, *[f"{figures[f'recall@{k}']:.4f}" for k in KS]] for name, figures in rows]
    for name, figures in rows:
        print(f"movielens: {name}: {figures}", flush=True)
    return (f"{len(users)} users, each one's last rating held out and the {options.recent} "
            f"before it given at request time (in no training row); all "
            f"{len(read_dataset(data_dir, check_images=False).items)} movies ranked, the "
            f"user's other movies left out; {options.epochs} epochs, fusion.\n\n"
            + results.markdown_table(header, cells))


# --- Fashion: catalogue updates -------------------------------------------------------

def _prepare_fashion_known_and_new(options, whole_dir: str) -> tuple:
    """(dataset without the held-out products, items.csv of the held-out ones):
    the rows of `whole_dir` (quality.py's text-hidden catalogue)."""
    known_dir = whole_dir + "-known"
    new_dir = whole_dir + "-new"
    if not os.path.exists(os.path.join(new_dir, "items.csv")):
        known, new = [], []
        for item in read_dataset(whole_dir, check_images=False).items.values():
            held_out = bool(item.image_path) and quality.is_held_out(item.item_id)
            directory = new_dir if held_out else known_dir
            (new if held_out else known).append({
                "item_id": item.item_id, "title": item.title,
                "image": quality.link_image(item.image_path, directory) if item.image_path else "",
                **dict(item.attributes)})
        write_dataset(known_dir, known, FASHION_ATTRIBUTES)
        write_dataset(new_dir, new, FASHION_ATTRIBUTES)
    return known_dir, os.path.join(new_dir, "items.csv")


def _fashion_figures(run_options, model_path: str) -> List[str]:
    from evaluation import rankers

    ranker = rankers.SavedModelRanker(model_path)
    text = quality.text_to_image_precision(ranker, quality._fashion_held_out(run_options))
    image = quality._fashion_photo_to_look_alikes(run_options)(None, ranker)
    return [f"{text['precision@10']:.3f}", f"{image['precision@10']:.3f}"]


def fashion(options) -> str:
    from serving import catalog

    run_options = _run_options(options, options.fashion_epochs)
    whole_dir = quality._prepare_fashion(run_options)
    known_dir, new_items = _prepare_fashion_known_and_new(options, whole_dir)
    trained_with = _trained(run_options, "live-fashion-whole", whole_dir)
    trained_without = _trained(run_options, "live-fashion-known", known_dir)
    base = os.path.join(options.out, "live-fashion-known", "model-base")
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(trained_without, os.path.join(base, "1"))
    started = time.time()
    added = catalog.add_items(base, new_items)
    add_s = time.time() - started
    quality._progress(f"fashion: catalog add: {added} in {add_s:.0f} s")
    rows = [["trained with (one run on the whole catalogue)", *_fashion_figures(run_options, trained_with), ""],
            ["added after training (`mmfuse catalog add`)",
             *_fashion_figures(run_options, base),
             f"{added['added']} products embedded and added in {add_s:.0f} s"]]
    chance = quality._fashion_chance(run_options)["precision@10"]
    photo_chance = quality._fashion_photo_chance(run_options)["precision@10"]
    rows.insert(0, ["chance (share of products that match)", f"{chance:.4f}", f"{photo_chance:.4f}", ""])
    for row in rows:
        print("fashion: " + " | ".join(row), flush=True)
    catalogue = len(read_dataset(whole_dir, check_images=False).items)
    return (f"The first {catalogue:,} products; the {added['added']:,} held-out products "
            f"(quality.py's 20%, photo only) either in the training catalogue or added after "
            f"training; {options.fashion_epochs} epochs, fusion. Text -> image: quality.py's "
            "\"<colour> <article type>\" queries over the held-out products; image search: "
            "held-out products' photos over the whole catalogue; precision@10.\n\n"
            + results.markdown_table(["held-out products", "text -> image", "image search", "note"],
                                     rows))


def reproduce_command(options, dataset: str) -> str:
    return shlex.join([
        ".venv/bin/python", "-m", "benchmarks.live", "--datasets", dataset,
        *(["--epochs", str(options.epochs), "--recent", str(options.recent)]
          if dataset == "movielens" else
          ["--fashion-epochs", str(options.fashion_epochs),
           "--fashion-limit", str(options.fashion_limit)]),
        "--out", options.out, "--data-root", options.data_root,
        *(["--skip-runs"] if options.skip_runs else [])])


TITLES = {"movielens": "MovieLens-100K: request-time history (benchmarks/live.py)",
          "fashion": "Fashion: products added without retraining (benchmarks/live.py)"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = _parser().parse_args(argv)
    options.out = os.path.abspath(options.out)
    commit = results.commit()
    for name in options.datasets:
        started, date, machine = time.time(), results.today(), results.machine()
        try:
            table = movielens(options) if name == "movielens" else fashion(options)
        except (ValueError, RuntimeError) as error:
            print(f"benchmarks.live: error: {name}: {error}", file=sys.stderr)
            return 2
        print(table + "\n", flush=True)
        results.write_section(options.results, f"live-{name}", results.render_section(
            TITLES[name], reproduce_command(options, name), [table],
            measured=results.measured_line(date, commit, machine, time.time() - started)))
        print("reproduce: " + reproduce_command(options, name))
    print(f"results: {options.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

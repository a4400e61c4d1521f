"""A synthetic catalogue of any size (10k, 100k, 1M items), for measuring what
the pipeline costs as a shop grows (benchmarks/pipeline_cost.py).

``write_synthetic_dataset(dst, num_items)`` writes a dataset directory (the
format of ``dataset.contract``) built like the embedded sample
(dataset/sample.py: its colours, kinds, materials, silhouettes, queries and
ratings), but around latent clusters so that it stays learnable at any size:

* items belong to clusters of about ``ITEMS_PER_CLUSTER``; a cluster fixes a
  brand (a made-up word, one per cluster), a colour, a kind and a material;
  these are the item's attributes, its title says them ("Lumaro vintage red
  ceramic mug LM-004821") and its photo is the kind's silhouette in the
  colour (sample.draw_item). The model code makes every title distinct, so the
  text encoder sees as many texts as a real catalogue, not a few hundred;
* shares of items lack text or a photo, as in the sample;
* each user prefers one or two clusters and draws ``PREFERRED_SHARE`` of their
  interactions from them (by item popularity), the rest from the whole
  catalogue; some rows carry a search query naming the item's attributes;
  ratings are higher inside the preferred clusters.

It streams: items, photos and interactions are written in chunks as they are
drawn, and only a few numbers per item (cluster, popularity) stay in memory,
so 1M items (about 4 GB of photos at the defaults) fit a small machine. Photos
go into subdirectories of 1,000. The output depends only on the arguments (the
legacy RandomState, as in the sample): the same seed gives the same files.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
from typing import Optional, Sequence

import numpy as np

from dataset import sample
from dataset.converters import IMAGES_DIR, INTERACTIONS_FILE, ITEMS_FILE

ITEMS_PER_CLUSTER = 50
ATTRIBUTES = ("brand", "colour", "kind", "material")
ITEM_COLUMNS = ("item_id", "title", "description", "image", *ATTRIBUTES)
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "query")
# JPEG like most shops' photos (and 3x smaller than the noisy PNGs); a share of
# PNG keeps both decoders in the measured path.
JPEG_FRACTION = 0.9
USERS_PER_ITEM = 0.5
MEAN_INTERACTIONS = 10  # per user; at least sample.MIN_INTERACTIONS
PREFERRED_SHARE = sample.PREFERRED_SHARE
CHUNK = 10_000  # items or users drawn and written at a time
IMAGES_PER_DIRECTORY = 1000
# Syllables of the made-up brand names: a cluster's index in base 20.
SYLLABLES = ("lu", "ma", "ro", "ke", "vi", "sa", "no", "ta", "pe", "ri",
             "do", "fa", "zu", "mi", "ko", "la", "be", "ni", "go", "te")


def brand_name(cluster: int, num_clusters: int) -> str:
    """A pronounceable word, distinct for every cluster below `num_clusters`."""
    width = max(2, math.ceil(math.log(max(num_clusters, 2), len(SYLLABLES))))
    digits = []
    for _ in range(width):
        cluster, digit = divmod(cluster, len(SYLLABLES))
        digits.append(SYLLABLES[digit])
    return "".join(reversed(digits)).capitalize()


def make_clusters(rng: np.random.RandomState, num_clusters: int) -> list[dict]:
    """Each cluster's brand, colour, kind, material and style."""
    colours = list(sample.COLOURS)
    clusters = []
    for index in range(num_clusters):
        kind = sample.KINDS[rng.randint(len(sample.KINDS))]
        clusters.append({
            "brand": brand_name(index, num_clusters),
            "colour": colours[rng.randint(len(colours))],
            "kind": kind,
            "material": sample.MATERIALS[kind][rng.randint(len(sample.MATERIALS[kind]))],
            "style": sample.STYLES[rng.randint(len(sample.STYLES))],
        })
    return clusters


def write_synthetic_dataset(dst: str, num_items: int, seed: int = 0,
                            num_users: Optional[int] = None,
                            mean_interactions: float = MEAN_INTERACTIONS,
                            images: bool = True) -> dict:
    """Writes the catalogue into `dst` (items.csv, images/, interactions.csv);
    returns the counts written, as `converters.write_dataset` does, plus the
    seed and the number of clusters. `num_users` defaults to
    `USERS_PER_ITEM` x `num_items`; `images=False` writes no photos (every item
    then has text), for tests of the rest."""
    if num_items < 10:
        raise ValueError(f"a synthetic catalogue needs at least 10 items, not {num_items}")
    num_users = max(1, round(USERS_PER_ITEM * num_items)) if num_users is None else num_users
    if num_users < 1:
        raise ValueError(f"a synthetic catalogue needs at least one user, not {num_users}")
    if mean_interactions < sample.MIN_INTERACTIONS:
        raise ValueError(f"mean_interactions must be at least {sample.MIN_INTERACTIONS}, "
                         f"not {mean_interactions}")
    rng = np.random.RandomState(seed)
    num_clusters = max(1, round(num_items / ITEMS_PER_CLUSTER))
    clusters = make_clusters(rng, num_clusters)
    os.makedirs(dst, exist_ok=True)
    # Per item, only its cluster and popularity are kept for the interactions.
    cluster_of = rng.randint(num_clusters, size=num_items).astype(np.int32)
    popularity = rng.lognormal(0.0, 0.6, size=num_items)
    counts = {"items": num_items, "images": 0, "interactions": 0, "users": 0, "search_rows": 0}
    with open(os.path.join(dst, ITEMS_FILE), "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ITEM_COLUMNS, restval="")
        writer.writeheader()
        for start in range(0, num_items, CHUNK):
            rows = _item_rows(rng, dst, clusters, cluster_of, start,
                              min(start + CHUNK, num_items), images)
            counts["images"] += sum(1 for row in rows if row.get("image"))
            writer.writerows(rows)
    _write_interactions(rng, dst, clusters, cluster_of, popularity, num_users,
                        mean_interactions, counts)
    return {**counts, "seed": seed, "clusters": num_clusters}


def _item_rows(rng: np.random.RandomState, dst: str, clusters: list[dict],
               cluster_of: np.ndarray, start: int, stop: int, images: bool) -> list[dict]:
    """Items start..stop-1, their photos drawn and saved."""
    size = stop - start
    modality = rng.random_sample(size)  # below IMAGE_ONLY: no text; above 1 - TEXT_ONLY: no photo
    styled = rng.random_sample(size) < 0.5
    described = rng.random_sample(size) < sample.DESCRIPTION_FRACTION
    jpeg = rng.random_sample(size) < JPEG_FRACTION
    rows = []
    for offset in range(size):
        index = start + offset
        cluster = clusters[cluster_of[index]]
        item_id = f"s{index:07d}"
        row = {"item_id": item_id, **{name: cluster[name] for name in ATTRIBUTES}}
        has_text = not images or modality[offset] >= sample.IMAGE_ONLY_FRACTION
        has_image = images and modality[offset] < 1 - sample.TEXT_ONLY_FRACTION
        if has_text:
            words = [cluster["brand"], cluster["colour"], cluster["material"], cluster["kind"],
                     f"{cluster['brand'][:2].upper()}-{index:06d}"]
            if styled[offset]:
                words.insert(1, cluster["style"])
            row["title"] = " ".join(words)
            if described[offset]:
                row["description"] = (f"A {cluster['style']} {cluster['kind']} by "
                                      f"{cluster['brand']}, made of {cluster['material']}, "
                                      f"in {cluster['colour']}.")
        if has_image:
            folder = f"{IMAGES_DIR}/{index // IMAGES_PER_DIRECTORY:04d}"
            os.makedirs(os.path.join(dst, folder), exist_ok=True)
            row["image"] = f"{folder}/{item_id}.{'jpg' if jpeg[offset] else 'png'}"
            sample.save_image(sample.draw_item(rng, cluster["kind"], sample.COLOURS[cluster["colour"]]),
                              os.path.join(dst, row["image"]))
        rows.append(row)
    return rows


class _Sampler:
    """Draws items by popularity from the whole catalogue or from one cluster:
    items sorted by cluster, one cumulative popularity over them."""

    def __init__(self, cluster_of: np.ndarray, popularity: np.ndarray, num_clusters: int):
        self.order = np.argsort(cluster_of, kind="stable")
        self.cumulative = np.cumsum(popularity[self.order])
        bounds = np.searchsorted(cluster_of[self.order], np.arange(num_clusters + 1))
        self.low = np.concatenate([[0.0], self.cumulative])[bounds[:-1]]
        self.high = np.concatenate([[0.0], self.cumulative])[bounds[1:]]

    def draw(self, rng: np.random.RandomState, count: int, cluster: Optional[int] = None) -> np.ndarray:
        low, high = (0.0, self.cumulative[-1]) if cluster is None else (
            self.low[cluster], self.high[cluster])
        points = low + rng.random_sample(count) * (high - low)
        positions = np.minimum(np.searchsorted(self.cumulative, points, side="right"),
                               len(self.order) - 1)
        return self.order[positions]


def _write_interactions(rng: np.random.RandomState, dst: str, clusters: list[dict],
                        cluster_of: np.ndarray, popularity: np.ndarray, num_users: int,
                        mean_interactions: float, counts: dict) -> None:
    """Each user's rows (one user after another, times increasing), then the
    anonymous searches; written as they are drawn."""
    sampler = _Sampler(cluster_of, popularity, len(clusters))
    occupied = np.flatnonzero(sampler.high > sampler.low)  # clusters that drew items
    width = len(str(num_users - 1))
    searches = 0
    end_time = sample.START_TIME
    with open(os.path.join(dst, INTERACTIONS_FILE), "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(INTERACTION_COLUMNS)
        for user in range(num_users):
            chosen = rng.choice(occupied, size=min(rng.randint(1, 3), len(occupied)), replace=False)
            count = sample.MIN_INTERACTIONS + rng.poisson(mean_interactions - sample.MIN_INTERACTIONS)
            inside = rng.binomial(count, PREFERRED_SHARE)
            picks = np.concatenate(
                [sampler.draw(rng, part, cluster) for cluster, part in
                 zip(chosen, np.bincount(rng.randint(len(chosen), size=inside),
                                         minlength=len(chosen)))]
                + [sampler.draw(rng, count - inside)])
            picks = picks[np.sort(np.unique(picks, return_index=True)[1])]  # once each
            rng.shuffle(picks)
            times = (sample.START_TIME + rng.randint(0, 30 * sample.DAY)
                     + np.cumsum(rng.randint(600, 2 * sample.DAY, size=len(picks))))
            end_time = max(end_time, int(times[-1]))
            preferred = np.isin(cluster_of[picks], chosen)
            searched = rng.random_sample(len(picks)) < sample.QUERY_FRACTION
            user_id = f"u{user:0{width}d}"
            for item, timestamp, liked, search in zip(picks, times, preferred, searched):
                cluster = clusters[cluster_of[item]]
                writer.writerow([user_id, f"s{item:07d}", int(timestamp),
                                 sample.rating(rng, liked),
                                 sample.query(rng, cluster) if search else ""])
            counts["interactions"] += len(picks)
            searches += int(searched.sum())
        counts["users"] = num_users
        anonymous = sampler.draw(rng, round(sample.ANONYMOUS_FRACTION * searches))
        for item in anonymous:
            writer.writerow(["", f"s{item:07d}", rng.randint(sample.START_TIME, end_time + 1),
                             sample.rating(rng, True), sample.query(rng, clusters[cluster_of[item]])])
        counts["interactions"] += len(anonymous)
        counts["search_rows"] = searches + len(anonymous)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dst", help="the dataset directory to write")
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(write_synthetic_dataset(args.dst, args.items, args.seed, args.users)))


if __name__ == "__main__":
    main()

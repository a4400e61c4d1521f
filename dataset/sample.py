"""A small generated dataset, so that the project runs with no outside data.

``write_sample_dataset(dst)`` writes a dataset directory (the format of
``dataset.contract``) of home and fashion products, each with a colour, a kind
(lamp, mug, chair...) and a material. Every signal a model should find is
really there:

* titles say all three ("Vintage red ceramic mug");
* each image is a 64x64 drawing whose dominant colour is the item's colour and
  whose shape depends on its kind, with per-item jitter and pixel noise;
* about 10% of items have no text (image only) and 10% no image (text only),
  so the image and text encoders each carry items the other cannot;
* every user prefers one or two clusters (a colour or a kind) and draws most of
  their interactions from them, so a model that learns those preferences beats
  popularity by a wide margin; ratings are higher inside the preferred clusters;
* about 15% of rows carry a search query naming the chosen item's attributes
  ("red mug", "ceramic lamp"), plus a few anonymous search rows with no user.

The output depends only on the arguments: the same seed gives byte-identical
files (given the same Pillow and zlib), another seed a different dataset.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from dataset.converters import IMAGES_DIR, write_dataset

COLOURS = {
    "red": (200, 35, 35),
    "orange": (235, 130, 25),
    "yellow": (230, 205, 40),
    "green": (45, 150, 60),
    "blue": (40, 80, 200),
    "purple": (125, 50, 165),
    "black": (25, 25, 25),
    "white": (240, 240, 240),
}
# The materials that make sense for each kind.
MATERIALS = {
    "lamp": ("metal", "glass", "wooden"),
    "mug": ("ceramic", "glass", "enamel"),
    "chair": ("wooden", "metal", "plastic"),
    "shirt": ("cotton", "linen", "silk"),
    "vase": ("ceramic", "glass", "porcelain"),
    "bag": ("leather", "canvas", "cotton"),
}
KINDS = tuple(MATERIALS)
STYLES = ("classic", "modern", "vintage", "compact", "large", "handmade")
ATTRIBUTES = ("colour", "kind", "material")

# Each kind's silhouette, in coordinates from 0 to 1 across the image: a list of
# (primitive, points[, line width]). A "ring" is an ellipse outline (a handle).
SHAPES = {
    "lamp": [
        ("polygon", [(0.3, 0.12), (0.7, 0.12), (0.88, 0.5), (0.12, 0.5)]),
        ("rectangle", [(0.45, 0.5), (0.55, 0.8)]),
        ("rectangle", [(0.28, 0.8), (0.72, 0.9)]),
    ],
    "mug": [
        ("ring", [(0.52, 0.35), (0.88, 0.72)], 0.08),
        ("rectangle", [(0.15, 0.22), (0.65, 0.88)]),
    ],
    "chair": [
        ("rectangle", [(0.25, 0.1), (0.75, 0.48)]),
        ("rectangle", [(0.18, 0.48), (0.82, 0.6)]),
        ("rectangle", [(0.2, 0.6), (0.3, 0.92)]),
        ("rectangle", [(0.7, 0.6), (0.8, 0.92)]),
    ],
    "shirt": [
        ("polygon", [(0.32, 0.12), (0.44, 0.1), (0.56, 0.1), (0.68, 0.12), (0.92, 0.34),
                     (0.8, 0.46), (0.7, 0.38), (0.7, 0.9), (0.3, 0.9), (0.3, 0.38),
                     (0.2, 0.46), (0.08, 0.34)]),
    ],
    "vase": [
        ("ellipse", [(0.22, 0.35), (0.78, 0.92)]),
        ("rectangle", [(0.4, 0.14), (0.6, 0.45)]),
        ("rectangle", [(0.33, 0.08), (0.67, 0.15)]),
    ],
    "bag": [
        ("ring", [(0.3, 0.12), (0.7, 0.62)], 0.07),
        ("rectangle", [(0.12, 0.38), (0.88, 0.9)]),
    ],
}
IMAGE_SIZE = 64
BACKGROUND_GREY = 128
PIXEL_NOISE = 6.0  # standard deviation, in 0-255 units
JPEG_FRACTION = 0.25  # the rest are PNG: the pipeline must read both

TEXT_ONLY_FRACTION = 0.1
IMAGE_ONLY_FRACTION = 0.1
DESCRIPTION_FRACTION = 0.7  # of the items that have text

PREFERRED_SHARE = 0.85  # of a user's interactions, drawn from their clusters
MIN_INTERACTIONS = 5
MEAN_INTERACTIONS = 30
QUERY_FRACTION = 0.15
ANONYMOUS_FRACTION = 0.1  # anonymous search rows, relative to the users' search rows
START_TIME = 1_600_000_000  # Unix seconds, September 2020
DAY = 86_400


def write_sample_dataset(dst: str, seed: int = 0, num_items: int = 300,
                         num_users: int = 200) -> dict:
    """Writes the sample dataset into ``dst``; returns write_dataset's counts plus the seed."""
    if num_items < 1 or num_users < 1:
        raise ValueError("the sample dataset needs at least one item and one user")
    # The legacy RandomState: its streams are frozen across numpy versions,
    # which Generator's are not, and byte-identical output depends on them.
    rng = np.random.RandomState(seed)
    items = _make_items(rng, num_items)
    _draw_images(rng, items, dst)
    interactions = _make_interactions(rng, items, num_users)
    summary = write_dataset(dst, items, ATTRIBUTES, interactions,
                            ("user_id", "item_id", "timestamp", "rating", "query"))
    return {**summary, "seed": seed}


def _make_items(rng: np.random.RandomState, num_items: int) -> list[dict]:
    """Item rows with attributes, text and image path; fixed shares lack text or image."""
    colours = list(COLOURS)
    order = rng.permutation(num_items).tolist()
    image_only_count = round(IMAGE_ONLY_FRACTION * num_items)
    text_only_count = round(TEXT_ONLY_FRACTION * num_items)
    image_only = set(order[:image_only_count])
    text_only = set(order[image_only_count:image_only_count + text_only_count])
    items = []
    for index in range(num_items):
        colour = colours[rng.randint(len(colours))]
        kind = KINDS[rng.randint(len(KINDS))]
        material = MATERIALS[kind][rng.randint(len(MATERIALS[kind]))]
        style = STYLES[rng.randint(len(STYLES))]
        item_id = f"p{index:04d}"
        item = {"item_id": item_id, "colour": colour, "kind": kind, "material": material}
        extension = "jpg" if rng.random_sample() < JPEG_FRACTION else "png"
        if index not in text_only:
            item["image"] = f"{IMAGES_DIR}/{item_id}.{extension}"
        if index not in image_only:
            # Half the titles lead with a style word, so that titles are not all alike.
            words = [colour, material, kind]
            if rng.random_sample() < 0.5:
                words.insert(0, style)
            item["title"] = " ".join(words).capitalize()
            if rng.random_sample() < DESCRIPTION_FRACTION:
                item["description"] = (f"A {style} {kind} made of {material}, in {colour}."
                                       if rng.random_sample() < 0.5 else
                                       f"This {material} {kind} has a {style} look.")
        items.append(item)
    return items


def _draw_images(rng: np.random.RandomState, items: list[dict], dst: str) -> None:
    """Draws the image of each item that has one, in the format its path names."""
    os.makedirs(os.path.join(dst, IMAGES_DIR), exist_ok=True)
    for item in items:
        if "image" not in item:
            continue
        save_image(draw_item(rng, item["kind"], COLOURS[item["colour"]]),
                   os.path.join(dst, item["image"]))


def save_image(image: Image.Image, path: str) -> None:
    """Saves in the format the path's extension names (.jpg: JPEG, else PNG)."""
    # Explicit encoder settings: the files must not change with Pillow's defaults.
    if path.endswith(".jpg"):
        image.save(path, format="JPEG", quality=90, subsampling=0)
    else:
        image.save(path, format="PNG", compress_level=6)


def draw_item(rng: np.random.RandomState, kind: str, rgb: tuple[int, int, int]) -> Image.Image:
    """The kind's silhouette in (a jittered) ``rgb`` on a grey background, with noise."""
    colour = tuple(int(np.clip(channel + rng.randint(-20, 21), 0, 255)) for channel in rgb)
    grey = BACKGROUND_GREY + rng.randint(-12, 13)
    scale = rng.uniform(0.85, 1.1)
    shift = rng.uniform(-5, 5, size=2)

    def to_pixels(point: tuple[float, float]) -> tuple[float, float]:
        """Unit coordinates to pixels, scaled about the centre, then shifted."""
        x, y = ((np.array(point) - 0.5) * scale + 0.5) * IMAGE_SIZE + shift
        return float(x), float(y)

    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    for primitive, points, *line_width in SHAPES[kind]:
        xy = [to_pixels(p) for p in points]
        if primitive == "polygon":
            draw.polygon(xy, fill=colour)
        elif primitive == "rectangle":
            draw.rectangle(xy, fill=colour)
        elif primitive == "ellipse":
            draw.ellipse(xy, fill=colour)
        else:  # ring
            draw.ellipse(xy, outline=colour, width=round(line_width[0] * scale * IMAGE_SIZE))
    noise = rng.normal(0.0, PIXEL_NOISE, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).round().astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _make_interactions(rng: np.random.RandomState, items: list[dict], num_users: int) -> list[dict]:
    """Each user's interactions, then a few anonymous searches; sorted by time."""
    popularity = rng.lognormal(0.0, 0.6, size=len(items))
    rows = []
    for user in range(num_users):
        rows += _user_rows(rng, f"u{user:04d}", items, popularity)
    searches = sum(1 for row in rows if row["query"])
    end_time = max(row["timestamp"] for row in rows)
    anonymous = rng.choice(len(items), size=round(ANONYMOUS_FRACTION * searches),
                           p=popularity / popularity.sum())
    for index in anonymous:
        item = items[index]
        timestamp = rng.randint(START_TIME, end_time + 1)
        rows.append(_row("", item, timestamp, rating(rng, True), query(rng, item)))
    rows.sort(key=lambda row: (row["timestamp"], row["user_id"], row["item_id"]))
    return rows


def _user_rows(rng: np.random.RandomState, user_id: str, items: list[dict],
               popularity: np.ndarray) -> list[dict]:
    """One user's rows, with increasing timestamps, drawn mostly from one or two clusters."""
    clusters = [("colour", c) for c in COLOURS] + [("kind", k) for k in KINDS]
    chosen = [clusters[c] for c in rng.choice(len(clusters), size=rng.randint(1, 3), replace=False)]
    preferred = np.array([any(item[a] == value for a, value in chosen) for item in items])
    count = min(MIN_INTERACTIONS + rng.poisson(MEAN_INTERACTIONS - MIN_INTERACTIONS), len(items))
    weights = _user_weights(popularity, preferred)
    picks = rng.choice(len(items), size=count, replace=False, p=weights)
    times = START_TIME + rng.randint(0, 30 * DAY) + np.cumsum(rng.randint(600, 2 * DAY, size=count))
    rows = []
    for index, timestamp in zip(picks, times):
        searched = query(rng, items[index]) if rng.random_sample() < QUERY_FRACTION else ""
        rows.append(_row(user_id, items[index], timestamp, rating(rng, preferred[index]), searched))
    return rows


def _row(user_id: str, item: dict, timestamp: int, rating: float, query: str) -> dict:
    return {"user_id": user_id, "item_id": item["item_id"], "timestamp": int(timestamp),
            "rating": rating, "query": query}


def _user_weights(popularity: np.ndarray, preferred: np.ndarray) -> np.ndarray:
    """Sampling weights: PREFERRED_SHARE of the mass on the preferred items, by popularity."""
    if preferred.all() or not preferred.any():  # only in tiny datasets
        return popularity / popularity.sum()
    inside = np.where(preferred, popularity, 0.0)
    outside = np.where(preferred, 0.0, popularity)
    return PREFERRED_SHARE * inside / inside.sum() + (1 - PREFERRED_SHARE) * outside / outside.sum()


def rating(rng: np.random.RandomState, preferred: bool) -> float:
    if preferred:
        return float(rng.choice([3, 4, 5], p=[0.1, 0.4, 0.5]))
    return float(rng.choice([1, 2, 3, 4], p=[0.25, 0.35, 0.3, 0.1]))


def query(rng: np.random.RandomState, item: dict) -> str:
    """What a user looking for this item might type: two or three of its attributes."""
    templates = ("{colour} {kind}", "{material} {kind}", "{colour} {material} {kind}")
    return templates[rng.randint(len(templates))].format(**item)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dst", help="the dataset directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-items", type=int, default=300)
    parser.add_argument("--num-users", type=int, default=200)
    args = parser.parse_args(argv)
    summary = write_sample_dataset(args.dst, args.seed, args.num_items, args.num_users)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

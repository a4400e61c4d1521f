"""Tests of the generated sample dataset: the contract, determinism, learnable signals."""
import collections
import csv
import os

import numpy as np
import pytest
from PIL import Image

from dataset import sample as sample_data
from dataset.contract import read_dataset


def read_rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def read_tree(root):
    """Relative path -> bytes of every file under root."""
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("sample"))
    summary = sample_data.write_sample_dataset(dst)
    items = read_rows(os.path.join(dst, "items.csv"))
    interactions = read_rows(os.path.join(dst, "interactions.csv"))
    return dst, summary, items, interactions


def test_contract_columns_and_counts(sample):
    dst, summary, items, interactions = sample
    assert list(items[0]) == [
        "item_id", "title", "description", "image", "colour", "kind", "material"]
    assert list(interactions[0]) == ["user_id", "item_id", "timestamp", "rating", "query"]
    assert len(items) == summary["items"] == 300
    assert len(interactions) == summary["interactions"]
    assert summary["images"] == sum(1 for item in items if item["image"])
    per_user = collections.Counter(row["user_id"] for row in interactions if row["user_id"])
    assert len(per_user) == summary["users"] == 200
    assert min(per_user.values()) >= sample_data.MIN_INTERACTIONS
    assert 25 <= np.mean(list(per_user.values())) <= 35
    # The project's own reader accepts it, images included.
    dataset = read_dataset(dst)
    assert len(dataset.items) == 300 and dataset.report["images skipped"] == 0


def test_attribute_values_and_titles(sample):
    _, _, items, _ = sample
    assert {item["colour"] for item in items} == set(sample_data.COLOURS)
    assert {item["kind"] for item in items} == set(sample_data.KINDS)
    for item in items:
        assert item["material"] in sample_data.MATERIALS[item["kind"]]
        if item["title"]:
            words = f"{item['colour']} {item['material']} {item['kind']}"
            assert item["title"].lower().endswith(words)


def test_interaction_fields(sample):
    _, _, items, interactions = sample
    item_ids = {item["item_id"] for item in items}
    last_time = {}
    for row in interactions:
        assert row["item_id"] in item_ids
        assert float(row["rating"]) in {1.0, 2.0, 3.0, 4.0, 5.0}
        timestamp = int(row["timestamp"])
        if row["user_id"]:
            # Rows are sorted by time, so each user's timestamps must strictly increase.
            assert timestamp > last_time.get(row["user_id"], 0)
            last_time[row["user_id"]] = timestamp


def test_same_seed_gives_identical_files_and_another_seed_does_not(sample, tmp_path):
    dst, _, _, _ = sample
    sample_data.write_sample_dataset(str(tmp_path / "again"), seed=0)
    sample_data.write_sample_dataset(str(tmp_path / "other"), seed=1)
    first = read_tree(dst)
    again, other = read_tree(tmp_path / "again"), read_tree(tmp_path / "other")
    assert first == again
    assert first["items.csv"] != other["items.csv"]
    assert first["interactions.csv"] != other["interactions.csv"]


def test_missing_modality_fractions(sample):
    _, _, items, _ = sample
    image_only = [item for item in items if not item["title"]]
    text_only = [item for item in items if not item["image"]]
    assert len(image_only) == len(text_only) == 30
    assert all(item["image"] for item in image_only), "an item with neither text nor image"
    # A description only ever comes with a title.
    assert all(item["title"] for item in items if item["description"])
    assert sum(1 for item in items if item["description"]) > 100


def nearest_palette_labels(pixels):
    """Per pixel: index into COLOURS, or len(COLOURS) for the grey background."""
    grey = (sample_data.BACKGROUND_GREY,) * 3
    palette = np.array([*sample_data.COLOURS.values(), grey], dtype=float)
    distances = ((pixels[:, :, None, :].astype(float) - palette) ** 2).sum(axis=-1)
    return distances.argmin(axis=-1)


def test_images_decode_and_show_colour_and_kind(sample):
    dst, _, items, _ = sample
    colours = list(sample_data.COLOURS)
    formats = collections.Counter()
    masks, kinds = [], []
    for item in items:
        if not item["image"]:
            continue
        with Image.open(os.path.join(dst, item["image"])) as image:
            formats[image.format] += 1
            assert image.size == (64, 64) and image.mode == "RGB"
            assert image.format == ("JPEG" if item["image"].endswith(".jpg") else "PNG")
            labels = nearest_palette_labels(np.asarray(image))
        foreground = labels[labels < len(colours)]
        assert colours[np.bincount(foreground).argmax()] == item["colour"], item
        masks.append((labels < len(colours)).astype(float).ravel())
        kinds.append(item["kind"])
    assert formats["PNG"] > 0 and formats["JPEG"] > 0
    # The silhouette tells the kind: the nearest kind centroid of the foreground
    # masks is almost always the item's kind.
    masks, kinds = np.array(masks), np.array(kinds)
    names = sorted(set(kinds))
    centroids = np.array([masks[kinds == name].mean(axis=0) for name in names])
    predicted = np.array(names)[((masks[:, None, :] - centroids) ** 2).sum(axis=-1).argmin(axis=1)]
    assert (predicted == kinds).mean() > 0.9


def test_search_rows(sample):
    _, _, items, interactions = sample
    by_id = {item["item_id"]: item for item in items}
    searches = [row for row in interactions if row["query"]]
    assert 0.12 <= len(searches) / len(interactions) <= 0.2
    for row in searches:
        item = by_id[row["item_id"]]
        assert set(row["query"].split()) <= {item["colour"], item["kind"], item["material"]}
        assert row["query"].split()[-1] == item["kind"]
    anonymous = [row for row in interactions if not row["user_id"]]
    assert anonymous and all(row["query"] for row in anonymous)


def items_by_user(items, interactions):
    """User id -> the items of the user's rows, in time order."""
    by_id = {item["item_id"]: item for item in items}
    result = collections.defaultdict(list)
    for row in interactions:
        if row["user_id"]:
            result[row["user_id"]].append(by_id[row["item_id"]])
    return result


def top_cluster_share(user_items):
    """The share of these items that the most common colour or kind covers."""
    return max(
        collections.Counter(item[attribute] for item in user_items).most_common(1)[0][1]
        for attribute in ("colour", "kind")) / len(user_items)


def test_users_prefer_clusters(sample):
    _, _, items, interactions = sample
    history = items_by_user(items, interactions)
    shares = [top_cluster_share(user_items) for user_items in history.values()]
    # The same statistic for users who pick their items uniformly at random.
    rng = np.random.RandomState(0)
    chance = [top_cluster_share([items[i] for i in rng.randint(len(items), size=len(user_items))])
              for user_items in history.values()]
    assert np.mean(shares) > np.mean(chance) + 0.25, (np.mean(shares), np.mean(chance))


def test_cluster_model_beats_popularity(sample):
    """Hold out each user's last item and rank the items the user has not seen:
    by popularity, or by how often the user chose the item's colour and kind
    (popularity breaking ties); the second must hit far more often in its top 10."""
    _, _, items, interactions = sample
    history = items_by_user(items, interactions)
    popularity = collections.Counter(
        item["item_id"] for user_items in history.values() for item in user_items[:-1])
    popularity_hits = cluster_hits = 0
    for user_items in history.values():
        seen, held_out = user_items[:-1], user_items[-1]
        colours = collections.Counter(item["colour"] for item in seen)
        kinds = collections.Counter(item["kind"] for item in seen)
        seen_ids = {item["item_id"] for item in seen}
        candidates = sorted((item for item in items if item["item_id"] not in seen_ids),
                            key=lambda item: (-popularity[item["item_id"]], item["item_id"]))
        by_cluster = sorted(
            candidates, key=lambda item: -(colours[item["colour"]] + kinds[item["kind"]]))
        popularity_hits += held_out in candidates[:10]
        cluster_hits += held_out in by_cluster[:10]
    assert cluster_hits >= 2.5 * popularity_hits, (cluster_hits, popularity_hits)


def test_tiny_dataset(tmp_path):
    summary = sample_data.write_sample_dataset(str(tmp_path), seed=3, num_items=12, num_users=3)
    assert summary["items"] == 12 and summary["users"] == 3
    read_dataset(str(tmp_path))


def test_rejects_empty_dataset(tmp_path):
    with pytest.raises(ValueError):
        sample_data.write_sample_dataset(str(tmp_path), num_items=0)

"""Tests of the synthetic catalogue: the contract, determinism, streaming in
chunks, and structure a model can learn."""
import collections
import json
import csv
import os

import numpy as np
import pytest
from PIL import Image

from dataset import sample, synthetic
from dataset.contract import read_dataset
from dataset.sample_test import nearest_palette_labels, read_tree


def read_rows(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("synthetic"))
    summary = synthetic.write_synthetic_dataset(dst, 600, seed=5)
    return (dst, summary, read_rows(os.path.join(dst, "items.csv")),
            read_rows(os.path.join(dst, "interactions.csv")))


def test_the_contract_reader_accepts_it_and_the_counts_are_right(catalogue):
    dst, summary, items, interactions = catalogue
    assert list(items[0]) == list(synthetic.ITEM_COLUMNS)
    assert list(interactions[0]) == list(synthetic.INTERACTION_COLUMNS)
    assert summary["items"] == len(items) == 600
    assert summary["interactions"] == len(interactions)
    assert summary["images"] == sum(1 for item in items if item["image"])
    assert summary["users"] == 300 == len({row["user_id"] for row in interactions if row["user_id"]})
    assert summary["search_rows"] == sum(1 for row in interactions if row["query"])
    assert summary["clusters"] == 600 // synthetic.ITEMS_PER_CLUSTER
    dataset = read_dataset(dst)
    assert len(dataset.items) == 600 and dataset.report["images skipped"] == 0
    # About MEAN_INTERACTIONS a user, each item at most once per user.
    per_user = collections.Counter(row["user_id"] for row in interactions if row["user_id"])
    assert 8 <= np.mean(list(per_user.values())) <= 11
    pairs = [(row["user_id"], row["item_id"]) for row in interactions if row["user_id"]]
    assert len(pairs) == len(set(pairs))


def test_titles_are_distinct_and_say_the_clusters_attributes(catalogue):
    _, _, items, _ = catalogue
    titles = [item["title"] for item in items if item["title"]]
    assert len(set(titles)) == len(titles)
    for item in items:
        if item["title"]:
            words = item["title"].split()
            assert words[0] == item["brand"]
            assert words[-4:-1] == [item["colour"], item["material"], item["kind"]]
        assert item["material"] in sample.MATERIALS[item["kind"]]
    # A brand is a cluster: one colour, kind and material each.
    by_brand = collections.defaultdict(set)
    for item in items:
        by_brand[item["brand"]].add((item["colour"], item["kind"], item["material"]))
    assert all(len(values) == 1 for values in by_brand.values())
    image_only = sum(1 for item in items if not item["title"])
    text_only = sum(1 for item in items if not item["image"])
    assert 30 <= image_only <= 90 and 30 <= text_only <= 90


def test_photos_show_the_items_colour(catalogue):
    dst, _, items, _ = catalogue
    colours = list(sample.COLOURS)
    formats = collections.Counter()
    for item in items[:120]:
        if not item["image"]:
            continue
        with Image.open(os.path.join(dst, item["image"])) as image:
            formats[image.format] += 1
            labels = nearest_palette_labels(np.asarray(image))
        assert colours[np.bincount(labels[labels < len(colours)]).argmax()] == item["colour"]
    assert formats["JPEG"] > formats["PNG"] > 0


def test_users_draw_most_items_from_their_clusters(catalogue):
    """Each user's most common brand covers far more of their rows than it
    would if they chose by popularity alone: a model can learn that."""
    _, _, items, interactions = catalogue
    brand = {item["item_id"]: item["brand"] for item in items}
    history = collections.defaultdict(list)
    for row in interactions:
        if row["user_id"]:
            history[row["user_id"]].append(brand[row["item_id"]])
    share = np.mean([collections.Counter(brands).most_common(2)[0][1] / len(brands)
                     + (collections.Counter(brands).most_common(2)[1][1] / len(brands)
                        if len(set(brands)) > 1 else 0) for brands in history.values()])
    assert share > 0.7, share
    # Searches name the item's attributes; anonymous rows are all searches.
    for row in interactions:
        if row["query"]:
            item = next(i for i in items if i["item_id"] == row["item_id"])
            assert set(row["query"].split()) <= {item["colour"], item["kind"], item["material"]}
    assert any(not row["user_id"] for row in interactions)
    assert all(row["query"] for row in interactions if not row["user_id"])


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        synthetic.write_synthetic_dataset(str(tmp_path / name), 40, seed=seed)
    first, again, other = (read_tree(tmp_path / name) for name in "abc")
    assert first == again
    assert first["items.csv"] != other["items.csv"]


def test_written_in_chunks_into_photo_folders(tmp_path, monkeypatch):
    """Many chunks and photo folders make a valid dataset with every item once."""
    monkeypatch.setattr(synthetic, "CHUNK", 7)
    monkeypatch.setattr(synthetic, "IMAGES_PER_DIRECTORY", 10)
    summary = synthetic.write_synthetic_dataset(str(tmp_path), 45, seed=3)
    items = read_rows(tmp_path / "items.csv")
    assert [item["item_id"] for item in items] == [f"s{i:07d}" for i in range(45)]
    assert sorted(os.listdir(tmp_path / "images")) == ["0000", "0001", "0002", "0003", "0004"]
    assert summary["images"] == sum(len(os.listdir(tmp_path / "images" / d))
                                    for d in os.listdir(tmp_path / "images"))
    read_dataset(str(tmp_path))


def test_without_photos_every_item_has_text(tmp_path):
    summary = synthetic.write_synthetic_dataset(str(tmp_path), 30, images=False)
    assert summary["images"] == 0 and not os.path.exists(tmp_path / "images")
    assert all(item["title"] and not item["image"] for item in read_rows(tmp_path / "items.csv"))


def test_brand_names_are_distinct_per_cluster():
    for clusters in (3, 400, 20_000):
        names = {synthetic.brand_name(index, clusters) for index in range(clusters)}
        assert len(names) == clusters


@pytest.mark.parametrize("arguments, message", [
    ({"num_items": 9}, "at least 10 items"),
    ({"num_items": 20, "num_users": 0}, "at least one user"),
    ({"num_items": 20, "mean_interactions": 2}, "mean_interactions"),
])
def test_bad_sizes_are_refused(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        synthetic.write_synthetic_dataset(str(tmp_path), **arguments)


def test_the_command_line_writes_it_and_refuses_a_bad_size(tmp_path, capsys):
    from mmfuse.cli import main
    assert main(["synthetic", str(tmp_path / "data"), "--items", "20", "--users", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["items"] == 20 and summary["users"] == 4
    assert main(["synthetic", str(tmp_path / "bad"), "--items", "3"]) == 2
    assert "at least 10 items" in capsys.readouterr().err

"""The quality benchmark's own logic: seeds, what a row over seeds says, the fashion queries."""
import argparse
import os

import pytest

from benchmarks import quality


def test_a_row_over_seeds_averages_the_figures_and_names_each_seed():
    row = quality.mean_over_seeds({
        42: {"precision@10": 0.766, "queries": 50, "train_s": 500.0, "note": "/m/8"},
        7: {"precision@10": 0.790, "queries": 50, "train_s": 700.0, "note": "/m/9"},
    }, "precision@10")
    assert row["precision@10"] == pytest.approx(0.778)
    assert row["train_s"] == pytest.approx(600.0)
    assert row["queries"] == 50
    assert row["note"] == "mean of 2 seeds: 42 0.7660, 7 0.7900"
    assert row["seeds"]["7"]["note"] == "/m/9"


def test_a_seed_without_figures_is_named_not_averaged():
    row = quality.mean_over_seeds({
        42: {"recall@100": 0.61, "train_s": 100.0, "note": ""},
        7: {"train_s": 3.0, "note": "mmfuse run failed (exit 1, see fusion-seed7.log)"},
    }, "recall@100")
    assert row["recall@100"] == pytest.approx(0.61)
    assert row["note"] == ("mean of 1 seed: 42 0.6100; "
                           "seed 7: mmfuse run failed (exit 1, see fusion-seed7.log)")


def test_one_seed_is_its_own_row():
    only = {"recall@100": 0.61, "note": "/m/1"}
    assert quality.mean_over_seeds({42: only}, "recall@100") == only


def test_seeds_are_distinct_whole_numbers():
    assert quality._seeds("42, 7") == [42, 7]
    for text in ("", "4.2", "7,7", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="--seeds"):
            quality._seeds(text)


def test_each_seed_trains_with_its_own_seed_and_log(tmp_path, monkeypatch):
    commands = []

    def call(command, stdout, **kwargs):
        commands.append(command)
        stdout.write('{"candidate_model": "/m/%s"}\n' % command[command.index("--seed") + 1])
        return 0

    monkeypatch.setattr(quality.subprocess, "call", call)
    options = argparse.Namespace(out=str(tmp_path), epochs=1, skip_runs=False)
    for seed in (quality.DEFAULT_SEED, 7):
        model, _, note = quality._model_run(options, "sample", "/data", "id", seed)
        assert (model, note) == (f"/m/{seed}", "")
    assert [command[command.index("--seed") + 1] for command in commands] == ["42", "7"]
    assert sorted(os.listdir(tmp_path / "sample")) == ["id-seed7.log", "id.log", "runs"]


def test_fashion_queries_are_the_most_frequent_pairs_or_every_pair_with_enough_products():
    products = {f"p{i}": {"colour": colour, "article_type": "Shirts"}
                for i, colour in enumerate(["Red"] * 3 + ["Blue"] * 2 + ["Green"])}
    products["untyped"] = {"colour": "Red", "article_type": ""}

    assert quality.fashion_queries(products) == [
        ("Red Shirts", "Red", "Shirts"), ("Blue Shirts", "Blue", "Shirts"),
        ("Green Shirts", "Green", "Shirts")]
    assert [text for text, _, _ in quality.fashion_queries(products, min_products=2)] == [
        "Red Shirts", "Blue Shirts"]

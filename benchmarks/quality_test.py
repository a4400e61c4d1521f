"""The quality benchmark's own logic: seeds, what a row over seeds says, the fashion queries,
the MovieLens validation carve."""
import argparse
import os

import pytest

from benchmarks import quality
from dataset.contract import read_dataset
from dataset.sample import write_sample_dataset
from evaluation.evaluate import split_rows


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
        seed = next(word for word in command if word.startswith("trainer.seed="))
        stdout.write('{"candidate_model": "/m/%s"}\n' % seed.split("=")[1])
        return 0

    monkeypatch.setattr(quality.subprocess, "call", call)
    options = argparse.Namespace(out=str(tmp_path), epochs=1, skip_runs=False, config=None,
                                 overrides=[])
    for seed in (quality.DEFAULT_SEED, 7):
        model, _, note = quality._model_run(options, "sample", "/data", "id", seed)
        assert (model, note) == (f"/m/{seed}", "")
    assert [[word for word in command if word.startswith("trainer.seed=")]
            for command in commands] == [["trainer.seed=42"], ["trainer.seed=7"]]
    assert sorted(os.listdir(tmp_path / "sample")) == ["id-seed7.log", "id.log", "runs"]


def test_model_runs_take_the_configuration_and_the_variant_wins(tmp_path, monkeypatch):
    commands = []

    def call(command, stdout, **kwargs):
        commands.append(command)
        stdout.write('{"candidate_model": "/m"}\n')
        return 0

    monkeypatch.setattr(quality.subprocess, "call", call)
    options = quality._parser().parse_args([
        "--out", str(tmp_path), "--epochs", "3", "--config", "shop.yaml",
        "--set", "trainer.epochs=4", "--set", "trainer.modalities=[id]"])
    quality._model_run(options, "sample", "/data", "text", 7)
    (command,) = commands
    assert command[command.index("--config") + 1] == "shop.yaml"
    sets = [command[index + 1] for index, word in enumerate(command) if word == "--set"]
    assert sets == ["trainer.epochs=3", "trainer.epochs=4", "trainer.modalities=[id]",
                    "trainer.modalities=text", "export.buy_again=false", "trainer.seed=7",
                    "gate.min_recall=0", "trainer.warm_start=false"]
    # What `mmfuse run` makes of them: the later --set wins.
    settings = quality.load_config(None, sets)
    assert (settings.trainer.epochs, settings.trainer.modalities) == (4, ["text"])


def test_a_bad_setting_stops_the_benchmark_before_any_run(tmp_path, capsys):
    code = quality.main(["--datasets", "sample", "--variants", "id", "--out", str(tmp_path),
                         "--set", "trainer.embeding_dim=8", "--results", str(tmp_path / "R.md")])
    assert code == 2
    assert "trainer.embeding_dim" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_the_baselines_on_the_sample_write_their_section(tmp_path, capsys):
    results_file = tmp_path / "RESULTS.md"
    results_file.write_text("# Results\n\nkept by hand\n")
    out = tmp_path / "bench"
    assert quality.main(["--datasets", "sample", "--variants", "popularity,ease",
                         "--out", str(out), "--results", str(results_file)]) == 0
    text = results_file.read_text()
    assert text.startswith("# Results\n\nkept by hand\n")
    section = text[text.index("<!-- begin quality-sample -->"):]
    assert section.rstrip().endswith("<!-- end quality-sample -->")
    assert "benchmarks.quality --datasets sample --variants popularity,ease" in section
    assert "| variant | recall@10 | recall@20 | recall@100 |" in section
    assert "| popularity | 0." in section and "| ease | 0." in section
    assert "Measured on " in section and " cores (" in section


def test_fashion_queries_are_the_most_frequent_pairs_or_every_pair_with_enough_products():
    products = {f"p{i}": {"colour": colour, "article_type": "Shirts"}
                for i, colour in enumerate(["Red"] * 3 + ["Blue"] * 2 + ["Green"])}
    products["untyped"] = {"colour": "Red", "article_type": ""}

    assert quality.fashion_queries(products) == [
        ("Red Shirts", "Red", "Shirts"), ("Blue Shirts", "Blue", "Shirts"),
        ("Green Shirts", "Green", "Shirts")]
    assert [text for text, _, _ in quality.fashion_queries(products, min_products=2)] == [
        "Red Shirts", "Blue Shirts"]


def test_the_movielens_validation_carve_keeps_only_train_rows_and_splits_them_again(
        tmp_path, monkeypatch):
    original = str(tmp_path / "original")
    write_sample_dataset(original)
    monkeypatch.setattr(quality, "_prepare_movielens", lambda options: original)
    carve_dir = quality._prepare_movielens_validation(argparse.Namespace(out=str(tmp_path)))
    assert carve_dir == str(tmp_path / "data" / "movielens-validation")
    train, eval_rows = split_rows(read_dataset(original, check_images=False), "random")
    carve = read_dataset(carve_dir)  # its images are checked, inside its own directory
    assert len(carve.items) == len(read_dataset(original, check_images=False).items)
    assert sorted((r.user_id, r.item_id, r.query, r.timestamp - 1) for r in carve.interactions
                  ) == sorted((r.user_id, r.item_id, r.query, r.timestamp) for r in train)
    carve_train, carve_eval = split_rows(carve, "random")
    # A fresh 80/20 draw over the train rows, not the original's (which would be all train).
    users_rows = [row for row in carve.interactions if not row.query]
    assert 0.1 < sum(not row.query for row in carve_eval) / len(users_rows) < 0.3
    assert len(carve_train) + len(carve_eval) == len(train) and eval_rows

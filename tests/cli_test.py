"""Bad input to `mmfuse run` is a one-line message naming the file, line or
field, given before any pipeline component starts."""
import csv
import json
import os
from types import SimpleNamespace

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest  # noqa: E402

from mmfuse.cli import main  # noqa: E402
from pipeline.sample_data import write_sample_dataset  # noqa: E402


@pytest.fixture()
def sample(tmp_path):
    data = tmp_path / "data"
    write_sample_dataset(str(data), num_items=60, num_users=20)
    return data


def _rewrite(path, change):
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    fieldnames, rows = change(list(rows[0].keys()), rows)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _run(capsys, data, out):
    code = main(["run", "--data", str(data), "--out", str(out)])
    captured = capsys.readouterr()
    assert "Component" not in captured.out  # stopped before the pipeline
    return code, captured.err


def test_missing_required_column(sample, tmp_path, capsys):
    _rewrite(sample / "items.csv", lambda names, rows: ([n for n in names if n != "item_id"], rows))
    code, err = _run(capsys, sample, tmp_path / "out")
    assert code == 2
    assert "items.csv" in err and "missing required column(s) item_id" in err


def test_interaction_naming_an_unknown_item(sample, tmp_path, capsys):
    def unknown(names, rows):
        rows[4]["item_id"] = "no-such-item"
        return names, rows
    _rewrite(sample / "interactions.csv", unknown)
    code, err = _run(capsys, sample, tmp_path / "out")
    assert code == 2
    assert "anomaly" in err and "line 6 item_id 'no-such-item'" in err


def test_mostly_corrupt_images(sample, tmp_path, capsys):
    for image in (sample / "images").iterdir():
        image.write_bytes(b"garbage")
    code, err = _run(capsys, sample, tmp_path / "out")
    assert code == 2
    assert "images are missing or unreadable" in err


def test_unknown_modality_is_a_usage_error(sample, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--data", str(sample), "--out", str(tmp_path), "--modalities", "id,audio"])
    assert exit_info.value.code == 2
    assert "--modalities" in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [
    (["run", "--out", "OUT", "--epochs", "-1"], "--epochs"),
    (["run", "--out", "OUT", "--epochs", "two"], "--epochs"),
    (["query", "--server", "localhost:1", "--user", "u1", "--k", "0"], "--k"),
])
def test_counts_below_their_minimum_are_usage_errors(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "expected a whole number" in err


@pytest.mark.parametrize("weight", ["-0.1", "heavy", "nan", "inf"])
def test_rating_weight_must_be_a_number_at_least_0(weight, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--out", "OUT", "--rating-weight", weight])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--rating-weight" in err and "expected a number >= 0" in err


def test_rating_weight_reaches_the_trainer(sample, tmp_path, monkeypatch, capsys):
    from pipeline import local_runner
    from pipeline.pipeline import create_pipeline

    configs = []

    def run(config):
        configs.append(config)
        return SimpleNamespace(blessed=True, candidate_model="", pushed_model="", blessing_reason="",
                               metrics={}, change_vs_baseline={})
    monkeypatch.setattr(local_runner, "run", run)
    assert main(["run", "--data", str(sample), "--out", str(tmp_path / "out"),
                 "--rating-weight", "0.25"]) == 0
    trainer = next(node for node in create_pipeline(configs[0]).components if node.id == "Trainer")
    assert json.loads(trainer.exec_properties["custom_config"])["rating_weight"] == 0.25


def test_rating_weight_without_ratings_is_an_error(sample, tmp_path, capsys):
    _rewrite(sample / "interactions.csv", lambda names, rows: ([n for n in names if n != "rating"], rows))
    code = main(["run", "--data", str(sample), "--out", str(tmp_path / "out"), "--rating-weight", "1"])
    assert code == 2
    assert "--rating-weight needs interactions with a rating" in capsys.readouterr().err

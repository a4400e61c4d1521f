"""Bad input to `mmfuse run` is a one-line message naming the file, line or
field, given before any pipeline component starts."""
import csv
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from dataset import pseudonyms
from dataset.sample import write_sample_dataset
from mmfuse.cli import main


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
    assert "ExampleGen" not in captured.out  # stopped before the pipeline
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


def test_unknown_modality_is_named_with_its_key_and_flag(sample, tmp_path, capsys):
    assert main(["run", "--data", str(sample), "--out", str(tmp_path), "--modalities", "id,audio"]) == 2
    err = capsys.readouterr().err
    assert "trainer.modalities" in err and "--modalities" in err and "audio" in err


@pytest.mark.parametrize("argv, key, message", [
    (["run", "--out", "OUT", "--epochs", "-1"], "trainer.epochs (--epochs)", "at least 0"),
    (["run", "--out", "OUT", "--epochs", "two"], "trainer.epochs (--epochs)", "whole number"),
    (["run", "--out", "OUT", "--rating-weight", "-0.1"], "--rating-weight", "at least 0"),
    (["run", "--out", "OUT", "--rating-weight", "heavy"], "--rating-weight", "finite number"),
    (["run", "--out", "OUT", "--rating-weight", "nan"], "--rating-weight", "finite number"),
    (["run", "--out", "OUT", "--rating-weight", "inf"], "--rating-weight", "finite number"),
    (["run", "--out", "OUT", "--set", "trainer.epoch=3"], "unknown setting trainer.epoch", ""),
    (["run", "--out", "OUT", "--set", "trainer"], "section.key=value", ""),
    (["config", "show", "--set", "gate.min_recall=2"], "gate.min_recall", "at most 1"),
    (["config", "show", "--set", "shop.name=x"], "unknown section 'shop'", ""),
    (["config", "show", "--set", "resources.Trainer.gpu=1"], "unknown setting resources.Trainer.gpu",
     "known in resources.Trainer: cpu"),
    (["config", "show", "--set", "resources.Tranier.gpus=1"], "unknown setting resources.Tranier",
     "Trainer"),
    (["config", "show", "--set", "resources.Trainer.gpus=0.5"], "resources.Trainer.gpus",
     "whole number"),
    (["config", "show", "--set", "trainer.mixed_precision=float16"], "trainer.mixed_precision",
     "mixed_float16"),
])
def test_bad_settings_are_refused_naming_the_key(argv, key, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert key in err and message in err


def test_counts_below_their_minimum_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["query", "--server", "localhost:1", "--user", "u1", "--k", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--k" in err and "expected a whole number" in err


def test_config_show_prints_the_effective_configuration(tmp_path, capsys):
    config = tmp_path / "shop.yaml"
    config.write_text("trainer:\n  epochs: 7\ngate:\n  min_recall: 0.2\n"
                      "resources:\n  Trainer:\n    cpu: 8\n")
    assert main(["config", "show", "--config", str(config), "--set", "trainer.seed=3",
                 "--set", "resources.Trainer.gpus=1"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["trainer"]["epochs"] == 7 and shown["trainer"]["seed"] == 3
    assert shown["gate"]["min_recall"] == 0.2 and shown["gate"]["k"] == 100
    # A nested key set in the file and one set by --set are both kept, the rest defaults.
    assert shown["resources"]["Trainer"] == {"cpu": 8, "memory_gb": 16, "cpu_limit": None,
                                             "memory_gb_limit": None, "gpus": 1}
    assert shown["resources"]["Pusher"]["cpu"] == 0.5
    # What it prints is itself a configuration file that gives the same settings.
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(shown))
    assert main(["config", "show", "--config", str(again)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == shown


def test_a_missing_or_malformed_configuration_file_is_named(tmp_path, capsys):
    assert main(["config", "show", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [1, 2\n")
    assert main(["config", "show", "--config", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err


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
    assert json.loads(trainer.exec_properties["custom_config"])["trainer"]["rating_weight"] == 0.25


def test_rating_weight_without_ratings_is_an_error(sample, tmp_path, capsys):
    _rewrite(sample / "interactions.csv", lambda names, rows: ([n for n in names if n != "rating"], rows))
    code = main(["run", "--data", str(sample), "--out", str(tmp_path / "out"), "--rating-weight", "1"])
    assert code == 2
    assert "trainer.rating_weight needs interactions with a rating" in capsys.readouterr().err


# `mmfuse run` with the pipeline replaced by one that talks as TensorFlow and
# TFX do: natively on fd 2, on stdout, and through warnings.
_CHATTY_RUN = """
import os, sys, types, warnings
from types import SimpleNamespace
from mmfuse import cli, progress

def run(config):
    progress.step_started("Trainer")
    os.write(2, b"E cuda_fft.cc:479] Unable to register cuFFT factory\\n")
    print("INFO:absl:Component Trainer is running.")
    warnings.warn("old google-cloud-storage", FutureWarning)
    progress.step_finished("Trainer")
    return SimpleNamespace(blessed=True, candidate_model="", pushed_model="",
                           blessing_reason="ok", metrics={}, change_vs_baseline={})

stubs = {"pipeline.local_runner": dict(run=run, plan_progress=lambda *args: None),
         "pipeline.pipeline": dict(MODEL_NAME="mmfuse", PipelineConfig=SimpleNamespace),
         "pipeline.fingerprint": dict(DATA_CODE=(), TRAINER_CODE=(),
                                      code_fingerprint=str, dataset_fingerprint=str)}
for name, attributes in stubs.items():
    sys.modules[name] = types.ModuleType(name)
    vars(sys.modules[name]).update(attributes)
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_run_sends_library_output_to_its_log_and_verbose_shows_it_too(sample, tmp_path, verbose):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", _CHATTY_RUN, "run", "--data", str(sample),
                           "--out", str(out)] + (["--verbose"] if verbose else []),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shown = (done.stdout + done.stderr).splitlines()
    log = (out / "mmfuse.log").read_text()
    assert shown[0] == f"[mmfuse] log: {out / 'mmfuse.log'}" + ("" if verbose else
                                                              " (--verbose shows it here)")
    assert "[mmfuse] Trainer ..." in shown and "[mmfuse] Trainer done in 0:00" in shown
    assert json.loads(done.stdout.splitlines()[-1])["blessed"] is True
    assert "Unable to register cuFFT factory" in log and "INFO:absl:Component Trainer" in log
    chatter = [line for line in shown if "cuFFT" in line or "INFO:absl" in line]
    assert len(chatter) == (2 if verbose else 0), shown
    assert not any("FutureWarning" in line for line in shown + log.splitlines())


def test_pseudonym_prints_what_the_model_knows_each_user_by(tmp_path, capsys):
    key_file = tmp_path / "user_key"
    key_file.write_bytes(b"0123456789abcdef" * 4)
    assert main(["pseudonym", "--user-key-file", str(key_file), "u0001", "u0002"]) == 0
    key = pseudonyms.load_key(str(key_file))
    assert capsys.readouterr().out.split() == [pseudonyms.pseudonym(user, key)
                                               for user in ("u0001", "u0002")]
    assert main(["pseudonym", "--user-key-file", str(tmp_path / "none"), "u0001"]) == 2
    assert "none" in capsys.readouterr().err


@pytest.mark.parametrize("report", [False, True])
def test_run_names_its_report_or_writes_it_in_one_line(sample, tmp_path, monkeypatch, capsys,
                                                        report):
    """The pipeline is replaced here; tests/report_e2e_test.py reports on a real run."""
    from evaluation import report as run_report
    from pipeline import local_runner

    monkeypatch.setattr(local_runner, "run", lambda config: SimpleNamespace(
        blessed=True, candidate_model="", pushed_model="", blessing_reason="ok", metrics={},
        change_vs_baseline={}))
    written = []
    monkeypatch.setattr(run_report, "write_report", lambda run_dir: written.append(run_dir) or
                        f"{run_dir}/report.html")
    out = tmp_path / "out"
    assert main(["run", "--data", str(sample), "--out", str(out)] + (["--report"] if report else [])) == 0
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("[mmfuse] report")]
    assert written == ([str(out)] if report else [])
    assert lines == [f"[mmfuse] report: {out}/report.html" if report
                     else f"[mmfuse] report: mmfuse report {out}"]


def test_report_of_a_missing_or_empty_run_dir_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err == f"mmfuse report: error: run directory {tmp_path / 'nowhere'} does not exist\n"
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no metadata.sqlite" in err
    assert not (tmp_path / "metadata.sqlite").exists()

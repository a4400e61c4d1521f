"""The README stays true: its configuration reference is the table that
mmfuse/config.py generates, and every command in its ```sh blocks is run by a
test (RUN_BY says which) or needs what no test machine has (NEEDS_OUTSIDE).

A new README command fails `test_every_readme_command_is_run_by_a_test` until
a test runs it and RUN_BY names that test. The quick commands are run here as
written; those that need a trained model run on the sample run of
tests/conftest.py.

Regenerate the README's configuration reference:

    .venv/bin/python -m tests.readme_test
"""
import ast
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import urllib.request
from types import SimpleNamespace
from typing import Dict, List, Tuple

import pytest
import yaml

from benchmarks import results
from mmfuse.cli import main
from mmfuse.config import reference

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPOSITORY, "README.md")
REFERENCE_SECTION = "configuration-reference"
REGENERATE = ".venv/bin/python -m tests.readme_test"

# README command (see command_key) -> the tests that run it.
RUN_BY: Dict[str, Tuple[str, ...]] = {
    "make run": ("tests/readme_test.py::test_make_run_is_two_readme_commands",),
    "make test": ("tests/readme_test.py::test_make_test_runs_pytest",),
    "mmfuse sample": ("tests/readme_test.py::test_the_quick_readme_commands_run_as_written",
                      "dataset/sample_test.py::test_contract_columns_and_counts"),
    "mmfuse config show --reference": (
        "tests/readme_test.py::test_the_configuration_reference_is_the_configurations_own",
        "tests/readme_test.py::test_the_quick_readme_commands_run_as_written"),
    "mmfuse config show --config --set": (
        "tests/readme_test.py::test_the_quick_readme_commands_run_as_written",
        "tests/cli_test.py::test_config_show_prints_the_effective_configuration"),
    # The pipeline itself is replaced by a recorder there; the sample run runs it whole.
    "mmfuse run --out": (
        "tests/readme_test.py::test_the_quick_readme_commands_run_as_written",
        "tests/pipeline_e2e_test.py::test_run_reports_progress_and_a_blessed_pushed_model"),
    "mmfuse run --config --data --out --set": (
        "tests/readme_test.py::test_the_quick_readme_commands_run_as_written",
        "tests/pipeline_e2e_test.py::test_run_reports_progress_and_a_blessed_pushed_model"),
    "mmfuse kubeflow compile --config --data --image --out --pipeline-root --serving-dir": (
        "tests/readme_test.py::test_the_quick_readme_commands_run_as_written",
        "pipeline/kubeflow_runner_test.py::test_a_yaml_name_gives_the_spec_kfp_client_submits"),
    "mmfuse predict --k --model-base --user": (
        "tests/readme_test.py::test_the_readme_commands_on_the_sample_run_run_as_written",),
    "mmfuse evaluate --data --exclude-seen --model": (
        "tests/readme_test.py::test_the_readme_commands_on_the_sample_run_run_as_written",
        "tests/evaluation_e2e_test.py::test_model_figures_are_the_evaluators_on_the_sample"),
    "mmfuse report": ("tests/report_e2e_test.py::test_the_report_of_the_sample_run",),
    "mmfuse serve --model-base --rest-port": (
        "tests/readme_test.py::test_the_readme_commands_on_the_sample_run_run_as_written",
        "tests/serving_e2e_test.py::test_recommend_over_grpc",
        "serving/rest_test.py::test_the_readme_curl_commands_run_as_written"),
    # Through bash, as written (`$(mmfuse pseudonym ...)`, `$(base64 ...)` and all).
    "curl": ("tests/readme_test.py::test_the_readme_commands_on_the_sample_run_run_as_written",
             "serving/rest_test.py::test_the_readme_curl_commands_run_as_written"),
    "mmfuse query --server --user": (
        "tests/readme_test.py::test_the_readme_commands_on_the_sample_run_run_as_written",
        "serving/client_test.py::test_query_prints_each_item_with_its_title_and_attributes"),
    "mmfuse query --server --text --user": (
        "tests/readme_test.py::test_the_readme_commands_on_the_sample_run_run_as_written",),
    "mmfuse query --recent --server --user": (
        "tests/readme_test.py::test_the_readme_commands_on_the_sample_run_run_as_written",
        "serving/client_test.py::test_query_with_recent_items_asks_recommend_with_history"),
    "mmfuse query --recent --server": (
        "tests/readme_test.py::test_the_readme_commands_on_the_sample_run_run_as_written",),
    "mmfuse demo --data --server": (
        "tests/readme_test.py::test_the_readme_commands_on_the_sample_run_run_as_written",
        "demo/app_test.py::test_the_demo_command_serves_the_page"),
    # On a copy of the sample run's model base, so that they add no version to it.
    "mmfuse catalog add --items --model-base": (
        "tests/live_test.py::test_the_readme_catalog_commands_run_as_written",),
    "mmfuse catalog remove --model-base": (
        "tests/live_test.py::test_the_readme_catalog_commands_run_as_written",),
    "mmfuse query --image --server": (
        "tests/readme_test.py::test_the_readme_commands_on_the_sample_run_run_as_written",
        "serving/client_test.py::test_query_by_image_file"),
    "mmfuse query --item --json --server": (
        "tests/readme_test.py::test_the_readme_commands_on_the_sample_run_run_as_written",
        "serving/client_test.py::test_query_json_is_one_line"),
    # A shorter sweep of the README's command (one size, one signature, 1 s).
    "python -m benchmarks.serving --model-base": (
        "tests/readme_test.py::test_the_readme_commands_on_the_sample_run_run_as_written",),
    "tensorboard --logdir": (
        "tests/readme_test.py::test_the_readme_commands_on_the_sample_run_run_as_written",
        "tests/pipeline_e2e_test.py::test_trainer_writes_tensorboard_logs"),
}
# README commands that need what CI lacks -> (what they need, the tests that
# check them instead).
NEEDS_OUTSIDE: Dict[str, Tuple[str, ...]] = {
    "mmfuse convert movielens-100k": (
        "the real data set ($MMFUSE_DATA_DIR, real_data tests)",
        "dataset/converters_test.py::test_real_movielens",
        "tests/movielens_e2e_test.py::test_movielens_run_is_blessed_and_beats_popularity",
        "dataset/converters_test.py::test_movielens_from_small_source"),
    "docker compose": (
        "a Docker engine",
        "serving/deploy_test.py::test_compose_runs_tf_serving_on_the_mounted_configs"),
    "kubectl apply": (
        "a Kubernetes cluster",
        "serving/deploy_test.py::test_kubernetes_deployment_service_and_config_fit_together"),
    "docker build": ("a Docker engine (the image installs what the Makefile installs)",),
    "docker push": ("a container registry",),
}


def readme() -> str:
    with open(README, encoding="utf-8") as handle:
        return handle.read()


def code_blocks(text: str, language: str) -> List[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def sh_commands(text: str) -> List[str]:
    """Each command line of the README's ```sh blocks, continuation lines
    joined, `&&` chains split, comments dropped."""
    commands = []
    for block in code_blocks(text, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                end = words.index("&&") if "&&" in words else len(words)
                commands.append(shlex.join(words[:end]))
                words = words[end + 1:]
    return commands


def command_key(command: str) -> str:
    """What a test must run of a command: the program and its subcommand, and
    the options it uses (paths and values aside)."""
    words = shlex.split(command)
    while "=" in words[0]:  # leading VAR=value
        words.pop(0)
    program = os.path.basename(words[0])
    if program.startswith("python"):
        head, rest = ["python", "-m", words[2]], words[3:]
    elif program == "mmfuse":
        depth = 3 if words[1] in ("config", "kubeflow", "catalog") else 2
        head, rest = ["mmfuse", *words[1:depth]], words[depth:]
        if words[1] == "convert":
            head, rest = head + [words[2]], words[3:]
    elif len(words) > 1 and not words[1].startswith("-"):
        head, rest = [program, words[1]], words[2:]
    else:
        head, rest = [program], words[1:]
    options = sorted({word.split("=")[0] for word in rest if word.startswith("--")})
    return " ".join(head + options)


def readme_lines(key: str) -> List[str]:
    """The README's command lines with that key, as written, for a shell."""
    lines = [line.strip() for block in code_blocks(readme(), "sh")
             for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines
            if line and not line.startswith("#") and command_key(line) == key]


def run_curl_commands(rest_port: int, cwd: str, home: str) -> List[dict]:
    """The README's curl commands run as written by bash in `cwd` (laid out
    as `make run` leaves it), against the REST API on 127.0.0.1:rest_port
    rather than localhost:8501, with `mmfuse` on the PATH and the user key
    under `home`: their JSON answers."""
    shims = os.path.join(cwd, ".readme-bin")
    os.makedirs(shims, exist_ok=True)
    with open(os.path.join(shims, "mmfuse"), "w") as handle:
        handle.write(f'#!/bin/sh\nexec "{sys.executable}" -m mmfuse "$@"\n')
    os.chmod(os.path.join(shims, "mmfuse"), 0o755)
    env = {**os.environ, "HOME": home, "PATH": shims + os.pathsep + os.environ["PATH"],
           "PYTHONPATH": os.pathsep.join([REPOSITORY,
                                          *filter(None, [os.environ.get("PYTHONPATH")])])}
    answers = []
    for line in readme_lines("curl"):
        line = line.replace("localhost:8501", f"127.0.0.1:{rest_port}")
        done = subprocess.run(["bash", "-c", "set -o pipefail; " + line], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        answers.append(json.loads(done.stdout))
    return answers


def _readme_commands(*keys: str) -> List[Tuple[str, List[str]]]:
    """(key, words) of the README's commands with those keys, in README order."""
    found = [(command_key(command), shlex.split(command)) for command in sh_commands(readme())]
    chosen = [(key, words) for key, words in found if key in keys]
    assert {key for key, _ in chosen} == set(keys), "README commands this test runs are gone"
    return chosen


def test_the_configuration_reference_is_the_configurations_own():
    text = readme()
    begin, end = results.begin_marker(REFERENCE_SECTION), results.end_marker(REFERENCE_SECTION)
    assert begin in text and end in text, f"README.md lacks the markers {begin} ... {end}"
    table = text[text.index(begin) + len(begin):text.index(end)].strip("\n") + "\n"
    assert table == reference(), (
        f"README.md's configuration reference differs from mmfuse/config.py; run {REGENERATE}")


def test_every_readme_command_is_run_by_a_test():
    keys = {command_key(command) for command in sh_commands(readme())}
    missing = sorted(keys - set(RUN_BY) - set(NEEDS_OUTSIDE))
    assert not missing, (f"README commands no test runs (add a test, then list it in RUN_BY): "
                         f"{missing}")
    stale = sorted((set(RUN_BY) | set(NEEDS_OUTSIDE)) - keys)
    assert not stale, f"RUN_BY / NEEDS_OUTSIDE list commands the README no longer has: {stale}"
    for where in list(RUN_BY.values()) + list(NEEDS_OUTSIDE.values()):
        for reference_ in where:
            for path, name in re.findall(r"([\w/]+\.py)::(\w+)", reference_):
                with open(os.path.join(REPOSITORY, path), encoding="utf-8") as handle:
                    tests = {node.name for node in ast.parse(handle.read()).body
                             if isinstance(node, ast.FunctionDef)}
                assert name in tests, f"{path} has no {name}"


def _make_recipe(target: str) -> List[str]:
    with open(os.path.join(REPOSITORY, "Makefile"), encoding="utf-8") as handle:
        recipe = handle.read().split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in recipe.splitlines()[1:]]


def test_make_run_is_two_readme_commands():
    """`make run` is `mmfuse run --out OUT` and `mmfuse predict`, the commands
    the README shows and the tests below run."""
    commands = [line.replace("$(VENV)/bin/", "").replace("$(OUT)", "runs/sample")
                for line in _make_recipe("run")]
    assert [command_key(command) for command in commands] == [
        "mmfuse run --out", "mmfuse predict --k --model-base --user"]
    readme_commands = sh_commands(readme())
    assert commands[0] in readme_commands and commands[1] in readme_commands


def test_make_test_runs_pytest():
    assert _make_recipe("test") == [
        "$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)"]


def test_the_quick_readme_commands_run_as_written(tmp_path, monkeypatch, capsys):
    from pipeline import local_runner

    monkeypatch.chdir(tmp_path)
    (yaml_block,) = code_blocks(readme(), "yaml")
    (tmp_path / "shop.yaml").write_text(yaml_block)
    pipelines = []

    def run(config):  # the pipeline itself: tests/pipeline_e2e_test.py
        pipelines.append(config)
        return SimpleNamespace(blessed=True, candidate_model="", pushed_model="",
                               blessing_reason="ok", metrics={}, change_vs_baseline={})

    monkeypatch.setattr(local_runner, "run", run)
    for key, words in _readme_commands(
            "mmfuse sample", "mmfuse run --out", "mmfuse run --config --data --out --set",
            "mmfuse config show --config --set", "mmfuse config show --reference",
            "mmfuse kubeflow compile --config --data --image --out --pipeline-root --serving-dir"):
        assert main(words[1:]) == 0, key
        printed = capsys.readouterr().out
        if key == "mmfuse config show --config --set":
            shown = yaml.safe_load(printed)
            assert shown["trainer"]["epochs"] == 3 and shown["gate"]["min_recall"] == 0.05
        if key == "mmfuse config show --reference":
            assert printed == reference()
    assert (tmp_path / "data" / "sample" / "items.csv").exists()
    assert (tmp_path / "runs" / "sample" / "sample-data" / "items.csv").exists()
    defaults, configured = pipelines
    assert defaults.data_dir == str(tmp_path / "runs" / "sample" / "sample-data")
    assert configured.settings.trainer.epochs == 3
    assert configured.settings.trainer.modalities == ["text", "image"]
    assert "Pusher" in (tmp_path / "mmfuse.yaml").read_text()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_the_readme_commands_on_the_sample_run_run_as_written(sample_run, tmp_path, monkeypatch,
                                                              capsys):
    """The README's commands after `make run`, in a directory laid out as
    `make run` leaves it, on the sample run's model."""
    out = sample_run["root"] / "out"
    (tmp_path / "runs" / "sample").mkdir(parents=True)
    for name in ("serving", "pipeline"):
        (tmp_path / "runs" / "sample" / name).symlink_to(out / name)
    (tmp_path / "runs" / "sample" / "sample-data").symlink_to(sample_run["data"])
    monkeypatch.chdir(tmp_path)
    # The README's commands use the default user key file, under the home directory.
    home = tmp_path / "home"
    (home / ".config" / "mmfuse").mkdir(parents=True)
    (home / ".config" / "mmfuse" / "user_key").write_bytes(
        open(sample_run["user_key_file"], "rb").read())
    monkeypatch.setenv("HOME", str(home))
    # Subprocesses (mmfuse serve) import this checkout from another directory.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [REPOSITORY, *filter(None, [os.environ.get("PYTHONPATH")])]))

    commands = dict(_readme_commands(
        "mmfuse predict --k --model-base --user", "mmfuse evaluate --data --exclude-seen --model",
        "mmfuse serve --model-base --rest-port", "tensorboard --logdir",
        "python -m benchmarks.serving --model-base"))
    assert main(commands["mmfuse predict --k --model-base --user"][1:]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("recommend user u0001 (model mmfuse version") and len(printed) == 6
    assert all(line.split()[1] in sample_run["items"] and
               sample_run["items"][line.split()[1]]["title"] in line for line in printed[1:])
    assert main(commands["mmfuse evaluate --data --exclude-seen --model"][1:]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert evaluation["rows"] > 0 and 0 < evaluation["recall@100"] <= 1
    logdir = commands["tensorboard --logdir"][-1]
    assert any("events.out.tfevents" in name for _, _, names in os.walk(logdir + "/")
               for name in names)

    port, rest_port = _free_port(), _free_port()
    serve = [word.replace("8501", str(rest_port))
             for word in commands["mmfuse serve --model-base --rest-port"][1:]]
    server, lines = _start_mmfuse([*serve, "--port", str(port)], ready="serving model")
    try:
        assert server.poll() is None, "".join(lines)
        threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True).start()
        queries = _readme_commands(
            "mmfuse query --server --user", "mmfuse query --server --text --user",
            "mmfuse query --recent --server --user", "mmfuse query --recent --server",
            "mmfuse query --image --server", "mmfuse query --item --json --server")
        for key, words in queries:
            words = [word.replace("localhost:8500", f"127.0.0.1:{port}") for word in words]
            assert main(words[1:]) == 0, key
            assert capsys.readouterr().out.strip(), key
        recommended, searched, by_image, similar = run_curl_commands(rest_port, str(tmp_path),
                                                                     str(home))
        assert recommended["predictions"][0]["known_user"] is True
        for answer in (recommended, searched, by_image):
            assert set(answer["predictions"][0]["item_ids"]) <= set(sample_run["items"])
        assert len(similar["outputs"]["item_ids"][0]) == 5
        assert "p0007" not in similar["outputs"]["item_ids"][0]
        ((_, words),) = _readme_commands("mmfuse demo --data --server")
        _check_the_demo_page([word.replace("localhost:8500", f"127.0.0.1:{port}")
                              for word in words], sample_run["items"])
    finally:
        server.terminate()
        server.wait(timeout=30)

    words = commands["python -m benchmarks.serving --model-base"]
    from benchmarks import serving as serving_benchmark
    assert serving_benchmark.main(words[3:] + [
        "--sizes", "pushed", "--signatures", "recommend", "--seconds", "1",
        "--warm-up-seconds", "0.5", "--results", str(tmp_path / "RESULTS.md")]) == 0
    assert "| recommend |" in (tmp_path / "RESULTS.md").read_text()


def _start_mmfuse(arguments: List[str], ready: str) -> Tuple[subprocess.Popen, List[str]]:
    """Starts `mmfuse ARGUMENTS` and reads its output up to the line starting
    with `ready` (or its end): (the process, the lines read)."""
    process = subprocess.Popen([sys.executable, "-m", "mmfuse", *arguments],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(ready):
            break
    return process, lines


def _check_the_demo_page(words: List[str], items) -> None:
    """`mmfuse demo` (on a free port) shows user u0001's history beside
    recommendations the model made for the user it knows (by the default key)."""
    demo, printed = _start_mmfuse([*words[1:], "--port", "0"], ready="demo page at ")
    try:
        assert printed and printed[-1].startswith("demo page at "), "".join(printed)
        url = printed[-1].split()[3]
        with urllib.request.urlopen(url + "user/u0001", timeout=60) as response:
            page = response.read().decode("utf-8")
        assert '<section class="history">' in page and "unknown to the model" not in page
        shown = re.findall(r'href="/item/([^"]+)"', page)
        assert len(shown) > 10 and all(item in items for item in shown)
    finally:
        demo.terminate()
        demo.wait(timeout=30)


if __name__ == "__main__":
    results.write_section(README, REFERENCE_SECTION, reference())
    print(f"rewrote the configuration reference in {README}")

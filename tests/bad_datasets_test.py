"""Bad datasets (tests/bad_datasets.py) must fail `mmfuse run` fast, with exit 2
and a message naming the file, line and field, before TFX is imported; or be a
counted, reported skip where the contract allows one."""
import json
import os
import resource
import subprocess
import sys

import pytest

from dataset.contract import DatasetError, validate_for_run
from mmfuse.config import load_config
from tests import bad_datasets
from tests.bad_datasets import CASES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Enough for Python, Pillow and the 10 MB cells; far too little to decode a
# 30000x30000 image or to import TensorFlow, so either regression fails here.
MEMORY_LIMIT = 1 << 30


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run(argv, timeout=120):
    env = {**os.environ, "PYTHONPATH": ROOT, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=_limit_memory)


def test_there_are_at_least_25_kinds_of_bad_dataset():
    assert len({case.name for case in CASES}) == len(CASES) >= 25
    assert bad_datasets.GUARDED <= {case.name for case in CASES}


IN_PROCESS = [case for case in CASES if case.name not in bad_datasets.GUARDED]


@pytest.mark.parametrize("case", IN_PROCESS, ids=[case.name for case in IN_PROCESS])
def test_validation_refuses_or_counts_the_skip(case, tmp_path):
    """In this process, through the validation `mmfuse run` calls (the
    GUARDED cases run only in the subprocesses below)."""
    data = bad_datasets.build(case, str(tmp_path))
    try:
        dataset = validate_for_run(data, load_config(None, case.overrides))
    except DatasetError as error:
        outcome = (2, str(error))
    else:
        outcome = (0, dataset.summary())
    assert bad_datasets.judge(case, *outcome) == ""


def test_every_case_through_the_cli_under_a_memory_limit():
    """All cases through `mmfuse.cli.main(["run", ...])` in a subprocess with
    TensorFlow, TFX and Beam unimportable and the address space capped."""
    completed = _run(["-m", "tests.bad_datasets"], timeout=600)
    lines = completed.stdout.strip().splitlines()
    failed = [line for line in lines[:-1] if not json.loads(line)["handled"]]
    assert completed.returncode == 0 and not failed, "\n".join(failed) + completed.stderr[-2000:]
    counts = json.loads(lines[-1])
    assert counts == {"tried": len(CASES), "handled": len(CASES), "failed": 0}
    print(f"bad datasets: {counts}")


@pytest.mark.parametrize("name", [
    "image: a FIFO", "items.csv: a FIFO", "image: link to /dev/zero", "image: /dev/zero",
    "items.csv: link to /dev/zero",
    "items: stray quote swallowing rows", "items: 10 MB title",
    "image: every PNG declares 30000x30000", "interactions: rating 1e308"])
def test_the_mmfuse_command_exits_2_before_tensorflow(name, tmp_path):
    """`python -m mmfuse run`, as a user runs it; importing TensorFlow would
    not fit in the memory limit, and reading a FIFO would hang to the timeout."""
    case = next(case for case in CASES if case.name == name)
    data, out = bad_datasets.build(case, str(tmp_path)), tmp_path / "out"
    completed = _run(["-m", "mmfuse", "run", "--data", data, "--out", str(out)])
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert bad_datasets.judge(case, 2, completed.stderr) == ""
    assert completed.stderr.startswith("mmfuse run: error: ")
    assert not out.exists()

"""Runs `mmfuse run` as a user does, in its own process, for the end-to-end tests."""
import json
import os
import subprocess
import sys


def user_key_file(out_dir) -> str:
    """The user key of runs into `out_dir`: beside it, never in the run's outputs."""
    return os.path.join(os.path.dirname(os.path.abspath(out_dir)), "user_key")


def run_pipeline(data_dir, out_dir, epochs: int, blessed: bool = True, timeout: int = 1500):
    """Returns (what it printed, stdout and stderr as a terminal shows them; the
    final JSON line) of a run that must end blessed (exit 0) or, with
    `blessed=False`, refused by the gate (exit 3). Users are pseudonymised with
    the key `user_key_file(out_dir)` (made by the first run)."""
    completed = subprocess.run(
        [sys.executable, "-m", "mmfuse", "run", "--data", str(data_dir), "--out", str(out_dir),
         "--epochs", str(epochs), "--set", f"pipeline.user_key_file={user_key_file(out_dir)}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert completed.returncode == (0 if blessed else 3), completed.stdout[-6000:]
    return completed.stdout, json.loads(completed.stdout.strip().splitlines()[-1])

"""Runs `mmfuse run` as a user does, in its own process, for the end-to-end tests."""
import json
import subprocess
import sys


def run_pipeline(data_dir, out_dir, epochs: int, timeout: int = 1500):
    """Returns (stdout, the final JSON line) of a run that must succeed."""
    completed = subprocess.run(
        [sys.executable, "-m", "mmfuse", "run", "--data", str(data_dir), "--out", str(out_dir),
         "--epochs", str(epochs)],
        capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout, json.loads(completed.stdout.strip().splitlines()[-1])

"""Resident memory of `mmfuse serve` across hot swaps.

    PYTHONPATH=$PWD .venv/bin/python -m serving.swap_memory --model DIR --swaps 6

Starts `mmfuse serve` on a fresh model base holding DIR (a SavedModel
version directory) as version 1, then pushes it again as versions 2, 3...,
each once the previous one is served and has answered every signature, and
prints the server's resident set size (VmRSS) after each swap as JSON lines.
Without --model it measures the serving tests' tiny model with a catalogue
of --items items.
"""
import argparse
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from serving import client, model_store

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def tiny_model_with_catalogue(folder: str, items: int) -> str:
    from serving.conftest import DIM, save_tiny_model

    save_tiny_model(os.path.join(folder, "tiny"))
    embeddings = np.random.default_rng(0).standard_normal((items + 1, DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    ids = [b"<unknown>"] + [f"item-{index:08d}".encode() for index in range(items)]
    model_store.replace_catalogue(os.path.join(folder, "tiny"), os.path.join(folder, "model"),
                                  ids, embeddings)
    return os.path.join(folder, "model")


def _requests(channel, png: bytes):
    answers = []
    for signature, inputs in (("recommend", {"user_id": ["u1"] * 8}),
                              ("search", {"query": ["red dress"] * 8, "user_id": [""] * 8}),
                              ("similar_items", {"item_id": ["p0001"] * 8}),
                              ("image_search", {"image": [png] * 8})):
        answers.append(client.ask(channel, client.predict_request(signature, inputs, k=10), 60))
    return answers


def measure(model: str, swaps: int, extra_args=(), out=sys.stdout) -> list:
    import tensorflow as tf

    png = tf.io.encode_png(np.full((64, 64, 3), 90, np.uint8)).numpy()
    base = os.path.join(tempfile.mkdtemp(prefix="swap-memory-"), "mmfuse")
    model_store.push_version(model, os.path.join(base, "1"))
    process = subprocess.Popen(
        [sys.executable, "-m", "mmfuse", "serve", "--model-base", base, "--port", "0",
         "--poll-seconds", "0.5", *extra_args],
        cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": REPOSITORY})
    figures = []
    try:
        ready, _, _ = select.select([process.stdout], [], [], 600)
        line = process.stdout.readline() if ready else ""
        if " on " not in line:
            raise RuntimeError(f"mmfuse serve did not start: {line!r}")
        address = line.split(" on ")[1].split()[0]
        with client.connect(address, 60) as channel:
            _requests(channel, png)
            for version in range(1, swaps + 2):
                if version > 1:
                    staged = os.path.join(os.path.dirname(base), f"staged-{version}")
                    model_store.push_version(model, staged)
                    os.rename(staged, os.path.join(base, str(version)))
                    deadline = time.monotonic() + 600
                    while _requests(channel, png)[0].model_version != version:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"version {version} was not served in 600 s")
                        time.sleep(0.5)
                    shutil.rmtree(os.path.join(base, str(version - 1)))
                for _ in range(3):
                    _requests(channel, png)
                time.sleep(1.5)  # a few polls: what is released at a poll is
                figure = {"version": version, "swaps": version - 1,
                          "rss_mib": round(rss_mib(process.pid), 1)}
                figures.append(figure)
                print(json.dumps(figure), file=out, flush=True)
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(os.path.dirname(base), ignore_errors=True)
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="SavedModel version directory (default: the tiny model)")
    parser.add_argument("--items", type=int, default=1_000_000,
                        help="catalogue size of the tiny model")
    parser.add_argument("--swaps", type=int, default=6)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        model = args.model or tiny_model_with_catalogue(folder, args.items)
        figures = measure(model, args.swaps)
    first, last = figures[0]["rss_mib"], figures[-1]["rss_mib"]
    print(json.dumps({"model": args.model or f"tiny, {args.items} items", "swaps": args.swaps,
                      "rss_mib_first": first, "rss_mib_last": last,
                      "growth_mib_per_swap": round((last - first) / max(args.swaps, 1), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

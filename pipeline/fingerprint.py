"""What the pipeline's cache is keyed on besides its options: the dataset's
files and mmfuse's own code.

TFX reuses a component's earlier outputs when its inputs and properties are
unchanged. ExampleGen's driver fingerprints only the CSV files its splits name,
and components named by module path (`preprocessing_fn`, `run_fn`) carry no
trace of their code, so a replaced image or an edited `preprocessing_fn` would
otherwise reuse stale outputs. Both fingerprints go into ExampleGen's
properties: changing either re-runs the whole pipeline, while a run that only
changes training options (epochs, seed, modalities) reuses everything up to
and including Transform. `mmfuse serve` uses `files_state` too, to tell when
a model version that failed to load has changed on disk.
"""
import hashlib
import os
from typing import Tuple

import tensorflow as tf

# The packages whose code shapes the pipeline's outputs.
_CODE_PACKAGES = ("pipeline", "transform", "trainer", "schema")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def files_state(directory: str) -> Tuple[Tuple[str, int, int], ...]:
    """(path, size, mtime) of every file under `directory`, sorted; it changes
    when a file is added, removed, resized or rewritten, e.g. while a copy is
    still being written."""
    state = []
    for root, _, names in tf.io.gfile.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            try:
                stat = tf.io.gfile.stat(path)
            except tf.errors.NotFoundError:  # removed while we looked
                continue
            state.append((os.path.relpath(path, directory), stat.length, stat.mtime_nsec))
    return tuple(sorted(state))


def dataset_fingerprint(directory: str) -> str:
    """Changes when any file under `directory` changes (`files_state`)."""
    return hashlib.md5(repr(files_state(directory)).encode("utf-8")).hexdigest()


def code_fingerprint() -> str:
    """Changes when any source or schema file of the pipeline's packages changes."""
    digest = hashlib.md5()
    for package in _CODE_PACKAGES:
        for parent, dirs, files in sorted(os.walk(os.path.join(_ROOT, package))):
            dirs.sort()
            for name in sorted(files):
                if name.endswith((".py", ".pbtxt")) and not name.endswith("_test.py"):
                    path = os.path.join(parent, name)
                    digest.update(os.path.relpath(path, _ROOT).encode("utf-8") + b"\0")
                    with open(path, "rb") as handle:
                        digest.update(handle.read())
    return digest.hexdigest()

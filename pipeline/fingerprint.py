"""What the pipeline's cache is keyed on besides its options: the dataset's
files and mmfuse's own code.

TFX reuses a component's earlier outputs when its inputs and properties are
unchanged. ExampleGen's driver fingerprints only the CSV files its splits name,
and components named by module path (`preprocessing_fn`, `run_fn`) carry no
trace of their code, so a replaced image or an edited `preprocessing_fn` would
otherwise reuse stale outputs. Both fingerprints go into ExampleGen's
properties: changing either re-runs the whole pipeline, while a run that only
changes training options (epochs, seed, modalities) reuses everything up to
and including Transform.
"""
import hashlib
import os

import tensorflow as tf

# The packages whose code shapes the pipeline's outputs.
_CODE_PACKAGES = ("pipeline", "transform", "trainer", "schema")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dataset_fingerprint(directory: str) -> str:
    """Changes when any file under `directory` is added, removed, resized or rewritten."""
    digest = hashlib.md5()
    for parent, _, files in sorted(tf.io.gfile.walk(directory)):
        for name in sorted(files):
            path = os.path.join(parent, name)
            stat = tf.io.gfile.stat(path)
            digest.update(f"{os.path.relpath(path, directory)}\0{stat.length}\0{stat.mtime_nsec}\n"
                          .encode("utf-8"))
    return digest.hexdigest()


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

"""What the pipeline's cache is keyed on besides its options: the dataset's
files and mmfuse's own code.

TFX reuses a component's earlier outputs when its inputs and properties are
unchanged. ExampleGen's driver fingerprints only the CSV files its splits name,
and components named by module path (`preprocessing_fn`, `run_fn`) carry no
trace of their code, so a replaced image or an edited `preprocessing_fn` would
otherwise reuse stale outputs. The code is keyed in two parts, by what runs
where: `DATA_CODE` (ExampleGen, Transform and the frozen encoders Transform
runs) goes into ExampleGen's properties with the dataset's fingerprint, so
changing either re-runs the whole pipeline; `TRAINER_CODE` goes into the
Trainer's, so a change to the towers or the training loop re-trains on the
cached Transform output (an hour of encoders on the 44k fashion catalogue).
A run that only changes training options (epochs, seed, modalities) also
reuses everything up to and including Transform. `mmfuse serve` uses
`files_state` too, to tell when a model version that failed to load has
changed on disk.
"""
import hashlib
import os
from typing import Iterator, Sequence, Tuple

import tensorflow as tf

# Files and packages (relative to the checkout) whose code shapes each part's
# outputs: exactly what ExampleGen and Transform import (and the schema they
# read), and what the Trainer imports besides (a test holds both lists to the
# imports).
DATA_CODE = ("dataset/__init__.py", "dataset/contract.py", "dataset/pseudonyms.py", "dataset/splits.py",
             "schema/schema.pbtxt",
             "pipeline/__init__.py", "pipeline/example_gen.py", "transform", "mmfuse/__init__.py",
             "mmfuse/config.py", "mmfuse/progress.py")
TRAINER_CODE = ("trainer", "evaluation/__init__.py", "evaluation/metrics.py")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def files_state(directory: str) -> Tuple[Tuple[str, int, int], ...]:
    """(path, size, mtime) of every file under `directory`, sorted; it changes
    when a file is added, removed, resized or rewritten, e.g. while a copy is
    still being written."""
    state = []
    if "://" not in directory:
        # os.walk does not follow directory symlinks: a link out of the dataset
        # must not make the fingerprint walk (or hang on) the rest of the disk.
        for root, _, names in os.walk(directory):
            for name in names:
                path = os.path.join(root, name)
                try:
                    info = os.stat(path)  # the file a link names; never opened
                except OSError:  # removed while we looked, or a dangling link
                    continue
                state.append((os.path.relpath(path, directory), info.st_size, info.st_mtime_ns))
        return tuple(sorted(state))
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


def code_fingerprint(paths: Sequence[str], root: str = _ROOT) -> str:
    """Changes when any source or schema file under `paths` (files or
    packages, relative to `root`) changes; tests are left out."""
    digest = hashlib.md5()
    for path in sorted(_source_files(paths, root)):
        digest.update(os.path.relpath(path, root).encode("utf-8") + b"\0")
        with open(path, "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()


def _source_files(paths: Sequence[str], root: str) -> Iterator[str]:
    for relative in paths:
        path = os.path.join(root, relative)
        if not os.path.exists(path):  # a renamed file must not drop out of the key
            raise FileNotFoundError(f"{path}: named in the code fingerprint, but missing")
        if os.path.isfile(path):
            yield path
            continue
        for parent, _, files in os.walk(path):
            for name in files:
                if name.endswith((".py", ".pbtxt")) and not name.endswith("_test.py"):
                    yield os.path.join(parent, name)

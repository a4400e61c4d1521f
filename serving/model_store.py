"""Finds, reads, writes and rewrites model versions in a TF Serving model base directory.

The layout is TF Serving's: <base>/<integer version>/saved_model.pb, the
newest being the one with the largest number, as TF Serving picks it. A copy
(`cp -r`, gsutil, rsync) can leave a version with saved_model.pb and a
truncated file beside it, which TF Serving would load without a word, so a
push (`push_version`, which mmfuse's Pusher runs) also writes a manifest of
every file's size and sha256, last:

1. `<version>/mmfuse_manifest.json.partial` marks a push under way;
2. every file but saved_model.pb, then saved_model.pb (TF Serving's sign of a
   complete version);
3. the manifest, written over the partial one and renamed to
   `<version>/mmfuse_manifest.json` (one atomic step on a local disk).

`check_manifest` holds a version to its manifest. A version whose push was
stopped keeps its partial manifest and never gets a manifest; the next push
removes it (`remove_unfinished_pushes`). A version without either was
written by another tool and has nothing to be checked against.
"""
import hashlib
import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

# Registers the tokenizer ops (WordpieceTokenizeWithOffsets, CaseFoldUTF8...)
# that the text encoder inside the serving graph uses. TF Serving's binary has
# them linked in; a Python process has to import them.
import tensorflow_text  # noqa: F401

from trainer import index as catalogue_index

SAVED_MODEL_FILE = "saved_model.pb"
MANIFEST_FILE = "mmfuse_manifest.json"
PARTIAL_MANIFEST_FILE = MANIFEST_FILE + ".partial"
_CHUNK_BYTES = 1 << 20
log = logging.getLogger("mmfuse.serving")


class ManifestMismatch(ValueError):
    """A version whose files are not those its manifest lists; the message says which."""


def version_dirs(model_base: str) -> List[int]:
    """Every integer-named directory under `model_base`, complete or not, oldest first."""
    if not tf.io.gfile.isdir(model_base):
        raise FileNotFoundError(f"model base directory {model_base} does not exist")
    return sorted(int(name.rstrip("/")) for name in tf.io.gfile.listdir(model_base)
                  if name.rstrip("/").isdigit())


def versions(model_base: str) -> List[int]:
    """The complete versions under `model_base` (saved_model.pb present, not
    an unfinished push), oldest first; their files are not checked here."""
    return [version for version in version_dirs(model_base)
            if tf.io.gfile.exists(os.path.join(model_base, str(version), SAVED_MODEL_FILE))
            and not is_unfinished_push(os.path.join(model_base, str(version)))]


def load_newest(model_base: str) -> Tuple[int, tf.Module]:
    """The newest complete version, loaded once its files match its manifest
    (ManifestMismatch if they do not)."""
    found = versions(model_base)
    if not found:
        raise FileNotFoundError(f"no model version (<integer>/saved_model.pb) under {model_base}")
    path = os.path.join(model_base, str(found[-1]))
    if not check_manifest(path):
        log.warning("%s has no %s: loading it without checking its files", path, MANIFEST_FILE)
    return found[-1], tf.saved_model.load(path)


def is_unfinished_push(version_dir: str) -> bool:
    """True for a push under way, or one that was stopped before its manifest."""
    return (tf.io.gfile.exists(os.path.join(version_dir, PARTIAL_MANIFEST_FILE))
            and not tf.io.gfile.exists(os.path.join(version_dir, MANIFEST_FILE)))


def file_manifest(model_dir: str) -> Dict[str, Dict[str, object]]:
    """{relative path ("/"-separated): {"size", "sha256"}} of every file
    under `model_dir` except mmfuse's manifests."""
    files = {}
    for path in _files_under(model_dir):
        relative = os.path.relpath(path, model_dir).replace(os.sep, "/")
        if relative not in (MANIFEST_FILE, PARTIAL_MANIFEST_FILE):
            files[relative] = {"size": tf.io.gfile.stat(path).length, "sha256": _sha256(path)}
    return files


def push_version(model_dir: str, version_dir: str) -> Dict[str, Dict[str, object]]:
    """Copies the SavedModel at `model_dir` to the new `version_dir` in the
    order of the module docstring and returns its manifest's files. The
    manifest is taken from `model_dir`, so that a copy that went wrong does
    not match it."""
    if tf.io.gfile.exists(version_dir):
        raise FileExistsError(f"{version_dir} already exists; a push writes a new version")
    files = file_manifest(model_dir)
    if SAVED_MODEL_FILE not in files:
        raise FileNotFoundError(f"{model_dir} has no {SAVED_MODEL_FILE}: not a SavedModel")
    tf.io.gfile.makedirs(version_dir)
    partial = os.path.join(version_dir, PARTIAL_MANIFEST_FILE)
    _write_text(partial, json.dumps({"pushing_from": model_dir}))
    for root, directories, _ in tf.io.gfile.walk(model_dir):
        for directory in directories:  # empty ones too (assets/), as TF saved them
            relative = os.path.relpath(os.path.join(root, directory), model_dir)
            tf.io.gfile.makedirs(os.path.join(version_dir, relative))
    for relative in sorted(files, key=lambda name: (name == SAVED_MODEL_FILE, name)):
        tf.io.gfile.copy(os.path.join(model_dir, relative), os.path.join(version_dir, relative))
    _write_text(partial, json.dumps({"files": files}, indent=1, sort_keys=True))
    tf.io.gfile.rename(partial, os.path.join(version_dir, MANIFEST_FILE), overwrite=True)
    return files


def check_manifest(version_dir: str) -> bool:
    """Whether `version_dir` has a manifest; raises ManifestMismatch when one
    of the files it lists is missing, of another size or another sha256.
    Files it does not list are not looked at."""
    path = os.path.join(version_dir, MANIFEST_FILE)
    if not tf.io.gfile.exists(path):
        return False
    try:
        with tf.io.gfile.GFile(path, "r") as handle:
            files = json.load(handle)["files"]
        expected = {name: (int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ManifestMismatch(f"{path} is not a manifest mmfuse can read: {error}") from None
    for name, (size, sha256) in sorted(expected.items()):
        file_path = os.path.join(version_dir, *name.split("/"))
        if not tf.io.gfile.exists(file_path):
            raise ManifestMismatch(f"{file_path} is missing ({MANIFEST_FILE} lists it)")
        found = tf.io.gfile.stat(file_path).length
        if found != size:
            raise ManifestMismatch(f"{file_path} has {found} bytes where {MANIFEST_FILE} says "
                                   f"{size}: truncated or still being copied?")
    for name, (size, sha256) in sorted(expected.items()):
        file_path = os.path.join(version_dir, *name.split("/"))
        if _sha256(file_path) != sha256:
            raise ManifestMismatch(f"{file_path} differs from what {MANIFEST_FILE} lists "
                                   "(same size, another sha256)")
    return True


def remove_unfinished_pushes(model_base: str, older_than: int) -> List[int]:
    """Removes the versions below `older_than` whose push was stopped
    (`is_unfinished_push`) and returns them. Newer ones are left alone: they
    may be a push still under way."""
    removed = []
    for version in version_dirs(model_base):
        path = os.path.join(model_base, str(version))
        if version < older_than and is_unfinished_push(path):
            tf.io.gfile.rmtree(path)
            removed.append(version)
    return removed


def _files_under(directory: str) -> List[str]:
    return sorted(os.path.join(root, name) for root, _, names in tf.io.gfile.walk(directory)
                  for name in names)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_text(path: str, text: str) -> None:
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(text)


def replace_catalogue(version_dir: str, out_dir: str, item_ids: Sequence[bytes],
                      embeddings: np.ndarray, titles: Optional[Sequence[bytes]] = None,
                      attributes: Optional[Sequence[bytes]] = None) -> None:
    """Writes to `out_dir` the model at `version_dir` with another catalogue:
    the same graph and signatures, `item_ids` [n] and unit `embeddings`
    [n, dim] in place of its own. Row 0 is the "unknown" item, never returned.
    `titles` and `attributes` [n] are what answers show of each item; left
    out, the rows that stay keep theirs and appended rows show none.

    `similar_items` finds a seed by the model's id -> row table, which is
    rebuilt here when the model has one (`set_item_rows`; older exports look
    seeds up in the item vocabulary, so there existing items must keep their
    rows and new ones be appended after them).
    """
    model = _with_replaceable_catalogue(version_dir)
    embeddings = np.asarray(embeddings, np.float32)
    dim = model.candidates.shape[1]
    if embeddings.ndim != 2 or embeddings.shape[1] != dim or len(embeddings) != len(item_ids):
        raise ValueError(f"expected {len(item_ids)} embeddings of dimension {dim}, "
                         f"got shape {embeddings.shape}")
    model.candidates.assign(embeddings)
    model.item_ids.assign(np.asarray(item_ids, dtype=object))
    for table, given in (("item_titles", titles), ("item_attributes", attributes)):
        variable = getattr(model, table, None)
        if not isinstance(variable, tf.Variable):  # exported before answers had them
            continue
        if given is None:
            kept = list(variable.numpy()[:len(item_ids)])
            given = kept + [b""] * (len(item_ids) - len(kept))
        if len(given) != len(item_ids):
            raise ValueError(f"expected {len(item_ids)} {table[5:]}, got {len(given)}")
        variable.assign(np.asarray(given, dtype=object))
    if hasattr(model, "set_item_rows"):
        model.set_item_rows(tf.constant(np.asarray(item_ids, dtype=object)))
    # The partitioned index (trainer/index.py), when the model has one.
    catalogue_index.refresh_model(model)
    if isinstance(getattr(model, "lexical_entries", None), tf.Variable):
        # Search's lexical table (trainer/lexical.py) keeps the words of the
        # rows that stay; appended items have none.
        kept = model.lexical_entries.numpy()[:, 0] < len(item_ids)
        model.lexical_weights.assign(model.lexical_weights.numpy()[kept])
        model.lexical_entries.assign(model.lexical_entries.numpy()[kept])
        if isinstance(getattr(model, "lexical_counts", None), tf.Variable):
            model.lexical_counts.assign(model.lexical_counts.numpy()[kept])
            lengths = model.item_lengths.numpy()[:len(item_ids)]
            model.item_lengths.assign(np.pad(lengths, (0, len(item_ids) - len(lengths))))
    tf.saved_model.save(model, out_dir, signatures=model.signatures)


def read_catalogue(version_dir: str) -> Tuple[np.ndarray, np.ndarray]:
    """A version's item ids [n] and item embeddings [n, dim] (row 0: "unknown")."""
    model = _with_replaceable_catalogue(version_dir)
    return model.item_ids.numpy(), model.candidates.numpy()


def _with_replaceable_catalogue(version_dir: str):
    model = tf.saved_model.load(version_dir)
    for name in ("candidates", "item_ids"):
        if not isinstance(getattr(model, name, None), tf.Variable):
            raise ValueError(f"{version_dir} has no `{name}` variable: it was exported before "
                             "its catalogue could be replaced; re-export it with the current "
                             "trainer")
    if model.candidates.shape[0] is not None:
        raise ValueError(f"{version_dir} has a catalogue of fixed size "
                         f"{model.candidates.shape[0]}; re-export it with the current trainer")
    return model

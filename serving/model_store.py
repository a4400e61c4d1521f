"""Finds, reads and rewrites model versions in a TF Serving model base directory.

The layout is TF Serving's: <base>/<integer version>/saved_model.pb. A version
directory is complete once saved_model.pb exists (the Pusher copies it last),
and the newest is the one with the largest number, as TF Serving picks it.
"""
import os
from typing import List, Sequence, Tuple

import numpy as np
import tensorflow as tf

# Registers the tokenizer ops (WordpieceTokenizeWithOffsets, CaseFoldUTF8...)
# that the text encoder inside the serving graph uses. TF Serving's binary has
# them linked in; a Python process has to import them.
import tensorflow_text  # noqa: F401

SAVED_MODEL_FILE = "saved_model.pb"


def version_dirs(model_base: str) -> List[int]:
    """Every integer-named directory under `model_base`, complete or not, oldest first."""
    if not tf.io.gfile.isdir(model_base):
        raise FileNotFoundError(f"model base directory {model_base} does not exist")
    return sorted(int(name.rstrip("/")) for name in tf.io.gfile.listdir(model_base)
                  if name.rstrip("/").isdigit())


def versions(model_base: str) -> List[int]:
    """The complete versions under `model_base`, oldest first."""
    return [version for version in version_dirs(model_base)
            if tf.io.gfile.exists(os.path.join(model_base, str(version), SAVED_MODEL_FILE))]


def load_newest(model_base: str) -> Tuple[int, tf.Module]:
    found = versions(model_base)
    if not found:
        raise FileNotFoundError(f"no model version (<integer>/saved_model.pb) under {model_base}")
    return found[-1], tf.saved_model.load(os.path.join(model_base, str(found[-1])))


def replace_catalogue(version_dir: str, out_dir: str, item_ids: Sequence[bytes],
                      embeddings: np.ndarray) -> None:
    """Writes to `out_dir` the model at `version_dir` with another catalogue:
    the same graph and signatures, `item_ids` [n] and unit `embeddings`
    [n, dim] in place of its own. Row 0 is the "unknown" item, never returned.

    The item vocabulary (the Transform's) is not changed: `similar_items`
    finds a seed item by its index there, so existing items keep their rows
    and new ones are appended after them.
    """
    model = _with_replaceable_catalogue(version_dir)
    embeddings = np.asarray(embeddings, np.float32)
    dim = model.candidates.shape[1]
    if embeddings.ndim != 2 or embeddings.shape[1] != dim or len(embeddings) != len(item_ids):
        raise ValueError(f"expected {len(item_ids)} embeddings of dimension {dim}, "
                         f"got shape {embeddings.shape}")
    model.candidates.assign(embeddings)
    model.item_ids.assign(np.asarray(item_ids, dtype=object))
    if isinstance(getattr(model, "lexical_entries", None), tf.Variable):
        # Search's lexical table (trainer/lexical.py) keeps the words of the
        # rows that stay; appended items have none.
        kept = model.lexical_entries.numpy()[:, 0] < len(item_ids)
        model.lexical_weights.assign(model.lexical_weights.numpy()[kept])
        model.lexical_entries.assign(model.lexical_entries.numpy()[kept])
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

"""Finds and loads model versions in a TF Serving model base directory.

The layout is TF Serving's: <base>/<integer version>/saved_model.pb. A version
directory is complete once saved_model.pb exists (the Pusher copies it last),
and the newest is the one with the largest number, as TF Serving picks it.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import List, Tuple  # noqa: E402

import tensorflow as tf  # noqa: E402
# Registers the tokenizer ops (WordpieceTokenizeWithOffsets, CaseFoldUTF8...)
# that the text encoder inside the serving graph uses. TF Serving's binary has
# them linked in; a Python process has to import them.
import tensorflow_text  # noqa: E402,F401


def versions(model_base: str) -> List[int]:
    """The complete versions under `model_base`, oldest first."""
    if not tf.io.gfile.isdir(model_base):
        raise FileNotFoundError(f"model base directory {model_base} does not exist")
    found = []
    for name in tf.io.gfile.listdir(model_base):
        name = name.rstrip("/")
        if name.isdigit() and tf.io.gfile.exists(os.path.join(model_base, name, "saved_model.pb")):
            found.append(int(name))
    return sorted(found)


def load_newest(model_base: str) -> Tuple[int, tf.Module]:
    found = versions(model_base)
    if not found:
        raise FileNotFoundError(f"no model version (<integer>/saved_model.pb) under {model_base}")
    return found[-1], tf.saved_model.load(os.path.join(model_base, str(found[-1])))

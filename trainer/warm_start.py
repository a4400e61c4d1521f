"""Warm start: a new model begins from the latest blessed one.

The latest blessed model is the newest complete version the Pusher wrote
(it writes only blessed models, and `mmfuse_manifest.json` last). Every
variable of the new model whose checkpoint path and shape match the old
model's is copied; an embedding indexed by a vocabulary (item ids, user ids,
words, attribute values) is copied row by row by id, so a known item keeps
its vector under its new index and a new id keeps its fresh initialisation.
The words' out-of-vocabulary buckets, the table's last rows, are copied by
position: a word hashes to the same bucket in every run.
Anything else (another modality set, another embedding size) stays fresh.
"""
import json
import logging
import os
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2
from tensorflow.python.checkpoint import graph_view
from tensorflow.python.trackable import trackable_utils

from trainer.data import VOCABULARIES
from transform import features as f

progress_log = logging.getLogger("mmfuse")
MANIFEST = "mmfuse_manifest.json"  # pipeline/pusher.py writes it last
# Checkpoint paths of the vocabulary-indexed embeddings (trainer/towers.py),
# by vocabulary.
VOCABULARY_TABLES = {
    "model/item_tower/item_id/embedding/embeddings": f.ITEM_VOCABULARY,
    "model/query_tower/recent_items/item/embeddings": f.ITEM_VOCABULARY,
    "model/query_tower/user_id/embedding/embeddings": f.USER_VOCABULARY,
    "model/item_tower/words/embedding/embeddings": f.TOKEN_VOCABULARY,  # shared by the towers
    "model/item_tower/attributes/embedding/embeddings": f.ATTRIBUTE_VOCABULARY,
}
# Rows after a vocabulary's ids (transform/preprocessing.py's hash buckets).
BUCKET_ROWS = {f.TOKEN_VOCABULARY: f.WORD_OOV_BUCKETS}


def latest_blessed(serving_dir: Optional[str]) -> Optional[str]:
    """The newest complete version directory under the model base, or None."""
    if not serving_dir or not tf.io.gfile.isdir(serving_dir):
        return None
    versions = sorted((int(name.strip("/")) for name in tf.io.gfile.listdir(serving_dir)
                       if name.strip("/").isdigit()), reverse=True)
    for version in versions:
        path = os.path.join(serving_dir, str(version))
        if tf.io.gfile.exists(os.path.join(path, MANIFEST)):
            return path
    return None


def variables_by_path(model: tf.Module) -> Dict[str, tf.Variable]:
    """The model's variables by the path a checkpoint of `ServingModule`
    (trainer/export.py, the model under `model`) saves them at."""
    root = tf.Module()
    root.model = model
    _, paths = graph_view.ObjectGraphView(root).breadth_first_traversal()
    return {trackable_utils.object_path_to_string(path): obj for obj, path in paths.items()
            if isinstance(obj, tf.Variable)}


def checkpoint_keys(reader, paths) -> Dict[str, str]:
    """The checkpoint key of each variable path that the checkpoint holds. A
    SavedModel stores a Keras layer's variables under the first path to them,
    often its `variables` list (`model/item_tower/variables/0`), so each path
    is followed through the checkpoint's object graph rather than spelled."""
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    keys = {}
    for path in paths:
        node = 0
        for name in path.split("/"):
            node = next((child.node_id for child in graph.nodes[node].children
                         if trackable_utils.escape_local_name(child.local_name) == name), None)
            if node is None:
                break
        else:
            keys.update({path: attribute.checkpoint_key for attribute in graph.nodes[node].attributes
                         if attribute.name == "VARIABLE_VALUE"})
    return keys


def _vocabulary(path: str) -> List[bytes]:
    with tf.io.gfile.GFile(path, "rb") as handle:
        return handle.read().splitlines()


def old_vocabularies(model_dir: str) -> Dict[str, List[bytes]]:
    """The old model's vocabularies: the Transform's vocabulary files, which
    the SavedModel keeps among its assets under their own names."""
    assets = os.path.join(model_dir, "assets")
    vocabularies = {}
    for name in VOCABULARIES:
        path = os.path.join(assets, name)
        if tf.io.gfile.exists(path):
            vocabularies[name] = _vocabulary(path)
    return vocabularies


def copy_rows_by_id(old: np.ndarray, new: np.ndarray, old_ids: List[bytes],
                    new_ids: List[bytes], buckets: int = 0) -> int:
    """Copies `old`'s row of each id into `new`'s row of that id (row = the
    id's line in its vocabulary + 1; row 0, "unknown", is copied as is), and
    the last `buckets` rows (hash buckets after the ids) by position.
    Returns how many ids were copied."""
    old_rows = {item: row + 1 for row, item in enumerate(old_ids) if row + 1 < len(old) - buckets}
    new[0] = old[0]
    if buckets:
        new[-buckets:] = old[-buckets:]
    copied = 0
    for row, item in enumerate(new_ids):
        if row + 1 < len(new) - buckets and item in old_rows:
            new[row + 1] = old[old_rows[item]]
            copied += 1
    return copied


def warm_start(model: tf.Module, model_dir: str, new_vocabularies: Dict[str, List[bytes]]) -> Dict:
    """Initialises `model`'s (built) variables from the SavedModel at
    `model_dir`. Returns what was done: variables copied whole, tables
    copied by id (ids copied per vocabulary), variables left fresh."""
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "variables", "variables"))
    old_shapes = reader.get_variable_to_shape_map()
    old_vocabulary = old_vocabularies(model_dir)
    variables = variables_by_path(model)
    keys = checkpoint_keys(reader, variables)
    report = {"copied": 0, "ids_copied": {}, "new_ids": {}, "fresh": []}
    for path, variable in sorted(variables.items()):
        key = keys.get(path)
        if key not in old_shapes:
            report["fresh"].append(path)
            continue
        old_shape, shape = tuple(old_shapes[key]), tuple(variable.shape)
        vocabulary = VOCABULARY_TABLES.get(path)
        if vocabulary and vocabulary in old_vocabulary and vocabulary in new_vocabularies \
                and old_shape[1:] == shape[1:]:
            value = variable.numpy()
            copied = copy_rows_by_id(reader.get_tensor(key), value, old_vocabulary[vocabulary],
                                     new_vocabularies[vocabulary], BUCKET_ROWS.get(vocabulary, 0))
            variable.assign(value)
            report["ids_copied"][path] = copied
            report["new_ids"][path] = len(new_vocabularies[vocabulary]) - copied
        elif old_shape == shape:
            variable.assign(reader.get_tensor(key))
            report["copied"] += 1
        else:
            report["fresh"].append(path)
    return report


def write_report(report: Dict, directory: str) -> None:
    tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(os.path.join(directory, "warm_start.json"), "w") as handle:
        json.dump(report, handle)

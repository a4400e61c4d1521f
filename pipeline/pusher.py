"""The Pusher: TFX's, with a version's files pushed in an order a server can
check (serving/model_store.py push_version) and a manifest of them written last.

It is the standard component (same spec, inputs, outputs and
`push_destination`) with its executor replaced, so it compiles for Kubeflow
like any TFX component, the container running `pipeline.pusher.Executor`
from the image. Over TFX's executor it:

- writes `<version>/mmfuse_manifest.json` after every other file, so that
  `mmfuse serve` loads a version only if its files match it;
- numbers a version one above the newest in the model base when the clock
  would give an existing (or older) number, rather than skipping the push;
- after a successful push, removes the versions whose push was stopped
  before its manifest. One Pusher at a time writes to a model base: a push
  still under way when another finishes would be taken for a stopped one.
"""
import os
import time
from typing import Any, Dict, List

import tensorflow as tf
from absl import logging
from tfx import types
from tfx import v1 as tfx
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from serving import model_store


class Executor(tfx_pusher_executor.Executor):
    """Pushes a blessed model to a filesystem destination with its manifest."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        """As TFX's Pusher: `model` and `model_blessing` in, `pushed_model`
        out, `push_destination` (a filesystem base directory) in
        `exec_properties`."""
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
                                  destination)
        if destination.WhichOneof("destination") != "filesystem":
            raise NotImplementedError("mmfuse's Pusher writes to a filesystem destination only, "
                                      f"not {destination.WhichOneof('destination')!r}")
        if destination.filesystem.versioning not in (pusher_pb2.Versioning.AUTO,
                                                     pusher_pb2.Versioning.UNIX_TIMESTAMP):
            raise NotImplementedError(f"versioning {destination.filesystem.versioning} "
                                      "(only UNIX_TIMESTAMP)")
        base = destination.filesystem.base_directory
        version = next_version(base)
        serving_path = os.path.join(base, str(version))
        files = model_store.push_version(model_path, serving_path)
        logging.info("Model written to serving path %s with its %s (%d files).", serving_path,
                     model_store.MANIFEST_FILE, len(files))
        for stopped in model_store.remove_unfinished_pushes(base, older_than=version):
            logging.warning("Removed version %d under %s: a push that stopped before its %s.",
                            stopped, base, model_store.MANIFEST_FILE)
        # Archived beside the pipeline's outputs, as TFX's Pusher does.
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=str(version))


def next_version(model_base: str) -> int:
    """The UNIX time, or one above the newest version directory if that is
    not older: TF Serving serves the largest number."""
    existing = model_store.version_dirs(model_base) if tf.io.gfile.isdir(model_base) else []
    return max(int(time.time()), existing[-1] + 1 if existing else 0)


class Pusher(tfx.components.Pusher):
    """tfx.components.Pusher with `Executor` (module docstring); the same
    arguments, and the component id "Pusher"."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

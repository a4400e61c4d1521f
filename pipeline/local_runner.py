"""Runs the pipeline here with LocalDagRunner (Beam's DirectRunner inside) and
reads back what it produced: the blessing, the pushed model and the metrics."""
import contextlib
import dataclasses
import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow_model_analysis as tfma
from absl import logging as absl_logging
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tensorflow_transform.beam import impl as tft_beam_impl
from tfx import v1 as tfx
from tfx.utils import path_utils

from dataset import splits
from dataset.contract import Dataset, training_interactions
from mmfuse import progress
from pipeline import release_gate
from pipeline.pipeline import PipelineConfig, create_pipeline
from transform import features as f
from transform.cached_executor import ENCODING

# Raw features the Transform's encoders read, each with the feature that the
# feature cache attaches in its place (transform/cached_executor.py).
ENCODED_INPUTS = ((f.TITLE, f.ENCODED_ITEM_TEXT), (f.DESCRIPTION, f.ENCODED_ITEM_TEXT),
                  (f.IMAGE, f.ENCODED_IMAGE), (f.QUERY, f.ENCODED_QUERY))


@dataclasses.dataclass
class RunResult:
    blessed: bool
    candidate_model: Optional[str]  # the Trainer's SavedModel, blessed or not
    pushed_model: Optional[str]
    metrics: Dict[str, float]
    change_vs_baseline: Dict[str, float]
    blessing_reason: str
    # The Transform's encoder feature cache: hits, misses, refused shards
    # (transform/cached_executor.py); None when Transform's outputs were reused.
    feature_cache: Optional[Dict] = None
    # The blessed model version this run's Trainer started from, or None.
    warm_start: Optional[Dict] = None


class _ComponentSteps(logging.Handler):
    """Turns LocalDagRunner's log records of each component's start and end
    (and the launcher's note that it reused a cached execution) into
    progress steps (mmfuse/progress.py)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.cached = False

    def emit(self, record):
        if record.msg == "Component %s is running.":
            self.cached = False
            progress.step_started(record.args[0])
        elif record.msg == "Component %s is finished.":
            progress.step_finished(record.args[0], " (cached)" if self.cached else "")
        elif str(record.msg).startswith("A cached execution"):
            self.cached = True


def _is_encoding(dofn) -> bool:
    """Whether a tf.Transform graph runner is the transform phase's (its
    outputs include the encoders'), not an analysis phase's."""
    return f.ITEM_TEXT_EMBEDDING in getattr(dofn._graph_state, "outputs_tensor_keys", ())


def _encoded_rows(batch) -> int:
    """Rows of a raw Arrow batch that carry text or an image for the encoders
    and not the feature cache's features of it (those the graph encodes)."""
    def has(name):
        index = batch.schema.get_field_index(name)
        return (batch.column(index).is_valid().to_numpy(zero_copy_only=False) if index >= 0
                else np.zeros(batch.num_rows, bool))

    present = np.zeros(batch.num_rows, bool)
    for name, encoded in ENCODED_INPUTS:
        present |= has(name) & ~has(encoded)
    return int(present.sum())


@contextlib.contextmanager
def _counting_encoded_rows():
    """Counts the rows tf.Transform's Beam DoFn feeds the encoders, for the
    Transform's bar. The encoders are TF graph ops embedded in the serving
    model, so the count is taken around the Python batch loop that runs them,
    which in a local run (Beam's in-process DirectRunner) is this process."""
    handle_batch = tft_beam_impl._RunMetaGraphDoFn._handle_batch

    def counted(dofn, batch):
        result = handle_batch(dofn, batch)
        if _is_encoding(dofn):
            progress.advance(ENCODING, _encoded_rows(batch))
        return result

    tft_beam_impl._RunMetaGraphDoFn._handle_batch = counted
    try:
        yield
    finally:
        tft_beam_impl._RunMetaGraphDoFn._handle_batch = handle_batch


def plan_progress(dataset: Dataset, split_method: str) -> None:
    """Plans the bars of a run on `dataset`: the Transform's rows with text or
    an image (the catalogue's items and the searches), the Evaluator's eval rows."""
    rows = training_interactions(dataset)
    progress.plan("Transform", ENCODING, len(dataset.items) + sum(1 for row in rows if row.query),
                  "encoding items and searches")
    progress.plan("Evaluator", release_gate.EVALUATED,
                  splits.assign_splits(rows, split_method).count(splits.EVAL), "ranking eval rows")


def run(config: PipelineConfig) -> RunResult:
    """Runs the pipeline. With a Progress installed (mmfuse/progress.py), it
    reports each component's start and end, and counts the rows encoded."""
    store = metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path))
    last_run = max((c.id for c in store.get_contexts_by_type("pipeline_run")), default=0)
    absl_logging.set_verbosity(absl_logging.INFO)  # into the log file
    steps = _ComponentSteps()
    logging.getLogger().addHandler(steps)
    try:
        with _counting_encoded_rows():
            tfx.orchestration.LocalDagRunner().run(create_pipeline(config))
    finally:
        logging.getLogger().removeHandler(steps)
    result = _read_result(outputs_of_run(store, after_context_id=last_run))
    executed = outputs_of_run(store, last_run, ("Transform", "Trainer"), executed_only=True)
    graph = executed.get("TransformGraph")
    cache = _read_json(graph and graph.uri, "feature_cache.json")
    if cache:
        result.feature_cache = {key: cache[key] for key in ("hits", "misses", "refused")}
    model_run = executed.get("ModelRun")
    warm = _read_json(model_run and model_run.uri, "warm_start.json")
    if warm:
        result.warm_start = {"from_version": warm["version"], "ids_copied": warm["ids_copied"],
                             "new_ids": warm["new_ids"]}
    return result


def _read_json(directory: Optional[str], name: str) -> Optional[Dict]:
    path = directory and os.path.join(directory, name)
    if not path or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def executions_of_run(store, after_context_id: int = 0,
                      components: Sequence[str] = ("Trainer", "Evaluator", "Pusher"),
                      executed_only: bool = False) -> List[metadata_store_pb2.Execution]:
    """The executions of `components` (by their type's last name) in the
    newest pipeline run after context `after_context_id`; a component whose
    result came from the cache has one too, unless `executed_only`."""
    runs = [c for c in store.get_contexts_by_type("pipeline_run") if c.id > after_context_id]
    if not runs:
        return []
    execution_types = {t.id: t.name for t in store.get_execution_types()}
    return [e for e in store.get_executions_by_context(max(runs, key=lambda c: c.id).id)
            if execution_types[e.type_id].endswith(tuple("." + c for c in components))
            and (not executed_only or e.last_known_state == metadata_store_pb2.Execution.COMPLETE)]


def outputs_of_run(store, after_context_id: int = 0,
                   components: Sequence[str] = ("Trainer", "Evaluator", "Pusher"),
                   executed_only: bool = False) -> Dict[str, metadata_store_pb2.Artifact]:
    """The outputs of `components` in the newest run after `after_context_id`
    (0: the newest run of all), by artifact type. A component whose result
    came from the cache published the earlier artifact again, so it counts as
    this run's output too, unless `executed_only`."""
    executions = executions_of_run(store, after_context_id, components, executed_only)
    events = store.get_events_by_execution_ids([e.id for e in executions])
    output_ids = sorted({e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT})
    artifact_types = {t.id: t.name for t in store.get_artifact_types()}
    return {artifact_types[a.type_id]: a for a in store.get_artifacts_by_id(output_ids)}


def _read_result(outputs: Dict[str, metadata_store_pb2.Artifact]) -> RunResult:
    model = outputs.get("Model")
    blessing = outputs.get("ModelBlessing")
    pushed = outputs.get("PushedModel")
    evaluation = outputs.get("ModelEvaluation")
    blessed = bool(blessing and blessing.custom_properties["blessed"].int_value)
    pushed_model = None
    if pushed and pushed.custom_properties["pushed"].int_value:
        pushed_model = pushed.custom_properties["pushed_destination"].string_value
    evaluated = {"metrics": {}, "change_vs_baseline": {}}
    reason = "no evaluation"
    if evaluation:
        evaluated = candidate_metrics(evaluation.uri)
        reason = validation_summary(evaluation.uri)
    candidate = path_utils.serving_model_path(model.uri) if model else None
    return RunResult(blessed, candidate, pushed_model, evaluated["metrics"], evaluated["change_vs_baseline"],
                     reason)


def candidate_metrics(evaluation_uri: str) -> Dict[str, Dict[str, float]]:
    """The candidate's overall metrics and, when there was a baseline, their
    change against it. TFMA names the candidate "candidate" only when a
    baseline was evaluated beside it."""
    for model_name in ("candidate", ""):
        result = tfma.load_eval_result(evaluation_uri, model_name=model_name)
        overall = [metrics for slice_key, metrics in result.slicing_metrics if not slice_key]
        if overall:
            values = {name: value["doubleValue"] for name, value in overall[0][""][""].items()
                      if "doubleValue" in value}
            return {
                "metrics": {n: round(v, 6) for n, v in sorted(values.items()) if not n.endswith("_diff")},
                "change_vs_baseline": {n[:-len("_diff")]: round(v, 6)
                                       for n, v in sorted(values.items()) if n.endswith("_diff")},
            }
    return {"metrics": {}, "change_vs_baseline": {}}


def validation_summary(evaluation_uri: str) -> str:
    """Why the Evaluator did or did not bless: each failed threshold in words
    (the release gate's in recall at its cut-off, pipeline/release_gate.py),
    or 'ok'."""
    validation = tfma.load_validation_result(evaluation_uri)
    if validation.validation_ok:
        return "ok"
    metrics = candidate_metrics(evaluation_uri)["metrics"]
    failures = []
    for per_slice in validation.metric_validations_per_slice:
        for failure in per_slice.failures:
            failures.append(_failure_in_words(failure, metrics))
    return "; ".join(failures) or "validation failed"


def _failure_in_words(failure, metrics: Dict[str, float]) -> str:
    name = failure.metric_key.name
    value = failure.metric_value.double_value.value
    threshold = failure.metric_threshold
    if name == release_gate.MARGIN:
        catalogue_size = int(metrics.get(release_gate.CATALOGUE_SIZE, 0))
        cutoff = int(metrics.get(release_gate.CUTOFF, 0))
        if not cutoff:
            return (f"a catalogue of {catalogue_size} items is too small for the release gate "
                    f"(it needs at least {release_gate.MIN_CATALOGUE})")
        name = f"recall@{cutoff}"
        if not failure.metric_key.is_diff:
            return (f"{name}={metrics.get(release_gate.RECALL, float('nan')):.4f} is below the "
                    f"release floor {metrics.get(release_gate.FLOOR, float('nan')):.4f} for a "
                    f"catalogue of {catalogue_size} items")
    if failure.metric_key.is_diff:
        return (f"{name} changed by {value:+.4f} against the latest blessed model "
                f"(allowed: {threshold.change_threshold.absolute.value:+.4f})")
    return f"{name}={value:.4f} is below {threshold.value_threshold.lower_bound.value:.4f}"

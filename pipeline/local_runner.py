"""Runs the pipeline here with LocalDagRunner (Beam's DirectRunner inside) and
reads back what it produced: the blessing, the pushed model and the metrics."""
import dataclasses
import json
import logging
import os
import sys
from typing import Dict, Optional

import tensorflow_model_analysis as tfma
from absl import logging as absl_logging
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.utils import path_utils

from pipeline import release_gate
from pipeline.pipeline import PipelineConfig, create_pipeline

progress_log = logging.getLogger("mmfuse")


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


class _ProgressFilter(logging.Filter):
    """Lets through mmfuse's own messages, TFX's per-component start/finish,
    and TFX's note when a component's outputs come from the cache."""

    def filter(self, record):
        return record.name == "mmfuse" or record.getMessage().startswith(
            ("Component ", "A cached execution"))


def show_progress() -> None:
    """Prints which component runs, and mmfuse's messages, to stdout; the rest
    of TFX/Beam's INFO chatter stays quiet."""
    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.get_absl_handler().setLevel(logging.WARNING)
    handler = logging.StreamHandler(sys.stdout)
    handler.setLevel(logging.INFO)
    handler.addFilter(_ProgressFilter())
    handler.setFormatter(logging.Formatter("[mmfuse] %(message)s"))
    logging.getLogger().addHandler(handler)
    progress_log.setLevel(logging.INFO)


def run(config: PipelineConfig) -> RunResult:
    store = metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path))
    last_run = max((c.id for c in store.get_contexts_by_type("pipeline_run")), default=0)
    tfx.orchestration.LocalDagRunner().run(create_pipeline(config))
    result = _read_result(_outputs_of_run(store, after_context_id=last_run))
    graph = _executed_outputs(store, last_run, "Transform").get("TransformGraph")
    cache = _read_json(graph and graph.uri, "feature_cache.json")
    if cache:
        result.feature_cache = {key: cache[key] for key in ("hits", "misses", "refused")}
    model_run = _executed_outputs(store, last_run, "Trainer").get("ModelRun")
    warm = _read_json(model_run and model_run.uri, "warm_start.json")
    if warm:
        result.warm_start = {"from_version": warm["version"], "ids_copied": warm["ids_copied"],
                             "new_ids": warm["new_ids"]}
    return result


def _executed_outputs(store, after_context_id: int, component: str) -> Dict[str, metadata_store_pb2.Artifact]:
    """Outputs of `component` in the run just finished if it executed (was
    not taken from the pipeline cache), by artifact type."""
    runs = [c for c in store.get_contexts_by_type("pipeline_run") if c.id > after_context_id]
    if not runs:
        return {}
    execution_types = {t.id: t.name for t in store.get_execution_types()}
    executions = [e for e in store.get_executions_by_context(max(runs, key=lambda c: c.id).id)
                  if execution_types[e.type_id].endswith("." + component)
                  and e.last_known_state == metadata_store_pb2.Execution.COMPLETE]
    events = store.get_events_by_execution_ids([e.id for e in executions])
    output_ids = sorted({e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT})
    artifact_types = {t.id: t.name for t in store.get_artifact_types()}
    return {artifact_types[a.type_id]: a for a in store.get_artifacts_by_id(output_ids)}


def _read_json(directory: Optional[str], name: str) -> Optional[Dict]:
    path = directory and os.path.join(directory, name)
    if not path or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _outputs_of_run(store, after_context_id: int) -> Dict[str, metadata_store_pb2.Artifact]:
    """The Trainer's, the Evaluator's and the Pusher's outputs in the run just finished, by
    artifact type. A component whose result came from the cache published the
    earlier artifact again, so it counts as this run's output too."""
    runs = [c for c in store.get_contexts_by_type("pipeline_run") if c.id > after_context_id]
    if not runs:
        return {}
    execution_types = {t.id: t.name for t in store.get_execution_types()}
    executions = [e for e in store.get_executions_by_context(max(runs, key=lambda c: c.id).id)
                  if execution_types[e.type_id].endswith((".Trainer", ".Evaluator", ".Pusher"))]
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

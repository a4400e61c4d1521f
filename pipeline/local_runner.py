"""Runs the pipeline here with LocalDagRunner (Beam's DirectRunner inside) and
reads back what it produced: the blessing, the pushed model and the metrics."""
import dataclasses
import logging
import os
import sys
from typing import Dict, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow_model_analysis as tfma  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_metadata import metadata_store  # noqa: E402
from tfx import v1 as tfx  # noqa: E402

from pipeline.pipeline import PipelineConfig, create_pipeline  # noqa: E402

progress_log = logging.getLogger("mmfuse")


@dataclasses.dataclass
class RunResult:
    blessed: bool
    pushed_model: Optional[str]
    metrics: Dict[str, float]
    change_vs_baseline: Dict[str, float]
    blessing_reason: str


class _ProgressFilter(logging.Filter):
    """Lets through mmfuse's own messages and TFX's per-component start/finish."""

    def filter(self, record):
        return record.name == "mmfuse" or record.getMessage().startswith("Component ")


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
    last_id = max((a.id for a in store.get_artifacts()), default=0)
    tfx.orchestration.LocalDagRunner().run(create_pipeline(config))
    return _read_result(store, last_id)


def _latest(store, type_name: str, after_id: int):
    artifacts = [a for a in store.get_artifacts_by_type(type_name) if a.id > after_id]
    return max(artifacts, key=lambda a: a.id) if artifacts else None


def _read_result(store, after_id: int) -> RunResult:
    blessing = _latest(store, "ModelBlessing", after_id)
    pushed = _latest(store, "PushedModel", after_id)
    evaluation = _latest(store, "ModelEvaluation", after_id)
    blessed = bool(blessing and blessing.custom_properties["blessed"].int_value)
    pushed_model = None
    if pushed and pushed.custom_properties["pushed"].int_value:
        pushed_model = pushed.custom_properties["pushed_destination"].string_value
    evaluated = {"metrics": {}, "change_vs_baseline": {}}
    reason = "no evaluation"
    if evaluation:
        evaluated = candidate_metrics(evaluation.uri)
        reason = validation_summary(evaluation.uri)
    return RunResult(blessed, pushed_model, evaluated["metrics"], evaluated["change_vs_baseline"],
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
    """Why the Evaluator did or did not bless: each failed threshold, or 'ok'."""
    validation = tfma.load_validation_result(evaluation_uri)
    if validation.validation_ok:
        return "ok"
    failures = []
    for per_slice in validation.metric_validations_per_slice:
        for failure in per_slice.failures:
            failures.append(f"{failure.metric_key.name}={failure.metric_value.double_value.value:.4f} "
                            f"fails {failure.message or 'its threshold'}")
    return "; ".join(failures) or "validation failed"

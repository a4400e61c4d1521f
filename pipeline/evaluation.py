"""The release gate: retrieval metrics for the Evaluator and their thresholds.

TFMA's built-in metrics score one prediction against one label. Retrieval is
scored by where the held-out item ranks among the whole catalogue, so the
model's `serving_default` returns that rank per eval example and
`RetrievalMetrics` turns ranks into recall@k, ndcg@k and MRR.

A candidate is blessed when its recall@k clears an absolute floor and does not
fall below the latest blessed model's by more than a small tolerance.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Dict, Optional, Sequence  # noqa: E402

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_model_analysis as tfma  # noqa: E402
from tensorflow_model_analysis.metrics import metric_types, metric_util  # noqa: E402

from trainer import ranking  # noqa: E402

GATE_K = 100
# The candidate may not lose more than this much recall@GATE_K to the baseline.
MAX_RECALL_REGRESSION = 0.01


class RetrievalMetrics(metric_types.Metric):
    """recall@k, ndcg@k for each k, and MRR, from the model's `rank` output."""

    def __init__(self, ks: Sequence[int] = ranking.DEFAULT_KS, name: str = "retrieval"):
        super().__init__(metric_util.merge_per_key_computations(_retrieval_computations),
                         ks=list(ks), name=name)


metric_types.register_metric(RetrievalMetrics)


def _retrieval_computations(name: str = "retrieval", ks: Sequence[int] = ranking.DEFAULT_KS,
                            eval_config: Optional[tfma.EvalConfig] = None,
                            model_name: str = "", output_name: str = "",
                            example_weighted: bool = False,
                            **unused) -> metric_types.MetricComputations:
    names = list(ranking.rank_contributions(1.0, ks))
    keys = {metric: metric_types.MetricKey(name=metric, model_name=model_name,
                                           output_name=output_name,
                                           example_weighted=example_weighted)
            for metric in names}
    return [metric_types.MetricComputation(
        keys=list(keys.values()), preprocessors=None,
        combiner=_RetrievalCombiner(keys, ks, model_name, output_name))]


class _RetrievalCombiner(beam.CombineFn):
    def __init__(self, keys: Dict[str, metric_types.MetricKey], ks: Sequence[int],
                 model_name: str, output_name: str):
        self._keys = keys
        self._ks = list(ks)
        self._model_name = model_name
        self._output_name = output_name

    def create_accumulator(self):
        return {"count": 0.0, **{name: 0.0 for name in self._keys}}

    def add_input(self, accumulator, element: metric_types.StandardMetricInputs):
        ranks = np.asarray(element.get_predictions(self._model_name, self._output_name)).reshape(-1)
        for rank in ranks:
            accumulator["count"] += 1
            for name, value in ranking.rank_contributions(float(rank), self._ks).items():
                accumulator[name] += value
        return accumulator

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        merged = accumulators[0]
        for other in accumulators[1:]:
            for name, value in other.items():
                merged[name] += value
        return merged

    def extract_output(self, accumulator):
        count = max(accumulator["count"], 1.0)
        return {key: accumulator[name] / count for name, key in self._keys.items()}


def eval_config(min_recall: float) -> tfma.EvalConfig:
    """Computes the retrieval metrics on the eval split and gates on recall@GATE_K."""
    gate = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_recall}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -MAX_RECALL_REGRESSION}))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", prediction_key="rank")],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(
            metrics=[tfma.MetricConfig(
                class_name="RetrievalMetrics", module=__name__,
                config=f'{{"ks": {list(ranking.DEFAULT_KS)}}}')],
            thresholds={f"recall@{GATE_K}": gate})])

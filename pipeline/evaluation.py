"""The release gate: retrieval metrics for the Evaluator and their thresholds.

TFMA's built-in metrics score one prediction against one label. Retrieval is
scored by where the held-out item ranks among the whole catalogue, so the
model's `serving_default` returns that rank per eval example and
`RetrievalMetric` turns ranks into recall@k, ndcg@k and MRR.

A candidate is blessed when its recall@k clears an absolute floor and does not
fall below the latest blessed model's by more than a small tolerance.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Optional, Sequence  # noqa: E402

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_model_analysis as tfma  # noqa: E402
from tensorflow_model_analysis.metrics import metric_types, metric_util  # noqa: E402

from trainer import ranking  # noqa: E402

GATE_K = 100
# The candidate may not lose more than this much recall@GATE_K to the baseline.
MAX_RECALL_REGRESSION = 0.01


class RetrievalMetric(metric_types.Metric):
    """One retrieval figure ("recall@100", "ndcg@10", "mrr") from the model's
    `rank` output. One instance per figure, because TFMA attaches a threshold
    to a metric instance by its name."""

    def __init__(self, name: str = f"recall@{GATE_K}", ks: Optional[Sequence[int]] = None):
        # `ks` follows from the name; it is accepted because TFMA rebuilds a
        # metric from its get_config(), which includes it.
        ks = [int(name.split("@")[1])] if "@" in name else []
        if name not in ranking.rank_contributions(1.0, ks):
            raise ValueError(f"unknown retrieval metric {name!r}")
        super().__init__(metric_util.merge_per_key_computations(_retrieval_computations),
                         name=name, ks=ks)


metric_types.register_metric(RetrievalMetric)


def _retrieval_computations(name: str, ks: Sequence[int],
                            eval_config: Optional[tfma.EvalConfig] = None,
                            model_name: str = "", output_name: str = "",
                            example_weighted: bool = False,
                            **unused) -> metric_types.MetricComputations:
    key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name,
                                 example_weighted=example_weighted)
    return [metric_types.MetricComputation(
        keys=[key], preprocessors=None,
        combiner=_RankCombiner(key, ks, model_name, output_name))]


class _RankCombiner(beam.CombineFn):
    """Averages one metric's per-row contribution over the eval rows."""

    def __init__(self, key: metric_types.MetricKey, ks: Sequence[int], model_name: str,
                 output_name: str):
        self._key = key
        self._ks = list(ks)
        self._model_name = model_name
        self._output_name = output_name

    def create_accumulator(self):
        return [0.0, 0.0]  # total, rows

    def add_input(self, accumulator, element: metric_types.StandardMetricInputs):
        ranks = np.asarray(element.get_predictions(self._model_name, self._output_name)).reshape(-1)
        for rank in ranks:
            accumulator[0] += ranking.rank_contributions(float(rank), self._ks)[self._key.name]
            accumulator[1] += 1
        return accumulator

    def merge_accumulators(self, accumulators):
        totals = [0.0, 0.0]
        for total, rows in accumulators:
            totals[0] += total
            totals[1] += rows
        return totals

    def extract_output(self, accumulator):
        return {self._key: accumulator[0] / max(accumulator[1], 1.0)}


def eval_config(min_recall: float) -> tfma.EvalConfig:
    """Computes the retrieval metrics on the eval split and gates on recall@GATE_K."""
    gate = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_recall}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -MAX_RECALL_REGRESSION}))
    names = list(ranking.rank_contributions(1.0, ranking.DEFAULT_KS))
    metrics = [
        tfma.MetricConfig(class_name="RetrievalMetric", module=__name__, config=f'{{"name": "{name}"}}',
                          threshold=gate if name == f"recall@{GATE_K}" else None)
        for name in names]
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", prediction_key="rank")],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)])

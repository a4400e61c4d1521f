"""The release gate: retrieval metrics for the Evaluator and their thresholds.

TFMA's built-in metrics score one prediction against one label. Retrieval is
scored by where the held-out item ranks among the whole catalogue, so the
model's `serving_default` returns that rank per eval example and
`RetrievalMetric` turns ranks into recall@k, ndcg@k and MRR.

A candidate is blessed when its recall@k clears an absolute floor and does not
fall below the latest blessed model's by more than a small tolerance.
"""


from typing import Optional, Sequence

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types, metric_util

from evaluation.metrics import DEFAULT_KS, rank_contributions
from mmfuse.config import GateSettings

GATE_K = GateSettings().k


class RetrievalMetric(metric_types.Metric):
    """One retrieval figure ("recall@100", "ndcg@10", "mrr") from the model's
    `rank` output. One instance per figure, because TFMA attaches a threshold
    to a metric instance by its name."""

    def __init__(self, name: str = f"recall@{GATE_K}", ks: Optional[Sequence[int]] = None):
        # `ks` follows from the name; it is accepted because TFMA rebuilds a
        # metric from its get_config(), which includes it.
        ks = [int(name.split("@")[1])] if "@" in name else []
        if name not in rank_contributions(1.0, ks):
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
            accumulator[0] += rank_contributions(float(rank), self._ks)[self._key.name]
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


def eval_config(gate: GateSettings) -> tfma.EvalConfig:
    """Computes the retrieval metrics on the eval split and gates on recall@k
    (the configuration's `gate` section)."""
    floor = gate.min_recall if gate.min_recall is not None else 0.0
    threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": floor}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -gate.max_regression}))
    names = list(rank_contributions(1.0, sorted({*DEFAULT_KS, gate.k})))
    metrics = [
        tfma.MetricConfig(class_name="RetrievalMetric", module=__name__, config=f'{{"name": "{name}"}}',
                          threshold=threshold if name == f"recall@{gate.k}" else None)
        for name in names]
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", prediction_key="rank")],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)])

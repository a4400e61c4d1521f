"""The release gate: retrieval metrics for the Evaluator and their thresholds.

TFMA's built-in metrics score one prediction against one label. Retrieval is
scored by where the held-out item ranks among the whole catalogue, so the
model's `serving_default` returns that rank per eval example (and the size of
the catalogue it ranked in), `RetrievalMetric` turns ranks into recall@k,
ndcg@k and MRR, and `ReleaseMargin` gates on them.

The gate has to mean something whatever the catalogue's size N, and has to
be decided inside the Evaluator, since a Kubeflow spec is compiled without
reading the data. So the cut-off and the floor follow from the N that the
candidate model reports:

- cut-off: k (the `gate` section's), or a tenth of the catalogue when that is
  smaller; recall@100 of a 100-item catalogue is 1.0 for any model. A
  catalogue of fewer than 10 items has no such cut-off and is refused.
- floor: `min_recall`, or by default twice what ranking at random reaches
  (2 * cut-off / N), at most 0.5.

`release_margin` is recall@cut-off minus the floor: a candidate is blessed
when it is not negative and its recall@cut-off does not fall below the latest
blessed model's, measured at the same cut-off, by more than `max_regression`.
"""


import json
from typing import Dict, List, Mapping, Optional, Sequence

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types, metric_util

from evaluation.metrics import DEFAULT_KS, rank_contributions
from mmfuse import progress
from mmfuse.config import GateSettings

GATE_K = GateSettings().k
# The default floor's cap ("twice random, at most 0.5").
MAX_FLOOR = 0.5
# The cut-off is at most a tenth of the catalogue; below this size it would be
# less than one item.
CUTOFF_SHARE = 10
MIN_CATALOGUE = CUTOFF_SHARE
# The outputs of `serving_default` (trainer/export.py rank_examples).
RANK = "rank"
CATALOGUE_SIZE = "catalogue_size"
# What ReleaseMargin reports besides the margin, for people and for
# pipeline/local_runner.py's summary.
MARGIN = "release_margin"
RECALL = "release_recall"
CUTOFF = "release_k"
FLOOR = "release_floor"
REFUSED = -1.0  # the margin of a catalogue too small to gate
# The progress bar of eval rows ranked (mmfuse/progress.py).
EVALUATED = "evaluated"


def release_cutoff(k: int, catalogue_size: int) -> int:
    """The gate's cut-off for a catalogue of `catalogue_size` items; 0 when
    it is too small to gate."""
    if catalogue_size < MIN_CATALOGUE:
        return 0
    return min(k, catalogue_size // CUTOFF_SHARE)


def release_floor(cutoff: int, catalogue_size: int, min_recall: Optional[float],
                  max_floor: float = MAX_FLOOR) -> float:
    """The least recall@cutoff a candidate needs: `min_recall`, or twice
    what ranking at random reaches, at most `max_floor`."""
    if min_recall is not None:
        return min_recall
    return min(max_floor, 2.0 * cutoff / catalogue_size)


def _model_output(element: metric_types.StandardMetricInputs, model_name: str,
                  output: str) -> np.ndarray:
    """One output of a model's `serving_default`, flat. TFMA passes a model
    with several outputs as a dict of them, one with a single output (a model
    exported before `catalogue_size` existed: its rank) as that output."""
    predictions = element.get_predictions(model_name)
    if isinstance(predictions, Mapping):
        if output not in predictions:
            raise ValueError(f"the serving_default signature of model {model_name or 'candidate'!r} "
                             f"has no {output!r} output (it has {sorted(predictions)}); "
                             "re-export it with the current trainer")
        predictions = predictions[output]
    elif output != RANK:
        raise ValueError(f"the serving_default signature of model {model_name or 'candidate'!r} "
                         f"returns the rank alone, without {output!r}; re-export it with the "
                         "current trainer")
    return np.asarray(predictions).reshape(-1)


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
        keys=[key], preprocessors=None, combiner=_RankCombiner(key, ks, model_name))]


class _RankCombiner(beam.CombineFn):
    """Averages one metric's per-row contribution over the eval rows."""

    def __init__(self, key: metric_types.MetricKey, ks: Sequence[int], model_name: str):
        self._key = key
        self._ks = list(ks)
        self._model_name = model_name

    def create_accumulator(self):
        return [0.0, 0.0]  # total, rows

    def add_input(self, accumulator, element: metric_types.StandardMetricInputs):
        for rank in _model_output(element, self._model_name, RANK):
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


class ReleaseMargin(metric_types.Metric):
    """The gate's figure: recall@cut-off minus the floor, both following from
    the candidate's catalogue size (module docstring); `REFUSED` when the
    catalogue is too small. It also reports the recall at the cut-off
    (`RECALL`, for the baseline too: the margin changes exactly as it does)
    and, for the candidate, the cut-off, the floor and the catalogue size.

    Args:
        k: the cut-off for catalogues of at least 10 * k items.
        min_recall: the floor; None: twice random, at most `max_floor`.
        max_floor: the default floor's cap.
    """

    def __init__(self, name: str = MARGIN, k: int = GATE_K, min_recall: Optional[float] = None,
                 max_floor: float = MAX_FLOOR):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{name}: k must be a whole number of at least 1, not {k!r}")
        if min_recall is not None and not 0.0 <= min_recall <= 1.0:
            raise ValueError(f"{name}: min_recall must be between 0 and 1, not {min_recall!r}")
        if not 0.0 < max_floor <= 1.0:
            raise ValueError(f"{name}: max_floor must be above 0 and at most 1, not {max_floor!r}")
        super().__init__(metric_util.merge_per_key_computations(_release_computations),
                         name=name, k=k, min_recall=min_recall, max_floor=max_floor)


metric_types.register_metric(ReleaseMargin)


def _candidate_model_name(eval_config: Optional[tfma.EvalConfig]) -> str:
    """The name TFMA gives the candidate's predictions: "" when it is the
    only model, else its ModelSpec's name."""
    specs = list(eval_config.model_specs) if eval_config else []
    if len(specs) <= 1:
        return ""
    return next(spec.name for spec in specs if not spec.is_baseline)


def _release_computations(name: str, k: int, min_recall: Optional[float], max_floor: float,
                          eval_config: Optional[tfma.EvalConfig] = None,
                          model_name: str = "", output_name: str = "",
                          example_weighted: bool = False,
                          **unused) -> metric_types.MetricComputations:
    candidate = _candidate_model_name(eval_config)
    # The baseline is measured at the candidate's cut-off, so that the change
    # in recall compares like with like; the rest is the candidate's alone.
    names = [name, RECALL] + ([CUTOFF, FLOOR, CATALOGUE_SIZE] if model_name == candidate else [])
    keys = {metric: metric_types.MetricKey(name=metric, model_name=model_name,
                                           output_name=output_name,
                                           example_weighted=example_weighted)
            for metric in names}
    return [metric_types.MetricComputation(
        keys=list(keys.values()), preprocessors=None,
        combiner=_ReleaseCombiner(keys, name, k, min_recall, max_floor, model_name, candidate))]


class _ReleaseCombiner(beam.CombineFn):
    """Counts the rows whose item ranks within the cut-off of the candidate's
    catalogue size, which every row carries."""

    def __init__(self, keys: Dict[str, metric_types.MetricKey], margin_name: str, k: int,
                 min_recall: Optional[float], max_floor: float, model_name: str, candidate: str):
        self._keys = keys
        self._margin_name = margin_name
        self._k = k
        self._min_recall = min_recall
        self._max_floor = max_floor
        self._model_name = model_name
        self._candidate = candidate

    def create_accumulator(self):
        return [None, 0, 0]  # catalogue size, hits, rows

    def add_input(self, accumulator, element: metric_types.StandardMetricInputs):
        ranks = _model_output(element, self._model_name, RANK)
        sizes = _model_output(element, self._candidate, CATALOGUE_SIZE)
        catalogue_size = accumulator[0] = _same_size([accumulator[0], *sizes.tolist()])
        cutoff = release_cutoff(self._k, catalogue_size)
        accumulator[1] += int(np.sum(ranks <= cutoff))
        accumulator[2] += len(ranks)
        if self._model_name == self._candidate:
            progress.advance(EVALUATED, len(ranks))
        return accumulator

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        return [_same_size([size for size, _, _ in accumulators]),
                sum(hits for _, hits, _ in accumulators), sum(rows for _, _, rows in accumulators)]

    def extract_output(self, accumulator):
        catalogue_size, hits, rows = accumulator
        cutoff = release_cutoff(self._k, catalogue_size or 0)
        recall = hits / rows if rows else 0.0
        values = {RECALL: recall, CUTOFF: float(cutoff), CATALOGUE_SIZE: float(catalogue_size or 0)}
        if cutoff == 0:
            values[FLOOR] = 1.0
            values[self._margin_name] = REFUSED
        else:
            values[FLOOR] = release_floor(cutoff, catalogue_size, self._min_recall, self._max_floor)
            values[self._margin_name] = recall - values[FLOOR]
        return {key: values[metric] for metric, key in self._keys.items()}


def _same_size(sizes: List[Optional[float]]) -> Optional[int]:
    """The one catalogue size among `sizes` (None: not seen yet)."""
    seen = {int(size) for size in sizes if size is not None}
    if len(seen) > 1:
        raise ValueError(f"the candidate reported different catalogue sizes {sorted(seen)} for "
                         "one evaluation; its serving_default must report the catalogue it ranks in")
    return seen.pop() if seen else None


def eval_config(gate: GateSettings) -> tfma.EvalConfig:
    """Computes the retrieval metrics on the eval split and gates on
    `release_margin` (module docstring) with the configuration's `gate`
    section; the cut-off and the floor are decided in the Evaluator, from the
    candidate's catalogue, so a compiled Kubeflow spec gates as a local run."""
    release = tfma.MetricConfig(
        class_name=ReleaseMargin.__name__, module=__name__,
        config=json.dumps({"name": MARGIN, "k": gate.k, "min_recall": gate.min_recall,
                           "max_floor": MAX_FLOOR}),
        threshold=tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": 0.0}),
            # The baseline's recall is taken at the candidate's cut-off against
            # the same floor, so the margin changes exactly as recall does.
            change_threshold=tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                absolute={"value": -gate.max_regression})))
    retrieval = [tfma.MetricConfig(class_name=RetrievalMetric.__name__, module=__name__,
                                   config=json.dumps({"name": name}))
                 for name in rank_contributions(1.0, sorted({*DEFAULT_KS, gate.k}))]
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", prediction_key=RANK)],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=[release, *retrieval])])

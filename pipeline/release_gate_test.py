"""Tests of pipeline.release_gate: the TFMA retrieval metric and the release gate."""


import math

import apache_beam as beam
import numpy as np
import pytest
import tensorflow_model_analysis as tfma
from apache_beam.testing import util as beam_util
from tensorflow_model_analysis.evaluators import metrics_validator
from tensorflow_model_analysis.metrics import metric_specs, metric_types

from mmfuse.config import GateSettings
from pipeline import release_gate

RANKS = [1, 5, 11, 200]
# By hand: recall@10 hits ranks 1 and 5; @20 and @100 also 11; nothing reaches 200.
EXPECTED = {
    "recall@10": 2 / 4,
    "recall@20": 3 / 4,
    "recall@100": 3 / 4,
    "ndcg@10": (1.0 + 1 / math.log2(6)) / 4,
    "ndcg@20": (1.0 + 1 / math.log2(6) + 1 / math.log2(12)) / 4,
    "ndcg@100": (1.0 + 1 / math.log2(6) + 1 / math.log2(12)) / 4,
    "mrr": (1.0 + 1 / 5 + 1 / 11 + 1 / 200) / 4,
}


def inputs(ranks, model_name=""):
    predictions = np.asarray(ranks, dtype=np.float32)
    if model_name:
        predictions = {model_name: predictions}
    return metric_types.StandardMetricInputs(labels=None, predictions=predictions,
                                             example_weights=None)


def computations(config, model_name=""):
    """metric name -> its computation, built by TFMA from the MetricConfigs."""
    found = {}
    for computation in metric_specs.to_computations(config.metrics_specs, eval_config=config):
        (key,) = computation.keys
        if key.model_name == model_name:
            found[key.name] = computation
    return found


def specs_for(name):
    """A MetricsSpec naming one RetrievalMetric, as eval_config writes them."""
    return [tfma.MetricsSpec(metrics=[tfma.MetricConfig(
        class_name="RetrievalMetric", module=release_gate.__name__, config=f'{{"name": "{name}"}}')])]


def run_combiner(combiner, batches):
    """Two accumulators merged, as Beam would with two workers."""
    halves = [batches[: len(batches) // 2], batches[len(batches) // 2:]]
    accumulators = []
    for half in halves:
        accumulator = combiner.create_accumulator()
        for batch in half:
            accumulator = combiner.add_input(accumulator, batch)
        accumulators.append(accumulator)
    return combiner.extract_output(combiner.merge_accumulators(accumulators))


def test_known_ranks_give_hand_computed_metrics():
    found = computations(release_gate.eval_config(GateSettings(min_recall=0.3)))
    assert set(found) == set(EXPECTED)
    for name, computation in found.items():
        (key,) = computation.keys
        output = run_combiner(computation.combiner, [inputs([rank]) for rank in RANKS])
        assert output == {key: pytest.approx(EXPECTED[name])}, name
    assert EXPECTED["recall@10"] == 0.5


def test_a_batch_of_ranks_counts_each_row():
    (computation,) = metric_specs.to_computations(
        specs_for("recall@10"),
        eval_config=tfma.EvalConfig())
    (key,) = computation.keys
    assert key.name == "recall@10"
    # One batch of two rows and one of a single row (as [1, 1] shaped predictions).
    output = run_combiner(computation.combiner, [inputs([1.0, 50.0]), inputs([[3.0]])])
    assert output[key] == pytest.approx(2 / 3)


def test_no_rows_give_zero_not_a_division_error():
    (computation,) = metric_specs.to_computations(specs_for("mrr"), eval_config=tfma.EvalConfig())
    combiner = computation.combiner
    (key,) = computation.keys
    assert combiner.extract_output(combiner.create_accumulator()) == {key: 0.0}


def test_metric_reads_its_models_predictions():
    config = tfma.utils.update_eval_config_with_defaults(
        release_gate.eval_config(GateSettings(min_recall=0.3)), has_baseline=True, rubber_stamp=True)
    candidate = computations(config, "candidate")["recall@10"]
    baseline = computations(config, "baseline")["recall@10"]
    rows = [metric_types.StandardMetricInputs(
        labels=None, example_weights=None,
        predictions={"candidate": np.array([rank_c], np.float32),
                     "baseline": np.array([rank_b], np.float32)})
        for rank_c, rank_b in [(1, 50), (2, 60), (30, 3), (4, 70)]]
    assert list(run_combiner(candidate.combiner, rows).values()) == [pytest.approx(0.75)]
    assert list(run_combiner(baseline.combiner, rows).values()) == [pytest.approx(0.25)]


def test_combiner_in_a_beam_pipeline():
    (computation,) = metric_specs.to_computations(
        specs_for("ndcg@10"),
        eval_config=tfma.EvalConfig())
    (key,) = computation.keys
    with beam.Pipeline() as pipeline:
        result = (pipeline
                  | beam.Create([inputs([rank]) for rank in RANKS])
                  | beam.CombineGlobally(computation.combiner)
                  | beam.Map(lambda output: round(output[key], 9)))
        beam_util.assert_that(result, beam_util.equal_to([round(EXPECTED["ndcg@10"], 9)]))


@pytest.mark.parametrize("name", ["recall", "ndcg", "mrr@10", "precision@10", "hit@10",
                                  "retrieval", "recall@ten"])
def test_invalid_metric_name_raises(name):
    with pytest.raises(ValueError):
        release_gate.RetrievalMetric(name)


@pytest.mark.parametrize("name", ["recall@5", "ndcg@50", "mrr", "recall@100"])
def test_valid_metric_names(name):
    assert release_gate.RetrievalMetric(name).name == name


def test_default_metric_is_the_gate_metric():
    assert release_gate.RetrievalMetric().name == f"recall@{release_gate.GATE_K}" == "recall@100"


# --- eval_config -----------------------------------------------------------------------------


def test_eval_config_gates_only_recall_at_100():
    config = release_gate.eval_config(GateSettings(min_recall=0.3))
    assert [spec.prediction_key for spec in config.model_specs] == ["rank"]
    assert config.model_specs[0].signature_name == "serving_default"
    (spec,) = config.metrics_specs
    assert not spec.thresholds  # thresholds sit on the metric configs
    gated = [metric for metric in spec.metrics if metric.HasField("threshold")]
    assert len(gated) == 1
    assert gated[0].class_name == "RetrievalMetric"
    assert '"recall@100"' in gated[0].config
    threshold = gated[0].threshold
    assert threshold.value_threshold.lower_bound.value == pytest.approx(0.3)
    assert not threshold.value_threshold.HasField("upper_bound")
    assert threshold.change_threshold.direction == tfma.MetricDirection.HIGHER_IS_BETTER
    assert threshold.change_threshold.absolute.value == pytest.approx(
        -GateSettings().max_regression)
    (other,) = [m for m in release_gate.eval_config(GateSettings(min_recall=0.05)).metrics_specs[0].metrics
                if m.HasField("threshold")]
    assert other.threshold.value_threshold.lower_bound.value == pytest.approx(0.05)


@pytest.mark.parametrize("has_baseline", [True, False])
def test_eval_config_is_valid_for_tfma_and_thresholds_resolve_to_recall_at_100(has_baseline):
    config = tfma.utils.update_eval_config_with_defaults(
        release_gate.eval_config(GateSettings(min_recall=0.3)), has_baseline=has_baseline, rubber_stamp=True)
    tfma.utils.verify_eval_config(config)
    thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(
        config.metrics_specs, eval_config=config)
    assert thresholds  # or the Evaluator would skip validation and bless anything
    assert {key.name for key in thresholds} == {"recall@100"}
    assert any(key.is_diff for key in thresholds) == has_baseline


def validate(candidate, baseline, min_recall=0.3):
    config = tfma.utils.update_eval_config_with_defaults(
        release_gate.eval_config(GateSettings(min_recall=min_recall)), has_baseline=True, rubber_stamp=True)

    def key(model, diff=False, name="recall@100"):
        return metric_types.MetricKey(name=name, model_name=model, is_diff=diff)

    metrics = {key("candidate"): candidate, key("baseline"): baseline,
               key("candidate", diff=True): candidate - baseline,
               key("candidate", name="recall@10"): 0.0}  # ungated: any value passes
    return metrics_validator.validate_metrics(((), metrics), config).validation_ok


def test_gate_blesses_a_model_above_the_floor_that_does_not_regress():
    assert validate(0.5, 0.4)
    assert validate(0.5, 0.505)  # within the tolerance


def test_gate_rejects_below_the_floor_or_a_regression():
    assert not validate(0.25, 0.2)  # below 0.3
    assert not validate(0.5, 0.6)  # loses 0.1 to the baseline


def test_metric_config_round_trips():
    metric = release_gate.RetrievalMetric("ndcg@10")
    again = release_gate.RetrievalMetric.from_config(metric.get_config())
    assert again.name == "ndcg@10"
    # The documented way to turn metric objects into specs relies on the round trip.
    computations = metric_specs.to_computations(
        metric_specs.specs_from_metrics([metric]), eval_config=tfma.EvalConfig())
    assert "ndcg@10" in {key.name for computation in computations for key in computation.keys}

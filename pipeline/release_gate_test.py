"""Tests of pipeline.release_gate: the TFMA retrieval metrics, the release
margin over catalogues of several sizes, and the gate's eval config, down to a
whole TFMA run of two models and the summary a person reads."""


import json
import math

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from apache_beam.testing import util as beam_util
from tensorflow_model_analysis.evaluators import metrics_validator
from tensorflow_model_analysis.metrics import metric_specs, metric_types

from mmfuse.config import GateSettings
from pipeline import local_runner, release_gate

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
RELEASE_NAMES = {"release_margin", "release_recall", "release_k", "release_floor", "catalogue_size"}


def outputs(ranks, catalogue_size=1000):
    """A model's serving_default outputs for one batch, as TFMA passes them."""
    ranks = np.asarray(ranks, dtype=np.float32)
    return {"rank": ranks, "catalogue_size": np.full(ranks.shape, catalogue_size, np.int64)}


def inputs(ranks, catalogue_size=1000):
    return metric_types.StandardMetricInputs(labels=None, predictions=outputs(ranks, catalogue_size),
                                             example_weights=None)


def computations(config, model_name=""):
    """metric name -> the computation that outputs it, built by TFMA from the MetricConfigs."""
    found = {}
    for computation in metric_specs.to_computations(config.metrics_specs, eval_config=config):
        for key in computation.keys:
            if key.model_name == model_name:
                found[key.name] = computation
    return found


def specs_for(class_name, **config):
    return [tfma.MetricsSpec(metrics=[tfma.MetricConfig(
        class_name=class_name, module=release_gate.__name__, config=json.dumps(config))])]


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


def by_name(output):
    return {key.name: value for key, value in output.items()}


# --- RetrievalMetric -------------------------------------------------------------------------


def test_known_ranks_give_hand_computed_metrics():
    found = computations(release_gate.eval_config(GateSettings(min_recall=0.3)))
    assert set(found) == set(EXPECTED) | RELEASE_NAMES
    for name in EXPECTED:
        output = run_combiner(found[name].combiner, [inputs([rank]) for rank in RANKS])
        assert by_name(output) == {name: pytest.approx(EXPECTED[name])}, name
    assert EXPECTED["recall@10"] == 0.5


def test_a_batch_of_ranks_counts_each_row():
    (computation,) = metric_specs.to_computations(specs_for("RetrievalMetric", name="recall@10"),
                                                  eval_config=tfma.EvalConfig())
    # One batch of two rows and one of a single row (as [1, 1] shaped predictions).
    output = run_combiner(computation.combiner, [inputs([1.0, 50.0]), inputs([[3.0]])])
    assert by_name(output) == {"recall@10": pytest.approx(2 / 3)}


def test_a_model_that_returns_the_rank_alone_is_still_scored():
    """A baseline exported before `catalogue_size` existed: TFMA passes its
    single output bare, not in a dict."""
    (computation,) = metric_specs.to_computations(specs_for("RetrievalMetric", name="recall@10"),
                                                  eval_config=tfma.EvalConfig())
    rows = [metric_types.StandardMetricInputs(labels=None, example_weights=None,
                                              predictions=np.array([rank], np.float32))
            for rank in RANKS]
    assert by_name(run_combiner(computation.combiner, rows)) == {"recall@10": pytest.approx(0.5)}


def test_no_rows_give_zero_not_a_division_error():
    (computation,) = metric_specs.to_computations(specs_for("RetrievalMetric", name="mrr"),
                                                  eval_config=tfma.EvalConfig())
    combiner = computation.combiner
    assert by_name(combiner.extract_output(combiner.create_accumulator())) == {"mrr": 0.0}


def test_metric_reads_its_models_predictions():
    config = tfma.utils.update_eval_config_with_defaults(
        release_gate.eval_config(GateSettings(min_recall=0.3)), has_baseline=True, rubber_stamp=True)
    candidate = computations(config, "candidate")["recall@10"]
    baseline = computations(config, "baseline")["recall@10"]
    rows = [metric_types.StandardMetricInputs(
        labels=None, example_weights=None,
        predictions={"candidate": outputs([rank_c]), "baseline": outputs([rank_b])})
        for rank_c, rank_b in [(1, 50), (2, 60), (30, 3), (4, 70)]]
    assert list(run_combiner(candidate.combiner, rows).values()) == [pytest.approx(0.75)]
    assert list(run_combiner(baseline.combiner, rows).values()) == [pytest.approx(0.25)]


def test_combiner_in_a_beam_pipeline():
    (computation,) = metric_specs.to_computations(specs_for("RetrievalMetric", name="ndcg@10"),
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


def test_metric_config_round_trips():
    metric = release_gate.RetrievalMetric("ndcg@10")
    again = release_gate.RetrievalMetric.from_config(metric.get_config())
    assert again.name == "ndcg@10"
    # The documented way to turn metric objects into specs relies on the round trip.
    computations = metric_specs.to_computations(
        metric_specs.specs_from_metrics([metric]), eval_config=tfma.EvalConfig())
    assert "ndcg@10" in {key.name for computation in computations for key in computation.keys}


# --- ReleaseMargin ---------------------------------------------------------------------------


def release(ranks, catalogue_size, batch=100, **config):
    """The release figures of one model's `ranks` in a catalogue of `catalogue_size`."""
    (computation,) = metric_specs.to_computations(specs_for("ReleaseMargin", **config),
                                                  eval_config=tfma.EvalConfig())
    batches = [inputs(ranks[start:start + batch], catalogue_size)
               for start in range(0, len(ranks), batch)]
    return by_name(run_combiner(computation.combiner, batches))


@pytest.mark.parametrize("catalogue_size, cutoff", [(50, 5), (100, 10), (1000, 100), (44000, 100)])
def test_the_cutoff_is_k_or_a_tenth_of_the_catalogue_and_the_floor_twice_random(catalogue_size,
                                                                                cutoff):
    floor = min(0.5, 2 * cutoff / catalogue_size)
    # 200 rows: 30% within the cut-off (rank 1), the rest beyond it.
    ranks = np.where(np.arange(200) < 60, 1.0, cutoff + 1.0)
    figures = release(ranks, catalogue_size)
    assert figures == {"release_k": cutoff, "catalogue_size": catalogue_size,
                       "release_recall": pytest.approx(0.3),
                       "release_floor": pytest.approx(floor),
                       "release_margin": pytest.approx(0.3 - floor)}
    assert release(ranks, catalogue_size, min_recall=0.35)["release_margin"] == pytest.approx(-0.05)


@pytest.mark.parametrize("catalogue_size", [50, 100, 1000, 44000])
def test_ranking_at_random_is_refused_and_a_model_three_times_better_passes(catalogue_size):
    """At 100 items recall@100 is 1.0 for any model; the gate must still
    refuse a random one."""
    generator = np.random.default_rng(catalogue_size)
    random_ranks = generator.integers(1, catalogue_size + 1, size=4000).astype(np.float32)
    assert release(random_ranks, catalogue_size)["release_margin"] < 0
    cutoff = release_gate.release_cutoff(100, catalogue_size)
    # Three times as many rows within the cut-off as ranking at random puts there.
    good = np.where(np.arange(4000) < 4000 * 3 * cutoff / catalogue_size, 1.0, catalogue_size)
    assert release(good, catalogue_size)["release_margin"] > 0


@pytest.mark.parametrize("catalogue_size", [1, 5, 9])
def test_a_catalogue_too_small_to_gate_is_refused(catalogue_size):
    figures = release(np.ones(20, np.float32), catalogue_size)
    assert figures["release_k"] == 0 and figures["release_margin"] == release_gate.REFUSED
    assert release(np.ones(20, np.float32), 10)["release_margin"] > 0  # recall@1 = 1.0 >= 0.2


def test_the_default_floor_is_capped_and_a_given_floor_is_kept():
    assert release_gate.release_floor(100, 44000, None) == pytest.approx(200 / 44000)
    assert release_gate.release_floor(1, 3, None) == 0.5
    assert release_gate.release_floor(1, 3, None, max_floor=0.4) == 0.4
    assert release_gate.release_floor(100, 44000, 0.05) == 0.05
    assert [release_gate.release_cutoff(20, size) for size in (9, 10, 199, 200, 10**6)] == [0, 1, 19,
                                                                                           20, 20]


def test_the_baseline_is_measured_at_the_candidates_cutoff():
    """A candidate of 100 items (recall@10) against a baseline exported before
    models reported their catalogue: the baseline's ranks are counted within
    the candidate's cut-off, and only its recall and margin are reported."""
    config = tfma.utils.update_eval_config_with_defaults(
        release_gate.eval_config(GateSettings()), has_baseline=True, rubber_stamp=True)
    candidate = computations(config, "candidate")["release_margin"]
    baseline = computations(config, "baseline")["release_margin"]
    rows = [metric_types.StandardMetricInputs(
        labels=None, example_weights=None,
        predictions={"candidate": outputs([rank_c], catalogue_size=100),
                     "baseline": np.array([rank_b], np.float32)})
        for rank_c, rank_b in [(1, 10), (2, 11), (30, 3), (40, 50)]]
    assert by_name(run_combiner(candidate.combiner, rows)) == {
        "release_margin": pytest.approx(0.3), "release_recall": 0.5, "release_k": 10,
        "release_floor": pytest.approx(0.2), "catalogue_size": 100}
    assert by_name(run_combiner(baseline.combiner, rows)) == {
        "release_margin": pytest.approx(0.3), "release_recall": 0.5}


def test_a_candidate_without_its_catalogue_size_is_a_clear_error():
    (computation,) = metric_specs.to_computations(specs_for("ReleaseMargin"),
                                                  eval_config=tfma.EvalConfig())
    rank_alone = metric_types.StandardMetricInputs(labels=None, example_weights=None,
                                                   predictions=np.array([1.0], np.float32))
    with pytest.raises(ValueError, match="without 'catalogue_size'.*re-export"):
        computation.combiner.add_input(computation.combiner.create_accumulator(), rank_alone)


@pytest.mark.parametrize("config", [{"k": 0}, {"k": 2.5}, {"min_recall": 1.5}, {"max_floor": 0}])
def test_a_release_margin_with_settings_out_of_range_is_refused(config):
    with pytest.raises(ValueError):
        release_gate.ReleaseMargin(**config)


def test_release_margin_config_round_trips():
    metric = release_gate.ReleaseMargin(k=20, min_recall=0.1)
    again = release_gate.ReleaseMargin.from_config(metric.get_config())
    assert (again.name, again.kwargs["k"], again.kwargs["min_recall"]) == ("release_margin", 20, 0.1)


# --- eval_config -----------------------------------------------------------------------------


@pytest.mark.parametrize("gate", [GateSettings(), GateSettings(min_recall=0.3),
                                  GateSettings(k=20, min_recall=0.05, max_regression=0.02)],
                         ids=["defaults", "floor 0.3", "k 20"])
def test_eval_config_gates_only_the_release_margin(gate):
    config = release_gate.eval_config(gate)
    assert [spec.prediction_key for spec in config.model_specs] == ["rank"]
    assert config.model_specs[0].signature_name == "serving_default"
    (spec,) = config.metrics_specs
    assert not spec.thresholds  # thresholds sit on the metric configs
    gated = [metric for metric in spec.metrics if metric.HasField("threshold")]
    assert len(gated) == 1 and gated[0].class_name == "ReleaseMargin"
    # The floor is decided in the Evaluator from these, not compiled in.
    assert json.loads(gated[0].config) == {"name": "release_margin", "k": gate.k,
                                           "min_recall": gate.min_recall, "max_floor": 0.5}
    threshold = gated[0].threshold
    assert threshold.value_threshold.lower_bound.value == 0.0
    assert not threshold.value_threshold.HasField("upper_bound")
    assert threshold.change_threshold.direction == tfma.MetricDirection.HIGHER_IS_BETTER
    assert threshold.change_threshold.absolute.value == pytest.approx(-gate.max_regression)
    names = {json.loads(metric.config)["name"] for metric in spec.metrics}
    assert {f"recall@{gate.k}", "recall@10", "recall@100", "mrr"} <= names


@pytest.mark.parametrize("has_baseline", [True, False])
def test_eval_config_is_valid_for_tfma_and_thresholds_resolve_to_the_margin(has_baseline):
    config = tfma.utils.update_eval_config_with_defaults(
        release_gate.eval_config(GateSettings()), has_baseline=has_baseline, rubber_stamp=True)
    tfma.utils.verify_eval_config(config)
    thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(
        config.metrics_specs, eval_config=config)
    assert thresholds  # or the Evaluator would skip validation and bless anything
    assert {key.name for key in thresholds} == {"release_margin"}
    assert any(key.is_diff for key in thresholds) == has_baseline


def validate(candidate, baseline, max_regression=0.01):
    config = tfma.utils.update_eval_config_with_defaults(
        release_gate.eval_config(GateSettings(max_regression=max_regression)), has_baseline=True,
        rubber_stamp=True)

    def key(model, diff=False, name="release_margin"):
        return metric_types.MetricKey(name=name, model_name=model, is_diff=diff)

    metrics = {key("candidate"): candidate, key("baseline"): baseline,
               key("candidate", diff=True): candidate - baseline,
               key("candidate", name="recall@10"): 0.0}  # ungated: any value passes
    return metrics_validator.validate_metrics(((), metrics), config).validation_ok


def test_gate_blesses_a_model_above_the_floor_that_does_not_regress():
    assert validate(0.1, 0.05)
    assert validate(0.0, 0.005)  # on the floor, and within the tolerance
    assert validate(0.1, 0.14, max_regression=0.05)


def test_gate_rejects_below_the_floor_or_a_regression():
    assert not validate(-0.01, -0.2)
    assert not validate(0.1, 0.2)  # loses 0.1 to the baseline
    assert not validate(release_gate.REFUSED, release_gate.REFUSED)


# --- a whole TFMA evaluation -----------------------------------------------------------------


class RankReader(tf.Module):
    """A model whose serving_default returns each example's `<name>_rank`
    feature as its rank, in a catalogue of `catalogue_size` items."""

    def __init__(self, name: str, catalogue_size: int):
        super().__init__()
        self.feature = f"{name}_rank"
        self.catalogue_size = catalogue_size

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def rank_examples(self, examples):
        ranks = tf.io.parse_example(examples, {self.feature: tf.io.FixedLenFeature([], tf.float32)})
        ranks = ranks[self.feature]
        return {"rank": ranks,
                "catalogue_size": tf.fill(tf.shape(ranks), tf.constant(self.catalogue_size, tf.int64))}


def evaluate(tmp_path, candidate_ranks, baseline_ranks=None, catalogue_size=100,
             gate=GateSettings()):
    """The Evaluator's steps (tfx/components/evaluator/executor.py) on
    RankReader models; returns the output directory."""
    examples = str(tmp_path / "eval.tfrecord")
    with tf.io.TFRecordWriter(examples) as writer:
        for row, rank in enumerate(candidate_ranks):
            features = {"candidate_rank": tf.train.Feature(float_list=tf.train.FloatList(value=[rank]))}
            if baseline_ranks is not None:
                features["baseline_rank"] = tf.train.Feature(
                    float_list=tf.train.FloatList(value=[baseline_ranks[row]]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=features))
                         .SerializeToString())
    has_baseline = baseline_ranks is not None
    config = tfma.utils.update_eval_config_with_defaults(
        release_gate.eval_config(gate), has_baseline=has_baseline, rubber_stamp=True)
    models = []
    for spec in config.model_specs:
        name = "baseline" if spec.is_baseline else "candidate"
        module = RankReader(name, catalogue_size)
        path = str(tmp_path / name)
        tf.saved_model.save(module, path, signatures={"serving_default": module.rank_examples})
        models.append(tfma.default_eval_shared_model(
            eval_saved_model_path=path, model_name=spec.name, eval_config=config))
    output = str(tmp_path / "evaluation")
    tfma.run_model_analysis(eval_shared_model=models if has_baseline else models[0],
                            eval_config=config, data_location=examples, output_path=output)
    return output


def test_tfma_refuses_a_random_model_of_a_small_catalogue_and_says_why(tmp_path):
    """100 items: every rank is within 100, but recall@10 is 0.1, half the
    floor, and 0.4 below the baseline's."""
    candidate = [1.0] * 10 + [50.0] * 90
    baseline = [1.0] * 50 + [50.0] * 50
    output = evaluate(tmp_path, candidate, baseline, catalogue_size=100)
    assert not tfma.load_validation_result(output).validation_ok
    metrics = local_runner.candidate_metrics(output)
    assert metrics["metrics"]["recall@100"] == 1.0
    assert metrics["metrics"]["release_recall"] == pytest.approx(0.1)
    assert metrics["change_vs_baseline"]["release_recall"] == pytest.approx(-0.4)
    summary = local_runner.validation_summary(output)
    assert ("recall@10=0.1000 is below the release floor 0.2000 for a catalogue of 100 items"
            in summary)
    assert "recall@10 changed by -0.4000 against the latest blessed model (allowed: -0.0100)" in summary


def test_tfma_blesses_a_good_model_of_a_large_catalogue(tmp_path):
    """44,000 items: recall@100 of 0.3 clears the floor of 2 * 100 / 44,000."""
    output = evaluate(tmp_path, [1.0] * 30 + [5000.0] * 70, catalogue_size=44000)
    assert tfma.load_validation_result(output).validation_ok
    assert local_runner.validation_summary(output) == "ok"
    metrics = local_runner.candidate_metrics(output)["metrics"]
    assert (metrics["release_k"], metrics["catalogue_size"]) == (100, 44000)
    assert metrics["release_floor"] == pytest.approx(200 / 44000, abs=1e-6)  # rounded to 6 places


def test_tfma_refuses_a_catalogue_too_small_to_gate(tmp_path):
    output = evaluate(tmp_path, [1.0] * 20, catalogue_size=5)
    assert local_runner.validation_summary(output) == (
        "a catalogue of 5 items is too small for the release gate (it needs at least 10)")

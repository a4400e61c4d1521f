"""Tests of the pipeline cost benchmark's parsing and cost model (no pipeline runs)."""
import argparse
import json

import pytest

from benchmarks import pipeline_cost as cost

LOG = """\
[mmfuse] log: /x/mmfuse.log (--verbose shows it here)
[mmfuse] 1000 items (882 with a photo), 4794 interactions
[mmfuse] FileBasedExampleGen ...
[mmfuse] FileBasedExampleGen done in 0:41
[mmfuse] StatisticsGen done in 1:02:03
[mmfuse] ImportSchemaGen done in 0:01 (cached)
[mmfuse] Transform ...
[mmfuse]   encoding new or changed texts: 76% (736/964), 0:02 left
[mmfuse]   encoding new or changed texts: 100% (964/964), in 0:12
[mmfuse]   encoding new or changed photos: 100% (882/882), in 0:38
[mmfuse] Transform done in 2:10
[mmfuse]   training steps (3 epochs): 50% (57/114), 0:46 left
[mmfuse]   training steps (3 epochs): 100% (114/114), in 1:58
[mmfuse] Trainer done in 3:00
[mmfuse]   ranking eval rows: 100% (900/900), in 0:05
[mmfuse] Trainer done in 0:30
{"blessed": true, "wall_time_s": 500.0, "config": {"trainer": {"epochs": 3}}}
"""


def test_durations_parse_as_progress_prints_them():
    assert cost.parse_seconds("0:41") == 41
    assert cost.parse_seconds("1:02:03") == 3723
    with pytest.raises(ValueError):
        cost.parse_seconds("41")


def test_the_run_log_gives_components_encoders_and_the_result():
    parsed = cost.parse_run_log(LOG.splitlines(keepends=True))
    assert parsed["components"] == {"FileBasedExampleGen": 41, "StatisticsGen": 3723,
                                    "ImportSchemaGen": 1, "Transform": 130, "Trainer": 210}
    # The bars of BARS at their end; the count is the bar's total.
    assert parsed["bars"] == {"Transform: encode texts": (964, 12),
                              "Transform: encode photos": (882, 38),
                              "Trainer: training steps": (114, 118),
                              "Evaluator: ranking eval rows": (900, 5)}
    parts = cost.split_parts(parsed["components"], parsed["bars"])
    assert parts["Transform"] == 130 - 12 - 38 and parts["Trainer: training steps"] == 118
    assert parts["Trainer"] == 210 - 118
    assert parsed["summary"]["wall_time_s"] == 500.0


def test_fit_separates_the_fixed_part_from_the_part_per_unit():
    assert cost.fit([(1000, 30.0), (11000, 130.0)]) == pytest.approx((20.0, 0.01))
    assert cost.fit([(1000, 50.0)]) == (0.0, 0.05)
    # Noise that makes the bigger run faster gives no negative cost per unit.
    fixed, per_unit = cost.fit([(1000, 60.0), (10000, 50.0)])
    assert per_unit == 0.0 and fixed == pytest.approx(55.0)
    with pytest.raises(ValueError):
        cost.fit([])


def runs():
    """Two runs whose parts are linear in their drivers: 10 s fixed each, the
    training steps and the ranking of eval rows proportional."""
    made = []
    for items in (1000, 10000):
        interactions = 5 * items
        units = cost.units(items, interactions, 3)
        training, ranking = 2e-3 * units["training"], 3e-3 * units["eval_rows"]
        encoding = 50.0 * items / 1000
        components = {"FileBasedExampleGen": 10 + 1e-3 * units["rows"],
                      "Transform": 10 + 1e-3 * units["rows"] + encoding,
                      "Trainer": 10 + 1e-3 * units["rows"] + training,
                      "Evaluator": 10 + ranking, "Pusher": 4}
        bars = {"Transform: encode photos": (items, encoding),
                "Trainer: training steps": (100, training),
                "Evaluator: ranking eval rows": (units["eval_rows"], ranking)}
        made.append({"items": items, "interactions": interactions, "epochs": 3,
                     "components": components, "bars": bars,
                     "parts": cost.split_parts(components, bars)})
    return made


RATES = {"text_per_core_s": 200.0, "image_per_core_s": 40.0, "thread_efficiency": 0.8}


def model(where, items=100_000, pair=0.0, epoch_eval_rows=None):
    target = {"items": items, "interactions": 5 * items, "texts": 0.9 * items,
              "photos": 0.9 * items}
    return cost.cost_model(cost.fitted_components(runs()), RATES, pair, target, 3, 2, where,
                           epoch_eval_rows)


def test_fitted_components_recover_the_fixed_and_per_unit_parts():
    fitted = cost.fitted_components(runs())
    assert fitted["Trainer: training steps"] == pytest.approx(("training", 0.0, 2e-3))
    assert fitted["Trainer"] == pytest.approx(("rows", 10.0, 1e-3))
    assert fitted["Evaluator: ranking eval rows"] == pytest.approx(("eval_rows", 0.0, 3e-3))
    assert fitted["Evaluator"] == pytest.approx(("rows", 10.0, 0.0))
    # The encoders' time is taken out of the Transform, and not fitted.
    assert fitted["Transform"][1:] == pytest.approx((10.0, 1e-3))
    assert "Transform: encode photos" not in fitted
    assert fitted["Pusher"] == ("", 4.0, 0.0)


def test_as_measured_the_model_extrapolates_each_line():
    measured = model(cost.platform("measured", 2))
    units = cost.units(100_000, 500_000, 3)
    assert measured["Trainer: training steps"] == pytest.approx(2e-3 * units["training"])
    assert measured["Trainer"] == pytest.approx(10 + 1e-3 * units["rows"])
    assert measured["FileBasedExampleGen"] == pytest.approx(10 + 1e-3 * units["rows"])
    assert measured["Pusher"] == pytest.approx(4.0)
    assert measured["Transform: encode photos"] == pytest.approx(90_000 / (40.0 * 2 * 0.8))


def test_more_cores_shrink_the_parts_per_unit_not_the_fixed_ones():
    two, sixteen = model(cost.platform("measured", 2)), model(cost.platform("cores", 16))
    assert sixteen["Transform: encode photos"] == pytest.approx(two["Transform: encode photos"] / 8)
    assert sixteen["Trainer: training steps"] == pytest.approx(two["Trainer: training steps"] / 8)
    assert sixteen["Pusher"] == two["Pusher"]
    assert sum(sixteen.values()) < sum(two.values())


def test_on_dataflow_more_workers_do_not_speed_up_the_cached_encoders():
    few, many = (model(cost.platform("dataflow", workers=n)) for n in (2, 20))
    assert few["Transform: encode photos"] == many["Transform: encode photos"]
    assert many["FileBasedExampleGen"] < few["FileBasedExampleGen"]
    assert many["Trainer: training steps"] == few["Trainer: training steps"]
    # Every Beam step pays the workers' start.
    assert few["Evaluator"] >= cost.DATAFLOW_STARTUP_S
    on_workers = model(cost.platform("dataflow", workers=20, encoders_on_workers=True))
    assert on_workers["Transform: encode photos"] < many["Transform: encode photos"] / 10


def test_the_exact_top_k_grows_with_the_square_of_the_catalogue():
    where = cost.platform("measured", 2)
    small, large = model(where, 100_000, pair=1e-9), model(where, 200_000, pair=1e-9)
    small0, large0 = model(where, 100_000), model(where, 200_000)
    for part in (cost.EVALUATOR_SQUARE, cost.TRAINER_SQUARE):
        assert large[part] == pytest.approx(4 * small[part]) and small[part] > 0
        assert small0[part] == 0
    # Each epoch's evaluation ranks every eval row: 3 epochs, 3 times the Evaluator's CPU.
    assert small[cost.TRAINER_SQUARE] == pytest.approx(3 * small[cost.EVALUATOR_SQUARE])


def test_past_the_cap_each_epochs_top_k_grows_with_the_items_alone():
    where = cost.platform("measured", 2)
    small, large = (model(where, items, pair=1e-9, epoch_eval_rows=1000)
                    for items in (100_000, 200_000))
    assert large[cost.TRAINER_SQUARE] == pytest.approx(2 * small[cost.TRAINER_SQUARE])
    assert large[cost.EVALUATOR_SQUARE] == pytest.approx(4 * small[cost.EVALUATOR_SQUARE])
    assert small[cost.TRAINER_SQUARE] == pytest.approx(3 * 1000 * 100_000 * 1e-9 / (2 * 0.8))


def test_the_top_k_a_run_paid_is_taken_out_before_the_fit():
    """Runs whose bars hold the exact top-k (each epoch's eval capped at 600
    rows, the Evaluator's over all) fit as the runs without it."""
    pair, cores, efficiency = 1e-5, 2, 0.8
    paid = []
    for run in runs():
        eval_rows = run["bars"]["Evaluator: ranking eval rows"][0]
        per_row = pair * run["items"] / (cores * efficiency)
        bars = dict(run["bars"])
        steps, ranking = bars["Trainer: training steps"], bars["Evaluator: ranking eval rows"]
        bars["Trainer: training steps"] = (steps[0], steps[1] + 3 * min(eval_rows, 600) * per_row)
        bars["Evaluator: ranking eval rows"] = (ranking[0], ranking[1] + eval_rows * per_row)
        components = dict(run["components"])
        components["Trainer"] += bars["Trainer: training steps"][1] - steps[1]
        components["Evaluator"] += bars["Evaluator: ranking eval rows"][1] - ranking[1]
        paid.append({**run, "epoch_eval_rows": 600, "components": components, "bars": bars,
                     "parts": cost.split_parts(components, bars)})
    unadjusted = cost.fitted_components(paid)["Trainer: training steps"][2]
    assert unadjusted > 2e-3 * 1.2
    adjusted = cost.fitted_components(cost.without_top_k(paid, pair, cores, efficiency))
    for name, (driver, fixed, per_unit) in cost.fitted_components(runs()).items():
        assert adjusted[name][0] == driver
        assert adjusted[name][1:] == pytest.approx((fixed, per_unit), abs=1e-9)


def test_unknown_platform_is_refused():
    with pytest.raises(ValueError, match="unknown platform"):
        cost.platform("tpu")


def test_encoder_rates_take_one_thread_per_core_and_the_efficiency():
    def measured(batch, intra, text_cpu, image_cpu):
        return {"batch": batch, "intra": intra, "inter": 0,
                "text": {"items": 100, "wall_s": 1.0, "cpu_s": text_cpu},
                "image": {"items": 100, "wall_s": 5.0, "cpu_s": image_cpu}}
    rates = cost.encoder_rates([measured(32, 0, 1.0, 4.0), measured(64, 0, 1.0, 3.0),
                                measured(32, 1, 0.8, 2.0)])
    assert rates == pytest.approx({"text_per_core_s": 125.0, "image_per_core_s": 50.0,
                                   "thread_efficiency": 0.5})


def test_bad_sizes_and_settings_are_refused():
    assert cost.parse_sizes("10000,1000") == [1000, 10000]
    assert cost.parse_settings("32:0:0,64:1:1") == [(32, 0, 0), (64, 1, 1)]
    for text in ("ten", "5"):
        with pytest.raises(argparse.ArgumentTypeError):
            cost.parse_sizes(text)
    for text in ("32", "32:a:0", "0:0:0"):
        with pytest.raises(argparse.ArgumentTypeError):
            cost.parse_settings(text)


def test_main_writes_its_section_from_the_runs_and_measurements(tmp_path, monkeypatch):
    """The benchmark end to end with the runs and measurements replaced."""
    made = runs()

    def run_size(out, size, overrides, log):
        run = next(r for r in made if r["items"] == size)
        return {**run, "images": int(0.9 * size), "wall_s": 100.0, "blessed": True,
                "metrics": {"release_recall": 0.5}, "load": "3.0 / 4.0",
                "bars": {**run["bars"], "Transform: encode texts": (int(0.9 * size), 1)}}

    def measure(data, settings, limit, log):
        return [{"batch": b, "intra": i, "inter": j, "load": 2.0,
                 "text": {"items": 100, "wall_s": 0.5, "cpu_s": 1.0 if i != 1 else 0.5},
                 "image": {"items": 100, "wall_s": 2.0, "cpu_s": 4.0 if i != 1 else 2.5},
                 **({"image_eager": {"items": 100, "wall_s": 4.0, "cpu_s": 5.0}} if index == 0 else {})}
                for index, (b, i, j) in enumerate(settings)]

    monkeypatch.setattr(cost, "run_size", run_size)
    monkeypatch.setattr(cost, "measure_encoders", measure)
    monkeypatch.setattr(cost, "top_k_cost", lambda: {"cpu_s_per_pair": 1e-9, "wall_s_per_pair": 1e-9})
    results_file = tmp_path / "RESULTS.md"
    assert cost.main(["--sizes", "1000,10000", "--out", str(tmp_path / "out"),
                      "--results", str(results_file), "--encoder-settings", "32:0:0,32:1:1"]) == 0
    text = results_file.read_text()
    assert "<!-- begin pipeline-cost -->" in text and "shared machine" in text
    assert "| 32 | all | all | 200 | 100 | 50.0 | 25.0 | 2.0 |" in text
    assert "| 32, photos preprocessed eagerly (before) | all | all | - | - | 25.0 | 20.0 | 2.0 |" in text
    assert "Dataflow, 10 workers" in text and "| dominant component |" in text
    saved = json.loads((tmp_path / "out" / "pipeline_cost.json").read_text())
    assert saved["target"]["items"] == 1_000_000
    assert saved["rates"]["image_per_core_s"] == pytest.approx(40.0)
    # Run again into the same OUT: the encoders' measurement is kept, unless asked.
    monkeypatch.setattr(cost, "measure_encoders", lambda *args: pytest.fail("measured again"))
    assert cost.main(["--sizes", "1000,10000", "--out", str(tmp_path / "out"),
                      "--results", str(results_file), "--encoder-settings", "32:0:0,32:1:1"]) == 0
    assert "an earlier measurement" in results_file.read_text()
    with pytest.raises(pytest.fail.Exception):
        cost.main(["--sizes", "1000,10000", "--out", str(tmp_path / "out"), "--remeasure",
                   "--results", str(results_file), "--encoder-settings", "32:0:0,32:1:1"])


def test_dataflow_bills_the_workers_only_while_a_beam_step_runs():
    where = cost.platform("dataflow", workers=5)
    hours = cost._dataflow_core_hours({"StatisticsGen": 3600.0, "Trainer": 3600.0,
                                       "Transform: encode photos": 3600.0, "Pusher": 3600.0}, where)
    # 20 worker cores, the Trainer's 4, the Transform pod's 4 while it encodes, 1 for the Pusher.
    assert hours == pytest.approx(20 + 4 + 4 + 1)
    on_workers = cost.platform("dataflow", workers=5, encoders_on_workers=True)
    assert cost._dataflow_core_hours({"Transform: encode photos": 3600.0}, on_workers) == \
        pytest.approx(24)


def test_a_beam_step_pays_the_workers_start_once():
    where = cost.platform("dataflow", workers=1000)
    modelled = model(where)
    assert modelled["Evaluator"] == pytest.approx(10 + cost.DATAFLOW_STARTUP_S, rel=1e-3)
    assert modelled["Evaluator: ranking eval rows"] < 1.0


def test_parts_add_up_to_their_component():
    assert cost.by_component({"Trainer": 1.0, "Trainer: training steps": 2.0,
                              cost.TRAINER_SQUARE: 3.0, "Transform: encode photos": 4.0}) == \
        {"Trainer": 6.0, "Transform": 4.0}

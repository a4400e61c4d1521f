"""Tests of pipeline.anomalies_gate with real TFDV anomalies against schema/schema.pbtxt."""
import os

import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_data_validation.statistics import stats_impl
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import io_utils
from tfx_bsl.coders import example_coder

from dataset import sample as sample_data
from dataset.contract import Interaction, read_dataset
from pipeline import anomalies_gate, example_gen
from pipeline.anomalies_gate import AnomaliesFound, AnomaliesGate, describe_anomalies
from schema import SCHEMA_FILE

SCHEMA = io_utils.parse_pbtxt_file(SCHEMA_FILE, schema_pb2.Schema())


def validate(examples):
    """TFDV statistics of `examples` checked against the curated schema."""
    batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(
        [example.SerializeToString() for example in examples])
    statistics = stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions())
    return tfdv.validate_statistics(statistics, SCHEMA)


def good_interactions(count=20):
    return [example_gen.interaction_example(
        Interaction(row=n + 2, user_id=f"u{n % 3}", item_id=f"i{n}", timestamp=1000 + n,
                    rating=float(n % 5 + 1), query="red mug" if n % 4 == 0 else ""))
            for n in range(count)]


def example(**features):
    result = tf.train.Example()
    for name, value in features.items():
        feature = result.features.feature[name]
        if isinstance(value, bytes):
            feature.bytes_list.value.append(value)
        elif isinstance(value, int):
            feature.int64_list.value.append(value)
        else:
            feature.float_list.value.append(value)
    return result


def anomalies_artifact(tmp_path, by_split):
    """An ExampleAnomalies artifact laid out as ExampleValidator writes it."""
    artifact = standard_artifacts.ExampleAnomalies()
    artifact.uri = str(tmp_path / "anomalies")
    artifact.split_names = artifact_utils.encode_split_names(list(by_split))
    for split, anomalies in by_split.items():
        directory = artifact_utils.get_split_uri([artifact], split)
        os.makedirs(directory)
        with open(os.path.join(directory, anomalies_gate.ANOMALIES_FILE), "wb") as handle:
            handle.write(anomalies.SerializeToString())
    return artifact


def run_gate(artifact):
    """Runs the component's executor as the orchestrator would."""
    executor = AnomaliesGate.EXECUTOR_SPEC.executor_class()
    executor.Do({"anomalies": [artifact]}, {}, {})


def test_clean_examples_have_no_anomalies_and_pass_the_gate(tmp_path):
    anomalies = validate(good_interactions())
    assert not anomalies.anomaly_info
    artifact = anomalies_artifact(tmp_path, {"train": anomalies, "eval": anomalies})
    assert describe_anomalies(artifact) == []
    run_gate(artifact)  # does not raise


def test_an_empty_anomalies_proto_yields_no_description(tmp_path):
    artifact = anomalies_artifact(tmp_path, {"train": anomalies_pb2.Anomalies()})
    assert describe_anomalies(artifact) == []


def test_sample_interactions_and_catalog_conform_to_the_schema(tmp_path):
    """The example builders and the curated schema agree, image bytes included."""
    data_dir = str(tmp_path / "data")
    sample_data.write_sample_dataset(data_dir, num_items=40, num_users=10)
    dataset = read_dataset(data_dir)
    interactions = [example_gen.interaction_example(row) for row in dataset.interactions]
    catalog = [example_gen.catalog_example(item) for item in dataset.items.values()]
    for examples in (interactions, catalog):
        anomalies = validate(examples)
        assert dict(anomalies.anomaly_info) == {}
        assert not anomalies.HasField("dataset_anomaly_info")


def test_a_second_item_id_is_named_with_its_split(tmp_path):
    broken = good_interactions()
    broken[3].features.feature["item_id"].bytes_list.value.append(b"i99")
    anomalies = validate(broken)
    assert set(anomalies.anomaly_info) == {"item_id"}
    artifact = anomalies_artifact(tmp_path, {"train": anomalies})
    (line,) = describe_anomalies(artifact)
    assert line.startswith("train: item_id: ")
    assert anomalies.anomaly_info["item_id"].description in line


def test_a_string_rating_is_named(tmp_path):
    broken = [example(item_id=f"i{n}".encode(), rating=b"4.5") for n in range(5)]
    anomalies = validate(broken)
    assert "rating" in anomalies.anomaly_info
    artifact = anomalies_artifact(tmp_path, {"eval": anomalies})
    found = describe_anomalies(artifact)
    assert any(line.startswith("eval: rating: ") and "FLOAT" in line for line in found), found


def test_a_column_outside_the_schema_is_named(tmp_path):
    """Dataset columns must travel as attribute tokens, not as new features."""
    broken = [example(item_id=f"i{n}".encode(), colour=b"red") for n in range(5)]
    anomalies = validate(broken)
    artifact = anomalies_artifact(tmp_path, {"catalog": anomalies})
    found = describe_anomalies(artifact)
    assert any(line.startswith("catalog: colour: ") for line in found), found


def test_only_the_broken_split_is_named_and_features_are_sorted(tmp_path):
    clean = validate(good_interactions())
    broken = validate([example(item_id=b"i1", rating=b"bad", timestamp=1.5)] * 3
                      + [example(rating=b"bad", timestamp=2.5, colour=b"red")])
    assert {"colour", "rating", "timestamp"} <= set(broken.anomaly_info)
    artifact = anomalies_artifact(tmp_path, {"train": clean, "eval": broken, "catalog": clean})
    found = describe_anomalies(artifact)
    assert found
    assert all(line.startswith("eval: ") for line in found)
    features = [line.split(": ")[1] for line in found]
    assert features == sorted(features)
    assert {"colour", "rating", "timestamp"} <= set(features)


def test_dataset_level_anomalies_are_named(tmp_path):
    anomalies = anomalies_pb2.Anomalies()
    anomalies.dataset_anomaly_info.description = "The dataset has 3 examples, fewer than 10."
    artifact = anomalies_artifact(tmp_path, {"train": anomalies})
    assert describe_anomalies(artifact) == [
        "train: (dataset): The dataset has 3 examples, fewer than 10."]


def test_short_description_is_used_when_there_is_no_description(tmp_path):
    anomalies = anomalies_pb2.Anomalies()
    anomalies.anomaly_info["query"].short_description = "Unexpected data type"
    artifact = anomalies_artifact(tmp_path, {"train": anomalies})
    assert describe_anomalies(artifact) == ["train: query: Unexpected data type"]


def test_the_gate_raises_listing_every_anomaly(tmp_path):
    clean = validate(good_interactions())
    train = good_interactions()
    train[0].features.feature["item_id"].bytes_list.value.append(b"i99")
    train = validate(train)
    evaluation = validate([example(item_id=b"i1", rating=b"4.5")] * 4)
    artifact = anomalies_artifact(tmp_path, {"train": train, "eval": evaluation,
                                             "catalog": clean})
    with pytest.raises(AnomaliesFound) as error:
        run_gate(artifact)
    message = str(error.value)
    assert "ExampleValidator found anomalies" in message
    assert "train: item_id: " in message
    assert "eval: rating: " in message
    assert "catalog" not in message
    assert message.count("\n  ") == len(describe_anomalies(artifact)) == 2


def test_a_missing_anomalies_file_is_not_a_pass(tmp_path):
    artifact = standard_artifacts.ExampleAnomalies()
    artifact.uri = str(tmp_path / "nothing")
    artifact.split_names = artifact_utils.encode_split_names(["train"])
    with pytest.raises(Exception):
        run_gate(artifact)

"""Tests of pipeline.example_gen: tf.Example builders and the ExampleGen executor."""
import collections
import glob
import os

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing import util as beam_util
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_transform.tf_metadata import schema_utils
from tfx.components.example_gen import utils as example_gen_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import io_utils

from dataset import pseudonyms
from dataset import sample as sample_data
from dataset import splits
from dataset.contract import (
    Interaction,
    Item,
    attribute_query,
    attribute_tokens,
    read_dataset,
    training_interactions,
)
from pipeline import example_gen
from schema import SCHEMA_FILE
from transform import features as f

SCHEMA = io_utils.parse_pbtxt_file(SCHEMA_FILE, schema_pb2.Schema())
FEATURE_SPEC = schema_utils.schema_as_feature_spec(SCHEMA).feature_spec
KIND_OF_TYPE = {schema_pb2.BYTES: "bytes_list", schema_pb2.INT: "int64_list",
                schema_pb2.FLOAT: "float_list"}
KEY = b"example-gen test key, 32 bytes.."


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("key") / "user_key"
    path.write_bytes(KEY)
    return str(path)


def hashed(user_id: str) -> str:
    return pseudonyms.pseudonym(user_id, KEY)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("sample"))
    sample_data.write_sample_dataset(directory, num_items=40, num_users=20)
    return directory


@pytest.fixture(scope="module")
def catalogue_only_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("catalogue"))
    sample_data.write_sample_dataset(directory, num_items=40, num_users=20)
    os.remove(os.path.join(directory, "interactions.csv"))
    return directory


def values(example, name):
    feature = example.features.feature[name]
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def assert_conforms_to_schema(example):
    """Each feature is in the schema, of its type, within its value count; required ones present."""
    features = example.features.feature
    by_name = {feature.name: feature for feature in SCHEMA.feature}
    for name, feature in features.items():
        assert name in by_name, f"{name} is not in schema.pbtxt"
        expected = by_name[name]
        assert feature.WhichOneof("kind") == KIND_OF_TYPE[expected.type], name
        count = len(values(example, name))
        assert count >= expected.value_count.min, name
        if expected.value_count.max:
            assert count <= expected.value_count.max, name
    for expected in SCHEMA.feature:
        if expected.presence.min_fraction == 1.0:
            assert expected.name in features, f"required {expected.name} missing"


def generated_examples(executor, pipeline, data_dir, method, key_file):
    """The executor's splits, parsed back into tf.Examples."""
    return {name: records | f"Parse[{name}]" >> beam.Map(tf.train.Example.FromString)
            for name, records in executor.GenerateExamplesByBeam(
                pipeline, exec_properties(data_dir, method, key_file)).items()}


def parse_with_schema(examples):
    """Parses serialized examples with the schema's feature spec (raises on a type mismatch)."""
    serialized = tf.constant([e.SerializeToString() for e in examples])
    return tf.io.parse_example(serialized, FEATURE_SPEC)


# --- interaction_example ---------------------------------------------------------------------


def test_interaction_example_with_every_field():
    row = Interaction(row=9, user_id="u1", item_id="i1", timestamp=1_600_000_123, rating=4.5,
                      query="red mug")
    example = example_gen.interaction_example(row)
    assert set(example.features.feature) == {"item_id", "user_id", "query", "timestamp", "rating"}
    assert values(example, "item_id") == [b"i1"]
    assert values(example, "user_id") == [b"u1"]
    assert values(example, "query") == [b"red mug"]
    assert values(example, "timestamp") == [1_600_000_123]
    assert values(example, "rating") == [4.5]
    assert_conforms_to_schema(example)


def test_interaction_example_omits_absent_optional_fields():
    example = example_gen.interaction_example(Interaction(row=2, user_id="", item_id="i7",
                                                          query="lamp"))
    assert set(example.features.feature) == {"item_id", "query"}
    example = example_gen.interaction_example(Interaction(row=2, user_id="u", item_id="i7"))
    assert set(example.features.feature) == {"item_id", "user_id"}
    assert_conforms_to_schema(example)


def test_interaction_example_keeps_zero_rating_and_timestamp():
    example = example_gen.interaction_example(
        Interaction(row=2, user_id="u", item_id="i", timestamp=0, rating=0.0))
    assert values(example, "timestamp") == [0]
    assert values(example, "rating") == [0.0]


def test_interaction_example_encodes_unicode_as_utf8():
    example = example_gen.interaction_example(
        Interaction(row=2, user_id="jürgen", item_id="caf\u00e9-1", query="tasse rot \u2615"))
    assert values(example, "user_id") == ["jürgen".encode("utf-8")]
    assert values(example, "item_id") == ["caf\u00e9-1".encode("utf-8")]
    assert values(example, "query") == ["tasse rot \u2615".encode("utf-8")]


# --- catalog_example and attribute_tokens ----------------------------------------------------


def test_attribute_tokens_split_pipe_cells_and_skip_blanks():
    item = Item("m1", attributes=(("genres", "Action|Comedy| |Drama "), ("year", "1995"),
                                  ("language", "en")))
    assert list(attribute_tokens(item)) == [
        "genres=Action", "genres=Comedy", "genres=Drama", "year=1995", "language=en"]
    assert list(attribute_tokens(Item("m2"))) == []


def test_catalog_example_with_every_modality(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG not checked here")
    item = Item("a1", title="Red mug", description="A red mug.", image_path=str(image),
                attributes=(("colour", "red"), ("tags", "kitchen|gift")))
    example = example_gen.catalog_example(item)
    assert set(example.features.feature) == {"item_id", "title", "description", "attributes",
                                             "image"}
    assert values(example, "item_id") == [b"a1"]
    assert values(example, "title") == [b"Red mug"]
    assert values(example, "description") == [b"A red mug."]
    assert values(example, "attributes") == [b"colour=red", b"tags=kitchen", b"tags=gift"]
    assert values(example, "image") == [image.read_bytes()]
    assert_conforms_to_schema(example)


def test_catalog_example_omits_absent_modalities():
    example = example_gen.catalog_example(Item("a2"))
    assert set(example.features.feature) == {"item_id"}
    example = example_gen.catalog_example(Item("a3", description="only words"))
    assert set(example.features.feature) == {"item_id", "description"}


def test_catalog_examples_of_the_sample_carry_the_image_files(sample_dir):
    dataset = read_dataset(sample_dir)
    with_image = without_image = 0
    for item in dataset.items.values():
        example = example_gen.catalog_example(item)
        assert_conforms_to_schema(example)
        if item.image_path:
            with_image += 1
            with open(item.image_path, "rb") as handle:
                assert values(example, "image") == [handle.read()]
        else:
            without_image += 1
            assert "image" not in example.features.feature
        assert ("title" in example.features.feature) == bool(item.title)
        assert values(example, "attributes") == [
            f"{column}={value}".encode() for column, value in item.attributes]
    assert with_image and without_image


def test_sample_examples_parse_with_the_schema_feature_spec(sample_dir):
    dataset = read_dataset(sample_dir)
    interactions = [example_gen.interaction_example(row) for row in dataset.interactions]
    catalog = [example_gen.catalog_example(item) for item in dataset.items.values()]
    for example in interactions + catalog:
        assert_conforms_to_schema(example)

    parsed = parse_with_schema(interactions)
    assert parsed["item_id"].dense_shape.numpy()[0] == len(interactions)
    assert parsed["item_id"].values.shape[0] == len(interactions)  # one per row
    assert parsed["timestamp"].dtype == tf.int64
    assert parsed["rating"].values.shape[0] == len(interactions)
    assert parsed["query"].values.shape[0] == sum(1 for row in dataset.interactions if row.query)
    assert parsed["user_id"].values.shape[0] == sum(
        1 for row in dataset.interactions if row.user_id)

    parsed = parse_with_schema(catalog)
    assert parsed["item_id"].values.shape[0] == len(catalog)
    assert parsed["image"].values.shape[0] == sum(
        1 for item in dataset.items.values() if item.image_path)
    # The image bytes decode as images (the schema gives `image` an image_domain).
    first = parsed["image"].values[0]
    assert tf.io.decode_image(first).shape[-1] == 3


def test_a_mistyped_example_does_not_parse_with_the_schema():
    """The spec really checks types: a string rating is rejected."""
    example = example_gen.interaction_example(Interaction(row=2, user_id="u", item_id="i"))
    example.features.feature["rating"].bytes_list.value.append(b"4.5")
    with pytest.raises(tf.errors.InvalidArgumentError):
        parse_with_schema([example])


# --- training_interactions -------------------------------------------------------------------


def test_training_interactions_are_the_interactions_when_there_are_some(sample_dir):
    dataset = read_dataset(sample_dir)
    assert training_interactions(dataset) is dataset.interactions


def test_catalogue_only_trains_on_titles_and_attribute_values_as_anonymous_searches(catalogue_only_dir):
    dataset = read_dataset(catalogue_only_dir)
    rows = training_interactions(dataset)
    titled = [item for item in dataset.items.values() if item.title]
    assert 0 < len(titled) < len(dataset.items)  # the sample has image-only items
    assert [(row.item_id, row.query) for row in rows if row.query[:1].isupper()] == \
        [(i.item_id, i.title) for i in titled]  # the sample's titles are capitalised, its values not
    by_attributes = [row for row in rows if not row.query[:1].isupper()]
    assert [row.item_id for row in by_attributes] == [i.item_id for i in dataset.items.values() if i.attributes]
    for row in by_attributes:
        values = {value for _, value in dataset.items[row.item_id].attributes}
        assert 1 <= len(row.query.split()) <= 3 and set(row.query.split()) <= values
    assert len({row.query for row in by_attributes}) > len(by_attributes) / 2
    assert f"training on {len(rows)} searches made from the catalogue" in dataset.summary()
    assert all(row.user_id == "" and row.timestamp is None and row.rating is None
               for row in rows)
    # They are valid examples, and both split methods can split them.
    for method in splits.SPLIT_METHODS:
        assigned = splits.assign_splits(rows, method)
        assert set(assigned) <= {splits.TRAIN, splits.EVAL}
    assert_conforms_to_schema(example_gen.interaction_example(rows[0]))


def test_an_attribute_search_is_the_same_in_every_run_and_takes_multi_valued_cells_apart():
    item = Item("m1", attributes=(("genres", "Comedy|Drama|War"), ("year", "1995"), ("language", "en")))
    query = attribute_query(item)
    assert query == attribute_query(Item("m1", attributes=item.attributes))
    assert 1 <= len(query.split()) <= 3
    assert set(query.split()) <= {"Comedy", "Drama", "War", "1995", "en"}
    drawn = {attribute_query(Item(f"m{n}", attributes=item.attributes)) for n in range(50)}
    assert {len(q.split()) for q in drawn} == {1, 2, 3}
    assert attribute_query(Item("m2")) == ""


# --- the executor ----------------------------------------------------------------------------


def exec_properties(data_dir, method, key_file="unused"):
    """The component's own exec properties, as the launcher hands them to the executor."""
    component = example_gen.dataset_example_gen(data_dir, method, key_file)
    properties = {k: v for k, v in component.exec_properties.items() if v is not None}
    assert properties["input_base"] == data_dir
    return properties


def interaction_key(example):
    def first(name):
        found = values(example, name)
        return found[0] if found else None
    return (first("user_id"), first("item_id"), first("timestamp"), first("query"))


def row_key(row):
    return (hashed(row.user_id).encode() or None, row.item_id.encode(), row.timestamp,
            row.query.encode() or None)


@pytest.mark.parametrize("method", ["random", "temporal"])
def test_generate_examples_by_beam_matches_assign_splits(sample_dir, method, key_file):
    dataset = read_dataset(sample_dir)
    assigned = splits.assign_splits(dataset.interactions, method)
    expected = {name: [row_key(row) for row, split in zip(dataset.interactions, assigned)
                       if split == name] for name in (splits.TRAIN, splits.EVAL)}
    assert expected[splits.TRAIN] and expected[splits.EVAL]

    executor = example_gen.Executor()
    with beam.Pipeline() as pipeline:
        result = generated_examples(executor, pipeline, sample_dir, method, key_file)
        assert set(result) == set(example_gen.SPLIT_NAMES)
        for name in (splits.TRAIN, splits.EVAL):
            beam_util.assert_that(result[name] | f"Key[{name}]" >> beam.Map(interaction_key),
                                  beam_util.equal_to(expected[name]), label=f"Check[{name}]")
        beam_util.assert_that(
            result[example_gen.CATALOG] | "ItemIds" >> beam.Map(lambda e: values(e, "item_id")[0]),
            beam_util.equal_to([item_id.encode() for item_id in dataset.items]),
            label="CheckCatalog")


def read_split(artifact, split):
    files = glob.glob(os.path.join(artifact_utils.get_split_uri([artifact], split), "*"))
    assert files, split
    return [tf.train.Example.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def write_examples(data_dir, tmp_path, key_file):
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    executor = example_gen.Executor(base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=["--direct_running_mode=in_memory"], tmp_dir=str(tmp_path / "tmp")))
    executor.Do({}, {"examples": [examples]}, exec_properties(data_dir, "random", key_file))
    return examples


def test_executor_writes_every_split(sample_dir, tmp_path, key_file):
    dataset = read_dataset(sample_dir)
    assigned = splits.assign_splits(dataset.interactions, "random")
    examples = write_examples(sample_dir, tmp_path, key_file)

    assert artifact_utils.decode_split_names(examples.split_names) == list(
        example_gen.SPLIT_NAMES)
    written = {name: read_split(examples, name) for name in example_gen.SPLIT_NAMES}
    counts = collections.Counter(assigned)
    assert len(written[splits.TRAIN]) == counts[splits.TRAIN]
    assert len(written[splits.EVAL]) == counts[splits.EVAL]
    assert len(written[example_gen.CATALOG]) == len(dataset.items)
    catalog_ids = [values(e, "item_id")[0].decode() for e in written[example_gen.CATALOG]]
    assert sorted(catalog_ids) == sorted(dataset.items)
    assert all("user_id" not in e.features.feature for e in written[example_gen.CATALOG])
    assert all("title" not in e.features.feature for e in written[splits.TRAIN])
    train_users = {hashed(row.user_id) for row, split in zip(dataset.interactions, assigned)
                   if split == splits.TRAIN and row.user_id}
    assert sorted(values(e, "user_id")[0].decode() for e in written[example_gen.USERS]) == sorted(train_users)
    for example in written[example_gen.USERS]:
        assert_conforms_to_schema(example)
        assert 0 < len(values(example, "recent_items")) <= f.RECENT_ITEMS_LENGTH
    assert examples.get_string_custom_property(
        example_gen_utils.PAYLOAD_FORMAT_PROPERTY_NAME) == "FORMAT_TF_EXAMPLE"
    # No raw user id is written anywhere: every user id is its keyed pseudonym.
    raw_users = {row.user_id.encode() for row in dataset.interactions if row.user_id}
    written_bytes = b"".join(open(path, "rb").read() for path in glob.glob(
        os.path.join(examples.uri, "**", "*"), recursive=True) if os.path.isfile(path))
    assert written_bytes and not [user for user in raw_users if user in written_bytes]


def test_without_its_key_file_example_gen_stops_naming_the_setting(sample_dir, tmp_path):
    with pytest.raises(pseudonyms.UserKeyError, match="pipeline.user_key_file"):
        list(example_gen.interaction_and_user_records(sample_dir, "random",
                                                      str(tmp_path / "missing")))


def test_the_key_file_is_made_once_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "config" / "user_key"
    key = pseudonyms.load_key(str(path), create=True)
    assert oct(path.stat().st_mode & 0o777) == "0o600" and len(key) == 2 * pseudonyms.KEY_BYTES
    assert pseudonyms.load_key(str(path), create=True) == key
    assert pseudonyms.pseudonym("u1", key) != pseudonyms.pseudonym("u1", b"another key of 16+ b")
    assert len(pseudonyms.pseudonym("u1", key)) == pseudonyms.PSEUDONYM_CHARS
    assert pseudonyms.pseudonym("", key) == ""


def test_executor_on_a_catalogue_only_dataset(catalogue_only_dir, key_file):
    dataset = read_dataset(catalogue_only_dir)
    rows = training_interactions(dataset)
    assigned = splits.assign_splits(rows, "random")
    expected = collections.Counter(assigned)

    def count(pcoll, label):
        return pcoll | f"Count[{label}]" >> beam.combiners.Count.Globally()

    with beam.Pipeline() as pipeline:
        result = generated_examples(example_gen.Executor(), pipeline, catalogue_only_dir, "random",
                                    key_file)
        for name in (splits.TRAIN, splits.EVAL):
            beam_util.assert_that(count(result[name], name), beam_util.equal_to([expected[name]]),
                                  label=f"Check[{name}]")
            beam_util.assert_that(
                result[name] | f"Anonymous[{name}]" >> beam.Map(
                    lambda e: "user_id" in e.features.feature),
                beam_util.equal_to([False] * expected[name]), label=f"CheckAnonymous[{name}]")
        beam_util.assert_that(count(result[example_gen.CATALOG], "catalog"),
                              beam_util.equal_to([len(dataset.items)]), label="CheckCatalog")
        beam_util.assert_that(count(result[example_gen.USERS], "users"), beam_util.equal_to([0]),
                              label="CheckNoUsers")


def test_a_catalogue_only_dataset_still_writes_a_readable_users_split(catalogue_only_dir, tmp_path,
                                                                     key_file):
    examples = write_examples(catalogue_only_dir, tmp_path, key_file)
    assert read_split(examples, example_gen.USERS) == []


def test_recent_items_are_the_users_other_training_rows_most_recent_first():
    rows = [Interaction(row=2, user_id="u", item_id="a", timestamp=10),
            Interaction(row=3, user_id="u", item_id="b", timestamp=30),
            Interaction(row=4, user_id="u", item_id="c", timestamp=20),
            Interaction(row=5, user_id="u", item_id="d", timestamp=40),  # eval: never history
            Interaction(row=6, user_id="", item_id="e", query="lamp"),
            Interaction(row=7, user_id="v", item_id="a")]
    assigned = [splits.TRAIN, splits.TRAIN, splits.TRAIN, splits.EVAL, splits.TRAIN, splits.TRAIN]
    histories = example_gen.UserHistories(rows, assigned)
    assert sorted(histories.users()) == ["u", "v"]
    assert histories.recent_items("u") == ["b", "c", "a"]
    assert histories.recent_items("u", leave_out=2) == ["b", "a"]  # row c itself left out
    assert histories.recent_items("v", leave_out=5) == []
    assert histories.recent_items("nobody") == []
    example = example_gen.interaction_example(rows[3], histories.recent_items("u", leave_out=3))
    assert values(example, "recent_items") == [b"b", b"c", b"a"]
    assert_conforms_to_schema(example)


def test_recent_items_keep_only_the_most_recent():
    rows = [Interaction(row=i, user_id="u", item_id=f"i{i}", timestamp=i) for i in range(80)]
    recent = example_gen.UserHistories(rows, [splits.TRAIN] * 80).recent_items("u", leave_out=79)
    assert recent == [f"i{i}" for i in range(78, 78 - f.RECENT_ITEMS_LENGTH, -1)]


def test_split_method_comes_from_custom_config(sample_dir):
    properties = exec_properties(sample_dir, "temporal")
    assert example_gen._split_method(properties) == "temporal"
    properties = exec_properties(sample_dir, "random")
    assert example_gen._split_method(properties) == "random"


def test_the_runs_caps_reach_the_executor(sample_dir):
    component = example_gen.dataset_example_gen(sample_dir, "random", "unused", limits={"max_text_chars": 7})
    properties = {k: v for k, v in component.exec_properties.items() if v is not None}
    assert example_gen._limits(properties).max_text_chars == 7
    assert example_gen._limits(exec_properties(sample_dir, "random")).max_text_chars == 100_000

"""The validation carve: which products it takes, and what it does to each split."""
import os

import pytest
import tensorflow as tf

from benchmarks import fashion_validation, quality
from dataset.contract import read_dataset
from dataset.sample import write_sample_dataset
from transform import features as f


def _example(item_index, tokens=(3, 4, 0), embedding=(0.5, 0.25)):
    return tf.train.Example(features=tf.train.Features(feature={
        f.ITEM_INDEX: tf.train.Feature(int64_list=tf.train.Int64List(value=[item_index])),
        f.ITEM_TOKENS: tf.train.Feature(int64_list=tf.train.Int64List(value=list(tokens))),
        f.ATTRIBUTE_TOKENS: tf.train.Feature(int64_list=tf.train.Int64List(value=[5, 0])),
        f.ITEM_TEXT_EMBEDDING: tf.train.Feature(float_list=tf.train.FloatList(value=list(embedding))),
        f.IMAGE_EMBEDDING: tf.train.Feature(float_list=tf.train.FloatList(value=[1.0, 2.0])),
    }))


def _write(path, examples):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as out:
        for example in examples:
            out.write(example.SerializeToString())


def _read(path):
    return [tf.train.Example.FromString(record.numpy()).features.feature
            for record in tf.data.TFRecordDataset([path], compression_type="GZIP")]


def test_validation_rows_are_dropped_and_their_text_blanked(tmp_path):
    examples = tmp_path / "examples"
    for split in ("train", "eval"):
        _write(str(examples / f"Split-{split}" / "part-0.gz"), [_example(1), _example(2), _example(2)])
    _write(str(examples / "Split-catalog" / "part-0.gz"), [_example(1), _example(2)])
    _write(str(examples / "Split-users" / "part-0.gz"), [tf.train.Example()])

    counts = fashion_validation.carve(str(examples), str(tmp_path / "out"), {2})

    assert counts == {"train": 1, "train_dropped": 2, "eval": 1, "eval_dropped": 2, "catalog": 2,
                      "catalog_blanked": 1, "users": 1}
    for split in ("train", "eval"):
        rows = _read(str(tmp_path / "out" / f"Split-{split}" / "part.gz"))
        assert [row[f.ITEM_INDEX].int64_list.value[0] for row in rows] == [1]
    kept, blanked = _read(str(tmp_path / "out" / "Split-catalog" / "part.gz"))
    assert list(kept[f.ITEM_TOKENS].int64_list.value) == [3, 4, 0]
    assert list(kept[f.ITEM_TEXT_EMBEDDING].float_list.value) == [0.5, 0.25]
    # Fixed-length token lists keep their length; the photo is untouched.
    assert list(blanked[f.ITEM_TOKENS].int64_list.value) == [0, 0, 0]
    assert list(blanked[f.ATTRIBUTE_TOKENS].int64_list.value) == [0, 0]
    assert list(blanked[f.ITEM_TEXT_EMBEDDING].float_list.value) == []
    assert list(blanked[f.IMAGE_EMBEDDING].float_list.value) == [1.0, 2.0]


def test_a_missing_split_is_named(tmp_path):
    _write(str(tmp_path / "Split-train" / "part-0.gz"), [_example(1)])
    with pytest.raises(FileNotFoundError, match="Split-eval"):
        fashion_validation.carve(str(tmp_path), str(tmp_path / "out"), {1})


def test_validation_products_have_a_photo_and_are_not_held_out(tmp_path):
    write_sample_dataset(str(tmp_path))
    catalogue = read_dataset(str(tmp_path), check_images=False)
    products = fashion_validation.validation_products(catalogue)
    assert products
    for item_id in products:
        assert catalogue.items[item_id].image_path and not quality.is_held_out(item_id)
    share = len(products) / sum(1 for item in catalogue.items.values() if item.image_path)
    assert 0.05 < share < 0.35


def _options(*argv):
    return fashion_validation._parser().parse_args(["--out", "OUT", *argv])


def test_the_older_flags_are_shorthands_and_a_set_wins():
    options = _options("--epochs", "3", "--settings", '{"embedding_dim": 128, "modalities": ["image"]}',
                       "--set", "trainer.epochs=4")
    assert fashion_validation.base_overrides(options) == [
        "trainer.epochs=3", "trainer.embedding_dim=128", 'trainer.modalities=["image"]',
        "trainer.epochs=4"]
    ((label, [(seed, config)]),) = fashion_validation.run_configs(options)
    assert (label, seed) == ("as configured", 42)
    assert (config.trainer.epochs, config.trainer.embedding_dim, config.trainer.modalities) == (
        4, 128, ["image"])
    # The protocol's 20 epochs, not the configuration's default.
    ((_, [(_, config)]),) = fashion_validation.run_configs(_options())
    assert config.trainer.epochs == fashion_validation.EPOCHS


def test_each_variant_trains_once_per_seed_from_the_configuration_file(tmp_path):
    config_file = tmp_path / "carve.yaml"
    config_file.write_text("trainer:\n  photo_item_weight: 0\n  seed: 7\n")
    runs = fashion_validation.run_configs(_options(
        "--config", str(config_file), "--variant", "", "--variant",
        "trainer.learning_rate_schedule=constant trainer.token_dropout=0.1"))
    assert [label for label, _ in runs] == [
        "as configured", "trainer.learning_rate_schedule=constant trainer.token_dropout=0.1"]
    assert [[seed for seed, _ in configs] for _, configs in runs] == [[7], [7]]
    (_, base), (_, changed) = runs[0][1][0], runs[1][1][0]
    assert base.trainer.photo_item_weight == changed.trainer.photo_item_weight == 0
    assert (base.trainer.learning_rate_schedule, changed.trainer.learning_rate_schedule) == (
        "cosine", "constant")
    assert changed.trainer.token_dropout == 0.1
    seeds = fashion_validation.run_configs(_options("--seeds", "42,1"))[0][1]
    assert [(seed, config.trainer.seed) for seed, config in seeds] == [(42, 42), (1, 1)]


@pytest.mark.parametrize("argv, named", [
    (["--variant", "trainer.embeding_dim=8"], "trainer.embeding_dim"),
    (["--settings", '{"dropout": 0.1}'], "trainer.dropout"),
    (["--settings", "{embedding_dim: 8}"], "--settings"),
])
def test_a_bad_setting_is_named_before_anything_trains(argv, named, capsys):
    assert fashion_validation.main(["--out", "/nonexistent", *argv]) == 2
    assert named in capsys.readouterr().err


def test_the_trainer_reads_the_configuration_it_is_given():
    from trainer.run import run_settings

    ((_, [(_, config)]),) = fashion_validation.run_configs(_options("--set", "export.title_length=5"))
    settings = run_settings(fashion_validation.trainer_config(config))
    assert settings.trainer == config.trainer and settings.export.title_length == 5


def test_the_table_has_a_row_per_variant_and_a_column_per_seed():
    table = fashion_validation.results_table(
        {"as configured": {42: (0.776, 0.626), 7: (0.764, 0.614)},
         "trainer.learning_rate_schedule=constant": {42: (0.746, 0.595), 7: (0.730, 0.593)}},
        [42, 7])
    assert table.splitlines() == [
        "| variant | seed 42 | seed 7 | mean |", "| --- | --- | --- | --- |",
        "| as configured | 0.776 / 0.626 | 0.764 / 0.614 | 0.770 / 0.620 |",
        "| trainer.learning_rate_schedule=constant | 0.746 / 0.595 | 0.730 / 0.593 | 0.738 / 0.594 |"]


def test_a_carve_too_small_for_a_figure_shows_none_instead_of_failing():
    table = fashion_validation.results_table({"as configured": {42: (0.5, None), 7: (0.7, None)}},
                                             [42, 7])
    assert table.splitlines()[2] == "| as configured | 0.500 / - | 0.700 / - | 0.600 / - |"
    products = {f"p{i}": {"colour": "Red", "article_type": "Shirts"} for i in range(3)}
    assert quality.text_to_image_precision(None, products, min_products=10) == {
        "precision@10": None, "queries": 0, "held_out": 3}

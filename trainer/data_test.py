"""Reading the Transform's output: interaction batches, whole or an even sample."""
import numpy as np
import pytest
import tensorflow as tf

from trainer import data
from transform import features as f


class _Output:
    """The part of a TFTransformOutput the readers use: the feature spec."""

    def transformed_feature_spec(self):
        return {f.ITEM_INDEX: tf.io.FixedLenFeature([], tf.int64)}


def _write(path, items):
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for item in items:
            example = tf.train.Example(features=tf.train.Features(feature={
                f.ITEM_INDEX: tf.train.Feature(int64_list=tf.train.Int64List(value=[item]))}))
            writer.write(example.SerializeToString())


def _items(dataset):
    return np.concatenate([batch[f.ITEM_INDEX].numpy() for batch in dataset]).tolist()


@pytest.fixture
def eval_files(tmp_path):
    _write(tmp_path / "part-0.gz", range(0, 60))
    _write(tmp_path / "part-1.gz", range(60, 100))
    return str(tmp_path / "part-*")


def test_every_row_in_file_order_without_a_cap(eval_files):
    assert data.record_count(eval_files) == 100
    assert _items(data.interaction_batches(eval_files, _Output(), 16)) == list(range(100))
    assert _items(data.interaction_batches(eval_files, _Output(), 16, max_rows=100)) == list(range(100))


def test_a_cap_keeps_an_even_sample_across_the_files(eval_files):
    assert _items(data.interaction_batches(eval_files, _Output(), 16, max_rows=30)) == list(range(0, 100, 4))
    assert _items(data.interaction_batches(eval_files, _Output(), 7, max_rows=50)) == list(range(0, 100, 2))
    assert _items(data.interaction_batches(eval_files, _Output(), 16, max_rows=1)) == [0]


def test_a_shuffled_sample_holds_the_same_rows(eval_files):
    rows = _items(data.interaction_batches(eval_files, _Output(), 16, shuffle_seed=3, max_rows=25))
    assert rows != list(range(0, 100, 4)) and sorted(rows) == list(range(0, 100, 4))

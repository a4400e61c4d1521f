"""Tests of transform.feature_cache and the cache side of transform.cached_executor."""
import os

import numpy as np
import pytest
import tensorflow as tf

from transform import cached_executor
from transform import features as f
from transform.cached_executor import EncoderCache, encode_splits
from transform.feature_cache import FeatureCache, shard_paths

DIM = 4


class CountingEncoder:
    """A stand-in encoder: a feature from the bytes' length and first byte; counts what it encodes."""

    def __init__(self):
        self.seen = []

    def __call__(self, batch):
        self.seen.extend(batch)
        if any(content == b"undecodable" for content in batch):
            raise tf.errors.InvalidArgumentError(None, None, "cannot decode")
        return np.array([[len(c), c[0], 1.0, -1.0] for c in batch], np.float32)


def _cache(directory, identity="encoder v1"):
    return FeatureCache(str(directory), "text", identity, DIM)


def test_second_lookup_hits_and_encodes_nothing(tmp_path):
    encoder = CountingEncoder()
    first = EncoderCache(_cache(tmp_path), encoder, "texts").features(
        [b"red shirt", b"blue hat", b"red shirt"])
    assert sorted(encoder.seen) == [b"blue hat", b"red shirt"]
    assert first[b"blue hat"].tolist() == [8, ord("b"), 1, -1]

    # A later run: a new process reads the shards.
    again = EncoderCache(_cache(tmp_path), encoder, "texts")
    second = again.features([b"red shirt", b"blue hat", b"green scarf"])
    assert encoder.seen[2:] == [b"green scarf"]
    assert again.cache.stats == {"hits": 2, "misses": 1, "refused": 0}
    np.testing.assert_array_equal(second[b"red shirt"], first[b"red shirt"])


def test_changed_content_or_encoder_is_a_miss(tmp_path):
    EncoderCache(_cache(tmp_path), CountingEncoder(), "texts").features([b"red shirt"])
    encoder = CountingEncoder()
    EncoderCache(_cache(tmp_path), encoder, "texts").features([b"red shirt "])  # one byte more
    assert encoder.seen == [b"red shirt "]
    other_version = EncoderCache(_cache(tmp_path, identity="encoder v2"), encoder, "texts")
    other_version.features([b"red shirt"])
    assert encoder.seen[-1] == b"red shirt"
    assert other_version.cache.stats["misses"] == 1


@pytest.mark.parametrize("damage", ["flip_a_byte", "truncate", "garbage"])
def test_a_corrupt_shard_is_refused_counted_and_encoded_again(tmp_path, damage):
    EncoderCache(_cache(tmp_path), CountingEncoder(), "texts").features([b"red shirt", b"blue hat"])
    [shard] = shard_paths(_cache(tmp_path).directory)
    data = open(shard, "rb").read()
    data = {"flip_a_byte": data[:-3] + bytes([data[-3] ^ 1]) + data[-2:],
            "truncate": data[:-5], "garbage": b"not a shard"}[damage]
    open(shard, "wb").write(data)

    encoder = CountingEncoder()
    cache = EncoderCache(_cache(tmp_path), encoder, "texts")
    found = cache.features([b"red shirt", b"blue hat"])
    assert cache.cache.stats == {"hits": 0, "misses": 2, "refused": 1}
    assert sorted(encoder.seen) == [b"blue hat", b"red shirt"]
    assert found[b"red shirt"].tolist() == [9, ord("r"), 1, -1]
    # Set aside, and the recomputed entries stored anew.
    assert os.path.exists(shard + ".refused")
    again = EncoderCache(_cache(tmp_path), CountingEncoder(), "texts")
    again.features([b"red shirt"])
    assert again.cache.stats == {"hits": 1, "misses": 0, "refused": 0}


def test_content_the_encoder_fails_on_is_left_to_the_graph(tmp_path):
    cache = EncoderCache(_cache(tmp_path), CountingEncoder(), "texts")
    found = cache.features([b"fine", b"undecodable"])
    assert found[b"undecodable"] is None and found[b"fine"] is not None
    again = EncoderCache(_cache(tmp_path), CountingEncoder(), "texts")  # never stored
    assert again.features([b"undecodable"]) == {b"undecodable": None}
    assert again.cache.stats["misses"] == 1


def test_many_shards_are_merged(tmp_path, monkeypatch):
    monkeypatch.setattr("transform.feature_cache.MAX_SHARDS", 3)
    for word in (b"a", b"b", b"c", b"d", b"e"):
        _cache(tmp_path).add([word], np.ones([1, DIM]))
    assert len(shard_paths(_cache(tmp_path).directory)) == 5
    cache = _cache(tmp_path)
    assert len(cache.lookup([b"a", b"b", b"c", b"d", b"e"])) == 5
    assert len(shard_paths(cache.directory)) == 1


def test_item_text_is_what_the_transform_graph_encodes():
    for title, description in ((b" Red  shirt ", b"linen\t"), (b"Hat", b""), (b"", b" wool ")):
        graph = tf.strings.strip(tf.strings.join([tf.constant(title), tf.constant(description)], " "))
        assert cached_executor.item_text(title, description) == graph.numpy()


def test_encode_splits_attaches_features_and_drops_encoded_photos(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    examples = [
        {f.ITEM_ID: b"p1", f.TITLE: b"Red shirt", f.IMAGE: b"\x89PNG photo"},
        {f.ITEM_ID: b"p2", f.IMAGE: b"undecodable"},
        {f.ITEM_ID: b"p3", f.QUERY: b" hat "},
    ]
    with tf.io.TFRecordWriter(str(source / "data.gz"), options="GZIP") as writer:
        for example in examples:
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
                for name, value in example.items()})).SerializeToString())
    caches = {"text": EncoderCache(_cache(tmp_path / "c"), CountingEncoder(), "texts"),
              "image": EncoderCache(FeatureCache(str(tmp_path / "c"), "image", "i", DIM),
                                    CountingEncoder(), "photos")}
    encode_splits({str(tmp_path / "out"): [str(source / "data.gz")]}, caches)
    written = [tf.train.Example.FromString(r) for r in tf.data.TFRecordDataset(
        str(tmp_path / "out" / "data.tfrecord.gz"), compression_type="GZIP").as_numpy_iterator()]
    first, second, third = (e.features.feature for e in written)
    assert list(first[f.ENCODED_ITEM_TEXT].float_list.value) == [9, ord("R"), 1, -1]
    assert f.IMAGE not in first and len(first[f.ENCODED_IMAGE].float_list.value) == DIM
    assert f.IMAGE in second and f.ENCODED_IMAGE not in second  # left to the graph
    assert list(third[f.ENCODED_QUERY].float_list.value) == [3, ord("h"), 1, -1]


def test_the_caches_photo_features_are_the_transform_graphs(tmp_path):
    """The cache encodes photos through one traced graph; its features must be
    what preprocessing_fn's encoder gives, and a photo that does not decode
    must fail (so the Transform graph is left to skip it)."""
    from PIL import Image

    from transform import image_preprocessor
    from transform.preprocessing import _shared_image_encoder
    photos = []
    for index, colour in enumerate(((200, 30, 30), (30, 60, 200))):
        path = tmp_path / f"photo{index}.{'jpg' if index else 'png'}"
        Image.new("RGB", (48, 64), colour).save(path)
        photos.append(path.read_bytes())
    expected = _shared_image_encoder()(image_preprocessor.preprocess_batch(tf.constant(photos)))
    np.testing.assert_allclose(cached_executor._image_encode(photos), expected.numpy(),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(tf.errors.InvalidArgumentError):
        cached_executor._image_encode([b"not a photo"])

"""A tiny stand-in for the pushed model, and a server over it, so that the
serving tests run in seconds without a pipeline run."""


import shutil

import numpy as np
import pytest
import tensorflow as tf

from dataset import pseudonyms
from serving.batching import BatchingParameters
from serving.server import ModelServer

ITEMS = [f"p{index:04d}" for index in range(1, 13)]
TITLES = {item: f"Title of {item}" for item in ITEMS}
ATTRIBUTES = {item: f"kind=k{index % 3}" for index, item in enumerate(ITEMS)}
# The tests' user key, and the users the tiny model knows (by their pseudonyms).
USER_KEY = b"0123456789abcdef" * 4
KNOWN_USERS = ("u0001", "u0002")
DIM = 4
TEST_MAX_REQUEST_BYTES = 1 << 20
_STRINGS = tf.TensorSpec([None], tf.string)
_K = tf.TensorSpec([], tf.int32)


class TinyRecommender(tf.Module):
    """The signatures of trainer/export.py (names, inputs, outputs, the
    catalogue as variables of unknown length, the in-graph refusal of an
    unknown similar item) over a toy scoring: a user, a query or an image's
    mean brightness hashes to one of DIM directions."""

    def __init__(self):
        super().__init__()
        embeddings = np.random.default_rng(0).standard_normal((len(ITEMS) + 1, DIM))
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        self.item_ids = tf.Variable([b"<unknown>"] + [item.encode() for item in ITEMS],
                                    shape=[None], trainable=False)
        self.candidates = tf.Variable(embeddings.astype(np.float32), shape=[None, DIM],
                                      trainable=False)
        self.item_titles = tf.Variable([b""] + [TITLES[item].encode() for item in ITEMS],
                                       shape=[None], trainable=False)
        self.item_attributes = tf.Variable([b""] + [ATTRIBUTES[item].encode() for item in ITEMS],
                                           shape=[None], trainable=False)
        self.known_users = tf.constant([pseudonyms.pseudonym(user, USER_KEY) for user in KNOWN_USERS])

    @staticmethod
    def _direction(strings):
        return tf.one_hot(tf.strings.to_hash_bucket_fast(strings, DIM), DIM)

    def _top_k(self, query, k, exclude=None):
        scores = tf.matmul(query, self.candidates, transpose_b=True)
        banned = tf.one_hot(tf.zeros_like(scores[:, 0], tf.int64), tf.shape(scores)[1],
                            on_value=True, off_value=False)
        if exclude is not None:
            banned |= tf.one_hot(exclude, tf.shape(scores)[1], on_value=True, off_value=False)
        scores = tf.where(banned, tf.fill(tf.shape(scores), -1e9), scores)
        top = tf.math.top_k(scores, k=tf.minimum(tf.maximum(k, 1), tf.shape(scores)[1] - 1))
        return {"item_ids": tf.gather(self.item_ids, top.indices), "scores": top.values,
                "titles": tf.gather(self.item_titles, top.indices),
                "attributes": tf.gather(self.item_attributes, top.indices)}

    def _known(self, user_id):
        return tf.reduce_any(tf.equal(user_id[:, None], self.known_users[None, :]), axis=1)

    @tf.function(input_signature=[_STRINGS, _K])
    def recommend(self, user_id, k):
        return {**self._top_k(self._direction(user_id), k), "known_user": self._known(user_id)}

    @tf.function(input_signature=[_STRINGS, tf.TensorSpec([None, None], tf.string), _K])
    def recommend_with_history(self, user_id, recent_item_ids, k):
        known = tf.reduce_any(tf.equal(recent_item_ids[:, :, None], self.item_ids[1:]), axis=2)
        unknown = tf.reduce_sum(tf.cast(~known & (recent_item_ids != ""), tf.int32), axis=1)
        recent = tf.reduce_sum(self._direction(recent_item_ids) * tf.cast(known, tf.float32)[:, :, None],
                               axis=1)
        return {**self._top_k(self._direction(user_id) + recent, k), "unknown_recent_items": unknown}

    @tf.function(input_signature=[_STRINGS, _STRINGS, _K])
    def search(self, query, user_id, k):
        return {**self._top_k(self._direction(query) + 0.5 * self._direction(user_id), k),
                "known_user": self._known(user_id)}

    @tf.function(input_signature=[_STRINGS, _K])
    def similar_items(self, item_id, k):
        matches = tf.equal(item_id[:, None], self.item_ids[None, 1:])
        known = tf.reduce_any(matches, axis=1)
        check = tf.debugging.Assert(tf.reduce_all(known), [
            "similar_items: item id(s) unknown to the model:", tf.boolean_mask(item_id, ~known)])
        with tf.control_dependencies([check]):
            index = tf.argmax(tf.cast(matches, tf.int64), axis=1) + 1
        return self._top_k(tf.gather(self.candidates, index), k, exclude=index)

    @tf.function(input_signature=[_STRINGS, _K])
    def image_search(self, image, k):
        brightness = tf.map_fn(
            lambda encoded: tf.reduce_mean(tf.cast(
                tf.io.decode_image(encoded, channels=3, expand_animations=False), tf.float32)),
            image, fn_output_signature=tf.float32)
        return self._top_k(tf.one_hot(tf.cast(brightness, tf.int64) % DIM, DIM), k)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def rank_examples(self, examples):
        parsed = tf.io.parse_example(examples, {"item_id": tf.io.VarLenFeature(tf.string)})
        return {"rank": tf.ones([tf.shape(parsed["item_id"])[0]], tf.float32)}


def save_tiny_model(path: str) -> None:
    module = TinyRecommender()
    tf.saved_model.save(module, path, signatures={
        "recommend": module.recommend, "recommend_with_history": module.recommend_with_history,
        "search": module.search, "similar_items": module.similar_items, "image_search": module.image_search,
        "serving_default": module.rank_examples})


@pytest.fixture(scope="session")
def user_key_file(tmp_path_factory) -> str:
    """A key file holding USER_KEY, as a pipeline run leaves one."""
    path = tmp_path_factory.mktemp("key") / "user_key"
    path.write_bytes(USER_KEY)
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A saved TinyRecommender (a version directory's content)."""
    path = str(tmp_path_factory.mktemp("tiny") / "model")
    save_tiny_model(path)
    return path


@pytest.fixture
def model_base(tmp_path, tiny_model) -> str:
    """A model base directory named mmfuse holding version 1."""
    base = tmp_path / "mmfuse"
    shutil.copytree(tiny_model, base / "1")
    return str(base)


def small_batches() -> BatchingParameters:
    parameters = BatchingParameters()
    parameters.max_batch_size.value = 8
    parameters.num_batch_threads.value = 2
    parameters.max_enqueued_batches.value = 100
    return parameters


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    """A server on a free port over a base with version 1, for tests that do
    not change the base."""
    base = tmp_path_factory.mktemp("served") / "mmfuse"
    shutil.copytree(tiny_model, base / "1")
    served = ModelServer(str(base), port=0, max_request_bytes=TEST_MAX_REQUEST_BYTES,
                         batching_parameters=small_batches(), announce=lambda line: None)
    served.start()
    yield served
    served.stop(grace=0)

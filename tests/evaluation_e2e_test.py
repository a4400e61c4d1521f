"""`mmfuse evaluate`'s rankers and protocol on the sample run's pushed model
(tests/conftest.py): the same figures as the pipeline's Evaluator."""
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from dataset import pseudonyms
from dataset.contract import read_dataset
from evaluation import evaluate as evaluation
from evaluation import rankers
from evaluation.metrics import metrics_from_ranks
from transform import features

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample_model(sample_run):
    return str(sample_run["root"] / "out" / "serving" / "mmfuse")


def test_saved_model_ranker_on_the_sample_model(sample_run, sample_model):
    ranker = rankers.SavedModelRanker(sample_model, batch_size=2,
                                      user_key=pseudonyms.load_key(sample_run["user_key_file"]))
    assert os.path.exists(os.path.join(ranker.path, "saved_model.pb"))
    # Three rows in batches of two: the second call returns the rest.
    ranked = ranker.recommend(["u0001", "u0002", "u0003"], k=5)
    assert [len(items) for items in ranked.item_ids] == [5, 5, 5]
    assert all(scores == sorted(scores, reverse=True) for scores in ranked.scores)
    found = ranker.search(["red mug"], [""], k=3)
    (scores,) = ranker.score_search(["red mug"], [""], [found.item_ids[0] + ["no-such-item"]])
    np.testing.assert_allclose(scores[:3], found.scores[0], rtol=1e-5)
    assert scores[3] == -math.inf
    photos = [sample_run["data"] / row["image"] for row in sample_run["items"].values()
              if row["image"] and row != sample_run["corrupt"]][:3]
    alike = ranker.image_search([path.read_bytes() for path in photos], k=4)
    direct = ranker.model.signatures["image_search"](
        image=tf.constant([photos[0].read_bytes()]), k=tf.constant(4))
    assert [len(items) for items in alike.item_ids] == [4, 4, 4]
    assert alike.item_ids[0] == [item.decode() for item in direct["item_ids"].numpy()[0]]


def test_model_figures_are_the_evaluators_on_the_sample(sample_run, sample_model):
    """evaluate() on the pushed sample model gives the figures of the ranks its
    `serving_default` gives the pipeline's own eval examples (what the Evaluator scores):
    the ranker hashes the dataset's user ids with the run's key, as ExampleGen did."""
    examples_dir = sample_run["root"] / "out" / "pipeline" / "FileBasedExampleGen" / "examples"
    newest = max(os.listdir(examples_dir), key=int)
    files = tf.io.gfile.glob(str(examples_dir / newest / "Split-eval" / "*"))
    examples = [record.numpy() for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    recommendation_examples = [
        example for example in examples
        if features.QUERY not in tf.train.Example.FromString(example).features.feature]
    dataset = read_dataset(str(sample_run["data"]), check_images=False)
    ranker = rankers.SavedModelRanker(sample_model,
                                      user_key=pseudonyms.load_key(sample_run["user_key_file"]))
    ks = (10, 20, 100)
    result = evaluation.evaluate(dataset, ranker, ks=ks)
    ranks = ranker.model.signatures["serving_default"](
        examples=tf.constant(recommendation_examples))["rank"]
    expected = metrics_from_ranks(np.asarray(ranks).reshape(-1).tolist(), ks)
    assert result["rows"] == len(recommendation_examples)
    for k in ks:
        assert result[f"recall@{k}"] == pytest.approx(expected[f"recall@{k}"])
        assert result[f"ndcg@{k}"] == pytest.approx(expected[f"ndcg@{k}"])
    # MRR here stops at rank 100; the Evaluator's counts every rank.
    assert expected["mrr"] - 1 / 100 <= result["mrr"] <= expected["mrr"] + 1e-9

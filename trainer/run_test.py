"""The Trainer's settings, and the per-epoch eval callback, which logs the
rating head's RMSE when there is one."""
import dataclasses
import json
import logging

import numpy as np
import pytest
import tensorflow as tf

from mmfuse.config import ConfigError, load_config
from pipeline.pipeline import PipelineConfig, create_pipeline
from trainer.data import CATALOG_FEATURES
from trainer.model import Catalog
from trainer.model_test import SIZES, rating_mse, tiny_batch, tiny_model
from trainer.run import RetrievalEvaluation, learning_rate, run_settings
from transform import features as f


def test_the_pipeline_gives_the_trainer_its_code_version_and_the_configured_settings():
    settings = load_config(None, ["trainer.epochs=7", "trainer.lexical_weight=0.5"])
    pipeline = create_pipeline(PipelineConfig(data_dir="data", pipeline_root="root", serving_dir="serving",
                                              settings=settings, trainer_cache_key="trainer-code-v2"))
    trainer, = [component for component in pipeline.components if component.id == "Trainer"]
    custom_config = trainer.exec_properties["custom_config"]
    custom_config = json.loads(custom_config) if isinstance(custom_config, str) else custom_config
    assert custom_config["trainer_code"] == "trainer-code-v2"
    assert run_settings(custom_config).trainer == settings.trainer


def test_an_unknown_setting_is_named():
    with pytest.raises(ConfigError, match="unknown setting trainer.epoch"):
        run_settings({"trainer": {"epoch": 3}})


@pytest.mark.parametrize("weight", [-0.5, "0.75", None, True])
def test_a_lexical_weight_that_is_not_a_number_at_least_0_is_refused_before_training(weight):
    with pytest.raises(ConfigError, match="trainer.lexical_weight"):
        run_settings({"trainer": {"lexical_weight": weight}})
    assert run_settings({"trainer": {"lexical_weight": 0}}).trainer.lexical_weight == 0


def test_the_cosine_schedule_falls_from_the_learning_rate_to_0_at_the_last_step():
    config = run_settings({"trainer": {"learning_rate": 0.01}}).trainer
    schedule = learning_rate(config, steps=100)
    np.testing.assert_allclose([float(schedule(step)) for step in (0, 50, 100, 150)],
                               [0.01, 0.005, 0.0, 0.0], atol=1e-7)
    assert learning_rate(dataclasses.replace(config, learning_rate_schedule="constant"), steps=100) == 0.01


def test_an_unknown_learning_rate_schedule_is_named_before_training():
    with pytest.raises(ConfigError, match="trainer.learning_rate_schedule takes one of cosine, constant, not 'linear'"):
        run_settings({"trainer": {"learning_rate_schedule": "linear"}})


def _evaluate(model, log_dir, caplog, batch=None, lexical_weight=0.0):
    batches = tf.data.Dataset.from_tensors(tiny_batch(unrated_label=1000.0) if batch is None else batch)
    callback = RetrievalEvaluation(batches, str(log_dir), model.catalog.content[f.ITEM_TOKENS].numpy(),
                                   SIZES[f.TOKEN_VOCABULARY], lexical_weight)
    callback.set_model(model)
    with caplog.at_level(logging.INFO, logger="mmfuse"):
        callback.on_epoch_end(0)
    scalars = {}
    for path in tf.io.gfile.glob(str(log_dir / "retrieval_eval" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if not value.tensor.tensor_shape.dim:  # scalars, not histograms
                    scalars[value.tag] = float(tf.make_ndarray(value.tensor))
    return scalars, caplog.text


def test_eval_logs_the_rating_rmse_of_rated_rows(tmp_path, caplog):
    model = tiny_model(rating_weight=1.0)
    scalars, log = _evaluate(model, tmp_path, caplog)
    expected = np.sqrt(rating_mse(model, tiny_batch()))
    np.testing.assert_allclose(scalars["rating_rmse"], expected, rtol=1e-5)
    assert "rating_rmse=" in log and "recall@10" in scalars


def test_eval_without_a_rating_head_logs_no_rmse(tmp_path, caplog):
    scalars, log = _evaluate(tiny_model(rating_weight=0.0), tmp_path, caplog)
    assert "recall@10" in scalars and "rating_rmse" not in scalars and "rating_rmse" not in log


def test_eval_ranks_a_row_with_words_as_search_does(tmp_path, caplog):
    """Each item has a word of its own and each row asks for its item's word:
    the towers alone (untrained) rank the items at random, while with a
    large lexical weight every row's item comes first, as in `search`."""
    model = tiny_model(rating_weight=0.0)
    content = {name: model.catalog.content[name].numpy() for name in CATALOG_FEATURES}
    own_word = np.array([0, 5, 6, 7, 8])
    content[f.ITEM_TOKENS] = np.zeros_like(content[f.ITEM_TOKENS])
    content[f.ITEM_TOKENS][:, 0] = own_word
    model.catalog = Catalog(content)
    batch = tiny_batch()
    query_tokens = np.zeros([6, f.QUERY_LENGTH], np.int64)
    query_tokens[:, 0] = own_word[batch[f.ITEM_INDEX].numpy()]
    batch[f.QUERY_TOKENS] = tf.constant(query_tokens)
    towers_alone, _ = _evaluate(model, tmp_path / "towers", caplog, batch)
    with_words, _ = _evaluate(model, tmp_path / "lexical", caplog, batch, lexical_weight=1000.0)
    assert towers_alone["mrr"] < 1
    assert with_words["mrr"] == 1

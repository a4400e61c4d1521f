"""`run_fn`: the TFX Trainer's entry point.

Trains the retrieval model (and, with `rating_weight` > 0, its rating head) on
the transformed `train` split (the `catalog` split supplies item content), logs
losses and retrieval metrics (and the rating RMSE) on the `eval` split per
epoch to TensorBoard, and exports the serving model.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import logging  # noqa: E402
from typing import Dict, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
from tfx.components.trainer.fn_args_utils import FnArgs  # noqa: E402

from trainer import data, export, lexical, ranking  # noqa: E402
from trainer.data import QUERY_FEATURES  # noqa: E402
from trainer.model import Catalog, RetrievalModel, Users, ranks_of_items  # noqa: E402
from transform import features as f  # noqa: E402

progress_log = logging.getLogger("mmfuse")

DEFAULTS = {
    "epochs": 5,
    # None: sized from the data, so that an epoch has at least ~32 steps.
    "batch_size": None,
    "embedding_dim": 64,
    "learning_rate": 0.003,
    # How the learning rate falls over the run: "cosine", from
    # `learning_rate` to 0 at the last step, so that the last epochs settle
    # what the first ones found; or "constant". Fashion text -> image on the
    # validation carve's 140 pairs: 0.618 against 0.594 constant, ahead for
    # each of seeds 42, 7 and 1. MovieLens recall@100 (seen items excluded):
    # fusion 0.606 against 0.609, but the id-only model 0.579 against 0.605:
    # its eval loss rises over the last two epochs as its train loss falls
    # (README).
    "learning_rate_schedule": "cosine",
    # Of the in-batch softmax over cosine scores. 0.1 against 0.05: fashion
    # text -> image precision@10 0.36 against 0.30 on the first 5,000
    # products, MovieLens recall@100 0.619 against 0.613 (README).
    "temperature": 0.1,
    # Chance that each of an item's modalities (id, text, image) is hidden
    # from a training row, keeping at least one: the item tower learns to
    # place an item by any one of them (cold start, photo-only items). At 0.5
    # a row shows the photo alone 1 time in 6, at 0.2 1 in 30: fashion text ->
    # image precision@10 on the first 5,000 products was 0.28 against 0.20,
    # while MovieLens recall@100 was the same (README).
    "modality_dropout": 0.5,
    # Share of a user's recent items hidden per training row (against memorising).
    "recent_item_dropout": 0.3,
    # Share of the words (of queries and item text) and attribute values
    # hidden per training row, against matching by memorised rare words.
    # Home Depot, text only, unseen queries: recall@100 0.709 against 0.701
    # without. Fusion with both this and id_min_rows 5 against neither:
    # MovieLens recall@100 0.612 against 0.616, fashion text -> image 0.770
    # against 0.778 (README).
    "token_dropout": 0.3,
    # Weight of the photo search task (each row's item asked by its own
    # photo alone; trainer/model.py) beside the retrieval loss, from which
    # the query tower learns image search; 0: no such task. Not tuned: 0.1
    # gives it about the share of the gradient of 10% of the rows.
    "photo_search_weight": 0.1,
    # Weight of the photo item task (each row's query asked to find its item
    # seen by its photo alone, the query held still; trainer/model.py),
    # which places items that have only a photo; 0: no such task. Not
    # tuned. At the constant learning rate: fashion text -> image on the
    # held-out products 0.790 and 0.812 against 0.766 and 0.790 without
    # (seeds 42, 7), but on the validation carve's 140 pairs 0.594 against
    # 0.608 without (mean of three seeds); MovieLens recall@100 0.613 either
    # way. Not re-measured with the cosine decay. Open (README).
    "photo_item_weight": 0.5,
    # Share of training rows whose time of interaction is hidden; 1: the
    # query tower has no time token. Serving requests carry no time, so a
    # tower that uses it is gated on questions serving never asks
    # (trainer/towers.py QueryTower); 0.5 is a starting point for those who
    # want it.
    "time_dropout": 1.0,
    # Weight of the rating head's loss beside the retrieval loss; 0 builds no
    # head, and the model is the plain retrieval model.
    "rating_weight": 0.0,
    # An item's id embedding joins its content once the item has at least
    # this many training rows; learned from fewer it memorises them
    # (trainer/model.py Catalog). Home Depot, where 78% of the products are
    # judged once, fusion's recall@100 on unseen queries: 0.702 against 0.653
    # with 1 (both with token_dropout 0.3).
    "id_min_rows": 5,
    # Weight of the lexical score (BM25 over item words, divided by the
    # query's best) beside the towers' cosine in `search` (trainer/lexical.py);
    # 0: the towers alone. Chosen on validation queries carved from Home
    # Depot's train split (README).
    "lexical_weight": 0.75,
    "modalities": ["id", "text", "image"],
    "seed": 42,
}


# custom_config entries that are not settings: the version of the Trainer's
# code, there so that TFX re-trains when it changes (pipeline/fingerprint.py).
CACHE_ONLY = ("trainer_code",)
LEARNING_RATE_SCHEDULES = ("cosine", "constant")


def hyperparameters(custom_config: Dict) -> Dict:
    settings = {name: value for name, value in (custom_config or {}).items() if name not in CACHE_ONLY}
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown trainer settings: {', '.join(sorted(unknown))}")
    settings = {**DEFAULTS, **settings}
    # Checked before training: the lexical table is built at export, after it.
    weight = settings["lexical_weight"]
    if isinstance(weight, bool) or not (isinstance(weight, (int, float)) and weight >= 0):
        raise ValueError(f"lexical_weight must be a number >= 0, not {weight!r}")
    schedule = settings["learning_rate_schedule"]
    if schedule not in LEARNING_RATE_SCHEDULES:
        raise ValueError(f"learning_rate_schedule must be one of {', '.join(LEARNING_RATE_SCHEDULES)}, "
                         f"not {schedule!r}")
    return settings


def learning_rate(config: Dict, steps: int):
    """The optimizer's learning rate over a run of `steps` training steps."""
    if config["learning_rate_schedule"] == "constant":
        return config["learning_rate"]
    return tf.keras.optimizers.schedules.CosineDecay(config["learning_rate"], decay_steps=steps)


def _batch_size(train_rows: int) -> int:
    """Large batches give in-batch softmax more negatives; small data sets still
    need enough steps per epoch to learn."""
    return int(min(1024, max(32, train_rows // 32)))


def _split_files(patterns: Sequence[str], split: str) -> str:
    matching = [pattern for pattern in patterns if f"Split-{split}" in pattern]
    if len(matching) != 1:
        raise ValueError(f"expected one {split} split among the Trainer's files {patterns}")
    return matching[0]


class RetrievalEvaluation(tf.keras.callbacks.Callback):
    """Writes recall@k, ndcg@k and MRR on the eval split to TensorBoard each
    epoch, with a rating head the RMSE of its ratings on the eval rows that
    have one, and how much attention the item tower gives each modality (mean
    over the catalogue's items that have it, and the per-item distribution).

    Rows are ranked as the exported model ranks them: a row with a query
    adds the lexical score of its words (`item_tokens`, the catalogue's
    words, and `lexical_weight`; trainer/lexical.py) to the towers'.
    """

    def __init__(self, batches: tf.data.Dataset, log_dir: str, item_tokens: np.ndarray,
                 token_vocabulary_size: int, lexical_weight: float):
        super().__init__()
        self.batches = batches
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "retrieval_eval"))
        self.lexical_weight = lexical_weight
        self.lexical_table = lexical.bm25_weights(item_tokens) if lexical_weight > 0 else (None, None)
        self.token_vocabulary_size = token_vocabulary_size

    def on_epoch_end(self, epoch, logs=None):
        # One pass over the catalogue gives the candidates and the attention.
        candidates, attention = self.model.item_tower(self.model.catalog.all_items(),
                                                      return_attention=True)
        ranks, rating_errors = [], []
        for batch in self.batches:
            query = self.model.query_tower({name: batch[name] for name in QUERY_FEATURES})
            scores = lexical.search_scores(tf.matmul(query, candidates, transpose_b=True),
                                           self.lexical_weight, *self.lexical_table,
                                           self.token_vocabulary_size, batch[f.QUERY_TOKENS])
            ranks.append(ranks_of_items(scores, batch[f.ITEM_INDEX]).numpy())
            if self.model.rating_weight > 0:
                errors = (self.model.predicted_ratings(query, tf.gather(candidates, batch[f.ITEM_INDEX]))
                          - batch[f.RATING_LABEL])
                rating_errors.append(
                    tf.boolean_mask(errors, batch[f.RATING_LABEL + "_present"] > 0).numpy())
        metrics = ranking.metrics_from_ranks(np.concatenate(ranks))
        rating_errors = np.concatenate(rating_errors) if rating_errors else np.zeros(0)
        if rating_errors.size:
            metrics["rating_rmse"] = float(np.sqrt(np.mean(rating_errors ** 2)))
        with self.writer.as_default():
            for name, value in metrics.items():
                tf.summary.scalar(name, value, step=epoch)
            for index, modality in enumerate(self.model.item_tower.modality_names()):
                weights = attention[1:, index]  # row 0 is the empty "unknown" item
                used = tf.boolean_mask(weights, weights > 0)
                tf.summary.scalar(f"modality_attention/{modality}",
                                  tf.reduce_mean(used) if tf.size(used) else 0.0, step=epoch)
                tf.summary.histogram(f"modality_attention/{modality}", used, step=epoch)
        self.writer.flush()
        progress_log.info("epoch %d eval: %s", epoch + 1,
                     ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


def run_fn(fn_args: FnArgs) -> None:
    config = hyperparameters(fn_args.custom_config)
    tf.keras.utils.set_random_seed(config["seed"])
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    strategy = tf.distribute.get_strategy() if not tf.config.list_physical_devices("GPU") \
        else tf.distribute.MirroredStrategy()

    catalog_content = data.load_catalog(_split_files(fn_args.train_files, "catalog"), tft_output)
    recent_items = data.load_recent_items(_split_files(fn_args.train_files, "users"), tft_output)
    train_files = _split_files(fn_args.train_files, "train")
    counts = data.item_counts(train_files, tft_output)
    batch_size = config["batch_size"] or _batch_size(int(counts.sum()))
    train = data.interaction_batches(train_files, tft_output, batch_size, shuffle_seed=config["seed"])
    evaluation = data.interaction_batches(fn_args.eval_files[0], tft_output, batch_size)
    progress_log.info("training on %s with batch size %d", strategy.__class__.__name__, batch_size)
    vocabulary_sizes = data.vocabulary_sizes(tft_output)

    with strategy.scope():
        catalog = Catalog(catalog_content, counts, config["id_min_rows"])
        model = RetrievalModel(catalog, Users(recent_items), vocabulary_sizes,
                               config["embedding_dim"], config["modalities"], config["temperature"],
                               item_probabilities=counts / counts.sum(),
                               modality_dropout=config["modality_dropout"],
                               recent_item_dropout=config["recent_item_dropout"],
                               time_dropout=config["time_dropout"],
                               rating_weight=config["rating_weight"],
                               token_dropout=config["token_dropout"],
                               photo_search_weight=config["photo_search_weight"],
                               photo_item_weight=config["photo_item_weight"])
        steps_per_epoch = -(-int(counts.sum()) // batch_size)
        model.compile(optimizer=tf.keras.optimizers.Adam(
            learning_rate(config, config["epochs"] * steps_per_epoch)))
    callbacks = [
        tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch"),
        RetrievalEvaluation(evaluation, fn_args.model_run_dir, catalog_content[f.ITEM_TOKENS],
                            vocabulary_sizes[f.TOKEN_VOCABULARY],
                            config["lexical_weight"]),
    ]
    model.fit(train, epochs=config["epochs"], validation_data=evaluation, callbacks=callbacks,
              verbose=2)
    export.export_serving_model(model, tft_output, fn_args.serving_model_dir,
                                config["lexical_weight"])

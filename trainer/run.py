"""`run_fn`: the TFX Trainer's entry point.

Trains the retrieval model (and, with `rating_weight` > 0, its rating head) on
the transformed `train` split (the `catalog` split supplies item content), logs
losses and retrieval metrics (and the rating RMSE) on the `eval` split per
epoch to TensorBoard, and exports the serving model.
"""
import logging
import os
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs

from evaluation.metrics import metrics_from_ranks
from mmfuse import progress
from mmfuse.config import Config, TrainerSettings, from_dict
from trainer import data, export, item_item, lexical, repeat_buying, warm_start
from trainer.data import QUERY_FEATURES
from trainer.model import Catalog, RetrievalModel, Users, ranks_of_items
from transform import features as f

progress_log = logging.getLogger("mmfuse")

# custom_config entries that are not settings: the version of the Trainer's
# code, there so that TFX re-trains when it changes (pipeline/fingerprint.py),
# and the serving model base whose newest version a warm start begins from.
CACHE_ONLY = ("trainer_code", "warm_start_from")


def run_settings(custom_config: Dict) -> Config:
    """The Trainer's and the export's settings (mmfuse/config.py) from the
    Trainer's `custom_config`, defaults filled in; an unknown or bad setting
    raises `ConfigError` naming it."""
    sections = {name: value for name, value in (custom_config or {}).items() if name not in CACHE_ONLY}
    return from_dict(sections)


def learning_rate(config: TrainerSettings, steps: int):
    """The optimizer's learning rate over a run of `steps` training steps."""
    if config.learning_rate_schedule == "constant":
        return config.learning_rate
    return tf.keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps)


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
        metrics = metrics_from_ranks(np.concatenate(ranks))
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
                # A tag of its own: TensorBoard shows one plugin per tag, and a shared
                # tag hid the scalar behind the histogram.
                tf.summary.histogram(f"modality_attention_distribution/{modality}", used,
                                     step=epoch)
        self.writer.flush()
        progress_log.info("epoch %d eval: %s", epoch + 1,
                     ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


class TrainingProgress(tf.keras.callbacks.Callback):
    """Training steps as a progress bar (mmfuse/progress.py) in a local run."""

    def __init__(self, steps: int, epochs: int):
        super().__init__()
        self.steps = steps
        self.epochs = epochs

    def on_train_begin(self, logs=None):
        if self.steps:
            progress.expect("training", self.steps, f"training steps ({self.epochs} epochs)")

    def on_train_batch_end(self, batch, logs=None):
        progress.advance("training")

    def on_train_end(self, logs=None):
        progress.finish("training")


def run_fn(fn_args: FnArgs) -> None:
    """The TFX Trainer's entry point: trains the model and exports the serving SavedModel.

    Args:
        fn_args: TFX's trainer arguments: `train_files` (the transformed
            train, catalog and users splits), `eval_files`, `transform_graph_path`,
            `serving_model_dir`, `model_run_dir` (TensorBoard logs) and
            `custom_config` (the configuration's `trainer` and `export`
            sections, see `run_settings`).
    """
    settings = run_settings(fn_args.custom_config)
    config = settings.trainer
    tf.keras.utils.set_random_seed(config.seed)
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    strategy = tf.distribute.get_strategy() if not tf.config.list_physical_devices("GPU") \
        else tf.distribute.MirroredStrategy()

    catalog_files = _split_files(fn_args.train_files, "catalog")
    catalog_content = data.load_catalog(catalog_files, tft_output)
    recent_items = data.load_recent_items(_split_files(fn_args.train_files, "users"), tft_output)
    train_files = _split_files(fn_args.train_files, "train")
    counts = data.item_counts(train_files, tft_output)
    batch_size = config.batch_size or _batch_size(int(counts.sum()))
    train = data.interaction_batches(train_files, tft_output, batch_size, shuffle_seed=config.seed)
    # Each epoch ranks its eval rows against the whole catalogue: at a million
    # items all of them would cost as much as the training steps.
    evaluation = data.interaction_batches(fn_args.eval_files[0], tft_output, batch_size,
                                          max_rows=config.epoch_eval_rows)
    progress_log.info("training on %s with batch size %d", strategy.__class__.__name__, batch_size)
    vocabulary_sizes = data.vocabulary_sizes(tft_output)

    with strategy.scope():
        catalog = Catalog(catalog_content, counts, config.id_min_rows)
        model = RetrievalModel(catalog, Users(recent_items), vocabulary_sizes,
                               config.embedding_dim, config.modalities, config.temperature,
                               item_probabilities=counts / counts.sum(),
                               modality_dropout=config.modality_dropout,
                               recent_item_dropout=config.recent_item_dropout,
                               time_dropout=config.time_dropout,
                               rating_weight=config.rating_weight,
                               token_dropout=config.token_dropout,
                               photo_search_weight=config.photo_search_weight,
                               photo_item_weight=config.photo_item_weight,
                               mixed_precision=config.mixed_precision)
        # Zero epochs still means the untrained model.
        base = (warm_start.latest_blessed(fn_args.custom_config.get("warm_start_from"))
                if config.warm_start and config.epochs > 0 else None)
        epochs = config.epochs
        if base:
            # The variables exist once the model has seen a batch.
            model.compute_loss(next(iter(train)), training=True)
            report = warm_start.warm_start(model, base, {
                name: tft_output.vocabulary_by_name(name) for name in data.VOCABULARIES})
            report["from"] = base
            report["version"] = int(os.path.basename(base.rstrip("/")))
            epochs = min(config.epochs, config.warm_start_epochs)
            warm_start.write_report(report, fn_args.model_run_dir)
            progress_log.info("warm start from %s: %d variables copied, ids copied by id %s, "
                              "%d fresh; %d epochs", base, report["copied"], report["ids_copied"],
                              len(report["fresh"]), epochs)
        steps_per_epoch = -(-int(counts.sum()) // batch_size)
        optimizer = tf.keras.optimizers.Adam(learning_rate(config, max(epochs, 1) * steps_per_epoch))
        if config.mixed_precision == "mixed_float16":
            # float16 gradients would underflow to 0 unscaled.
            optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer)
    callbacks = [
        tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch"),
        RetrievalEvaluation(evaluation, fn_args.model_run_dir, catalog_content[f.ITEM_TOKENS],
                            vocabulary_sizes[f.TOKEN_VOCABULARY],
                            config.lexical_weight),
        TrainingProgress(epochs * steps_per_epoch, epochs),
    ]
    model.fit(train, epochs=epochs, validation_data=evaluation, callbacks=callbacks,
              verbose=2)
    user_counts = data.user_item_counts(train_files, tft_output)
    buy_again = (_fit_buy_again(recent_items, user_counts, train_files, tft_output, counts,
                                settings.export.new_item_weight)
                 if settings.export.buy_again else None)
    item_item = _fit_item_item(model, recent_items, user_counts, settings.export)
    progress_log.info("exporting the serving model")
    export.export_serving_model(
        model, tft_output, fn_args.serving_model_dir, config.lexical_weight,
        export.display_tables(data.load_display(catalog_files, tft_output), settings.export),
        buy_again=buy_again, settings=settings.export, item_item=item_item)


def _fit_item_item(model, recent_items, user_counts, settings):
    """The item-to-item stage of the export, or None: weight 0, a catalogue
    above its size limit, or no user with items."""
    items = model.catalog.size
    if settings.item_item_weight == 0:
        return None
    if items - 1 > settings.item_item_max_items:
        progress_log.info("item-to-item stage: off (%d items, more than export.item_item_max_items "
                          "%d)", items - 1, settings.item_item_max_items)
        return None
    weights = item_item.fit(user_counts, items)
    if weights is None:
        progress_log.info("item-to-item stage: off (no user has items)")
        return None
    spread = item_item.tower_spread(model.user_embeddings().numpy(),
                                    model.catalog_embeddings().numpy())
    progress_log.info("item-to-item stage: %d items, weight %g, towers' spread %.3f", items - 1,
                      settings.item_item_weight, spread)
    return item_item.ItemItemStage(weights, repeat_buying.past_items(recent_items, user_counts).items,
                                   settings.item_item_weight, spread)


def _fit_buy_again(recent_items, user_counts, train_files, tft_output, counts, new_item_weight):
    """The buy-again tables of the export, or None without users with 2+ rows."""
    fitted = repeat_buying.fit(recent_items, user_counts, counts, new_item_weight,
                               data.last_visit_rows(train_files, tft_output))
    if fitted is None:
        progress_log.info("buy-again: no user has a visit before their last; recommend is the towers' alone")
        return None
    progress_log.info("buy-again: %d past items fitted; weights %s, bias %.3f; shop repeat "
                      "rate %.3f", fitted.examples, np.round(fitted.weights, 3), fitted.bias,
                      fitted.shop_repeat_rate)
    return repeat_buying.BuyAgainTables(fitted, repeat_buying.past_items(recent_items, user_counts))

"""The TFRS retrieval model: wires the towers to the catalogue and the tasks.

The catalogue (every item's transformed content, one row per item index) lives
inside the model as constant tensors. A training row names its item by index;
the model looks the content up, so interactions never carry image bytes, and an
item that nobody clicked is still embedded from its content.
"""


import contextlib
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from mmfuse.config import MODALITIES
from trainer.data import CATALOG_FEATURES, EMBEDDING_DIMS, QUERY_FEATURES
from trainer.towers import BagOfTokensEncoder, FeatureProjection, ItemTower, QueryTower
from transform import features as f


class Catalog(tf.Module):
    """Item content indexed by item index; row 0 is the empty "unknown" item.

    `interaction_counts` (training rows per item index) tells which items'
    ids the model learns: those with at least `id_min_rows` rows. An id
    embedding learned from a row or two mostly memorises those rows' queries,
    which pulls the item away from where its content would place it for new
    ones. Without counts every item's id counts as learned.
    """

    def __init__(self, content: Dict[str, np.ndarray], interaction_counts: np.ndarray = None,
                 id_min_rows: int = 1):
        super().__init__(name="catalog")
        if not (isinstance(id_min_rows, int) and id_min_rows >= 1):
            raise ValueError(f"id_min_rows must be a whole number >= 1, not {id_min_rows!r}")
        self.size = len(content[f.ITEM_TOKENS])
        self.content = {name: tf.constant(content[name]) for name in CATALOG_FEATURES}
        learned = (np.ones(self.size) if interaction_counts is None
                   else np.asarray(interaction_counts) >= id_min_rows)
        self.content[f.ITEM_ID_LEARNED] = tf.constant(learned, tf.float32)

    def lookup(self, item_index: tf.Tensor) -> Dict[str, tf.Tensor]:
        item = {name: tf.gather(values, item_index) for name, values in self.content.items()}
        item[f.ITEM_INDEX] = item_index
        return item

    def all_items(self) -> Dict[str, tf.Tensor]:
        return self.lookup(tf.range(self.size, dtype=tf.int64))


class Users(tf.Module):
    """Each user's recent item indices by user index; row 0 (no user) is
    empty. Training rows carry their user's history; at serving time it is
    looked up here by user id."""

    def __init__(self, recent_items: np.ndarray):
        super().__init__(name="users")
        self.recent_items_by_user = tf.constant(recent_items)

    @property
    def size(self) -> int:
        return self.recent_items_by_user.shape[0]

    def recent_items(self, user_index: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.recent_items_by_user, user_index)


class RetrievalModel(tfrs.Model):
    """The two-tower retrieval model: wires the item tower and the query tower
    to TFRS's retrieval task (in-batch softmax, corrected for item popularity)
    and the optional photo tasks and rating head.

    Args:
        catalog: the items' content by item index (`Catalog`).
        users: each user's recent items by user index (`Users`).
        vocabulary_sizes: the Transform's vocabulary sizes by name.
        dim: size of the query and item vectors.
        modalities: what the item tower sees: any of "id", "text", "image".
        temperature: of the softmax over cosine scores.
        item_probabilities: each item's share of the training rows, for the
            sampling-bias correction of in-batch negatives.
        modality_dropout, recent_item_dropout, time_dropout, token_dropout:
            the training-time dropouts (mmfuse/config.py `TrainerSettings`).
        rating_weight, photo_search_weight, photo_item_weight: the weights of
            the extra tasks beside retrieval; 0 builds none.
        mixed_precision: the Keras mixed precision policy the towers compute
            in (`mixed_float16`, `mixed_bfloat16`; None: float32). Their
            vectors, the losses and the scores stay float32; with
            `mixed_float16` the optimizer must be a LossScaleOptimizer.

    Example (as trainer/run.py builds it):
        model = RetrievalModel(Catalog(content, counts), Users(recent), sizes, dim=64)
        model.compile(optimizer=tf.keras.optimizers.Adam(0.003))
        model.fit(train_batches, epochs=5)
    """

    def __init__(self, catalog: Catalog, users: Users, vocabulary_sizes: Dict[str, int], dim: int,
                 modalities: Sequence[str] = MODALITIES, temperature: float = 0.1,
                 item_probabilities: np.ndarray = None, modality_dropout: float = 0.0,
                 recent_item_dropout: float = 0.0, time_dropout: float = 1.0,
                 rating_weight: float = 0.0, token_dropout: float = 0.0,
                 photo_search_weight: float = 0.0, photo_item_weight: float = 0.0,
                 mixed_precision: Optional[str] = None):
        super().__init__()
        for name, weight in (("rating_weight", rating_weight),
                             ("photo_search_weight", photo_search_weight),
                             ("photo_item_weight", photo_item_weight)):
            if not weight >= 0:
                raise ValueError(f"{name} must be a number >= 0, not {weight!r}")
        self.catalog = catalog
        self.users = users
        # An item's share of the training rows: the chance it is drawn as an
        # in-batch negative. Correcting for it keeps the softmax from learning
        # to push popular items down (Yi et al., RecSys 2019).
        self.item_probabilities = (None if item_probabilities is None
                                   else tf.constant(item_probabilities, tf.float32))
        # Only the towers: the tfrs tasks build their layers as they are
        # called, and must find the float32 policy then.
        with dtype_policy(mixed_precision):
            words = BagOfTokensEncoder(vocabulary_sizes[f.TOKEN_VOCABULARY], dim, token_dropout,
                                       name="words")
            sentence = FeatureProjection(dim, name="sentence")
            self.item_tower = ItemTower(vocabulary_sizes, words, sentence, dim, modalities,
                                        modality_dropout, token_dropout, name="item_tower")
            self.query_tower = QueryTower(vocabulary_sizes, words, sentence, dim,
                                          recent_item_dropout, time_dropout,
                                          # The item tower has one only with the image modality.
                                          image=getattr(self.item_tower, "image", None),
                                          name="query_tower")
        # In-batch softmax; an item appearing twice in a batch is not its own negative.
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=True)
        # No interaction row carries a query photo, so the query tower learns
        # image search from a second task: each row's item asked by its own
        # catalogue photo alone. A task beside the first, not rows taken from
        # it, and one that holds the item vectors still: it moves the query
        # tower, and through it the photo projection the two towers share,
        # not the rest of the item tower. MovieLens fusion's recall@100 was
        # 0.616 before; 0.595 with 10% of the rows replaced by photo queries,
        # 0.601 with the item vectors moving too, 0.613 as it is (quality
        # benchmark; benchmarks/RESULTS.md, these in README.md's git history).
        # Only a query tower that reads photos (the image modality) gets it:
        # another would see an empty query.
        self.photo_search_weight = photo_search_weight if self.query_tower.image is not None else 0.0
        self.photo_search_task = tfrs.tasks.Retrieval(temperature=temperature,
                                                      remove_accidental_hits=True)
        # Modality dropout shows an item by its photo alone in a minority of
        # the rows, so a photo-only item (one with no title yet) is placed
        # from little; this task asks each row's query to find its item seen
        # by its photo alone. The queries are held still: the photo view
        # learns to land where the item's questions point, without bending
        # them towards it. Only an item tower with the photo and something
        # besides gets it: an image-only tower sees every item so already.
        self.photo_item_weight = (photo_item_weight if "image" in self.item_tower.modalities
                                  and len(self.item_tower.modalities) > 1 else 0.0)
        self.photo_item_task = tfrs.tasks.Retrieval(temperature=temperature,
                                                    remove_accidental_hits=True)
        # Weight 0 builds no head, so the model is the plain retrieval model.
        self.rating_weight = rating_weight
        if rating_weight > 0:
            self.rating_head = tf.keras.Sequential([
                tf.keras.layers.Dense(dim, activation="relu"), tf.keras.layers.Dense(1)],
                name="rating_head")
            # A sum over the batch like the retrieval loss (and as distribution
            # strategies require), of the rated rows only: the others weigh 0.
            self.rating_task = tfrs.tasks.Ranking(
                loss=tf.keras.losses.MeanSquaredError(reduction=tf.keras.losses.Reduction.SUM),
                metrics=[tf.keras.metrics.RootMeanSquaredError(name="rating_rmse")])

    def catalog_embeddings(self) -> tf.Tensor:
        """[catalog size, dim]; row 0 (unknown) is excluded by the callers."""
        return self.item_tower(self.catalog.all_items())

    def user_embeddings(self, chunk_size: int = 8192) -> tf.Tensor:
        """[users, dim]: each user's query with no text (the recommend
        question), row 0 being an unknown user with no history. Computed in
        chunks: attention over the recent items grows with their number."""
        chunks = []
        for start in range(0, self.users.size, chunk_size):
            user_index = tf.range(start, min(start + chunk_size, self.users.size), dtype=tf.int64)
            chunks.append(self.query_tower(no_text_queries(user_index, self.users.recent_items(user_index))))
        return tf.concat(chunks, axis=0)

    def predicted_ratings(self, query: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        """[batch] ratings of each row's (query vector, item vector) pair."""
        return self.rating_head(tf.concat([query, items], axis=1))[:, 0]

    def photo_queries(self, item: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """Query tower features of each looked-up item's catalogue photo
        asked alone, as `image_search` asks (no user, no words)."""
        item_index = item[f.ITEM_INDEX]
        queries = no_text_queries(tf.zeros_like(item_index),
                                  tf.zeros([tf.shape(item_index)[0], f.RECENT_ITEMS_LENGTH], tf.int64))
        for name in (f.IMAGE_EMBEDDING, f.IMAGE_EMBEDDING + "_present"):
            queries[name] = item[name]
        return queries

    def train_step(self, inputs):
        """tfrs.Model's step, with the gradients taken by the optimizer's
        `minimize`, which a LossScaleOptimizer (`mixed_float16`) scales the
        loss in; tfrs.Model takes them itself, unscaled."""
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
            regularization_loss = tf.reduce_sum([tf.reduce_sum(extra) for extra in self.losses])
            total_loss = loss + regularization_loss
        self.optimizer.minimize(total_loss, self.trainable_variables, tape=tape)
        return {**{metric.name: metric.result() for metric in self.metrics}, "loss": loss,
                "regularization_loss": regularization_loss, "total_loss": total_loss}

    def compute_loss(self, inputs, training=False):
        # TFRS calls compute_loss directly, not through a layer call, so
        # `training` (modality dropout) has to be passed on by hand.
        query = self.query_tower({name: inputs[name] for name in QUERY_FEATURES}, training=training)
        item = self.catalog.lookup(inputs[f.ITEM_INDEX])
        items = self.item_tower(item, training=training)
        probabilities = (None if self.item_probabilities is None
                         else tf.gather(self.item_probabilities, inputs[f.ITEM_INDEX]))
        loss = self.task(query, items, candidate_ids=inputs[f.ITEM_INDEX],
                         candidate_sampling_probability=probabilities)
        if self.photo_search_weight > 0:
            photos = self.photo_queries(item)
            # Rows whose item has no photo ask nothing, but their items are
            # still negatives for the others. The items are where the other
            # tasks put them: a photo query learns to find them there.
            loss += self.photo_search_weight * self.photo_search_task(
                self.query_tower(photos, training=training), tf.stop_gradient(items),
                sample_weight=photos[f.IMAGE_EMBEDDING + "_present"],
                candidate_ids=inputs[f.ITEM_INDEX], candidate_sampling_probability=probabilities)
        if self.photo_item_weight > 0:
            # Rows whose item has no photo ask nothing; their empty views are
            # still negatives for the others.
            loss += self.photo_item_weight * self.photo_item_task(
                tf.stop_gradient(query), self.item_tower(item, training=training, shown=("image",)),
                sample_weight=item[f.IMAGE_EMBEDDING + "_present"],
                candidate_ids=inputs[f.ITEM_INDEX], candidate_sampling_probability=probabilities)
        if self.rating_weight > 0:
            # [batch, 1]: Keras losses average over the last axis, which must
            # not be the batch's, or each row's weight would be lost.
            loss += self.rating_weight * self.rating_task(
                labels=inputs[f.RATING_LABEL][:, None],
                predictions=self.predicted_ratings(query, items)[:, None],
                sample_weight=inputs[f.RATING_LABEL + "_present"], training=training)
        return loss


@contextlib.contextmanager
def dtype_policy(mixed_precision: Optional[str]):
    """Keras layers built inside compute in `mixed_precision` (None:
    float32); the global policy is restored after."""
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(mixed_precision or "float32")
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def no_text_queries(user_index: tf.Tensor, recent_item_indices: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Query tower features of users asking without text or photo, at no
    particular time (as serving requests do: they carry no timestamp)."""
    rows = tf.shape(user_index)[0]
    return {f.USER_INDEX: user_index, f.RECENT_ITEM_INDICES: recent_item_indices,
            f.QUERY_TOKENS: tf.zeros([rows, f.QUERY_LENGTH], tf.int64),
            f.QUERY_TEXT_EMBEDDING: tf.zeros([rows, EMBEDDING_DIMS[f.QUERY_TEXT_EMBEDDING]]),
            f.QUERY_TEXT_EMBEDDING + "_present": tf.zeros([rows]),
            f.IMAGE_EMBEDDING: tf.zeros([rows, EMBEDDING_DIMS[f.IMAGE_EMBEDDING]]),
            f.IMAGE_EMBEDDING + "_present": tf.zeros([rows]),
            f.TIME_OF_INTERACTION: tf.zeros([rows, f.TIME_OF_INTERACTION_DIM]),
            f.TIME_OF_INTERACTION + "_present": tf.zeros([rows])}


def ranks_of_items(scores: tf.Tensor, item_index: tf.Tensor) -> tf.Tensor:
    """1-based rank of each row's item by its row of `scores` [batch, catalog
    size] (column 0, the unknown item, excluded).

    Ties count against the item, so a model that scores everything alike
    ranks every item last rather than first. An item the model does not know
    (index 0: the baseline model of a next-day run meeting a new item) ranks
    after the whole catalogue, as it can never be recommended.
    """
    scores = scores[:, 1:]
    known = item_index > 0
    true_scores = tf.gather(scores, tf.where(known, item_index - 1, 0), batch_dims=1)
    ranks = tf.reduce_sum(tf.cast(scores >= true_scores[:, None], tf.float32), axis=1)
    return tf.where(known, ranks, tf.cast(tf.shape(scores)[1] + 1, tf.float32))

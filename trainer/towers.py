"""The towers: small composable Keras layers, one per input kind.

Each modality encoder maps its input to a vector and a presence mask; a tower
fuses the present modalities of a row with attention into one L2-normalised
vector, so an item with only a photo and an item with only a title land in the
same space.
Index 0 of every vocabulary means "absent or unknown" and is masked out.
"""


from typing import Dict, Sequence, Tuple

import tensorflow as tf

from mmfuse.config import MODALITIES
from transform import features as f

Encoded = Tuple[tf.Tensor, tf.Tensor]  # ([batch, dim] vector, [batch] 0/1 presence)

# The towers branch only on Python values (training, the chosen modalities),
# so they are traced as written, without autograph rewriting their source and
# that of every layer inside: MovieLens's first training call (the tracing and
# two steps) took 51 s this way against 100 s with autograph (2-core
# machine). A branch on a tensor would fail loudly.
plain_python = tf.autograph.experimental.do_not_convert


def hide_at_random(mask: tf.Tensor, rate: float) -> tf.Tensor:
    """A 0/1 mask with each entry set to 0 with probability `rate` (the
    dropout of tokens, recent items, modalities and the time)."""
    return mask * tf.cast(tf.random.uniform(tf.shape(mask)) >= rate, mask.dtype)


class IdEncoder(tf.keras.layers.Layer):
    """An embedding per id; absent (0) ids are marked not present."""

    def __init__(self, vocabulary_size: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.embedding = tf.keras.layers.Embedding(vocabulary_size, dim)

    def call(self, ids: tf.Tensor) -> Encoded:
        return self.embedding(ids), tf.cast(ids > 0, self.compute_dtype)


class BagOfTokensEncoder(tf.keras.layers.Layer):
    """The mean embedding of a padded token sequence (text words, attributes).

    In training, each token is hidden with probability `token_dropout`, so a
    row cannot be matched by one rare word that its embedding has memorised:
    a query the model never saw shares only some of its words with a title.
    A row whose tokens are all hidden counts as having no text.
    """

    def __init__(self, vocabulary_size: int, dim: int, token_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.token_dropout = token_dropout
        self.embedding = tf.keras.layers.Embedding(vocabulary_size, dim)

    def call(self, tokens: tf.Tensor, training=None) -> Encoded:
        mask = tf.cast(tokens > 0, self.compute_dtype)
        if training and self.token_dropout > 0:
            mask = hide_at_random(mask, self.token_dropout)
        count = tf.reduce_sum(mask, axis=1)
        total = tf.reduce_sum(self.embedding(tokens) * mask[:, :, None], axis=1)
        return total / tf.maximum(count, 1.0)[:, None], tf.cast(count > 0, self.compute_dtype)


class RecentItemsEncoder(tf.keras.layers.Layer):
    """A user's recent items (indices, most recent first) -> one vector.

    Each item gets an embedding plus a recency-position embedding; a query
    that starts from their mean attends over them (absent items masked), so
    the tower can weigh some recent items above others rather than only
    average them. Users without recent items are marked not present.
    In training, each recent item is hidden with probability `item_dropout`,
    so the tower cannot lean on any one item of a history.
    """

    def __init__(self, vocabulary_size: int, dim: int, length: int, num_heads: int = 4,
                 item_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.item_dropout = item_dropout
        self.item = tf.keras.layers.Embedding(vocabulary_size, dim)
        self.position = tf.keras.layers.Embedding(length, dim)
        self.attention = tf.keras.layers.MultiHeadAttention(num_heads, key_dim=max(dim // num_heads, 1))

    def call(self, item_indices: tf.Tensor, training=None) -> Encoded:
        mask = tf.cast(item_indices > 0, self.compute_dtype)
        if training and self.item_dropout > 0:
            mask = hide_at_random(mask, self.item_dropout)
        count = tf.reduce_sum(mask, axis=1, keepdims=True)
        tokens = self.item(item_indices) + self.position(tf.range(tf.shape(item_indices)[1]))[None]
        mean = tf.reduce_sum(tokens * mask[:, :, None], axis=1) / tf.maximum(count, 1.0)
        attended = self.attention(mean[:, None, :], tokens,
                                  attention_mask=tf.cast(mask[:, None, :], tf.bool), training=training)
        present = tf.cast(count[:, 0] > 0, self.compute_dtype)
        return (mean + attended[:, 0]) * present[:, None], present


class FeatureProjection(tf.keras.layers.Layer):
    """Maps a frozen pretrained feature (MiniLM text, EfficientNet image) into
    the towers' space; its presence flag comes with it from the data."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.projection = tf.keras.Sequential([
            tf.keras.layers.Dense(2 * dim, activation="gelu"), tf.keras.layers.Dense(dim)])

    def call(self, features: tf.Tensor, present: tf.Tensor) -> Encoded:
        return self.projection(features), present


class ModalityAttention(tf.keras.layers.Layer):
    """Fuses the present modalities of each row with multi-head attention.

    Each modality vector gets a learned modality-type embedding; a fusion
    token, starting from the mean of the present modalities, attends over them
    (absent ones masked out), then a residual feed-forward block and L2
    normalisation give the row's vector. Starting from the mean keeps the
    easy-to-learn average as the baseline that attention refines.
    With `return_attention=True` it also returns how much each modality
    contributed: the fusion token's attention weights, [batch, modalities],
    averaged over heads.

    In training, modality dropout hides each present modality with
    probability `modality_dropout`, always keeping at least one, so the tower
    learns to place an item seen only by its photo or only by its title.
    `groups` gives each input the index of the modality it belongs to (the
    item tower's words, sentence and attributes are all "text"): a modality
    is hidden or kept as a whole, since hiding a title's words but not its
    sentence embedding would still show the title.
    A row with no modality at all attends only to the fusion token.
    """

    def __init__(self, num_modalities: int, dim: int, num_heads: int = 4,
                 modality_dropout: float = 0.0, groups: Sequence[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.num_modalities = num_modalities
        self.modality_dropout = modality_dropout
        groups = list(range(num_modalities)) if groups is None else list(groups)
        if len(groups) != num_modalities:
            raise ValueError(f"groups names {len(groups)} modalities, not {num_modalities}")
        # [groups, modalities]: which inputs each group hides or keeps.
        self.group_members = tf.constant(
            [[float(group == g) for group in groups] for g in range(max(groups) + 1)])
        self.modality_type = tf.keras.layers.Embedding(num_modalities + 1, dim)
        self.token_norm = tf.keras.layers.LayerNormalization()
        self.attention = tf.keras.layers.MultiHeadAttention(num_heads, key_dim=max(dim // num_heads, 1))
        self.attention_norm = tf.keras.layers.LayerNormalization()
        self.feed_forward = tf.keras.Sequential([
            tf.keras.layers.Dense(2 * dim, activation="gelu"), tf.keras.layers.Dense(dim)])
        self.output_norm = tf.keras.layers.LayerNormalization()

    def _drop_modalities(self, present: tf.Tensor) -> tf.Tensor:
        members = tf.cast(self.group_members, present.dtype)
        group_present = tf.cast(tf.matmul(present, members, transpose_b=True) > 0,
                                present.dtype)  # [batch, groups]
        kept = hide_at_random(group_present, self.modality_dropout)
        # Rows that lost every group get one of their present ones back.
        noise = tf.random.uniform(tf.shape(group_present), dtype=present.dtype)
        fallback = tf.one_hot(tf.argmax(group_present * (1.0 + noise), axis=1),
                              tf.shape(group_present)[1], dtype=present.dtype)
        emptied = tf.cast(tf.reduce_sum(kept, axis=1, keepdims=True) == 0, present.dtype)
        kept += emptied * fallback * group_present
        return present * tf.matmul(kept, members)

    def call(self, encoded: Sequence[Encoded], training=None, return_attention=False):
        # Every modality enters on one scale, so that none (e.g. a projected
        # 1280-d image feature) drowns the others in the mean or the attention.
        vectors = self.token_norm(tf.stack([vector for vector, _ in encoded], axis=1))  # [batch, M, dim]
        present = tf.stack([mask for _, mask in encoded], axis=1)  # [batch, M]
        if training and self.modality_dropout > 0:
            present = self._drop_modalities(present)
        batch_size = tf.shape(vectors)[0]
        types = self.modality_type(tf.range(self.num_modalities + 1))  # fusion token first
        mean = (tf.reduce_sum(vectors * present[:, :, None], axis=1)
                / tf.maximum(tf.reduce_sum(present, axis=1, keepdims=True), 1.0))
        fusion_token = (mean + types[:1])[:, None, :]
        tokens = tf.concat([fusion_token, vectors + types[None, 1:]], axis=1)
        visible = tf.concat([tf.ones([batch_size, 1], present.dtype), present], axis=1)
        attended, scores = self.attention(
            fusion_token, tokens, attention_mask=tf.cast(visible[:, None, :], tf.bool),
            return_attention_scores=True, training=training)
        fused = self.attention_norm(fusion_token[:, 0] + attended[:, 0])
        fused = tf.math.l2_normalize(self.output_norm(fused + self.feed_forward(fused)), axis=-1)
        # The vectors leave in float32 whatever the mixed precision policy:
        # scores over a whole catalogue in float16 would tie and reorder items.
        fused = tf.cast(fused, tf.float32)
        if return_attention:
            return fused, tf.cast(tf.reduce_mean(scores[:, :, 0, 1:], axis=1), tf.float32)
        return fused


class ItemTower(tf.keras.layers.Layer):
    """Item id, text (words, sentence embedding, attributes) and image -> the item's vector."""

    def __init__(self, vocabulary_sizes: Dict[str, int], words: BagOfTokensEncoder,
                 sentence: FeatureProjection, dim: int, modalities: Sequence[str] = MODALITIES,
                 modality_dropout: float = 0.0, token_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.modalities = tuple(modalities)
        # Only the chosen modalities get encoders: an unused one would hold
        # weights that are never built. `words` and `sentence` are the query
        # tower's too, which always uses them.
        if "id" in self.modalities:
            self.item_id = IdEncoder(vocabulary_sizes[f.ITEM_VOCABULARY], dim)
        self.words = words
        self.sentence = sentence
        if "text" in self.modalities:
            self.attributes = BagOfTokensEncoder(vocabulary_sizes[f.ATTRIBUTE_VOCABULARY], dim,
                                                 token_dropout)
        if "image" in self.modalities:
            self.image = FeatureProjection(dim)
        self.modality_attention = ModalityAttention(
            len(self.modality_names()), dim, modality_dropout=modality_dropout,
            groups=[self.modalities.index(modality) for modality, _ in self._inputs()])

    def _inputs(self) -> Tuple[Tuple[str, str], ...]:
        """(modality, input name) of each fused input, in the attention's order."""
        names = {"id": ("item_id",), "text": ("words", "sentence", "attributes"), "image": ("image",)}
        return tuple((modality, name) for modality in self.modalities for name in names[modality])

    def modality_names(self) -> Tuple[str, ...]:
        """The fused inputs, in the order of the attention weights."""
        return tuple(name for _, name in self._inputs())

    @plain_python
    def call(self, item: Dict[str, tf.Tensor], training=None, return_attention=False,
             shown: Sequence[str] = None):
        """`shown`: the modalities to see each item by (default all the
        tower's); the others count as absent, as for an item without them."""
        encoded = []
        if "id" in self.modalities:
            vector, present = self.item_id(item[f.ITEM_INDEX])
            # An id that no training row had has only its random initial
            # embedding: noise, which the token normalisation would blow up
            # to the scale of a real modality. A new item is its content, and
            # so is one with too few rows to learn from (model.Catalog).
            encoded.append((vector, present * item[f.ITEM_ID_LEARNED]))
        if "text" in self.modalities:
            encoded.append(self.words(item[f.ITEM_TOKENS], training=training))
            encoded.append(self.sentence(item[f.ITEM_TEXT_EMBEDDING],
                                         item[f.ITEM_TEXT_EMBEDDING + "_present"]))
            encoded.append(self.attributes(item[f.ATTRIBUTE_TOKENS], training=training))
        if "image" in self.modalities:
            encoded.append(self.image(item[f.IMAGE_EMBEDDING], item[f.IMAGE_EMBEDDING + "_present"]))
        if shown is not None:
            encoded = [(vector, present * float(modality in shown))
                       for (vector, present), (modality, _) in zip(encoded, self._inputs())]
        return self.modality_attention(encoded, training=training, return_attention=return_attention)


class QueryTower(tf.keras.layers.Layer):
    """User id, the user's recent items, query text (words, sentence
    embedding), a query photo and when the question is asked -> the vector
    items are scored against.

    The word and sentence encoders are the item tower's, so a query and a
    title with the same words start out close; so is `image`, the item
    tower's photo projection, so a photo asked about starts where the same
    photo in the catalogue does. Without it (an item tower without images)
    the tower takes no photo.

    The time is used only with `time_dropout` below 1. Serving requests carry
    no time, while the Evaluator's examples do, so a tower that uses it is
    gated on questions it is never asked; hiding the time from a share of
    the training rows teaches it to answer without one too.
    """

    def __init__(self, vocabulary_sizes: Dict[str, int], words: BagOfTokensEncoder,
                 sentence: FeatureProjection, dim: int, recent_item_dropout: float = 0.0,
                 time_dropout: float = 1.0, image: FeatureProjection = None, **kwargs):
        super().__init__(**kwargs)
        self.time_dropout = time_dropout
        self.user_id = IdEncoder(vocabulary_sizes[f.USER_VOCABULARY], dim)
        self.recent_items = RecentItemsEncoder(vocabulary_sizes[f.ITEM_VOCABULARY], dim,
                                               f.RECENT_ITEMS_LENGTH, item_dropout=recent_item_dropout)
        self.words = words
        self.sentence = sentence
        self.image = image
        self.time_of_interaction = FeatureProjection(dim) if time_dropout < 1 else None
        self.modality_attention = ModalityAttention(
            4 + (image is not None) + (self.time_of_interaction is not None), dim)

    @plain_python
    def call(self, query: Dict[str, tf.Tensor], training=None) -> tf.Tensor:
        encoded = [
            self.user_id(query[f.USER_INDEX]),
            self.recent_items(query[f.RECENT_ITEM_INDICES], training=training),
            self.words(query[f.QUERY_TOKENS], training=training),
            self.sentence(query[f.QUERY_TEXT_EMBEDDING], query[f.QUERY_TEXT_EMBEDDING + "_present"]),
        ]
        if self.image is not None:
            encoded.append(self.image(query[f.IMAGE_EMBEDDING], query[f.IMAGE_EMBEDDING + "_present"]))
        if self.time_of_interaction is not None:
            has_time = query[f.TIME_OF_INTERACTION + "_present"]
            if training and self.time_dropout > 0:
                has_time = hide_at_random(has_time, self.time_dropout)
            encoded.append(self.time_of_interaction(query[f.TIME_OF_INTERACTION], has_time))
        return self.modality_attention(encoded, training=training)

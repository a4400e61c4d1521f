"""The towers: small composable Keras layers, one per input kind.

Each modality encoder maps its input to a vector and a presence mask; a tower
fuses the present modalities of a row into one L2-normalised vector, so an item
with only a photo and an item with only a title land in the same space.
Index 0 of every vocabulary means "absent or unknown" and is masked out.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Dict, Sequence, Tuple  # noqa: E402

import tensorflow as tf  # noqa: E402

from transform import features as f  # noqa: E402

MODALITIES = ("id", "text", "image")
Encoded = Tuple[tf.Tensor, tf.Tensor]  # ([batch, dim] vector, [batch] 0/1 presence)


class IdEncoder(tf.keras.layers.Layer):
    """An embedding per id; absent (0) ids are marked not present."""

    def __init__(self, vocabulary_size: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.embedding = tf.keras.layers.Embedding(vocabulary_size, dim)

    def call(self, ids: tf.Tensor) -> Encoded:
        return self.embedding(ids), tf.cast(ids > 0, tf.float32)


class BagOfTokensEncoder(tf.keras.layers.Layer):
    """The mean embedding of a padded token sequence (text words, attributes)."""

    def __init__(self, vocabulary_size: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.embedding = tf.keras.layers.Embedding(vocabulary_size, dim)

    def call(self, tokens: tf.Tensor) -> Encoded:
        mask = tf.cast(tokens > 0, tf.float32)
        count = tf.reduce_sum(mask, axis=1)
        total = tf.reduce_sum(self.embedding(tokens) * mask[:, :, None], axis=1)
        return total / tf.maximum(count, 1.0)[:, None], tf.cast(count > 0, tf.float32)


class ImageEncoder(tf.keras.layers.Layer):
    """Projects preprocessed pixels [batch, size, size, 3] to a vector.

    `present` comes from the catalogue: an absent image is all zeros, which is
    also a valid (grey) picture, so pixels alone cannot tell.
    """

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.features = tf.keras.Sequential([
            tf.keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            tf.keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(dim),
        ])

    def call(self, pixels: tf.Tensor, present: tf.Tensor) -> Encoded:
        return self.features(pixels), present


class ModalityFusion(tf.keras.layers.Layer):
    """The mean of the present modality vectors, projected and L2-normalised.

    A row with no modality present becomes the zero vector, which scores 0
    against every candidate.
    """

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.projection = tf.keras.layers.Dense(dim)

    def call(self, encoded: Sequence[Encoded]) -> tf.Tensor:
        vectors = tf.stack([vector for vector, _ in encoded], axis=1)
        masks = tf.stack([mask for _, mask in encoded], axis=1)
        total = tf.reduce_sum(vectors * masks[:, :, None], axis=1)
        mean = total / tf.maximum(tf.reduce_sum(masks, axis=1), 1.0)[:, None]
        return tf.math.l2_normalize(self.projection(mean), axis=-1)


class ItemTower(tf.keras.layers.Layer):
    """Item id, text, attributes and image -> the item's vector."""

    def __init__(self, vocabulary_sizes: Dict[str, int], text_encoder: BagOfTokensEncoder,
                 dim: int, modalities: Sequence[str] = MODALITIES, **kwargs):
        super().__init__(**kwargs)
        self.modalities = tuple(modalities)
        self.item_id = IdEncoder(vocabulary_sizes[f.ITEM_VOCABULARY], dim)
        self.text = text_encoder
        self.attributes = BagOfTokensEncoder(vocabulary_sizes[f.ATTRIBUTE_VOCABULARY], dim)
        self.image = ImageEncoder(dim)
        self.fusion = ModalityFusion(dim)

    def call(self, item: Dict[str, tf.Tensor]) -> tf.Tensor:
        encoded = []
        if "id" in self.modalities:
            encoded.append(self.item_id(item[f.ITEM_INDEX]))
        if "text" in self.modalities:
            encoded.append(self.text(item[f.ITEM_TOKENS]))
            encoded.append(self.attributes(item[f.ATTRIBUTE_TOKENS]))
        if "image" in self.modalities:
            encoded.append(self.image(item[f.IMAGE_PIXELS], item["image_present"]))
        return self.fusion(encoded)


class QueryTower(tf.keras.layers.Layer):
    """User id and query text -> the vector that items are scored against.

    The text encoder is the item tower's, so query words and title words share
    embeddings from the first step.
    """

    def __init__(self, vocabulary_sizes: Dict[str, int], text_encoder: BagOfTokensEncoder,
                 dim: int, **kwargs):
        super().__init__(**kwargs)
        self.user_id = IdEncoder(vocabulary_sizes[f.USER_VOCABULARY], dim)
        self.text = text_encoder
        self.fusion = ModalityFusion(dim)

    def call(self, query: Dict[str, tf.Tensor]) -> tf.Tensor:
        return self.fusion([self.user_id(query[f.USER_INDEX]), self.text(query[f.QUERY_TOKENS])])

"""Image decoding, resizing and normalisation, as TensorFlow ops.

Used by `preprocessing_fn` on catalogue images and inside the serving graph on
query images, so both see the same pixels.
"""
import tensorflow as tf

IMAGE_SIZE = 32


def preprocess(encoded: tf.Tensor, size: int = IMAGE_SIZE) -> tf.Tensor:
    """Decodes one JPEG/PNG string into [size, size, 3] floats in [-1, 1).

    Resizes the short side to `size` and centre-crops, keeping the aspect
    ratio, then maps bytes with (x - 127) / 128 as ImageNet encoders expect.
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(size, tf.float32) / tf.reduce_min(shape)
    resized = tf.image.resize(image, tf.cast(tf.math.ceil(shape * scale), tf.int32),
                              antialias=True)
    cropped = tf.image.resize_with_crop_or_pad(resized, size, size)
    return (cropped - 127.0) / 128.0


def preprocess_batch(encoded: tf.Tensor, size: int = IMAGE_SIZE) -> tf.Tensor:
    """[batch] encoded images -> [batch, size, size, 3]."""
    return tf.map_fn(lambda e: preprocess(e, size), encoded,
                     fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))

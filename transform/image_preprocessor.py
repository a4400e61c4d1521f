"""Image decoding, resizing and normalisation, as TensorFlow ops.

The one image preprocessing of the project: `preprocessing_fn` runs it on
catalogue images, and through the Transform graph the serving model runs it on
query images, so both see the same pixels. It is the ImageNet evaluation
recipe the image encoder (trainer/image_encoder.py) was scored with.
"""
import tensorflow as tf

INPUT_SIZE = 224
RESIZE_SHORT_SIDE = 256


def preprocess(encoded: tf.Tensor) -> tf.Tensor:
    """One encoded JPEG/PNG -> [224, 224, 3] float32 in about [-1, 1].

    Resizes the short side to 256 keeping the aspect ratio, centre-crops 224,
    and maps bytes with (x - 127) / 128.
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = RESIZE_SHORT_SIDE / tf.reduce_min(shape)
    size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), RESIZE_SHORT_SIDE)
    resized = tf.image.resize(image, size, method="bicubic", antialias=True)
    # Bicubic overshoots; clip so the (x - 127) / 128 range matches real pixels.
    resized = tf.clip_by_value(resized, 0.0, 255.0)
    top = (size[0] - INPUT_SIZE) // 2
    left = (size[1] - INPUT_SIZE) // 2
    cropped = tf.image.crop_to_bounding_box(resized, top, left, INPUT_SIZE, INPUT_SIZE)
    return (cropped - 127.0) / 128.0


def preprocess_batch(encoded: tf.Tensor) -> tf.Tensor:
    """[batch] encoded images -> [batch, 224, 224, 3]."""
    return tf.map_fn(preprocess, encoded,
                     fn_output_signature=tf.TensorSpec([INPUT_SIZE, INPUT_SIZE, 3], tf.float32))

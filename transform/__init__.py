"""Preprocessing shared by training (tf.Transform) and the serving graph."""
import os

# TFRS needs tf.keras to be Keras 2: set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

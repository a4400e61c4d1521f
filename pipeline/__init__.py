"""The TFX pipeline: `create_pipeline`, its components and its runners (local, Kubeflow)."""
import os

# TFRS needs tf.keras to be Keras 2: set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

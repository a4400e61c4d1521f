"""The two-tower model, its training (`run.run_fn`) and its serving export."""
import os

# TFRS needs tf.keras to be Keras 2: set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

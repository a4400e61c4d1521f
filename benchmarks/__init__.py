"""Benchmarks run by hand (`python -m benchmarks.<name>`); not part of the test suite."""
import os

# TFRS needs tf.keras to be Keras 2: set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

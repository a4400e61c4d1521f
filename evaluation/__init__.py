"""Offline evaluation shared by the model and the baselines: ranking metrics
(`metrics`), things that rank the catalogue (`rankers`: the pushed SavedModel,
popularity, EASE, BM25) and the protocol of `mmfuse evaluate` (`evaluate`)."""
import os

# TFRS needs tf.keras to be Keras 2: set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

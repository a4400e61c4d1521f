"""Every test process runs TensorFlow with Keras 2 (TFRS needs tf.keras to be
Keras 2), and finds the real data sets through MMFUSE_DATA_DIR."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

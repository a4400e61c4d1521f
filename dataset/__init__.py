"""The dataset contract: reading and validating a dataset directory (`contract`),
converters from public data sets (`converters`), the embedded sample (`sample`),
the train/eval splits (`splits`) and the pseudonyms that replace user ids
(`pseudonyms`)."""
import os

# TFRS needs tf.keras to be Keras 2: set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

"""The demo page (`mmfuse demo`): a web page that asks a TF Serving gRPC
server through serving/client.py and shows the answers with the dataset's
photos, titles and users' histories."""
import os

# TFRS needs tf.keras to be Keras 2: set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

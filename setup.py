"""mmfuse: multimodal search and recommendation on TFX, TFRS and TF Serving.

The direct requirements are pinned here; `constraints.txt` pins the whole
resolved stack so that an install on another day yields the same versions.
"""
from setuptools import find_packages, setup

setup(
    name="mmfuse",
    version="0.1.0",
    description="Multimodal search and recommendation: TFX pipeline, TFRS two-tower "
    "model with attention fusion, TF Serving.",
    python_requires=">=3.10,<3.11",
    packages=find_packages(include=["mmfuse", "dataset", "pipeline", "trainer", "transform", "serving", "schema",
                                    "evaluation", "demo"]),
    package_data={"schema": ["*.pbtxt", "README.md"],
                  "serving": ["deploy/*.config", "deploy/*.yml", "deploy/*.yaml", "deploy/k8s/*.yaml"],
                  "demo": ["templates/*.html", "static/*.css"]},
    install_requires=[
        "tfx==1.16.0",
        "tensorflow==2.16.2",
        "tensorflow-recommenders==0.7.7",
        "tensorflow-transform==1.16.0",
        "keras-nlp==0.25.1",
        "tensorflow-serving-api==2.16.1",
        "kfp==2.5.0",
        # tfx-bsl imports dill without declaring it.
        "dill",
        # keras-hub's checkpoint loaders need these for the offline text encoder.
        "sentencepiece",
        "safetensors",
        "pillow",
        "python-dateutil",
        # The item-to-item stage's and EASE's sparse products.
        "scipy",
        "grpcio",
        # The demo page (`mmfuse demo`).
        "flask",
        # `mmfuse report`'s plots.
        "matplotlib",
    ],
    # selenium drives the demo page in Debian's chromium (chromium-driver) in its browser test;
    # pytest-xdist runs `make test` on two workers (conftest.py says why).
    extras_require={"test": ["pytest", "pytest-xdist", "selenium"]},
    entry_points={"console_scripts": ["mmfuse=mmfuse.cli:console_main"]},
)

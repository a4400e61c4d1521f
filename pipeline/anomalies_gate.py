"""A component that stops the pipeline when ExampleValidator found anomalies.

ExampleValidator records anomalies but does not fail; training on data that
breaks the schema would hide the problem until serving. This gate fails the
run before Transform with a message naming each anomalous split and feature.
"""
import os
from typing import Dict, List

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies

ANOMALIES_FILE = "SchemaDiff.pb"


class AnomaliesFound(RuntimeError):
    """The data breaks the curated schema; the message lists how."""


def describe_anomalies(anomalies: ExampleAnomalies) -> List[str]:
    """'split: feature: description' for every anomaly in the artifact."""
    found = []
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        path = os.path.join(artifact_utils.get_split_uri([anomalies], split), ANOMALIES_FILE)
        proto = anomalies_pb2.Anomalies()
        with fileio.open(path, "rb") as handle:
            proto.ParseFromString(handle.read())
        infos: Dict[str, anomalies_pb2.AnomalyInfo] = dict(proto.anomaly_info)
        for feature, info in sorted(infos.items()):
            found.append(f"{split}: {feature}: {info.description or info.short_description}")
        if proto.HasField("dataset_anomaly_info"):
            info = proto.dataset_anomaly_info
            found.append(f"{split}: (dataset): {info.description or info.short_description}")
    return found


@component
def AnomaliesGate(anomalies: InputArtifact[ExampleAnomalies]) -> None:  # noqa: N802 (TFX style)
    found = describe_anomalies(anomalies)
    if found:
        raise AnomaliesFound("ExampleValidator found anomalies; stopping before training:\n  "
                             + "\n  ".join(found))

"""The Kubeflow spec holds the whole pipeline, run in the given image, and
compiling it touches none of the cluster's storage (the gs:// URIs are fake)."""
import json

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from mmfuse import cli
from pipeline.kubeflow_runner import BEAM_PIPELINE_ARGS, compile_pipeline
from pipeline.pipeline import PipelineConfig, create_pipeline

DATA = "gs://mmfuse-test-nonexistent/data"
ROOT = "gs://mmfuse-test-nonexistent/root"
SERVING = "gs://mmfuse-test-nonexistent/serving/mmfuse"
IMAGE = "registry.example/mmfuse-pipeline:test"


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("kubeflow") / "mmfuse.json")
    assert compile_pipeline(path, DATA, ROOT, SERVING, IMAGE) == path
    with open(path) as handle:
        return json.load(handle)


def _tasks(job):
    return job["pipelineSpec"]["root"]["dag"]["tasks"]


def _parameter(job, task: str, name: str) -> str:
    value = _tasks(job)[task]["inputs"]["parameters"][name]
    return value["runtimeValue"]["constantValue"]["stringValue"]


def test_every_component_is_a_task(job):
    ids = [node.id for node in create_pipeline(
        PipelineConfig(data_dir=DATA, pipeline_root=ROOT, serving_dir=SERVING)).components]
    assert set(ids) >= {"FileBasedExampleGen", "StatisticsGen", "ImportSchemaGen",
                        "ExampleValidator", "AnomaliesGate", "Transform", "Trainer",
                        "latest_blessed_model_resolver", "Evaluator", "Pusher"}
    tasks = _tasks(job)
    for node_id in ids:
        # The resolver compiles into two query tasks named "<id>-...".
        assert any(task == node_id or task.startswith(node_id + "-") for task in tasks), node_id


def test_every_container_runs_the_image_with_the_beam_args(job):
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    containers = {name: spec["container"] for name, spec in executors.items()
                  if "container" in spec}
    assert "AnomaliesGate_executor" in containers and "Trainer_executor" in containers
    for name, container in containers.items():
        assert container["image"] == IMAGE, name
        assert container["args"][-len(BEAM_PIPELINE_ARGS):] == list(BEAM_PIPELINE_ARGS), name


def test_the_user_code_is_named_by_module_path(job):
    assert (_parameter(job, "Transform", "preprocessing_fn")
            == "transform.preprocessing.preprocessing_fn")
    assert _parameter(job, "Trainer", "run_fn") == "trainer.run.run_fn"


def test_training_starts_only_after_the_anomalies_gate(job):
    assert "AnomaliesGate" in _tasks(job)["Transform"]["dependentTasks"]
    assert _tasks(job)["AnomaliesGate"]["dependentTasks"] == ["ExampleValidator"]


def test_the_uris_are_passed_through(job):
    assert _parameter(job, "FileBasedExampleGen", "input_base") == DATA
    assert SERVING in _parameter(job, "Pusher", "push_destination")
    assert job["runtimeConfig"]["gcsOutputDirectory"] == ROOT


def test_the_schema_is_read_from_the_image(job):
    assert _parameter(job, "ImportSchemaGen", "schema_file") == "/src/schema/schema.pbtxt"


def test_a_yaml_name_gives_the_spec_kfp_client_submits(tmp_path):
    path = compile_pipeline(str(tmp_path / "mmfuse.yaml"), DATA, ROOT, SERVING, IMAGE)
    with open(path) as handle:
        document = yaml.safe_load(handle)
    # What kfp.Client().create_run_from_pipeline_package does with the file.
    spec = json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec())
    assert "Pusher" in spec.root.dag.tasks


def test_the_cli_compiles(tmp_path, capsys):
    out = tmp_path / "spec" / "mmfuse.json"
    assert cli.main(["kubeflow", "compile", "--out", str(out), "--data", DATA,
                     "--pipeline-root", ROOT, "--serving-dir", SERVING]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    with open(out) as handle:
        assert "Pusher" in _tasks(json.load(handle))

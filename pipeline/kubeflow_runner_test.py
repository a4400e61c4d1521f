"""The Kubeflow spec holds the whole pipeline, run in the given image, and
compiling it touches none of the cluster's storage (the gs:// URIs are fake)."""
import json

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from mmfuse import cli
from mmfuse.config import KubeflowSettings, load_config
from pipeline.kubeflow_runner import compile_pipeline
from pipeline.pipeline import PipelineConfig, create_pipeline

DATA = "gs://mmfuse-test-nonexistent/data"
ROOT = "gs://mmfuse-test-nonexistent/root"
SERVING = "gs://mmfuse-test-nonexistent/serving/mmfuse"
IMAGE = "registry.example/mmfuse-pipeline:test"
SETTINGS = load_config(None, [f"kubeflow.data={DATA}", f"kubeflow.pipeline_root={ROOT}",
                              f"kubeflow.serving_dir={SERVING}", f"kubeflow.image={IMAGE}"])
BEAM_PIPELINE_ARGS = KubeflowSettings().beam_args


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("kubeflow") / "mmfuse.json")
    assert compile_pipeline(path, SETTINGS) == path
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
    path = compile_pipeline(str(tmp_path / "mmfuse.yaml"), SETTINGS)
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


def test_a_configuration_file_and_overrides_reach_the_compiled_spec(tmp_path, capsys):
    config = tmp_path / "shop.yaml"
    config.write_text(f"""
trainer:
  epochs: 9
  modalities: [text, image]
  lexical_weight: 0.4
transform:
  text_vocabulary_size: 12345
gate:
  min_recall: 0.07
  max_regression: 0.02
kubeflow:
  data: {DATA}
  pipeline_root: {ROOT}
  serving_dir: {SERVING}
""")
    out = tmp_path / "mmfuse.json"
    assert cli.main(["kubeflow", "compile", "--out", str(out), "--config", str(config),
                     "--set", "trainer.seed=7"]) == 0
    with open(out) as handle:
        job = json.load(handle)
    trainer = json.loads(_parameter(job, "Trainer", "custom_config"))
    assert trainer["trainer"]["epochs"] == 9 and trainer["trainer"]["seed"] == 7
    assert trainer["trainer"]["modalities"] == ["text", "image"]
    assert trainer["trainer"]["lexical_weight"] == 0.4
    assert json.loads(_parameter(job, "Transform", "custom_config"))["text_vocabulary_size"] == 12345
    gate = _parameter(job, "Evaluator", "eval_config")
    assert "0.07" in gate and "-0.02" in gate


def test_compile_without_the_cluster_paths_names_them(tmp_path, capsys):
    assert cli.main(["kubeflow", "compile", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "kubeflow.data" in err and "kubeflow.pipeline_root" in err and "kubeflow.serving_dir" in err

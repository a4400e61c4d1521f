"""The Kubeflow spec holds the whole pipeline, run in the given image, each
container with its resources, and compiling it touches none of the cluster's
storage (the gs:// URIs are fake)."""
import dataclasses
import json

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from mmfuse import cli
from mmfuse.config import KubeflowSettings, ResourcesSettings, load_config
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


def _containers(job):
    """Executor name -> container of every container step (not the resolver's queries)."""
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    return {name: spec["container"] for name, spec in executors.items() if "container" in spec}


def _resources(container) -> pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec:
    """The container's resources read as KFP reads them: unknown fields fail."""
    return json_format.ParseDict(
        container["resources"],
        pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec())


def _compile(tmp_path, capsys, *arguments: str, name: str = "mmfuse.json"):
    out = tmp_path / name
    code = cli.main(["kubeflow", "compile", "--out", str(out), "--data", DATA, "--pipeline-root",
                     ROOT, "--serving-dir", SERVING, "--image", IMAGE, *arguments])
    if code != 0:
        return code, capsys.readouterr().err
    with open(out) as handle:
        return code, (yaml.safe_load(handle) if name.endswith(".yaml") else json.load(handle))


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
    containers = _containers(job)
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


def test_the_resource_settings_name_every_container_step():
    container_steps = {node.id for node in create_pipeline(
        PipelineConfig(data_dir=DATA, pipeline_root=ROOT, serving_dir=SERVING)).components
        if not node.id.startswith("latest_blessed_model_resolver")}
    assert {field.name for field in dataclasses.fields(ResourcesSettings)} == container_steps


def test_every_container_step_requests_cpu_and_memory_and_no_gpu(job):
    containers = _containers(job)
    assert len(containers) == len(dataclasses.fields(ResourcesSettings))
    for name, container in containers.items():
        resources = _resources(container)
        assert resources.cpu_request > 0 and resources.memory_request > 0, name
        assert resources.cpu_limit >= resources.cpu_request, name
        assert resources.memory_limit >= resources.memory_request, name
        assert not resources.HasField("accelerator"), name
    defaults = ResourcesSettings()
    assert _resources(containers["Transform_executor"]).memory_request == defaults.Transform.memory_gb
    assert (_resources(containers["FileBasedExampleGen_executor"]).cpu_request
            == defaults.FileBasedExampleGen.cpu)


def test_a_trainer_with_a_gpu_runs_in_the_gpu_image(tmp_path, capsys):
    code, spec = _compile(tmp_path, capsys, "--set", "resources.Trainer.gpus=1",
                          "--set", "kubeflow.gpu_image=registry.example/mmfuse-gpu:test",
                          "--set", "resources.Trainer.memory_gb=30",
                          "--set", "resources.Trainer.cpu_limit=16", name="mmfuse.yaml")
    assert code == 0
    containers = _containers({"pipelineSpec": spec})
    trainer = containers.pop("Trainer_executor")
    assert trainer["image"] == "registry.example/mmfuse-gpu:test"
    resources = _resources(trainer)
    assert (resources.accelerator.type, resources.accelerator.count) == ("nvidia.com/gpu", 1)
    # A limit left out follows its request.
    assert resources.memory_request == resources.memory_limit == 30
    assert resources.cpu_request == ResourcesSettings().Trainer.cpu and resources.cpu_limit == 16
    for name, container in containers.items():
        assert container["image"] == IMAGE and not _resources(container).HasField("accelerator"), name


def test_a_vertex_job_names_its_accelerator_type(tmp_path, capsys):
    config = tmp_path / "vertex.yaml"
    config.write_text("kubeflow:\n  gpu_image: gpu:1\n  gpu_type: NVIDIA_TESLA_T4\n"
                      "resources:\n  Trainer:\n    gpus: 2\n    cpu: 8\n")
    code, job = _compile(tmp_path, capsys, "--config", str(config),
                         "--set", "resources.Trainer.memory_gb=20")
    assert code == 0
    resources = _resources(_containers(job)["Trainer_executor"])
    assert (resources.accelerator.type, resources.accelerator.count) == ("NVIDIA_TESLA_T4", 2)
    # The file's keys and the override's, each kept.
    assert resources.cpu_request == 8 and resources.memory_request == 20


def test_other_beam_options_reach_every_data_step(tmp_path, capsys):
    flink = ["--runner=FlinkRunner", "--flink_master=flink-jobmanager:8081",
             "--environment_type=EXTERNAL", "--environment_config=localhost:50000",
             "--parallelism=8"]
    code, job = _compile(tmp_path, capsys, "--set", f"kubeflow.beam_args=[{', '.join(flink)}]")
    assert code == 0
    containers = _containers(job)
    for name in ("FileBasedExampleGen_executor", "StatisticsGen_executor", "Transform_executor",
                 "Evaluator_executor"):
        assert containers[name]["args"][-len(flink):] == flink, name
    # ExampleGen's driver runs Beam too (it fingerprints the input).
    driver = containers["FileBasedExampleGen_executor"]["lifecycle"]["preCacheCheck"]
    assert driver["args"][-len(flink):] == flink
    assert "--direct_running_mode=multi_processing" not in json.dumps(job)


@pytest.mark.parametrize("arguments, named", [
    (["--set", "resources.Trainer.gpus=1"], "resources.Trainer.gpus needs kubeflow.gpu_image"),
    (["--set", "resources.Trainr.gpus=1"], "unknown setting resources.Trainr"),
    (["--set", "resources.Trainer.gpu=1"], "unknown setting resources.Trainer.gpu"),
    (["--set", "resources.Transform.memory_gb_limit=8"],
     "resources.Transform.memory_gb_limit (8.0) is below resources.Transform.memory_gb (16.0)"),
    (["--set", "resources.Pusher=2"], "resources.Pusher takes a mapping of settings"),
])
def test_bad_resources_are_refused_naming_the_key(tmp_path, capsys, arguments, named):
    code, err = _compile(tmp_path, capsys, *arguments)
    assert code == 2 and named in err
    assert not (tmp_path / "mmfuse.json").exists()

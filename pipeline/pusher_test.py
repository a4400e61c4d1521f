"""mmfuse's Pusher: TFX's component with an executor that writes the
version's manifest last and removes the pushes that were stopped."""
import json
import os
import shutil

import pytest
from tfx.types import standard_artifacts, standard_component_specs
from tfx.utils import path_utils

from mmfuse.config import load_config
from pipeline import pusher
from pipeline.kubeflow_runner import compile_pipeline
from pipeline.pipeline import PipelineConfig, create_pipeline
from serving import model_store
from serving.conftest import save_tiny_model


@pytest.fixture
def trained(tmp_path):
    """A Trainer's Model artifact holding the tiny model."""
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "Trainer" / "model" / "1")
    save_tiny_model(path_utils.serving_model_path(model.uri))
    return model


def push(trained, base, tmp_path, blessed=True):
    """Runs the executor as TFX does; returns the PushedModel artifact."""
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    blessing.set_int_custom_property("blessed", int(blessed))
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed" / str(len(os.listdir(tmp_path))))
    os.makedirs(pushed.uri)
    pusher.Executor().Do(
        {standard_component_specs.MODEL_KEY: [trained],
         standard_component_specs.MODEL_BLESSING_KEY: [blessing]},
        {standard_component_specs.PUSHED_MODEL_KEY: [pushed]},
        {standard_component_specs.PUSH_DESTINATION_KEY: json.dumps(
            {"filesystem": {"base_directory": str(base)}})})
    return pushed


def test_a_blessed_model_is_pushed_with_its_manifest(trained, tmp_path):
    base = tmp_path / "serving" / "mmfuse"
    pushed = push(trained, base, tmp_path)
    assert pushed.get_int_custom_property("pushed") == 1
    (version,) = model_store.versions(str(base))
    destination = pushed.get_string_custom_property("pushed_destination")
    assert destination == str(base / str(version))
    assert pushed.get_string_custom_property("pushed_version") == str(version)
    assert model_store.check_manifest(destination)
    source = path_utils.serving_model_path(trained.uri)
    assert sorted(os.listdir(destination)) == sorted(os.listdir(source) + [model_store.MANIFEST_FILE])
    # Archived beside the pipeline's outputs too, as TFX's Pusher does.
    assert os.path.exists(os.path.join(pushed.uri, "saved_model.pb"))


def test_a_model_not_blessed_is_not_pushed(trained, tmp_path):
    pushed = push(trained, tmp_path / "serving", tmp_path, blessed=False)
    assert pushed.get_int_custom_property("pushed") == 0
    assert not (tmp_path / "serving").exists()


def test_pushes_in_the_same_second_get_newer_versions(trained, tmp_path):
    base = tmp_path / "serving"
    far_ahead = base / "9999999999"
    shutil.copytree(path_utils.serving_model_path(trained.uri), far_ahead)
    push(trained, base, tmp_path)
    push(trained, base, tmp_path)
    assert model_store.versions(str(base)) == [9999999999, 10000000000, 10000000001]


def test_a_killed_pushs_leftover_is_removed_by_the_next_push(trained, tmp_path, caplog):
    base = tmp_path / "serving"
    leftover = base / "1700000000"
    # What a Pusher killed while copying leaves: its partial manifest and some files.
    shutil.copytree(os.path.join(path_utils.serving_model_path(trained.uri), "variables"),
                    leftover / "variables")
    (leftover / model_store.PARTIAL_MANIFEST_FILE).write_text('{"pushing_from": "x"}')
    foreign = base / "1600000000"  # pushed by another tool: no manifest of either kind
    shutil.copytree(path_utils.serving_model_path(trained.uri), foreign)
    push(trained, base, tmp_path)
    assert not leftover.exists() and foreign.exists()
    assert "Removed version 1700000000" in caplog.text
    assert len(model_store.versions(str(base))) == 2


def test_the_pipeline_and_its_kubeflow_spec_run_this_executor(tmp_path):
    (component,) = [c for c in create_pipeline(PipelineConfig(
        data_dir="data", pipeline_root="root", serving_dir="serving")).components if c.id == "Pusher"]
    assert component.executor_spec.executor_class is pusher.Executor
    settings = load_config(None, ["kubeflow.data=gs://mmfuse-test-nonexistent/data",
                                  "kubeflow.pipeline_root=gs://mmfuse-test-nonexistent/root",
                                  "kubeflow.serving_dir=gs://mmfuse-test-nonexistent/serving"])
    path = compile_pipeline(str(tmp_path / "mmfuse.json"), settings)
    with open(path) as handle:
        executors = json.load(handle)["pipelineSpec"]["deploymentSpec"]["executors"]
    (container,) = [spec["container"] for name, spec in executors.items() if name.startswith("Pusher")]
    assert "pipeline.pusher.Executor" in json.dumps(container)

"""Compiles the mmfuse pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines.

The local runner executes `create_pipeline` here; on a cluster each component
runs in its own container, so this module only turns the same pipeline into a
pipeline spec that a Kubeflow backend executes, every step in the image built
from the Dockerfile (`mmfuse kubeflow compile --image`), a step with GPUs in
the one built from Dockerfile.gpu (`kubeflow.gpu_image`), each container with
the CPU, memory and GPUs of its `resources` setting. ML Metadata is the
cluster's, hence no metadata path.

The file format follows the name of `output_file`:
- `*.json`: a PipelineJob, for Vertex AI, e.g.
  `google.cloud.aiplatform.PipelineJob(display_name="mmfuse", template_path=path).submit()`;
- `*.yaml`: the bare PipelineSpec, for Kubeflow Pipelines (kfp 2.5's client reads YAML or
  archives, not JSON), e.g. `kfp.Client(host).create_run_from_pipeline_package(path,
  pipeline_root=...)`; the pipeline root has to be given again, as only the JSON records it.
"""
import dataclasses
import json
import os
from typing import Any, Dict

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx import v1 as tfx

from mmfuse.config import Config, ConfigError, StepResources
from pipeline.pipeline import PipelineConfig, create_pipeline

ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec

# Kubeflow's cache would key ExampleGen on the compiled spec alone and so
# reuse it after the data changed; every run there reads the data afresh.
ENABLE_CACHE = False
# The Dockerfile installs the project from /src.
IMAGE_SCHEMA_FILE = "/src/schema/schema.pbtxt"


def compile_pipeline(output_file: str, settings: Config) -> str:
    """Writes the pipeline spec to `output_file` and returns its path.

    Args:
        output_file: `*.json` (a Vertex AI PipelineJob) or `*.yaml` (a
            Kubeflow PipelineSpec).
        settings: the configuration; its `kubeflow` section names the image,
            the data, the pipeline root and the serving directory as the pods
            see them, `resources` what each step's container asks for, and
            every other section is compiled in as it is, so a cluster run
            trains and gates the model `mmfuse run` would.

    Nothing under the data, the pipeline root or the serving directory is read
    or written.
    """
    kubeflow = settings.kubeflow
    missing = [name for name in ("data", "pipeline_root", "serving_dir") if not getattr(kubeflow, name)]
    if missing:
        raise ConfigError("kubeflow compile needs " + ", ".join(f"kubeflow.{name}" for name in missing)
                          + " (or --data, --pipeline-root, --serving-dir)")
    check_resources(settings)
    config = PipelineConfig(data_dir=kubeflow.data, pipeline_root=kubeflow.pipeline_root,
                            serving_dir=kubeflow.serving_dir, settings=settings, metadata_path=None,
                            beam_pipeline_args=tuple(kubeflow.beam_args),
                            schema_file=IMAGE_SCHEMA_FILE, enable_cache=ENABLE_CACHE)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=kubeflow.image))
    job = runner.run(create_pipeline(config), write_out=False)
    set_step_resources(job["pipelineSpec"], settings)
    _write(job, output_file)
    return output_file


def check_resources(settings: Config) -> None:
    """ConfigError naming the setting if a step asks for GPUs without a GPU
    image, or has a limit below its request (which Kubernetes refuses)."""
    for step, wanted in _steps(settings.resources).items():
        name = f"resources.{step}"
        if wanted.gpus and not settings.kubeflow.gpu_image:
            raise ConfigError(f"{name}.gpus needs kubeflow.gpu_image, the image of Dockerfile.gpu")
        for limit, request in (("cpu_limit", "cpu"), ("memory_gb_limit", "memory_gb")):
            if getattr(wanted, limit) is not None and getattr(wanted, limit) < getattr(wanted, request):
                raise ConfigError(f"{name}.{limit} ({getattr(wanted, limit)}) is below "
                                  f"{name}.{request} ({getattr(wanted, request)})")


def set_step_resources(pipeline_spec: Dict[str, Any], settings: Config) -> None:
    """Gives each step's container in `pipeline_spec` (a PipelineSpec as JSON,
    `deploymentSpec.executors.<executor>.container`) the `resources` of its
    step, and a step with GPUs `kubeflow.gpu_image`.

    The compiled spec is edited rather than each component given
    `with_platform_config(ResourceSpec)`: TFX 1.16's step builder builds
    FileBasedExampleGen's container without its platform config, and the
    data step most in need of memory would be left with none. (Its runner's
    per-step image map works, but logs a spurious warning when used.)
    """
    components = pipeline_spec["components"]
    executors = pipeline_spec["deploymentSpec"]["executors"]
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    for step, wanted in _steps(settings.resources).items():
        if step not in tasks:
            raise ValueError(f"resources.{step} names no step of the pipeline")
        executor = components[tasks[step]["componentRef"]["name"]]["executorLabel"]
        container = executors[executor]["container"]
        container["resources"] = json_format.MessageToDict(
            resource_spec(wanted, settings.kubeflow.gpu_type))
        if wanted.gpus:
            container["image"] = settings.kubeflow.gpu_image


def resource_spec(wanted: StepResources, gpu_type: str) -> ResourceSpec:
    """One step's ResourceSpec: cores, and memory in GB (the unit of KFP's own
    `set_memory_limit`); a limit left out is the request."""
    spec = ResourceSpec(
        cpu_request=wanted.cpu, memory_request=wanted.memory_gb,
        cpu_limit=wanted.cpu if wanted.cpu_limit is None else wanted.cpu_limit,
        memory_limit=wanted.memory_gb if wanted.memory_gb_limit is None else wanted.memory_gb_limit)
    if wanted.gpus:
        spec.accelerator.type = gpu_type
        spec.accelerator.count = wanted.gpus
    return spec


def _steps(resources: Any) -> Dict[str, StepResources]:
    return {field.name: getattr(resources, field.name) for field in dataclasses.fields(resources)}


def _write(job: Dict[str, Any], output_file: str) -> None:
    """As KubeflowV2DagRunner writes it: the PipelineJob as JSON, or its bare
    PipelineSpec as YAML."""
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    with open(output_file, "w", encoding="utf-8") as handle:
        if output_file.endswith((".yaml", ".yml")):
            yaml.safe_dump(job["pipelineSpec"], handle, sort_keys=True)
        else:
            json.dump(job, handle, sort_keys=True)

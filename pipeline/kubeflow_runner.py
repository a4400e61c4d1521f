"""Compiles the mmfuse pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines.

The local runner executes `create_pipeline` here; on a cluster each component
runs in its own container, so this module only turns the same pipeline into a
pipeline spec that a Kubeflow backend executes, every step in the image built
from the Dockerfile (`mmfuse kubeflow compile --image`). ML Metadata is the
cluster's, hence no metadata path.

The file format follows the name of `output_file`:
- `*.json`: a PipelineJob, for Vertex AI, e.g.
  `google.cloud.aiplatform.PipelineJob(display_name="mmfuse", template_path=path).submit()`;
- `*.yaml`: the bare PipelineSpec, for Kubeflow Pipelines (kfp 2.5's client reads YAML or
  archives, not JSON), e.g. `kfp.Client(host).create_run_from_pipeline_package(path,
  pipeline_root=...)`; the pipeline root has to be given again, as only the JSON records it.
"""
import os

from tfx import v1 as tfx

from mmfuse.config import Config, ConfigError
from pipeline.pipeline import PipelineConfig, create_pipeline

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
            see them, and every other section is compiled in as it is, so a
            cluster run trains and gates the model `mmfuse run` would.

    Nothing under the data, the pipeline root or the serving directory is read
    or written.
    """
    kubeflow = settings.kubeflow
    missing = [name for name in ("data", "pipeline_root", "serving_dir") if not getattr(kubeflow, name)]
    if missing:
        raise ConfigError("kubeflow compile needs " + ", ".join(f"kubeflow.{name}" for name in missing)
                          + " (or --data, --pipeline-root, --serving-dir)")
    config = PipelineConfig(data_dir=kubeflow.data, pipeline_root=kubeflow.pipeline_root,
                            serving_dir=kubeflow.serving_dir, settings=settings, metadata_path=None,
                            beam_pipeline_args=tuple(kubeflow.beam_args),
                            schema_file=IMAGE_SCHEMA_FILE, enable_cache=ENABLE_CACHE)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=kubeflow.image),
        output_dir=os.path.dirname(output_file),
        output_filename=os.path.basename(output_file))
    runner.run(create_pipeline(config))
    return output_file

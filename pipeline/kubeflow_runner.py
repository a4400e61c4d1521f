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

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tfx import v1 as tfx  # noqa: E402

from pipeline.pipeline import PipelineConfig, create_pipeline  # noqa: E402

# Beam's DirectRunner inside each component's pod, using all of its cores
# (0 workers = one per CPU). For data that outgrows one pod, pass Dataflow's
# arguments here instead: --runner=DataflowRunner, --project, --region,
# --temp_location=gs://..., and --sdk_container_image set to the same image.
BEAM_PIPELINE_ARGS = ("--direct_running_mode=multi_processing", "--direct_num_workers=0")
# Kubeflow's cache would key ExampleGen on the compiled spec alone and so
# reuse it after the data changed; every run there reads the data afresh.
ENABLE_CACHE = False
# The Dockerfile installs the project from /src.
IMAGE_SCHEMA_FILE = "/src/schema/schema.pbtxt"


def compile_pipeline(output_file: str, data_dir: str, pipeline_root: str, serving_dir: str,
                     image: str) -> str:
    """Writes the pipeline spec to `output_file` and returns its path. Nothing
    under `data_dir`, `pipeline_root` or `serving_dir` is read or written."""
    config = PipelineConfig(data_dir=data_dir, pipeline_root=pipeline_root,
                            serving_dir=serving_dir, metadata_path=None,
                            beam_pipeline_args=BEAM_PIPELINE_ARGS, schema_file=IMAGE_SCHEMA_FILE,
                            enable_cache=ENABLE_CACHE)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(output_file),
        output_filename=os.path.basename(output_file))
    runner.run(create_pipeline(config))
    return output_file

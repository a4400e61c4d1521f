"""`create_pipeline`: the mmfuse TFX pipeline as a pure function of its config.

The same function is compiled for Kubeflow (pipeline/kubeflow_runner.py) and
run locally (pipeline/local_runner.py).
"""
import dataclasses
import os
from typing import List, Optional, Sequence

from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec
from tfx.proto import transform_pb2

from dataset.contract import limits_of
from dataset.splits import EVAL, TRAIN
from mmfuse.config import Config, settings_of
from pipeline import release_gate
from pipeline.anomalies_gate import AnomaliesGate
from pipeline.example_gen import CATALOG, USERS, dataset_example_gen
from pipeline.pusher import Pusher
from schema import SCHEMA_FILE
from transform import cached_executor

FEATURE_CACHE = "feature_cache"

MODEL_NAME = "mmfuse"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """One pipeline: where it reads and writes, and its settings
    (mmfuse/config.py), resolved by the runner that runs it."""
    data_dir: str
    pipeline_root: str
    serving_dir: str  # the TF Serving model base: <serving_dir>/<version>/
    settings: Config = dataclasses.field(default_factory=Config)
    metadata_path: Optional[str] = None  # SQLite for local runs; None on Kubeflow
    name: str = MODEL_NAME
    beam_pipeline_args: Sequence[str] = ()
    # Where the curated schema is read from: this checkout locally, the
    # image's copy on Kubeflow (the compiling machine's path means nothing there).
    schema_file: str = SCHEMA_FILE
    # Reuse outputs of earlier runs whose inputs are unchanged; `cache_key`
    # must then change with the data and the code ExampleGen and Transform
    # run, `trainer_cache_key` with the Trainer's code (pipeline/fingerprint.py).
    enable_cache: bool = True
    cache_key: str = ""
    trainer_cache_key: str = ""


def create_pipeline(config: PipelineConfig) -> tfx.dsl.Pipeline:
    """The mmfuse TFX pipeline, ExampleGen to Pusher.

    Args:
        config: the paths and settings of the run; every setting the
            components use comes from `config.settings`, so the local and the
            Kubeflow runner build the same model and apply the same gate.

    Returns:
        A `tfx.dsl.Pipeline` for LocalDagRunner or KubeflowV2DagRunner.
    """
    settings = config.settings
    components: List = []

    # Reads the dataset directory into train/eval interactions and the catalog.
    example_gen = dataset_example_gen(config.data_dir, settings.pipeline.split,
                                      settings.pipeline.user_key_file, config.cache_key,
                                      limits_of(settings.pipeline))
    components.append(example_gen)
    # Statistics of every split, for validation and for people (TFDV).
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    components.append(statistics_gen)
    # The curated schema, the contract every dataset is held to.
    schema_gen = tfx.components.ImportSchemaGen(schema_file=config.schema_file)
    components.append(schema_gen)
    # Compares the data with the schema.
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    components.append(example_validator)
    # Stops the run on any anomaly, before any time is spent on training.
    anomalies_gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])
    components.append(anomalies_gate)
    # Vocabularies and text/image preprocessing, embedded later in the serving
    # graph; the encoders see only what their feature cache lacks.
    transform_settings = settings_of(settings.transform)
    if transform_settings["feature_cache_dir"] is None:
        transform_settings["feature_cache_dir"] = os.path.join(config.pipeline_root, FEATURE_CACHE)
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn="transform.preprocessing.preprocessing_fn",
        custom_config=transform_settings,
        # StatisticsGen already describes the raw data; TFDV's pre- and
        # post-transform statistics would describe it again, and the frozen
        # embeddings' 2,352 floats an item besides.
        disable_statistics=True,
        splits_config=transform_pb2.SplitsConfig(analyze=[TRAIN, CATALOG],
                                                 transform=[TRAIN, EVAL, CATALOG, USERS]))
    transform.executor_spec = executor_spec.BeamExecutorSpec(cached_executor.Executor)
    transform.add_upstream_node(anomalies_gate)
    components.append(transform)
    # Trains the two-tower model on train interactions joined with the catalog and users.
    trainer = tfx.components.Trainer(
        run_fn="trainer.run.run_fn",
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=[TRAIN, CATALOG, USERS]),
        eval_args=tfx.proto.EvalArgs(splits=[EVAL]),
        custom_config={"trainer": settings_of(settings.trainer),
                       "export": settings_of(settings.export),
                       # Keys the cache only (trainer/run.py CACHE_ONLY).
                       "trainer_code": config.trainer_cache_key,
                       # Where the latest blessed model is, to warm-start from.
                       "warm_start_from": config.serving_dir})
    components.append(trainer)
    # The latest blessed model, the baseline a candidate must not fall below.
    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    components.append(model_resolver)
    # Retrieval metrics on the eval split; blesses only a good enough model.
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        example_splits=[EVAL],
        eval_config=release_gate.eval_config(settings.gate))
    components.append(evaluator)
    # Copies a blessed model into the TF Serving layout, with a manifest of
    # its files written last (pipeline/pusher.py).
    pusher = Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=config.serving_dir)))
    components.append(pusher)

    return tfx.dsl.Pipeline(
        pipeline_name=config.name,
        pipeline_root=config.pipeline_root,
        components=components,
        enable_cache=config.enable_cache,
        metadata_connection_config=(
            tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)
            if config.metadata_path else None),
        beam_pipeline_args=list(config.beam_pipeline_args))

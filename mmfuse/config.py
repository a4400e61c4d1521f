"""mmfuse's configuration: every setting of a run, written once with its default
and one line saying what it means.

A configuration is a YAML file of sections (`pipeline`, `transform`, `trainer`,
`gate`, `export`, `kubeflow`, `resources`, `serving`), each a mapping of keys to
values; anything left out takes its default. A setting may itself be a mapping
(`resources.Trainer` holds `cpu`, `gpus`, ...): in YAML it nests, in
`--set` its keys are joined by dots. `--set section.key=value` overrides one
key after the file is read; the value is parsed as YAML (`8`, `0.5`, `null`,
`[id, text]`). Unknown keys and values of the wrong kind raise `ConfigError`
naming the key.

Example:
    >>> config = load_config(None, ["trainer.epochs=8"])
    >>> config.trainer.epochs
    8
    >>> print(to_yaml(config).splitlines()[0])
    pipeline:
"""
import dataclasses
import hashlib
import json
import math
import typing
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key."""


def setting(default: Any, help: str, *, choices: Sequence[Any] = (), minimum: Optional[float] = None,
            maximum: Optional[float] = None):
    """A dataclass field for one setting: its default, what it means, and the
    values it may take."""
    factory = (lambda: list(default)) if isinstance(default, list) else None
    metadata = {"help": help, "choices": tuple(choices), "minimum": minimum, "maximum": maximum}
    if factory:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


MODALITIES = ("id", "text", "image")
SPLIT_METHODS = ("random", "temporal", "last")


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """How a local run reads the data and what it re-uses."""
    split: str = setting("random", "how interactions are split into train and eval: `random` "
                         "(80/20 by a hash; queries by their text), `temporal` (each user's last 20%) or "
                         "`last` (each user's last visit: the rows at their latest timestamp)",
                         choices=SPLIT_METHODS)
    cache: bool = setting(True, "re-use outputs of earlier runs into the same run directory whose "
                          "inputs, settings, data and code are unchanged")
    beam_args: List[str] = setting([], "Apache Beam options of the data steps in a local run, "
                                   "e.g. `[--direct_running_mode=multi_processing]`")
    max_image_bytes: int = setting(20 << 20, "larger image files are skipped like unreadable "
                                   "ones (counted and reported)", minimum=1)
    max_image_pixels: int = setting(40_000_000, "images whose header declares more pixels are "
                                    "skipped before decoding", minimum=1)
    max_text_chars: int = setting(100_000, "longer cells of items.csv or interactions.csv "
                                  "(a title, a description, ...) are an error", minimum=1)
    min_items: int = setting(10, "`mmfuse run` refuses a smaller catalogue: retrieval over it "
                             "would measure nothing", minimum=1)
    user_key_file: str = setting("~/.config/mmfuse/user_key", "key of the hash that replaces "
                                 "user ids as the data is read (created, mode 0600, if missing); "
                                 "clients asking about a user need the same file "
                                 "(docs/privacy.md)")


@dataclasses.dataclass(frozen=True)
class TransformSettings:
    """The vocabularies Transform builds over the training data, and where it
    keeps the encoders' features between runs."""
    text_vocabulary_size: int = setting(30000, "most frequent words of item text and queries "
                                        "kept as tokens; rarer words share one bucket", minimum=1)
    attribute_vocabulary_size: int = setting(5000, "most frequent attribute values "
                                             "(`colour=red`) kept as tokens", minimum=1)
    feature_cache_dir: Optional[str] = setting(None, "where the encoders' features are kept "
                                               "across runs by content, so a run encodes only "
                                               "new or changed text and photos; `null`: "
                                               "`feature_cache` under the pipeline root; `\"\"`: off")


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """The two-tower model and its training. Figures behind the defaults:
    benchmarks/RESULTS.md."""
    modalities: List[str] = setting(list(MODALITIES), "what the towers see of an item: "
                                    "any of `id`, `text`, `image`", choices=MODALITIES)
    epochs: int = setting(5, "passes over the training interactions (0 exports the untrained "
                          "model)", minimum=0)
    seed: int = setting(42, "seed of initialisation, shuffling and dropout")
    batch_size: Optional[int] = setting(None, "interactions per step; `null` sizes it from the "
                                        "data (32 to 1024, at least ~32 steps an epoch)", minimum=1)
    embedding_dim: int = setting(64, "size of the user/query and item vectors", minimum=1)
    learning_rate: float = setting(0.003, "Adam's (peak) learning rate", minimum=0)
    learning_rate_schedule: str = setting("cosine", "`cosine`: from `learning_rate` down to 0 at "
                                          "the last step; `constant`", choices=("cosine", "constant"))
    temperature: float = setting(0.1, "temperature of the in-batch softmax over cosine scores",
                                 minimum=1e-6)
    modality_dropout: float = setting(0.5, "chance that each of an item's modalities is hidden "
                                      "from a training row (one always stays): cold start and "
                                      "photo-only items", minimum=0, maximum=1)
    recent_item_dropout: float = setting(0.3, "share of a user's recent items hidden per "
                                         "training row", minimum=0, maximum=1)
    token_dropout: float = setting(0.3, "share of words and attribute values hidden per "
                                   "training row, against matching by memorised rare words",
                                   minimum=0, maximum=1)
    photo_search_weight: float = setting(0.1, "weight of the task that asks each row's item by "
                                         "its photo alone (teaches image search); 0: off", minimum=0)
    photo_item_weight: float = setting(0.5, "weight of the task that finds each row's item seen "
                                       "by its photo alone (places photo-only items); 0: off",
                                       minimum=0)
    time_dropout: float = setting(1.0, "share of rows whose time of interaction is hidden; 1: "
                                  "the query tower has no time input", minimum=0, maximum=1)
    rating_weight: float = setting(0.0, "weight of a rating-prediction head beside retrieval; "
                                   "0: no head (needs interactions with a rating)", minimum=0)
    id_min_rows: int = setting(5, "training rows an item needs before its id embedding joins "
                               "its content (fewer would be memorised)", minimum=1)
    epoch_eval_rows: Optional[int] = setting(50_000, "eval rows of each epoch's evaluation "
                                             "(TensorBoard's validation loss and retrieval_eval), "
                                             "an even sample: it ranks each against the whole "
                                             "catalogue; `null`: all. The Evaluator, which gates "
                                             "release, ranks all",
                                             minimum=1)
    warm_start: bool = setting(True, "train from the latest blessed model in the run directory "
                               "(ids copied by id, new ones fresh), unless `epochs` is 0")
    warm_start_epochs: int = setting(2, "passes over the training interactions when warm "
                                     "started (at most `epochs`)", minimum=1)
    lexical_weight: float = setting(0.75, "weight of BM25 over item words beside the towers' "
                                    "score in `search`; 0: the towers alone", minimum=0)
    mixed_precision: Optional[str] = setting(None, "Keras mixed precision policy of training: "
                                             "`mixed_float16` (GPUs), `mixed_bfloat16` (TPUs, "
                                             "recent CPUs); the vectors and scores stay float32; "
                                             "`null`: float32 throughout",
                                             choices=("mixed_float16", "mixed_bfloat16"))


@dataclasses.dataclass(frozen=True)
class GateSettings:
    """The release gate: which candidate the Evaluator blesses and the Pusher pushes."""
    k: int = setting(100, "cut-off of the gate's recall@k; smaller catalogues use a tenth of "
                     "their size", minimum=1)
    min_recall: Optional[float] = setting(None, "release floor on recall@k; `null`: twice what "
                                          "ranking at random reaches, at most 0.5",
                                          minimum=0, maximum=1)
    max_regression: float = setting(0.01, "recall@k a candidate may lose against the latest "
                                    "blessed model", minimum=0, maximum=1)


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """What the pushed SavedModel carries besides the towers."""
    title_length: int = setting(80, "characters of each item's title kept in the model, so that "
                                "answers show titles beside ids", minimum=0)
    attributes_length: int = setting(60, "characters of each item's attributes (`colour=red, "
                                     "kind=mug`) kept in the model beside its title", minimum=0)
    buy_again: bool = setting(True, "`recommend` mixes in the user's past items by their "
                              "buy-again probability, learned from the training data "
                              "(trainer/repeat_buying.py); false: the towers' ranking alone")
    # 4.7: the smallest weight that kept recall@20 on new items at EASE's on a validation carve
    # of Online Retail's training data; the trade-off it sets: RESULTS.md, buy-again-tradeoff.
    new_item_weight: float = setting(4.7, "how much the buy-again mix favours items new to the "
                                     "user: a past item takes a slot of `recommend` when its "
                                     "probability beats this times popularity's hit rate there; "
                                     "higher: more new items, fewer past ones", minimum=0.0)
    # Chosen on MovieLens's validation carve: 0.25 to 1 lie within 0.003 of each other in
    # recall@20 and 100, 0.5 the best of both (benchmarks/RESULTS.md).
    item_item_weight: float = setting(0.5, "weight of the item-to-item stage (the user's "
                                      "items against each item, trainer/item_item.py) beside "
                                      "the towers in `recommend`; 0: the towers alone",
                                      minimum=0.0)
    item_item_max_items: int = setting(5000, "largest catalogue that gets the item-to-item "
                                       "stage (its table is items x items)", minimum=0)
    index: str = setting("auto", "top-k over the catalogue: `exact` (every item scored), "
                         "`partitioned` (k-means partitions, each query reading its nearest "
                         "ones, the shortlist re-scored exactly: trainer/index.py) or `auto` "
                         "(partitioned from `index_min_items` items on)",
                         choices=("auto", "exact", "partitioned"))
    index_min_items: int = setting(20_000, "catalogue size from which `auto` uses the "
                                   "partitioned index: from about there it takes less CPU per "
                                   "answer than exact (benchmarks/RESULTS.md)", minimum=1)
    index_partitions: Optional[int] = setting(None, "k-means partitions of the index; `null`: "
                                              "2 sqrt(items), fitted again when the catalogue "
                                              "has grown or shrunk 4x", minimum=1)
    index_probes: int = setting(24, "nearest partitions each query reads (recall against "
                                "cost: benchmarks/RESULTS.md)", minimum=1)
    index_shortlist: int = setting(100, "items per query re-scored exactly (at least k + 2)",
                                   minimum=1)
    index_dtype: str = setting("float32", "how the index stores the vectors it scans: "
                               "`float32`, `bfloat16` or `int8` (a scale per vector); the "
                               "shortlist is re-scored in float32", choices=("float32", "bfloat16",
                                                                          "int8"))


@dataclasses.dataclass(frozen=True)
class KubeflowSettings:
    """`mmfuse kubeflow compile`: where the pods find things and how they run."""
    image: str = setting("mmfuse-pipeline:latest", "container image every step runs in "
                         "(built from the Dockerfile)")
    data: Optional[str] = setting(None, "dataset directory as the pods see it (gs://... or a "
                                  "mounted path)")
    pipeline_root: Optional[str] = setting(None, "where the steps write their outputs")
    serving_dir: Optional[str] = setting(None, "TF Serving model base the Pusher writes to")
    beam_args: List[str] = setting(["--direct_running_mode=multi_processing",
                                    "--direct_num_workers=0"],
                                   "Apache Beam options of the data steps; Dataflow, Flink "
                                   "and Spark: docs/kubeflow.md")
    gpu_image: Optional[str] = setting(None, "container image of the steps with GPUs (built "
                                       "from Dockerfile.gpu); needed once a step has `gpus`")
    gpu_type: str = setting("nvidia.com/gpu", "accelerator of the steps with GPUs: the Kubernetes "
                            "resource on Kubeflow, the type on Vertex AI (e.g. `NVIDIA_TESLA_T4`)")


@dataclasses.dataclass(frozen=True)
class StepResources:
    """What one pipeline step's container asks of the cluster. Kubernetes
    schedules by the requests, Vertex AI sizes its machine by the limits; a
    limit left out is the request, so raising a request raises both."""
    cpu: float = setting(1.0, "CPU cores requested", minimum=0)
    memory_gb: float = setting(2.0, "memory requested, in GB (10^9 bytes, the spec's unit)",
                               minimum=0)
    cpu_limit: Optional[float] = setting(None, "CPU cores at most; `null`: the request",
                                         minimum=0)
    memory_gb_limit: Optional[float] = setting(None, "memory at most, in GB; `null`: the request",
                                               minimum=0)
    gpus: int = setting(0, "GPUs (of `kubeflow.gpu_type`); a step with any runs in "
                        "`kubeflow.gpu_image`", minimum=0)


@dataclasses.dataclass(frozen=True)
class ResourcesSettings:
    """`mmfuse kubeflow compile`: each container step's resources, by its name
    in the pipeline (pipeline/pipeline.py); cores and GB."""
    FileBasedExampleGen: StepResources = setting(StepResources(2.0, 8.0), "reads the dataset, "
                                                 "photos included, into examples (Beam)")
    StatisticsGen: StepResources = setting(StepResources(2.0, 8.0), "statistics of every split "
                                           "(Beam)")
    ImportSchemaGen: StepResources = setting(StepResources(0.5, 2.0), "imports the curated schema")
    ExampleValidator: StepResources = setting(StepResources(1.0, 2.0), "compares the statistics "
                                              "with the schema")
    AnomaliesGate: StepResources = setting(StepResources(0.5, 2.0), "stops the run on any anomaly")
    Transform: StepResources = setting(StepResources(4.0, 16.0), "vocabularies and the text and "
                                       "image encoders (Beam)")
    Trainer: StepResources = setting(StepResources(4.0, 16.0), "trains and exports the model")
    Evaluator: StepResources = setting(StepResources(2.0, 8.0), "the release gate's metrics (Beam)")
    Pusher: StepResources = setting(StepResources(0.5, 2.0), "copies a blessed model to the "
                                    "serving directory")


@dataclasses.dataclass(frozen=True)
class ServingSettings:
    """`mmfuse serve`: the local stand-in for TF Serving."""
    host: str = setting("127.0.0.1", "address to listen on (`0.0.0.0`: every interface)")
    port: int = setting(8500, "gRPC port (0: a free port, printed when serving starts)",
                       minimum=0, maximum=65535)
    rest_port: Optional[int] = setting(None, "REST API port, as TF Serving's --rest_api_port "
                                       "(usually 8501; `null`: none; 0: a free port, printed)",
                                       minimum=0, maximum=65535)
    poll_seconds: float = setting(2.0, "how often to look for a new model version", minimum=0.01)
    max_request_bytes: int = setting(16 << 20, "larger requests are refused "
                                     "(RESOURCE_EXHAUSTED)", minimum=1)
    batching_parameters_file: Optional[str] = setting(None, "TF Serving BatchingParameters "
                                                      "text proto; `null`: "
                                                      "serving/deploy/batching.config")
    intra_op_threads: int = setting(0, "threads one op may use (0: one per core)", minimum=0)
    inter_op_threads: int = setting(0, "threads running a batch's ops (0: the batch thread)",
                                    minimum=0)
    max_encoder_rows: int = setting(8, "rows one `search` or `image_search` request may have "
                                    "(they run the text and image encoders); more is refused "
                                    "(INVALID_ARGUMENT)", minimum=1)
    max_text_bytes: int = setting(4096, "bytes of one query, user or item id; longer is refused "
                                  "(INVALID_ARGUMENT)", minimum=1)
    max_image_pixels: int = setting(4096 * 4096, "pixels (width x height, read from the header "
                                    "before decoding) of one `image_search` image; more is "
                                    "refused (INVALID_ARGUMENT)", minimum=1)
    tls_cert: Optional[str] = setting(None, "PEM certificate chain to serve TLS with (with "
                                      "`tls_key`); `null`: plaintext")
    tls_key: Optional[str] = setting(None, "PEM private key of `tls_cert`")
    tls_client_ca: Optional[str] = setting(None, "PEM CA certificates; when set, clients must "
                                           "present a certificate they signed (mutual TLS)")


@dataclasses.dataclass(frozen=True)
class Config:
    pipeline: PipelineSettings = dataclasses.field(default_factory=PipelineSettings)
    transform: TransformSettings = dataclasses.field(default_factory=TransformSettings)
    trainer: TrainerSettings = dataclasses.field(default_factory=TrainerSettings)
    gate: GateSettings = dataclasses.field(default_factory=GateSettings)
    export: ExportSettings = dataclasses.field(default_factory=ExportSettings)
    kubeflow: KubeflowSettings = dataclasses.field(default_factory=KubeflowSettings)
    resources: ResourcesSettings = dataclasses.field(default_factory=ResourcesSettings)
    serving: ServingSettings = dataclasses.field(default_factory=ServingSettings)


def sections() -> Dict[str, type]:
    return {field.name: field.default_factory for field in dataclasses.fields(Config)}


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """The configuration of `path` (a YAML file; None: all defaults) with each
    `section.key=value` of `overrides` applied in order."""
    values: Dict[str, Dict[str, Any]] = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                document = yaml.safe_load(handle)
        except OSError as error:
            raise ConfigError(f"cannot read configuration {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if document is not None and not isinstance(document, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, not {type(document).__name__}")
        for section, keys in (document or {}).items():
            if keys is None:
                keys = {}
            if not isinstance(keys, dict):
                raise ConfigError(f"{section}: expected a mapping of settings")
            for key, value in keys.items():
                values.setdefault(str(section), {})[str(key)] = value
    for override in overrides:
        name, separator, text = override.partition("=")
        section, dot, key = name.strip().partition(".")
        if not separator or not dot:
            raise ConfigError(f"--set takes section.key=value, not {override!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        _set_nested(values.setdefault(section, {}), section, key.split("."), value)
    return from_dict(values)


def _set_nested(keys: Dict[str, Any], prefix: str, path: Sequence[str], value: Any) -> None:
    """Sets `keys[path[0]][path[1]]... = value`, the mappings on the way made
    as needed (`resources.Trainer.gpus=1` after a file that set `cpu` there)."""
    for part in path[:-1]:
        prefix = f"{prefix}.{part}"
        if keys.get(part) is None:
            keys[part] = {}
        if not isinstance(keys[part], dict):
            raise ConfigError(f"{prefix} takes a mapping of settings, not {keys[part]!r}")
        keys = keys[part]
    keys[path[-1]] = value


def from_dict(values: Mapping[str, Mapping[str, Any]]) -> Config:
    """A `Config` from nested mappings, each value checked against its setting."""
    known = sections()
    built = {}
    for section, keys in values.items():
        if section not in known:
            raise ConfigError(f"unknown section {section!r} (known: {', '.join(known)})")
        built[section] = _settings(section, known[section](), keys)
    return Config(**built)


def _settings(name: str, base: Any, values: Any) -> Any:
    """`base` (a settings dataclass) with the keys of mapping `values` checked
    and replaced; a setting that is itself a dataclass takes a mapping in turn."""
    if values is None:
        return base
    if not isinstance(values, Mapping):
        raise ConfigError(f"{name} takes a mapping of settings, not {values!r}")
    fields = {field.name: field for field in dataclasses.fields(base)}
    hints = typing.get_type_hints(type(base))
    checked = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown setting {name}.{key} (known in {name}: "
                              f"{', '.join(fields)})")
        if dataclasses.is_dataclass(hints[key]):
            checked[key] = _settings(f"{name}.{key}", getattr(base, key), value)
        else:
            checked[key] = _check(f"{name}.{key}", value, hints[key], fields[key].metadata)
    return dataclasses.replace(base, **checked)


def _check(name: str, value: Any, kind: Any, metadata: Mapping[str, Any]) -> Any:
    if typing.get_origin(kind) is typing.Union:  # Optional[X]
        if value is None:
            return None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if typing.get_origin(kind) in (list, List):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} takes a list, not {value!r}")
        item_kind = typing.get_args(kind)[0]
        items = [_check(name, item, item_kind, metadata) for item in value]
        if metadata.get("choices") and not items:
            raise ConfigError(f"{name} needs at least one of {', '.join(metadata['choices'])}")
        return items
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} takes true or false, not {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} takes a whole number, not {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} takes a finite number, not {value!r}")
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} takes text, not {value!r}")
    if metadata.get("choices") and value not in metadata["choices"]:
        raise ConfigError(f"{name} takes one of {', '.join(map(str, metadata['choices']))}, not {value!r}")
    if metadata.get("minimum") is not None and value < metadata["minimum"]:
        raise ConfigError(f"{name} must be at least {metadata['minimum']}, not {value!r}")
    if metadata.get("maximum") is not None and value > metadata["maximum"]:
        raise ConfigError(f"{name} must be at most {metadata['maximum']}, not {value!r}")
    return value


def to_dict(config: Config) -> Dict[str, Dict[str, Any]]:
    return dataclasses.asdict(config)


def to_yaml(config: Config) -> str:
    """The effective configuration as YAML: each section, its settings under it."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=False)


def config_hash(config: Config) -> str:
    """A short digest of the effective configuration, for run records."""
    text = json.dumps(to_dict(config), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def reference() -> str:
    """A Markdown table of every setting, its default and what it means,
    generated from the descriptions above (the README's configuration reference).
    A setting that is a group of settings (`resources.Trainer`) shows its
    defaults on one row; the group's keys follow once, as `<step>`'s."""
    lines = ["| setting | default | meaning |", "| --- | --- | --- |"]
    for section, cls in sections().items():
        groups = {}
        for field in dataclasses.fields(cls):
            default = field.default_factory() if field.default is dataclasses.MISSING else field.default
            if dataclasses.is_dataclass(default):
                groups[type(default)] = True
                default = dataclasses.asdict(default)
            shown = json.dumps(default) if not isinstance(default, str) else default
            lines.append(f"| `{section}.{field.name}` | `{shown}` | {field.metadata['help']} |")
        for group in groups:
            for field in dataclasses.fields(group):
                lines.append(f"| `{section}.<step>.{field.name}` | | {field.metadata['help']} |")
    return "\n".join(lines) + "\n"


def settings_of(section_config: Any) -> Dict[str, Any]:
    """One section as a plain dict (e.g. the Trainer's `custom_config`)."""
    return dataclasses.asdict(section_config)


def flag_overrides(pairs: Sequence[Tuple[str, Any]]) -> List[str]:
    """`--set` strings for the CLI's shorthand flags that were given (value not None)."""
    return [f"{key}={json.dumps(value)}" for key, value in pairs if value is not None]

"""`mmfuse report`: one HTML page about a pipeline run, for people.

The page holds everything inline (CSS, plots as SVG, photos as small JPEG
data: URIs), so it can be mailed or archived alone. It reads what the run
recorded: the newest pipeline run in RUN_DIR/metadata.sqlite names the
artifacts of each component (cached ones included), and each section is made
from one of them:

- data: StatisticsGen's statistics as a table per split and TFDV's Facets
  view (which loads its scripts from the internet), ExampleValidator's anomalies;
- training: the Trainer's TensorBoard logs (losses and eval-split retrieval
  metrics per epoch);
- the release gate: the Evaluator's metrics and blessing (pipeline/release_gate.py);
- attention: how much the item tower attends to each modality, per epoch;
- sample answers: the newest pushed SavedModel asked, as `mmfuse predict`
  asks it, for the most active users and the most frequent searches of the
  run's dataset, with the items' photos.

A section whose record is missing (a run stopped by an anomaly, 0 epochs,
no baseline yet) says so instead.
"""
import base64
import collections
import dataclasses
import datetime
import html
import io
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from mmfuse.config import PipelineSettings

REPORT_FILE = "report.html"
METADATA_FILE = "metadata.sqlite"  # `mmfuse run`'s MLMD store in RUN_DIR
COMPONENTS = ("FileBasedExampleGen", "StatisticsGen", "ExampleValidator", "Trainer",
              "Evaluator", "Pusher")
# The Trainer's TensorBoard runs (trainer/run.py): Keras' losses, and the
# eval split's retrieval metrics and modality attention.
TRAIN_RUN, VALIDATION_RUN, RETRIEVAL_RUN = "train", "validation", "retrieval_eval"
ATTENTION = "modality_attention/"
ATTENTION_DISTRIBUTION = "modality_attention_distribution/"
SAMPLE_QUESTIONS = 3  # users, and searches
ANSWER_K = 5
THUMBNAIL_PIXELS = 96  # longest side; about 3 KB a photo


class RunDirError(ValueError):
    """RUN_DIR holds no pipeline run to report on."""


@dataclasses.dataclass
class RunRecords:
    """Where a run's records are; None for what the run did not record."""
    run_dir: str
    statistics: Optional[str] = None  # StatisticsGen's output directory
    anomalies: Optional[str] = None  # ExampleValidator's
    model_run: Optional[str] = None  # the Trainer's TensorBoard logs
    evaluation: Optional[str] = None  # the Evaluator's TFMA output
    blessed: Optional[bool] = None
    model_base: Optional[str] = None  # the Pusher's TF Serving model base
    data_dir: Optional[str] = None  # ExampleGen's dataset directory
    user_key_file: Optional[str] = None


def read_run(run_dir: str) -> RunRecords:
    """The records of the newest pipeline run into `run_dir`; RunDirError
    when it is not a run directory or no run was recorded there."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    from pipeline import local_runner

    if not os.path.isdir(run_dir):
        raise RunDirError(f"run directory {run_dir} does not exist")
    metadata = os.path.join(run_dir, METADATA_FILE)
    if not os.path.isfile(metadata):
        raise RunDirError(f"{run_dir} is not a run directory: it has no {METADATA_FILE} "
                          "(`mmfuse run --out DIR` writes one)")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    executions = local_runner.executions_of_run(store, components=COMPONENTS)
    if not executions:
        raise RunDirError(f"{metadata} records no pipeline run")
    outputs = local_runner.outputs_of_run(store, components=COMPONENTS)
    records = RunRecords(run_dir=os.path.abspath(run_dir))
    records.statistics = _uri(outputs.get("ExampleStatistics"))
    records.anomalies = _uri(outputs.get("ExampleAnomalies"))
    records.model_run = _uri(outputs.get("ModelRun"))
    records.evaluation = _uri(outputs.get("ModelEvaluation"))
    blessing = outputs.get("ModelBlessing")
    if blessing is not None:
        records.blessed = bool(blessing.custom_properties["blessed"].int_value)
    for execution in executions:
        properties = {name: value.string_value for name, value in execution.custom_properties.items()}
        if "input_base" in properties:  # ExampleGen
            records.data_dir = properties["input_base"]
            custom = json.loads(properties.get("custom_config") or "{}")
            records.user_key_file = custom.get("custom_config", {}).get("value", {}).get("user_key_file")
        if "push_destination" in properties:  # Pusher
            destination = json.loads(properties["push_destination"])
            records.model_base = destination.get("filesystem", {}).get("base_directory")
    return records


def _uri(artifact) -> Optional[str]:
    return artifact.uri if artifact is not None and os.path.isdir(artifact.uri) else None


def write_report(run_dir: str, out: Optional[str] = None) -> str:
    """Writes the report of the newest run into `run_dir`.

    Args:
        run_dir: `mmfuse run`'s --out directory.
        out: the HTML file to write; default RUN_DIR/report.html.

    Returns:
        The path written. Raises RunDirError for a directory without a run.
    """
    records = read_run(run_dir)
    out = out or os.path.join(run_dir, REPORT_FILE)
    page = render(records)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        handle.write(page)
    return out


def render(records: RunRecords) -> str:
    """The whole page for `records`."""
    events = read_events(records.model_run) if records.model_run else {}
    sections = [
        ("data", "Data", data_section(records.statistics, records.anomalies)),
        ("training", "Training", training_section(records.model_run, events)),
        ("gate", "Release gate", gate_section(records.evaluation, records.blessed)),
        ("attention", "Attention per modality", attention_section(records.model_run, events)),
        ("answers", "Sample answers", answers_section(records)),
    ]
    contents = "".join(f'<li><a href="#{anchor}">{title}</a></li>' for anchor, title, _ in sections)
    body = "".join(f'<section id="{anchor}"><h2>{title}</h2>{html_}</section>'
                   for anchor, title, html_ in sections)
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>mmfuse run report: {_text(records.run_dir)}</title><style>{STYLE}</style></head>"
            f"<body><h1>mmfuse run report</h1>"
            f"<p class=\"meta\">run {_text(records.run_dir)}; dataset {_text(records.data_dir or '?')}; "
            f"written {generated}</p><ul class=\"contents\">{contents}</ul>{body}</body></html>\n")


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
.meta, .note { color: #555; } .note { background: #f6f6f0; padding: .4em .7em; border-left: 3px solid #cc9; }
table { border-collapse: collapse; margin: .5em 1.5em 1em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; } td.n { text-align: right; }
caption { text-align: left; font-weight: bold; padding: 2px 0; }
.tables { display: flex; flex-wrap: wrap; align-items: flex-start; }
.plots { display: flex; flex-wrap: wrap; } .plots svg { width: 520px; height: auto; }
.blessed { color: #060; font-weight: bold; } .refused { color: #a00; font-weight: bold; }
.answer { display: inline-block; vertical-align: top; width: 520px; margin: 0 1em 1em 0; }
.answer ol { padding-left: 1.5em; } .answer li { min-height: 52px; margin: 4px 0; }
.answer img, .answer .nophoto { width: 48px; height: 48px; object-fit: cover; float: left;
  margin-right: 8px; background: #eee; }
.contents li { display: inline; margin-right: 1em; }
"""


def _text(value) -> str:
    return html.escape(str(value))


def _note(text: str) -> str:
    return f'<p class="note">{_text(text)}</p>'


def _table(header: Sequence[str], rows: Iterable[Sequence], caption: str = "") -> str:
    """An HTML table; numbers are right-aligned and floats shown to 4 places."""
    def cell(value):
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            shown = f"{value:.4f}" if isinstance(value, (float, np.floating)) else f"{value:,}"
            return f'<td class="n">{shown}</td>'
        return f"<td>{_text(value)}</td>"
    head = "".join(f"<th>{_text(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(cell(value) for value in row) + "</tr>" for row in rows)
    caption = f"<caption>{_text(caption)}</caption>" if caption else ""
    return f"<table>{caption}<tr>{head}</tr>{body}</table>"


def _split_dirs(artifact_dir: str) -> Dict[str, str]:
    """A TFX artifact's per-split directories (Split-<name>), by split name."""
    return {name[len("Split-"):]: os.path.join(artifact_dir, name)
            for name in sorted(os.listdir(artifact_dir)) if name.startswith("Split-")}


# --- data ------------------------------------------------------------------

def data_section(statistics_dir: Optional[str], anomalies_dir: Optional[str]) -> str:
    """Per split, each feature's count, missing rows, and distinct values or
    mean (from StatisticsGen), TFDV's Facets view of train against eval, and
    ExampleValidator's anomalies."""
    parts = []
    if statistics_dir is None:
        parts.append(_note("This run recorded no statistics (StatisticsGen did not run)."))
    else:
        statistics = _read_statistics(statistics_dir)
        parts.append('<div class="tables">' + "".join(
            _statistics_table(split, stats) for split, stats in statistics.items()) + "</div>")
        parts.append(_facets(statistics))
    parts.append("<h3>Anomalies</h3>")
    if anomalies_dir is None:
        parts.append(_note("This run recorded no anomalies check (ExampleValidator did not run)."))
    else:
        parts.append(_anomalies(anomalies_dir))
    return "".join(parts)


def _read_statistics(statistics_dir: str) -> Dict:
    import tensorflow_data_validation as tfdv

    return {split: tfdv.load_stats_binary(os.path.join(path, "FeatureStats.pb"))
            for split, path in _split_dirs(statistics_dir).items()
            if os.path.exists(os.path.join(path, "FeatureStats.pb"))}


def _statistics_table(split: str, statistics) -> str:
    dataset = statistics.datasets[0]
    rows = []
    for feature in dataset.features:
        kind = feature.WhichOneof("stats")
        stats = getattr(feature, kind)
        common = stats.common_stats
        if kind == "num_stats":
            summary = f"mean {stats.mean:.4g}"
        elif kind == "string_stats":
            summary = f"{stats.unique:,} distinct"
        else:
            summary = ""
        rows.append(("/".join(feature.path.step) or feature.name, common.num_non_missing,
                     common.num_missing, summary))
    return _table(("feature", "present", "missing", "values"), rows,
                  caption=f"{split}: {dataset.num_examples:,} examples")


def _facets(statistics: Dict) -> str:
    """TFDV's own rendering (Facets Overview) of train against eval. It
    fetches its web components from the internet when the page is opened, so
    it is folded away, and stays blank offline; the tables above hold the
    same counts."""
    from tensorflow_data_validation.utils import display_util

    if "train" not in statistics:
        return ""
    facets = display_util.get_statistics_html(
        statistics["train"], statistics.get("eval"), lhs_name="train", rhs_name="eval")
    return ("<details><summary>TFDV's Facets view of train and eval (needs the internet: it "
            "loads its scripts from cdnjs and GitHub; offline it stays blank)</summary>"
            f"{facets}</details>")


def _anomalies(anomalies_dir: str) -> str:
    from tensorflow_data_validation.utils import display_util
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    parts = []
    for split, path in _split_dirs(anomalies_dir).items():
        with open(os.path.join(path, "SchemaDiff.pb"), "rb") as handle:
            anomalies = anomalies_pb2.Anomalies.FromString(handle.read())
        table = display_util.get_anomalies_dataframe(anomalies)
        if not table.empty:
            parts.append(f"<h4>{_text(split)}</h4>" + table.to_html(border=0))
    if not parts:
        return "<p>ExampleValidator found no anomaly in any split against the curated schema.</p>"
    return "".join(parts)


# --- training and attention ------------------------------------------------

Series = Dict[str, List[Tuple[int, np.ndarray]]]


def read_events(model_run_dir: str) -> Dict[str, Series]:
    """The Trainer's TensorBoard summaries: run -> tag -> [(epoch, value)].
    TF2 writes scalars and histograms as tensor summaries."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    runs = {}
    for run in (TRAIN_RUN, VALIDATION_RUN, RETRIEVAL_RUN):
        path = os.path.join(model_run_dir, run)
        if not os.path.isdir(path):
            continue
        events = event_accumulator.EventAccumulator(
            path, size_guidance={event_accumulator.TENSORS: 0})
        events.Reload()
        runs[run] = {tag: [(event.step, tf.make_ndarray(event.tensor_proto))
                           for event in events.Tensors(tag)]
                     for tag in events.Tags()["tensors"]}
    return runs


def _epochs(series: Series, tag: str) -> Tuple[List[int], List[float]]:
    """One scalar tag's values by epoch, epochs counted from 1."""
    points = series.get(tag, [])
    return [step + 1 for step, _ in points], [float(value) for _, value in points]


def training_section(model_run_dir: Optional[str], events: Dict[str, Series]) -> str:
    """Training and validation loss, and the eval split's retrieval metrics, per epoch."""
    if model_run_dir is None:
        return _note("This run has no Trainer logs (the Trainer did not run).")
    losses = {name: _epochs(events.get(run, {}), "epoch_loss")
              for name, run in (("training loss", TRAIN_RUN), ("validation loss", VALIDATION_RUN))}
    retrieval = events.get(RETRIEVAL_RUN, {})
    metrics = {tag: _epochs(retrieval, tag) for tag in sorted(retrieval)
               if not tag.startswith((ATTENTION, ATTENTION_DISTRIBUTION))}
    if not any(epochs for epochs, _ in list(losses.values()) + list(metrics.values())):
        return _note("The Trainer logged no epoch (a run with 0 epochs exports the untrained "
                     "model): no curves.")
    plots = [_line_plot(losses, "loss per epoch", "loss"),
             _line_plot(metrics, "eval split, per epoch", "value")]
    last = [(tag, values[-1]) for tag, (_, values) in {**losses, **metrics}.items() if values]
    return ('<div class="plots">' + "".join(plots) + "</div>"
            + _table(("figure", "last epoch"), last))


def attention_section(model_run_dir: Optional[str], events: Dict[str, Series]) -> str:
    """The item tower's mean attention to each modality per epoch (over the
    catalogue's items that have it), and its spread over items at the last epoch."""
    retrieval = events.get(RETRIEVAL_RUN, {})
    means = {tag[len(ATTENTION):]: _epochs(retrieval, tag) for tag in sorted(retrieval)
             if tag.startswith(ATTENTION)}
    if model_run_dir is None or not any(epochs for epochs, _ in means.values()):
        return _note("No attention was logged (the Trainer did not run, or ran 0 epochs).")
    spreads = {tag[len(ATTENTION_DISTRIBUTION):]: points[-1][1] for tag, points in retrieval.items()
               if tag.startswith(ATTENTION_DISTRIBUTION) and points}
    plots = [_line_plot(means, "mean attention per epoch", "attention weight")]
    if spreads:
        plots.append(_histogram_plot(spreads, "attention over items, last epoch"))
    return ('<div class="plots">' + "".join(plots) + "</div>"
            + _table(("modality", "mean attention, last epoch"),
                     [(name, values[-1]) for name, (_, values) in means.items() if values]))


def _figure():
    from matplotlib.figure import Figure

    return Figure(figsize=(6.5, 3.6), layout="constrained")


def _svg(figure) -> str:
    """The figure as inline SVG, its text kept as text (smaller, selectable)."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]


def _line_plot(lines: Dict[str, Tuple[List[int], List[float]]], title: str, ylabel: str) -> str:
    figure = _figure()
    axes = figure.subplots()
    for name, (epochs, values) in lines.items():
        if epochs:
            axes.plot(epochs, values, marker="o", label=name)
    axes.set(title=title, xlabel="epoch", ylabel=ylabel)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _svg(figure)


def _histogram_plot(histograms: Dict[str, np.ndarray], title: str) -> str:
    """TensorBoard's histograms: rows of (left edge, right edge, count)."""
    figure = _figure()
    axes = figure.subplots()
    for name, buckets in histograms.items():
        buckets = np.asarray(buckets).reshape(-1, 3)
        axes.stairs(buckets[:, 2], np.append(buckets[:, 0], buckets[-1, 1]), label=name)
    axes.set(title=title, xlabel="attention weight", ylabel="items")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _svg(figure)


# --- release gate ----------------------------------------------------------

def gate_section(evaluation_dir: Optional[str], blessed: Optional[bool]) -> str:
    """The Evaluator's decision: recall at the gate's cut-off for the
    candidate and the latest blessed model, the floor, and why."""
    from pipeline import local_runner, release_gate as gate

    if evaluation_dir is None:
        return _note("This run has no evaluation (the Evaluator did not run).")
    evaluated = local_runner.candidate_metrics(evaluation_dir)
    metrics, change = evaluated["metrics"], evaluated["change_vs_baseline"]
    if not metrics:
        return _note(f"The Evaluator's output in {evaluation_dir} holds no metrics.")
    cutoff = int(metrics.get(gate.CUTOFF, 0))
    decision = ('<span class="blessed">blessed</span>: pushed to serving' if blessed else
                '<span class="refused">not blessed</span>: not pushed')
    reason = local_runner.validation_summary(evaluation_dir)
    # TFMA reports the baseline as the candidate's figure minus its change.
    baseline = {name: metrics[name] - change[name] for name in change if name in metrics}
    gate_rows = [
        ("candidate", metrics.get(gate.RECALL)),
        ("latest blessed model (baseline)",
         baseline[gate.RECALL] if gate.RECALL in baseline else "none: no model was blessed before"),
        ("release floor", metrics.get(gate.FLOOR)),
        ("allowed fall against the baseline",
         _allowed_regression(evaluation_dir) if baseline else "not checked: no baseline"),
    ]
    figures = sorted(name for name in metrics if "@" in name or name == "mrr")
    return (f"<p>Decision: {decision}"
            + ("" if reason == "ok" else f" ({_text(reason)})") + ".</p>"
            + f"<p>The gate's metric is recall@{cutoff} on the eval split, over a catalogue of "
              f"{int(metrics.get(gate.CATALOGUE_SIZE, 0)):,} items (pipeline/release_gate.py).</p>"
            + _table(("", f"recall@{cutoff}"), gate_rows)
            + _table(("metric", "candidate", "baseline", "change"),
                     [(name, metrics[name], baseline.get(name, "-"), change.get(name, "-"))
                      for name in figures], caption="Eval split metrics"))


def _allowed_regression(evaluation_dir: str):
    """The gate's `max_regression`, from the EvalConfig the Evaluator ran
    (which has it only when there was a baseline)."""
    import tensorflow_model_analysis as tfma

    from pipeline import release_gate as gate

    config = tfma.load_eval_result(evaluation_dir).config
    for spec in config.metrics_specs:
        for metric in spec.metrics:
            if (metric.class_name == gate.ReleaseMargin.__name__
                    and metric.threshold.HasField("change_threshold")):
                return abs(metric.threshold.change_threshold.absolute.value)
    return "-"


# --- sample answers --------------------------------------------------------

def answers_section(records: RunRecords, questions: int = SAMPLE_QUESTIONS,
                    k: int = ANSWER_K) -> str:
    """The top `k` of the newest pushed model for the dataset's `questions`
    most active users and most frequent searches, each item with its photo."""
    import tensorflow as tf

    from dataset import pseudonyms
    from dataset.contract import DatasetError, read_dataset
    from serving import client, model_store

    if not records.model_base:
        return _note("This run pushed no model (the Pusher did not run).")
    try:
        version, model = model_store.load_newest(records.model_base)
    except (OSError, ValueError, tf.errors.OpError) as error:
        return _note(f"No pushed model to ask: {error}")
    if not records.data_dir:
        return _note("The run does not record its dataset directory: no users or searches to ask.")
    try:
        dataset = read_dataset(records.data_dir, check_images=False)
    except DatasetError as error:
        return _note(f"Cannot read the run's dataset for users and searches: {error}")
    parts = [f"<p>Model version {version} in {_text(records.model_base)}, top {k}.</p>"]
    users = _most_frequent(row.user_id for row in dataset.interactions)[:questions]
    key = None
    if users and records.user_key_file and os.path.exists(records.user_key_file):
        key = pseudonyms.load_key(records.user_key_file)
    elif users:
        parts.append(_note(f"The run's user key ({records.user_key_file}) is not here: the "
                           "model knows users only by their pseudonyms, so no user is asked."))
        users = []
    asked = [({"user": user}, f"user {user}") for user in users]
    asked += [({"text": text}, repr(text))
              for text in _most_frequent(row.query for row in dataset.interactions)[:questions]]
    if not asked:
        parts.append(_note("The dataset has no users or searches to ask about."))
    photos = {}
    for question, subject in asked:
        signature, inputs = client.question(**question, user_key=key)
        answer = client.ask_saved_model(model, version, signature, inputs, k)
        parts.append(_answer_card(answer, subject, dataset.items, photos,
                                  user_asked="user" in question))
    return "".join(parts)


def _most_frequent(values: Iterable[str]) -> List[str]:
    """Distinct non-empty values, most frequent first (ties by value)."""
    counts = collections.Counter(value for value in values if value)
    return sorted(counts, key=lambda value: (-counts[value], value))


def _answer_card(answer, subject: str, items: Dict, photos: Dict[str, str],
                 user_asked: bool) -> str:
    rows = []
    for item_id, score, title in zip(answer.item_ids[0], answer.scores[0], answer.titles[0]):
        item = items.get(item_id)
        if item_id not in photos:
            photos[item_id] = thumbnail(item.image_path) if item and item.image_path else ""
        photo = (f'<img alt="" src="{photos[item_id]}">' if photos[item_id]
                 else '<span class="nophoto"></span>')
        rows.append(f"<li>{photo}<b>{_text(title or (item.title if item else ''))}</b><br>"
                    f"<small>{_text(item_id)} &middot; score {score:.4f}</small></li>")
    unknown = ""
    if user_asked and answer.known_user is not None and not answer.known_user[0]:
        unknown = _note("This user is unknown to the model: the cold-start answer.")
    return (f'<div class="answer"><h3>{_text(answer.signature)} {_text(subject)}</h3>{unknown}'
            f"<ol>{''.join(rows)}</ol></div>")


def thumbnail(path: str, pixels: int = THUMBNAIL_PIXELS,
              max_bytes: int = PipelineSettings().max_image_bytes) -> str:
    """A photo as a JPEG data: URI at most `pixels` on its longest side; ""
    when it is missing, too large or unreadable (the item shows its title alone)."""
    from PIL import Image

    try:
        if os.path.getsize(path) > max_bytes:
            return ""
        with Image.open(path) as image:
            image.draft("RGB", (pixels, pixels))  # JPEG decodes at a fraction of its size
            image = image.convert("RGB")
            image.thumbnail((pixels, pixels))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError, Image.DecompressionBombError):
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

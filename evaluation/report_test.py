"""The run report's parts on small inputs made here; the whole page of a real
run is tests/report_e2e_test.py."""
import base64
import html.parser
import io

import pytest
import tensorflow as tf
from PIL import Image

from evaluation import report

VOID = {"meta", "img", "br", "hr", "input", "link", "source", "wbr"}


class _Nesting(html.parser.HTMLParser):
    """Checks that every element is closed, in order (void elements aside)."""

    def __init__(self):
        super().__init__()
        self.open = []
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1:]}>"
        self.open.pop()


def parsed(page: str) -> _Nesting:
    """The page's tags (tag, attributes), once it parses with all elements closed."""
    parser = _Nesting()
    parser.feed(page)
    parser.close()
    assert parser.open == [], f"unclosed: {parser.open}"
    return parser


def _write_logs(log_dir, epochs: int):
    """TensorBoard logs as the Trainer writes them (trainer/run.py): Keras'
    epoch losses, and the eval split's metrics and attention."""
    values = {"train": {"epoch_loss": [90.0, 60.0, 50.0]},
              "validation": {"epoch_loss": [700.0, 650.0, 640.0]},
              "retrieval_eval": {"recall@10": [0.1, 0.2, 0.25],
                                 "modality_attention/image": [0.4, 0.5, 0.6],
                                 "modality_attention/words": [0.6, 0.5, 0.4]}}
    for run, tags in values.items():
        writer = tf.summary.create_file_writer(str(log_dir / run))
        with writer.as_default():
            for epoch in range(epochs):
                for tag, series in tags.items():
                    tf.summary.scalar(tag, series[epoch], step=epoch)
                if run == "retrieval_eval":
                    tf.summary.histogram("modality_attention_distribution/image",
                                         [0.3, 0.5, 0.55, 0.7], step=epoch)
        writer.close()


def test_training_and_attention_plot_the_logged_epochs(tmp_path):
    _write_logs(tmp_path, epochs=3)
    events = report.read_events(str(tmp_path))
    assert report._epochs(events["retrieval_eval"], "recall@10") == (
        [1, 2, 3], pytest.approx([0.1, 0.2, 0.25]))
    training = report.training_section(str(tmp_path), events)
    attention = report.attention_section(str(tmp_path), events)
    for section in (training, attention):
        parsed(section)
    assert training.count("<svg") == 2 and "validation loss" in training
    assert ">640.0000<" in training  # the last epoch's validation loss, in the table
    assert attention.count("<svg") == 2  # the means per epoch, and the last spread
    assert "image" in attention and ">0.6000<" in attention


def test_a_run_of_zero_epochs_says_it_has_no_curves(tmp_path):
    _write_logs(tmp_path, epochs=0)
    events = report.read_events(str(tmp_path))
    assert "0 epochs" in report.training_section(str(tmp_path), events)
    assert "0 epochs" in report.attention_section(str(tmp_path), events)
    assert "<svg" not in report.training_section(str(tmp_path), events)


def test_every_section_says_what_is_missing_and_the_page_still_parses(tmp_path):
    records = report.RunRecords(run_dir=str(tmp_path))
    page = report.render(records)
    tags = parsed(page).tags
    assert [attrs["id"] for tag, attrs in tags if tag == "section"] == [
        "data", "training", "gate", "attention", "answers"]
    for missing in ("StatisticsGen did not run", "ExampleValidator did not run",
                    "the Trainer did not run", "the Evaluator did not run",
                    "the Pusher did not run"):
        assert missing in page


def test_answers_without_a_pushed_model_say_so(tmp_path):
    records = report.RunRecords(run_dir=str(tmp_path), model_base=str(tmp_path / "serving"))
    assert "No pushed model to ask" in report.answers_section(records)


def test_a_photo_becomes_a_small_jpeg_data_uri(tmp_path):
    Image.new("RGB", (640, 320), (200, 30, 30)).save(tmp_path / "wide.png")
    uri = report.thumbnail(str(tmp_path / "wide.png"))
    assert uri.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as small:
        assert small.size == (report.THUMBNAIL_PIXELS, report.THUMBNAIL_PIXELS // 2)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    assert report.thumbnail(str(tmp_path / "broken.jpg")) == ""
    assert report.thumbnail(str(tmp_path / "absent.jpg")) == ""
    assert report.thumbnail(str(tmp_path / "wide.png"), max_bytes=10) == ""


def test_sample_questions_are_the_most_frequent_first():
    assert report._most_frequent(["b", "a", "", "b", "c", "a", "b"]) == ["b", "a", "c"]


def test_a_directory_without_a_run_is_refused(tmp_path):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    with pytest.raises(report.RunDirError, match="does not exist"):
        report.read_run(str(tmp_path / "absent"))
    with pytest.raises(report.RunDirError, match="has no metadata.sqlite"):
        report.read_run(str(tmp_path))
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(tmp_path / "metadata.sqlite")
    metadata_store.MetadataStore(config)  # an empty store
    with pytest.raises(report.RunDirError, match="records no pipeline run"):
        report.read_run(str(tmp_path))

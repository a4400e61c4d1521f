"""`mmfuse report` on the sample run (tests/conftest.py), as the README writes it."""
import re

import pytest

from evaluation.report_test import parsed
from mmfuse.cli import main
from tests.readme_test import _readme_commands


@pytest.mark.slow
def test_the_report_of_the_sample_run(sample_run, tmp_path, monkeypatch, capsys):
    """The README's command in a directory laid out as `make run` leaves it;
    the page holds every section, plots, the gate's decision and sample
    answers with their titles and photos inline."""
    out = sample_run["root"] / "out"
    run_dir = tmp_path / "runs" / "sample"
    run_dir.mkdir(parents=True)
    for name in ("metadata.sqlite", "pipeline", "serving"):
        (run_dir / name).symlink_to(out / name)
    monkeypatch.chdir(tmp_path)
    (_, words), = _readme_commands("mmfuse report")
    assert main(words[1:]) == 0
    assert capsys.readouterr().out.strip() == "wrote runs/sample/report.html"
    page = (run_dir / "report.html").read_text(encoding="utf-8")

    tags = parsed(page).tags
    assert [attrs["id"] for tag, attrs in tags if tag == "section"] == [
        "data", "training", "gate", "attention", "answers"]
    assert "did not run" not in page and "no epoch" not in page
    # Statistics per split, from StatisticsGen, and TFDV's anomalies check.
    for split in ("train", "eval", "catalog", "users"):
        assert re.search(rf"<caption>{split}: [\d,]+ examples</caption>", page), split
    assert "found no anomaly" in page
    # Curves of the 3 epochs, and attention for each modality of the item tower.
    assert page.count("<svg") == 4
    assert "recall@10" in page and "validation loss" in page
    for modality in ("item_id", "words", "image"):
        assert f"<td>{modality}</td>" in page
    # The gate's decision, with the first run's missing baseline.
    assert '<span class="blessed">blessed</span>' in page
    assert sample_run["result"]["blessed"] is True
    recall = sample_run["result"]["metrics"]["release_recall"]
    assert f'<td class="n">{recall:.4f}</td>' in page
    assert "none: no model was blessed before" in page
    # Three users and three searches, five answers each, titled, with photos.
    answers = re.findall(r'<div class="answer"><h3>(\w+) ', page)
    assert answers == ["recommend"] * 3 + ["search"] * 3
    titles = re.findall(r"<li>(?:<img[^>]*>|<span[^>]*></span>)<b>([^<]*)</b>", page)
    assert len(titles) == 30
    known = {row["title"] for row in sample_run["items"].values()}
    assert set(titles) <= known
    photos = [attrs["src"] for tag, attrs in tags if tag == "img"]
    assert len(photos) >= 15 and all(src.startswith("data:image/jpeg;base64,") for src in photos)
    # Nothing but TFDV's Facets view (folded away) loads from outside the page.
    facets = re.search(r"<details>.*?</details>", page, flags=re.S).group(0)
    assert "facets" in facets
    assert not re.search(r'(?:src|href)="(?!#|data:)', page.replace(facets, ""))
    assert len(page) < 1_000_000


def test_the_run_names_its_report(sample_run):
    assert f"[mmfuse] report: mmfuse report {sample_run['root'] / 'out'}" in (
        sample_run["stdout"].splitlines())

"""RESULTS.md sections: each benchmark replaces its own and nothing else."""
import os

import pytest

from benchmarks import results


def test_a_section_is_added_then_replaced_leaving_the_rest(tmp_path):
    path = str(tmp_path / "RESULTS.md")
    results.write_section(path, "serving", "## Serving\n\nold table\n")
    results.write_section(path, "quality-movielens", "## MovieLens\n\nfigures\n")
    with open(path) as handle:
        first = handle.read()
    assert first.startswith(results.HEADER)
    results.write_section(path, "serving", "## Serving\n\nnew table\n")
    with open(path) as handle:
        second = handle.read()
    assert second == first.replace("old table", "new table")
    assert second.index("<!-- begin serving -->") < second.index("<!-- begin quality-movielens -->")
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
    assert os.listdir(tmp_path) == ["RESULTS.md"]


def test_a_section_without_its_end_marker_is_refused(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# R\n\n<!-- begin serving -->\nhalf\n")
    with pytest.raises(ValueError, match="no <!-- end serving -->"):
        results.write_section(str(path), "serving", "x")
    assert path.read_text() == "# R\n\n<!-- begin serving -->\nhalf\n"


def test_tables_and_sections_read_as_markdown():
    assert results.markdown_table(["a", "b"], [[1, None], ["x|y", "z"]]).splitlines() == [
        "| a | b |", "| --- | --- |", "| 1 | - |", "| x\\|y | z |"]
    text = results.render_section("T", "cmd --x", ["| a |"], measured="Measured on D.",
                                  notes=["", "note"])
    assert text == "## T\n\nMeasured on D.\n\n```sh\ncmd --x\n```\n\n| a |\n\nnote\n"
    assert [results.duration(s) for s in (42, 890, 7322)] == ["42 s", "14 min 50 s", "2 h 2 min"]


def test_the_machine_line_names_the_widest_vector_extension():
    assert results.vector_extension({"sse2", "avx", "avx2", "fma"}) == "AVX2"
    assert results.vector_extension({"avx2", "avx512f", "avx512bw"}) == "AVX-512"
    assert results.vector_extension({"avx2", "avx512f", "avx512_bf16"}) == "AVX-512 with BF16"
    assert results.vector_extension({"neon"}) == ""
    line = results.machine()
    assert line.startswith(f"{os.cpu_count()} cores (") and "load average" in line

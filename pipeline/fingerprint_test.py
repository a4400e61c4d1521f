import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from pipeline.fingerprint import code_fingerprint, dataset_fingerprint, files_state  # noqa: E402


def test_dataset_fingerprint_changes_with_any_file_not_only_the_csvs(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,image\na,images/a.png\n")
    (tmp_path / "images").mkdir()
    image = tmp_path / "images" / "a.png"
    image.write_bytes(b"one")
    before = dataset_fingerprint(str(tmp_path))
    assert dataset_fingerprint(str(tmp_path)) == before

    image.write_bytes(b"other")
    os.utime(image, ns=(1, 1))
    changed = dataset_fingerprint(str(tmp_path))
    assert changed != before

    (tmp_path / "images" / "b.png").write_bytes(b"")
    assert dataset_fingerprint(str(tmp_path)) != changed


def test_code_fingerprint_is_stable_within_a_checkout():
    assert code_fingerprint() == code_fingerprint()
    assert len(code_fingerprint()) == 32


def test_files_state_changes_while_a_version_is_being_written(tmp_path):
    (tmp_path / "variables").mkdir()
    data = tmp_path / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(b"half")
    before = files_state(str(tmp_path))
    assert files_state(str(tmp_path)) == before
    data.write_bytes(b"half and the rest")
    assert files_state(str(tmp_path)) != before

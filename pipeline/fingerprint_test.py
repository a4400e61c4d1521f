import json
import os
import subprocess
import sys

import pytest

from pipeline.fingerprint import (
    _ROOT,
    DATA_CODE,
    TRAINER_CODE,
    _source_files,
    code_fingerprint,
    dataset_fingerprint,
    files_state,
)


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


def test_dataset_fingerprint_does_not_follow_directory_links_out_of_the_dataset(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "x.png").write_bytes(b"x")
    (data / "items.csv").write_text("item_id\na\n")
    (data / "all").symlink_to(outside, target_is_directory=True)
    (data / "fifo").symlink_to("/dev/zero")
    os.mkfifo(data / "pipe")
    names = [path for path, _, _ in files_state(str(data))]
    assert "items.csv" in names and not any(name.startswith("all/") for name in names)
    before = dataset_fingerprint(str(data))  # a FIFO or device is stat'ed, never read
    (outside / "deep" / "y.png").write_bytes(b"y")
    assert dataset_fingerprint(str(data)) == before


def _checkout(root):
    for path, text in {"transform/preprocessing.py": "fn = 1", "transform/preprocessing_test.py": "t = 1",
                       "transform/text_encoder.py": "encoder = 1", "trainer/__init__.py": "",
                       "trainer/towers.py": "towers = 1"}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)


def test_a_trainer_change_keys_only_the_trainer_and_an_encoder_change_only_the_data(tmp_path):
    # A new Transform output re-trains anyway: the Trainer's key need not follow the encoders.
    _checkout(tmp_path)
    data_code = ("transform",)

    def keys():
        return (code_fingerprint(data_code, str(tmp_path)), code_fingerprint(("trainer",), str(tmp_path)))

    data_before, trainer_before = keys()
    (tmp_path / "trainer/towers.py").write_text("towers = 2")
    data_after, trainer_after = keys()
    assert data_after == data_before and trainer_after != trainer_before

    (tmp_path / "transform/text_encoder.py").write_text("encoder = 2")
    assert keys()[0] != data_after and keys()[1] == trainer_after

    (tmp_path / "transform/preprocessing_test.py").write_text("t = 2")  # tests are not code that runs
    assert keys()[0] == code_fingerprint(data_code, str(tmp_path))


def test_a_missing_path_is_an_error_not_a_smaller_key(tmp_path):
    _checkout(tmp_path)
    with pytest.raises(FileNotFoundError, match="transform/image_encoder.py"):
        code_fingerprint(("transform/image_encoder.py",), str(tmp_path))


_LOADED_FILES = ("import json, os, sys; os.environ['TF_USE_LEGACY_KERAS'] = '1'; {imports}; "
                 "print(json.dumps([getattr(m, '__file__', None) for m in list(sys.modules.values())]))")


def _project_files_loaded_by(imports):
    """The checkout's source files that Python loads for `imports`."""
    out = subprocess.run([sys.executable, "-c", _LOADED_FILES.format(imports=imports)],
                         cwd=_ROOT, capture_output=True, text=True, check=True).stdout
    paths = [os.path.realpath(p) for p in json.loads(out.splitlines()[-1]) if p]
    return {os.path.relpath(p, _ROOT) for p in paths
            if p.startswith(_ROOT + os.sep) and os.sep + "site-packages" + os.sep not in p}


def _covered(keys):
    """The source files `code_fingerprint(keys)` reads, relative to the checkout."""
    return {os.path.relpath(path, _ROOT) for path in _source_files(keys, _ROOT)}


def test_the_keys_name_exactly_the_code_each_component_imports():
    data_files = _project_files_loaded_by(
        "import pipeline.example_gen, transform.preprocessing, transform.cached_executor")
    assert {"transform/preprocessing.py", "transform/text_encoder.py"} <= data_files
    assert data_files | {"schema/schema.pbtxt"} == _covered(DATA_CODE)
    trainer_files = _project_files_loaded_by("import trainer.run")
    assert "trainer/towers.py" in trainer_files
    assert trainer_files - data_files == _covered(TRAINER_CODE)


def test_files_state_changes_while_a_version_is_being_written(tmp_path):
    (tmp_path / "variables").mkdir()
    data = tmp_path / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(b"half")
    before = files_state(str(tmp_path))
    assert files_state(str(tmp_path)) == before
    data.write_bytes(b"half and the rest")
    assert files_state(str(tmp_path)) != before



import hashlib
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf

from serving import model_store


def test_versions_are_the_complete_integer_directories(tmp_path):
    for name in ("3", "12", "7", "latest"):
        (tmp_path / name).mkdir()
    for name in ("3", "12", "latest"):
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    assert model_store.version_dirs(str(tmp_path)) == [3, 7, 12]
    assert model_store.versions(str(tmp_path)) == [3, 12]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_store.versions(str(tmp_path / "missing"))


def test_an_unfinished_push_is_not_a_complete_version(tmp_path):
    for name in ("3", "4"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    (tmp_path / "4" / model_store.PARTIAL_MANIFEST_FILE).write_text("{}")
    assert model_store.versions(str(tmp_path)) == [3]
    assert model_store.is_unfinished_push(str(tmp_path / "4"))
    (tmp_path / "4" / model_store.MANIFEST_FILE).write_text("{}")  # renamed in, not yet removed
    assert model_store.versions(str(tmp_path)) == [3, 4]


# --- pushes and their manifests --------------------------------------------------------------


def test_a_push_copies_every_file_and_lists_it_in_its_manifest(tiny_model, tmp_path):
    version = tmp_path / "base" / "1"
    files = model_store.push_version(tiny_model, str(version))
    source = {str(path.relative_to(tiny_model)) for path in pathlib.Path(tiny_model).rglob("*")
              if path.is_file()}
    assert set(files) == source and "saved_model.pb" in source
    assert files["saved_model.pb"]["sha256"] == hashlib.sha256(
        (pathlib.Path(tiny_model) / "saved_model.pb").read_bytes()).hexdigest()
    assert json.loads((version / model_store.MANIFEST_FILE).read_text())["files"] == files
    assert not (version / model_store.PARTIAL_MANIFEST_FILE).exists()
    assert model_store.check_manifest(str(version))
    assert model_store.load_newest(str(tmp_path / "base"))[0] == 1
    with pytest.raises(FileExistsError):
        model_store.push_version(tiny_model, str(version))


def test_a_push_writes_saved_model_pb_after_the_other_files_and_the_manifest_last(
        tiny_model, tmp_path, monkeypatch):
    written, copy, rename = [], tf.io.gfile.copy, tf.io.gfile.rename
    monkeypatch.setattr(tf.io.gfile, "copy", lambda src, dst, *a, **k: (
        written.append(os.path.basename(dst)), copy(src, dst, *a, **k))[1])
    monkeypatch.setattr(tf.io.gfile, "rename", lambda src, dst, *a, **k: (
        written.append(os.path.basename(dst)), rename(src, dst, *a, **k))[1])
    model_store.push_version(tiny_model, str(tmp_path / "1"))
    assert written[-2:] == ["saved_model.pb", model_store.MANIFEST_FILE]
    assert len(written) > 3


def _push(tiny_model, version_dir):
    model_store.push_version(tiny_model, str(version_dir))
    return next(path for path in version_dir.rglob("variables.data-*"))


def test_a_truncated_file_does_not_match_the_manifest(tiny_model, tmp_path):
    data = _push(tiny_model, tmp_path / "1")
    content = data.read_bytes()
    data.write_bytes(content[: len(content) // 2])
    with pytest.raises(model_store.ManifestMismatch, match=f"{data.name} has {len(content) // 2} "
                       f"bytes where mmfuse_manifest.json says {len(content)}"):
        model_store.check_manifest(str(tmp_path / "1"))
    with pytest.raises(model_store.ManifestMismatch):
        model_store.load_newest(str(tmp_path))


def test_a_changed_or_missing_file_does_not_match_the_manifest(tiny_model, tmp_path):
    data = _push(tiny_model, tmp_path / "1")
    content = bytearray(data.read_bytes())
    content[0] ^= 0xFF
    data.write_bytes(bytes(content))
    with pytest.raises(model_store.ManifestMismatch, match="another sha256"):
        model_store.check_manifest(str(tmp_path / "1"))
    data.unlink()
    with pytest.raises(model_store.ManifestMismatch, match=f"{data.name} is missing"):
        model_store.check_manifest(str(tmp_path / "1"))
    (tmp_path / "1" / model_store.MANIFEST_FILE).write_text("{not json")
    with pytest.raises(model_store.ManifestMismatch, match="not a manifest mmfuse can read"):
        model_store.check_manifest(str(tmp_path / "1"))


def test_a_version_without_a_manifest_has_nothing_to_check(tiny_model, tmp_path, caplog):
    shutil.copytree(tiny_model, tmp_path / "7")
    assert model_store.check_manifest(str(tmp_path / "7")) is False
    assert model_store.load_newest(str(tmp_path))[0] == 7
    assert "has no mmfuse_manifest.json" in caplog.text


def test_a_stopped_push_is_left_unfinished_and_the_next_push_removes_it(
        tiny_model, tmp_path, monkeypatch):
    copy, copied = tf.io.gfile.copy, []

    def copy_then_stop(src, dst, *args, **kwargs):
        if copied:
            raise KeyboardInterrupt("stopped")  # as a killed Pusher: nothing after this runs
        copied.append(dst)
        return copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(tf.io.gfile, "copy", copy_then_stop)
    with pytest.raises(KeyboardInterrupt):
        model_store.push_version(tiny_model, str(tmp_path / "5"))
    monkeypatch.setattr(tf.io.gfile, "copy", copy)
    assert model_store.is_unfinished_push(str(tmp_path / "5"))
    assert model_store.versions(str(tmp_path)) == []
    model_store.push_version(tiny_model, str(tmp_path / "6"))
    (tmp_path / "9").mkdir()  # a later push, possibly still under way
    (tmp_path / "9" / model_store.PARTIAL_MANIFEST_FILE).write_text("{}")
    assert model_store.remove_unfinished_pushes(str(tmp_path), older_than=6) == [5]
    assert model_store.version_dirs(str(tmp_path)) == [6, 9]


def _recommend(path, users):
    answer = tf.saved_model.load(path).signatures["recommend"](user_id=tf.constant(users),
                                                              k=tf.constant(3))
    return answer["item_ids"].numpy().tolist(), answer["scores"].numpy()


def test_an_unchanged_catalogue_rewritten_gives_the_same_answers(tiny_model, tmp_path):
    item_ids, embeddings = model_store.read_catalogue(tiny_model)
    assert item_ids[0] == b"<unknown>" and embeddings.shape == (len(item_ids), 4)
    model_store.replace_catalogue(tiny_model, str(tmp_path / "copy"), item_ids, embeddings)
    users = ["u1", "u2", "u3", "u4"]
    original_ids, original_scores = _recommend(tiny_model, users)
    copy_ids, copy_scores = _recommend(str(tmp_path / "copy"), users)
    assert copy_ids == original_ids
    np.testing.assert_array_equal(copy_scores, original_scores)
    assert set(tf.saved_model.load(str(tmp_path / "copy")).signatures) == set(
        tf.saved_model.load(tiny_model).signatures)


def test_a_larger_catalogue_is_searched_whole(tiny_model, tmp_path):
    model = tf.saved_model.load(tiny_model)
    ids, candidates = model.item_ids.numpy(), model.candidates.numpy()
    # A new item pointing exactly where user u1's query points outscores all others.
    query = tf.one_hot(tf.strings.to_hash_bucket_fast(["u1"], candidates.shape[1]),
                       candidates.shape[1]).numpy()
    extra_ids = np.array([b"new%05d" % index for index in range(1000)], dtype=object)
    extra = np.tile(-query, (1000, 1))
    extra[-1] = query
    model_store.replace_catalogue(tiny_model, str(tmp_path / "grown"),
                                  np.concatenate([ids, extra_ids]),
                                  np.concatenate([candidates, extra]))
    grown = tf.saved_model.load(str(tmp_path / "grown"))
    assert grown.candidates.shape[0] is None and len(grown.candidates.numpy()) == len(ids) + 1000
    item_ids, scores = _recommend(str(tmp_path / "grown"), ["u1"])
    assert item_ids[0][0] == b"new00999"
    assert scores[0][0] == pytest.approx(1.0)
    # Display fields stay aligned: kept rows keep theirs, appended ones have none.
    titles = grown.item_titles.numpy()
    assert list(titles[:len(ids)]) == list(model.item_titles.numpy()) and titles[-1] == b""
    answer = grown.signatures["recommend"](user_id=tf.constant(["u1"]), k=tf.constant(len(ids) + 5))
    title_of = dict(zip(grown.item_ids.numpy(), titles))
    assert [title_of[item] for item in answer["item_ids"].numpy()[0]] == list(
        answer["titles"].numpy()[0])


def test_a_catalogue_that_does_not_fit_is_refused(tiny_model, tmp_path):
    model = tf.saved_model.load(tiny_model)
    with pytest.raises(ValueError, match="embeddings of dimension"):
        model_store.replace_catalogue(tiny_model, str(tmp_path / "out"), model.item_ids.numpy(),
                                      np.zeros((3, 2), np.float32))


def test_a_model_with_a_fixed_catalogue_is_refused(tmp_path):
    module = tf.Module()
    module.candidates = tf.Variable(np.zeros((3, 2), np.float32))
    module.item_ids = tf.Variable([b"a", b"b", b"c"])
    tf.saved_model.save(module, str(tmp_path / "fixed"))
    with pytest.raises(ValueError, match="fixed size 3"):
        model_store.replace_catalogue(str(tmp_path / "fixed"), str(tmp_path / "out"),
                                      [b"a"], np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="fixed size 3"):
        model_store.read_catalogue(str(tmp_path / "fixed"))


def test_a_smaller_catalogue_keeps_the_search_words_of_the_rows_that_stay(tmp_path):
    module = tf.Module()
    module.candidates = tf.Variable(np.eye(3, dtype=np.float32)[:, :2], shape=[None, 2])
    module.item_ids = tf.Variable([b"<unknown>", b"a", b"b"], shape=[None])
    # (item index, word index) entries of trainer/lexical.py's table.
    module.lexical_entries = tf.Variable(np.array([[1, 4], [2, 4], [2, 5]]), shape=[None, 2])
    module.lexical_weights = tf.Variable([0.5, 0.25, 0.75], shape=[None])
    tf.saved_model.save(module, str(tmp_path / "model"))
    model_store.replace_catalogue(str(tmp_path / "model"), str(tmp_path / "out"),
                                  [b"<unknown>", b"a"], np.eye(2, dtype=np.float32))
    smaller = tf.saved_model.load(str(tmp_path / "out"))
    np.testing.assert_array_equal(smaller.lexical_entries.numpy(), [[1, 4]])
    np.testing.assert_array_equal(smaller.lexical_weights.numpy(), [0.5])

import numpy as np
import pytest
import tensorflow as tf

from mmfuse.config import ExportSettings
from serving import catalog
from trainer import export
from trainer.index_test import clustered

HEADER = "item_id,title,description,image,colour\n"


def _write(tmp_path, text):
    path = tmp_path / "items.csv"
    path.write_text(HEADER + text)
    return str(path)


@pytest.mark.parametrize("rows, message", [
    ("n1,New mug,,,red\nold,Old mug,,,blue\n", "line 3: field item_id: 'old' is already"),
    ("n1,New mug,,missing.jpg,red\n", "line 2: field image 'missing.jpg'"),
    ("n1,,,,\n", "line 2: item 'n1' has no title"),
    (",Nameless,,,red\n", "line 2: field item_id is empty"),
    ("n1,A,,,red\nn1,B,,,red\n", "line 3: item_id 'n1' repeats line 2"),
])
def test_bad_rows_are_refused_naming_the_row_and_field(tmp_path, rows, message):
    path = _write(tmp_path, rows)
    with pytest.raises(catalog.CatalogError, match=None) as error:
        catalog.refuse_known_ids(path, catalog.read_new_items(path), ["old"])
    assert message in str(error.value)


def test_good_rows_are_read_with_their_attributes(tmp_path):
    (tmp_path / "photo.png").write_bytes(b"")  # never read: no image named
    items = catalog.read_new_items(_write(tmp_path, "n1,New mug,Tall,,red\nn2,,,,green\n"))
    assert [(item.item_id, item.title, item.attributes) for item in items] == [
        ("n1", "New mug", (("colour", "red"),)), ("n2", "", (("colour", "green"),))]


def test_a_bad_row_is_refused_before_the_model_is_read(tmp_path):
    (tmp_path / "base" / "1").mkdir(parents=True)
    (tmp_path / "base" / "1" / "saved_model.pb").write_bytes(b"not a model")
    with pytest.raises(catalog.CatalogError, match="line 2: field image 'missing.jpg'"):
        catalog.add_items(str(tmp_path / "base"), _write(tmp_path, "n1,New mug,,missing.jpg,red\n"))


def test_an_empty_model_base_is_refused(tmp_path):
    (tmp_path / "base").mkdir()
    with pytest.raises(catalog.CatalogError, match="no model version"):
        catalog.add_items(str(tmp_path / "base"), _write(tmp_path, "n1,New mug,,,red\n"))


def test_an_edit_keeps_the_partitioned_index_in_step():
    """Removed items are never answered; an added one is found through the
    index (trainer/index.py) at once."""
    candidates = clustered(3000)
    ids = np.array([b"<unknown>"] + [b"i%04d" % row for row in range(1, 3001)], object)
    model = export.CatalogueModule(ids, candidates, None,
                                   ExportSettings(index="partitioned", index_probes=4))
    removed = set(range(1, 51))
    keep = np.array([row not in removed for row in range(3001)])
    # The new item is a twin of i0100: the best answer to it.
    new_ids = np.concatenate([ids[keep], [b"new"]])
    new_candidates = np.concatenate([candidates[keep], candidates[100:101]])
    display = {output: np.full(len(new_ids), b"", object) for output in export.DISPLAY_TABLES}
    catalog._set_catalogue(model, new_ids, new_candidates, None, display)
    neighbour = new_ids[1:-1][np.argmax(new_candidates[1:-1] @ candidates[1])]
    answer = model.similar_items(item_id=tf.constant([b"i0100", neighbour]), k=tf.constant(10))
    found = [[item.decode() for item in row] for row in answer["item_ids"].numpy()]
    assert found[0][0] == "new"
    # The nearest kept item of the removed i0001 has removed ones near it, never answered.
    before = np.argsort(-(candidates[1:] @ candidates[int(neighbour[1:])]))[:11] + 1
    assert 1 in before  # i0001 was among its best before the edit
    gone = {"i%04d" % row for row in removed}
    assert not gone & set(found[1])

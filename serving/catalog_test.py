import pytest

from serving import catalog

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
    with pytest.raises(catalog.CatalogError, match=None) as error:
        catalog.read_new_items(_write(tmp_path, rows), ["old"])
    assert message in str(error.value)


def test_good_rows_are_read_with_their_attributes(tmp_path):
    (tmp_path / "photo.png").write_bytes(b"")  # never read: no image named
    items = catalog.read_new_items(_write(tmp_path, "n1,New mug,Tall,,red\nn2,,,,green\n"), ["old"])
    assert [(item.item_id, item.title, item.attributes) for item in items] == [
        ("n1", "New mug", (("colour", "red"),)), ("n2", "", (("colour", "green"),))]


def test_an_empty_model_base_is_refused(tmp_path):
    (tmp_path / "base").mkdir()
    with pytest.raises(catalog.CatalogError, match="no model version"):
        catalog.add_items(str(tmp_path / "base"), _write(tmp_path, "n1,New mug,,,red\n"))

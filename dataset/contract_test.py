"""Tests of dataset.contract: reading and validating a dataset directory."""
import csv
import os
import time

import pytest
from PIL import Image

from dataset import sample as sample_data
from dataset.contract import DatasetError, read_dataset

# 2021-01-01T00:00:00Z in Unix seconds.
NEW_YEAR_2021 = 1609459200


def write(directory, name, text):
    path = os.path.join(str(directory), name)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    return path


def items_csv(directory, text="item_id,title\na1,Red mug\na2,Blue lamp\n"):
    return write(directory, "items.csv", text)


def interactions_csv(directory, text):
    return write(directory, "interactions.csv", text)


def dataset_error(directory) -> str:
    """The message of the DatasetError that reading `directory` must raise."""
    with pytest.raises(DatasetError) as error:
        read_dataset(str(directory))
    return str(error.value)


def read_rows(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def sample(tmp_path):
    """A fresh small sample dataset (fast: about 0.1 s); tests may damage it."""
    summary = sample_data.write_sample_dataset(str(tmp_path), num_items=60, num_users=30)
    return str(tmp_path), summary


def image_rows(directory):
    return [row for row in read_rows(os.path.join(directory, "items.csv")) if row["image"]]


# --- the valid sample ------------------------------------------------------------------------


def test_sample_dataset_reads_with_the_written_counts(sample):
    directory, summary = sample
    dataset = read_dataset(directory)
    item_rows = read_rows(os.path.join(directory, "items.csv"))
    interaction_rows = read_rows(os.path.join(directory, "interactions.csv"))

    assert len(dataset.items) == summary["items"] == len(item_rows) == 60
    assert len(dataset.interactions) == summary["interactions"] == len(interaction_rows)
    assert sum(1 for item in dataset.items.values() if item.image_path) == summary["images"]
    assert dataset.report["images skipped"] == 0
    assert "images skipped, first" not in dataset.report
    assert len({row.user_id for row in dataset.interactions if row.user_id}) == summary["users"]
    assert sum(1 for row in dataset.interactions if row.query) == summary["search_rows"]
    # Items keep file order, and interactions know their line in the file.
    assert list(dataset.items) == [row["item_id"] for row in item_rows]
    assert [row.row for row in dataset.interactions] == list(range(2, len(interaction_rows) + 2))


def test_sample_dataset_fields_are_parsed(sample):
    directory, _ = sample
    dataset = read_dataset(directory)
    item_rows = read_rows(os.path.join(directory, "items.csv"))
    first = item_rows[0]
    item = dataset.items[first["item_id"]]
    assert item.title == first["title"]
    assert item.description == first["description"]
    # Every non-reserved column is an attribute, in file order.
    assert item.attributes == (("colour", first["colour"]), ("kind", first["kind"]),
                               ("material", first["material"]))
    if first["image"]:
        assert item.image_path == os.path.join(directory, first["image"])
        assert os.path.isabs(item.image_path)

    interaction_rows = read_rows(os.path.join(directory, "interactions.csv"))
    for raw, parsed in zip(interaction_rows, dataset.interactions):
        assert parsed.user_id == raw["user_id"]
        assert parsed.item_id == raw["item_id"]
        assert parsed.timestamp == int(raw["timestamp"])
        assert isinstance(parsed.timestamp, int)
        assert parsed.rating == float(raw["rating"])
        assert parsed.query == raw["query"]


def test_summary_names_counts(sample):
    directory, summary = sample
    line = read_dataset(directory).summary()
    assert f"{summary['items']} items" in line
    assert f"{summary['interactions']} interactions" in line


def test_empty_attribute_cells_are_left_out_and_reserved_columns_are_not_attributes(tmp_path):
    items_csv(tmp_path, "item_id,title,description,image,colour,brand\n"
                        "a1,Mug,A mug,,red,\n"
                        "a2,,,,,acme\n")
    dataset = read_dataset(str(tmp_path))
    assert dataset.items["a1"].attributes == (("colour", "red"),)
    assert dataset.items["a2"].attributes == (("brand", "acme"),)
    assert dataset.items["a2"].title == ""
    assert dataset.items["a1"].image_path == ""


# --- items.csv errors ------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(str(tmp_path / "nowhere"))


def test_missing_items_file(tmp_path):
    interactions_csv(tmp_path, "user_id,item_id\nu1,a1\n")
    with pytest.raises(DatasetError) as error:
        read_dataset(str(tmp_path))
    assert "items.csv" in str(error.value)
    assert "not found" in str(error.value)


def test_missing_item_id_column_names_file_and_column(tmp_path):
    items_csv(tmp_path, "id,title\na1,Mug\n")
    message = dataset_error(tmp_path)
    assert "items.csv" in message
    assert "item_id" in message
    assert "missing required column" in message


def test_empty_items_file_is_an_error(tmp_path):
    items_csv(tmp_path, "")
    with pytest.raises(DatasetError, match="items.csv"):
        read_dataset(str(tmp_path))


def test_header_only_items_file_is_an_error(tmp_path):
    items_csv(tmp_path, "item_id,title\n")
    with pytest.raises(DatasetError, match="no items"):
        read_dataset(str(tmp_path))


def test_empty_item_id_names_the_line(tmp_path):
    items_csv(tmp_path, "item_id,title\na1,Mug\n  ,Lamp\na3,Chair\n")
    message = dataset_error(tmp_path)
    assert "items.csv" in message
    assert "line 3" in message
    assert "item_id" in message
    assert "empty" in message


def test_duplicate_item_id_names_both_lines(tmp_path):
    items_csv(tmp_path, "item_id,title\na1,Mug\na2,Lamp\na3,Chair\na2,Other lamp\n")
    message = dataset_error(tmp_path)
    assert "items.csv" in message
    assert "line 5" in message  # the repeat
    assert "line 3" in message  # the first
    assert "'a2'" in message


# --- interactions.csv ------------------------------------------------------------------------


def test_unknown_items_are_an_anomaly_naming_lines_and_ids(tmp_path):
    items_csv(tmp_path)
    interactions_csv(tmp_path, "user_id,item_id\nu1,a1\nu1,zz9\nu2,a2\nu2,zz7\n")
    message = dataset_error(tmp_path)
    assert "interactions.csv" in message
    assert "anomaly" in message
    assert "2 interaction(s)" in message
    assert "line 3 item_id 'zz9'" in message
    assert "line 5 item_id 'zz7'" in message
    assert "a1" not in message.split("items.csv:")[-1]


def test_many_unknown_items_are_counted_and_the_list_is_cut(tmp_path):
    items_csv(tmp_path)
    rows = "".join(f"u1,x{index}\n" for index in range(8))
    interactions_csv(tmp_path, "user_id,item_id\n" + rows)
    message = dataset_error(tmp_path)
    assert "8 interaction(s)" in message
    assert "line 6 item_id 'x4'" in message  # the fifth one is listed
    assert "'x5'" not in message  # the sixth is only counted
    assert message.endswith(", ...")


def test_missing_interaction_columns(tmp_path):
    items_csv(tmp_path)
    interactions_csv(tmp_path, "user,item_id\nu1,a1\n")
    with pytest.raises(DatasetError) as error:
        read_dataset(str(tmp_path))
    assert "interactions.csv" in str(error.value)
    assert "user_id" in str(error.value)


def test_empty_item_id_in_interactions_names_the_line(tmp_path):
    items_csv(tmp_path)
    interactions_csv(tmp_path, "user_id,item_id\nu1,a1\nu2,\n")
    with pytest.raises(DatasetError, match=r"interactions\.csv: line 3: field item_id is empty"):
        read_dataset(str(tmp_path))


@pytest.mark.parametrize("field, text", [
    ("timestamp", "yesterday"), ("timestamp", "2021-13-01T00:00:00"), ("timestamp", "12:00"),
    ("rating", "five"), ("rating", "4,5"), ("rating", "4.5 stars"),
])
def test_bad_value_names_file_line_and_field(tmp_path, field, text):
    items_csv(tmp_path)
    interactions_csv(tmp_path, f'user_id,item_id,{field}\nu1,a1,100\nu1,a1,3\nu1,a2,"{text}"\n')
    message = dataset_error(tmp_path)
    assert "interactions.csv" in message
    assert "line 4" in message
    assert field in message
    assert repr(text) in message


@pytest.mark.parametrize("text, expected", [
    ("1609459200", NEW_YEAR_2021),
    ("1609459200.9", NEW_YEAR_2021),  # fractional Unix seconds are truncated
    ("2021-01-01T00:00:00Z", NEW_YEAR_2021),
    ("2021-01-01T00:00:00", NEW_YEAR_2021),  # naive: taken as UTC
    ("2021-01-01 00:00:00", NEW_YEAR_2021),
    ("2021-01-01", NEW_YEAR_2021),
    ("2021-01-01T01:00:00+01:00", NEW_YEAR_2021),
    ("2020-12-31T19:00:00-05:00", NEW_YEAR_2021),
    ("2021-01-01T00:00:00.250Z", NEW_YEAR_2021),
    ("2021-01-01T12:34:56Z", NEW_YEAR_2021 + 12 * 3600 + 34 * 60 + 56),
])
def test_timestamps_in_unix_seconds_or_iso_8601(tmp_path, text, expected):
    items_csv(tmp_path)
    interactions_csv(tmp_path, f"user_id,item_id,timestamp\nu1,a1,{text}\n")
    (row,) = read_dataset(str(tmp_path)).interactions
    assert row.timestamp == expected
    assert isinstance(row.timestamp, int)


@pytest.fixture
def new_york_time(monkeypatch):
    """A local time zone other than UTC, so naive times taken as local would show."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("text", ["2021-01-01T00:00:00", "2021-01-01 00:00:00", "2021-01-01"])
def test_naive_timestamps_are_utc_whatever_the_local_zone(tmp_path, new_york_time, text):
    items_csv(tmp_path)
    interactions_csv(tmp_path, f"user_id,item_id,timestamp\nu1,a1,{text}\n")
    (row,) = read_dataset(str(tmp_path)).interactions
    assert row.timestamp == NEW_YEAR_2021


def test_missing_timestamp_and_rating_are_none(tmp_path):
    items_csv(tmp_path)
    interactions_csv(tmp_path, "user_id,item_id,timestamp,rating\nu1,a1,,\n")
    (row,) = read_dataset(str(tmp_path)).interactions
    assert row.timestamp is None
    assert row.rating is None
    assert row.query == ""


def test_empty_user_id_is_allowed_on_a_search_row(tmp_path):
    items_csv(tmp_path)
    interactions_csv(tmp_path, "user_id,item_id,query\n,a1,red mug\nu1,a2,\n")
    rows = read_dataset(str(tmp_path)).interactions
    assert [(row.user_id, row.item_id, row.query) for row in rows] == [
        ("", "a1", "red mug"), ("u1", "a2", "")]


def test_empty_user_id_without_query_names_the_line(tmp_path):
    items_csv(tmp_path)
    interactions_csv(tmp_path, "user_id,item_id,query\n,a1,red mug\nu1,a2,\n ,a2,\n")
    message = dataset_error(tmp_path)
    assert "interactions.csv" in message
    assert "line 4" in message
    assert "user_id" in message


def test_empty_user_id_without_query_column_is_an_error(tmp_path):
    items_csv(tmp_path)
    interactions_csv(tmp_path, "user_id,item_id\n,a1\n")
    with pytest.raises(DatasetError, match="line 2"):
        read_dataset(str(tmp_path))


def test_catalogue_only_dataset_has_no_interactions(sample):
    directory, summary = sample
    os.remove(os.path.join(directory, "interactions.csv"))
    dataset = read_dataset(directory)
    assert dataset.interactions == []
    assert len(dataset.items) == summary["items"]


# --- images ----------------------------------------------------------------------------------


def test_a_corrupt_image_is_skipped_counted_and_the_item_kept(sample):
    directory, summary = sample
    rows = image_rows(directory)
    victim = next(row for row in rows if row["image"].endswith(".jpg"))
    with open(os.path.join(directory, victim["image"]), "wb") as handle:
        handle.write(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 10)

    dataset = read_dataset(directory)
    assert dataset.report["images skipped"] == 1
    first = dataset.report["images skipped, first"]
    assert victim["image"] in first
    assert "line " in first
    item = dataset.items[victim["item_id"]]
    assert item.image_path == ""
    # Its other modalities survive.
    assert item.title == victim["title"]
    assert item.description == victim["description"]
    assert dict(item.attributes)["colour"] == victim["colour"]
    # Every other image is kept.
    assert sum(1 for item in dataset.items.values() if item.image_path) == summary["images"] - 1
    assert "images skipped: 1" in dataset.summary()


def test_a_missing_image_file_is_skipped_and_counted(sample):
    directory, _ = sample
    victim = image_rows(directory)[3]
    os.remove(os.path.join(directory, victim["image"]))
    dataset = read_dataset(directory)
    assert dataset.report["images skipped"] == 1
    assert victim["image"] in dataset.report["images skipped, first"]
    assert dataset.items[victim["item_id"]].image_path == ""


def test_a_truncated_png_is_skipped(sample):
    directory, _ = sample
    victim = next(row for row in image_rows(directory) if row["image"].endswith(".png"))
    path = os.path.join(directory, victim["image"])
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    dataset = read_dataset(directory)
    assert dataset.report["images skipped"] == 1
    assert dataset.items[victim["item_id"]].image_path == ""


def test_a_gif_is_rejected_as_not_jpeg_or_png(sample):
    directory, _ = sample
    victim = next(row for row in image_rows(directory) if row["image"].endswith(".png"))
    # A perfectly readable GIF, under a .png name: the content decides.
    Image.new("RGB", (8, 8), (255, 0, 0)).save(os.path.join(directory, victim["image"]),
                                               format="GIF")
    dataset = read_dataset(directory)
    assert dataset.report["images skipped"] == 1
    assert "GIF" in dataset.report["images skipped, first"]
    assert "not JPEG or PNG" in dataset.report["images skipped, first"]
    assert dataset.items[victim["item_id"]].image_path == ""


def test_the_only_image_being_a_gif_is_an_error(tmp_path):
    Image.new("RGB", (8, 8)).save(str(tmp_path / "a.gif"), format="GIF")
    items_csv(tmp_path, "item_id,image\na1,a.gif\n")
    with pytest.raises(DatasetError) as error:
        read_dataset(str(tmp_path))
    assert "GIF" in str(error.value)
    assert "1 of 1 images" in str(error.value)


def test_most_images_corrupt_is_an_error(sample):
    directory, summary = sample
    rows = image_rows(directory)
    for row in rows[:30]:
        with open(os.path.join(directory, row["image"]), "wb") as handle:
            handle.write(b"garbage")
    with pytest.raises(DatasetError) as error:
        read_dataset(directory)
    message = str(error.value)
    assert "items.csv" in message
    assert f"30 of {summary['images']} images" in message
    assert rows[0]["image"] in message


def test_bad_image_threshold_is_five_percent(tmp_path):
    """40 images: 2 bad (5%) are skipped, 3 bad (7.5%) are an error."""
    Image.new("RGB", (4, 4), (0, 0, 255)).save(str(tmp_path / "good.png"), format="PNG")
    with open(tmp_path / "bad.jpg", "wb") as handle:
        handle.write(b"not an image")

    def write_items(bad):
        lines = ["item_id,image"]
        lines += [f"i{n},{'bad.jpg' if n < bad else 'good.png'}" for n in range(40)]
        items_csv(tmp_path, "\n".join(lines) + "\n")

    write_items(2)
    assert read_dataset(str(tmp_path)).report["images skipped"] == 2
    write_items(3)
    with pytest.raises(DatasetError, match="3 of 40 images"):
        read_dataset(str(tmp_path))


def test_check_images_false_does_not_open_images(sample):
    directory, summary = sample
    victim = image_rows(directory)[0]
    with open(os.path.join(directory, victim["image"]), "wb") as handle:
        handle.write(b"garbage")
    dataset = read_dataset(directory, check_images=False)
    assert dataset.report["images skipped"] == 0
    assert dataset.items[victim["item_id"]].image_path.endswith(victim["image"])
    assert sum(1 for item in dataset.items.values() if item.image_path) == summary["images"]


def test_non_utf8_items_file_is_a_dataset_error(tmp_path):
    with open(tmp_path / "items.csv", "wb") as handle:
        handle.write(b"item_id,title\na1,Caf\xe9 chair\n")  # Latin-1
    with pytest.raises(DatasetError) as error:
        read_dataset(str(tmp_path))
    assert "items.csv" in str(error.value)
    assert "UTF-8" in str(error.value)


# --- edge cases of timestamps ------------------------------------------------------------


def test_infinite_timestamp_is_a_dataset_error(tmp_path):
    items_csv(tmp_path)
    interactions_csv(tmp_path, "user_id,item_id,timestamp\nu1,a1,inf\n")
    with pytest.raises(DatasetError, match="line 2"):
        read_dataset(str(tmp_path))


def test_iso_timestamp_with_one_fraction_digit(tmp_path):
    items_csv(tmp_path)
    interactions_csv(tmp_path, "user_id,item_id,timestamp\nu1,a1,2021-01-01T00:00:00.5Z\n")
    (row,) = read_dataset(str(tmp_path)).interactions
    assert row.timestamp == NEW_YEAR_2021


def test_timestamp_outside_int64_is_a_dataset_error(tmp_path):
    items_csv(tmp_path)
    interactions_csv(tmp_path, "user_id,item_id,timestamp\nu1,a1,1e300\n")
    with pytest.raises(DatasetError, match="line 2"):
        read_dataset(str(tmp_path))


def test_non_finite_rating_is_a_dataset_error(tmp_path):
    items_csv(tmp_path)
    interactions_csv(tmp_path, "user_id,item_id,rating\nu1,a1,nan\n")
    with pytest.raises(DatasetError, match="line 2: field rating 'nan' is not a finite number"):
        read_dataset(str(tmp_path))


def test_items_csv_with_a_byte_order_mark(tmp_path):
    (tmp_path / "items.csv").write_bytes("\ufeffitem_id,title\na1,Lamp\n".encode("utf-8"))
    assert list(read_dataset(str(tmp_path)).items) == ["a1"]

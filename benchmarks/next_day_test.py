"""make_days: day 1 lacks the new items (and, with interactions, the latest rows)."""
import csv
import os

from benchmarks.next_day import make_days


def _write(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


def _read(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))[1:]


def test_day_one_lacks_the_new_items_and_the_latest_interactions(tmp_path):
    source = tmp_path / "data"
    source.mkdir()
    _write(source / "items.csv", [["item_id", "title"]] + [[f"i{n}", f"t{n}"] for n in range(100)])
    _write(source / "interactions.csv", [["user_id", "item_id", "timestamp"]]
           + [[f"u{n % 7}", f"i{n % 100}", str(1000 - n)] for n in range(220)])
    sizes = make_days(str(source), str(tmp_path / "out"), new_items=0.05, new_interactions=0.1)

    assert sizes == {"items": (95, 100), "interactions": (200, 220)}
    day1_items = {row[0] for row in _read(tmp_path / "out" / "day1" / "items.csv")}
    new_items = {f"i{n}" for n in range(100)} - day1_items
    day1_rows = _read(tmp_path / "out" / "day1" / "interactions.csv")
    assert len(new_items) == 5 and not any(row[1] in new_items for row in day1_rows)
    # The rows day 1 lacks are the latest ones (largest timestamps) among the old items'.
    kept = {int(row[2]) for row in day1_rows}
    dropped = [int(row[2]) for row in _read(source / "interactions.csv")
               if row[1] not in new_items and int(row[2]) not in kept]
    assert dropped and min(dropped) > max(kept)
    assert len(_read(tmp_path / "out" / "day2" / "interactions.csv")) == 220


def test_a_catalogue_without_interactions_changes_by_its_items(tmp_path):
    source = tmp_path / "data"
    (source / "images").mkdir(parents=True)
    (source / "images" / "a.jpg").write_bytes(b"photo")
    _write(source / "items.csv", [["item_id", "title"]] + [[f"i{n}", f"t{n}"] for n in range(200)])
    sizes = make_days(str(source), str(tmp_path / "out"), new_items=0.01, new_interactions=0.1)

    assert sizes == {"items": (198, 200), "interactions": (0, 0)}
    for day in ("day1", "day2"):
        assert not os.path.exists(tmp_path / "out" / day / "interactions.csv")
        assert (tmp_path / "out" / day / "images" / "a.jpg").read_bytes() == b"photo"

"""The embedded sample's pipeline runs, shared by the end-to-end tests."""
import csv

import pytest

from benchmarks.next_day import make_days
from dataset.sample import write_sample_dataset
from tests.mmfuse_runs import run_pipeline, user_key_file


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory):
    """`mmfuse run` on the sample with one corrupt image, as a user runs it.
    The sample is split in two days (benchmarks/next_day.py): this run is day
    1, which lacks 1% of the items and the latest tenth of the interactions;
    `next_day` (day 2, the whole sample) is for the next-day run into the same
    `root/out` (tests/serving_e2e_test.py), which sees this one's blessed model
    as its baseline."""
    root = tmp_path_factory.mktemp("e2e")
    write_sample_dataset(str(root / "sample"))
    make_days(str(root / "sample"), str(root), new_items=0.01, new_interactions=0.1)
    data = root / "day1"
    with open(data / "items.csv", newline="") as handle:
        items = {row["item_id"]: row for row in csv.DictReader(handle)}
    # One corrupt image must be skipped and reported, not crash either run.
    corrupt = next(row for row in items.values() if row["image"])
    for day in ("day1", "day2"):
        (root / day / corrupt["image"]).write_bytes(b"\xff\xd8 truncated jpeg")
    stdout, result = run_pipeline(data, root / "out", epochs=3)
    return {"root": root, "data": data, "next_day": root / "day2", "items": items,
            "stdout": stdout, "result": result, "corrupt": corrupt,
            "user_key_file": user_key_file(root / "out")}

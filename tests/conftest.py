"""The embedded sample's pipeline run, shared by the end-to-end tests."""
import csv
import fcntl
import json

import pytest

from benchmarks.next_day import make_days
from dataset.sample import write_sample_dataset
from tests.mmfuse_runs import run_pipeline, user_key_file


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory, worker_id):
    """`mmfuse run` on the sample with one corrupt image, as a user runs it.
    The sample is split in two days (benchmarks/next_day.py): this run is day
    1, which lacks 1% of the items and the latest tenth of the interactions;
    `next_day` (day 2, the whole sample) is for a next-day run into a copy of
    `root/out` (tests/serving_e2e_test.py), which sees this one's blessed model
    as its baseline.

    The run is made once per test session: the first pytest-xdist worker to
    ask makes it while the other waits on a lock, then both read it. So no
    test may write into `root`."""
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent  # the workers' common directory
    root, made, failed = shared / "sample-e2e", shared / "sample-e2e.json", shared / "sample-e2e.failed"
    with open(shared / "sample-e2e.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not made.exists() and not failed.exists():
            try:
                stdout, result = _make_sample_run(root)
            except BaseException as error:
                failed.write_text(f"{type(error).__name__}: {error}")
                raise
            made.write_text(json.dumps({"stdout": stdout, "result": result}))
    if failed.exists():
        pytest.fail(f"the sample's run failed on another worker: {failed.read_text()[-6000:]}")
    items = _day1_items(root)
    return {"root": root, "data": root / "day1", "next_day": root / "day2", "items": items,
            "corrupt": _corrupt(items), "user_key_file": user_key_file(root / "out"),
            **json.loads(made.read_text())}


def _day1_items(root) -> dict:
    """Day 1's items.csv rows by item id."""
    with open(root / "day1" / "items.csv", newline="") as handle:
        return {row["item_id"]: row for row in csv.DictReader(handle)}


def _corrupt(items: dict) -> dict:
    """The item whose photo the run is given corrupt: the first with a photo."""
    return next(row for row in items.values() if row["image"])


def _make_sample_run(root):
    root.mkdir()
    write_sample_dataset(str(root / "sample"))
    make_days(str(root / "sample"), str(root), new_items=0.01, new_interactions=0.1)
    corrupt = _corrupt(_day1_items(root))
    # One corrupt image must be skipped and reported, not crash either run.
    for day in ("day1", "day2"):
        (root / day / corrupt["image"]).write_bytes(b"\xff\xd8 truncated jpeg")
    return run_pipeline(root / "day1", root / "out", epochs=3)

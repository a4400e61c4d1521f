"""The embedded sample's pipeline run, shared by the end-to-end tests."""
import csv

import pytest

from dataset.sample import write_sample_dataset
from tests.mmfuse_runs import run_pipeline, user_key_file


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory):
    """`mmfuse run` on the sample with one corrupt image, as a user runs it.
    Later runs into the same `root/out` see this one's blessed model as the
    baseline."""
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    write_sample_dataset(str(data))
    with open(data / "items.csv", newline="") as handle:
        items = {row["item_id"]: row for row in csv.DictReader(handle)}
    # One corrupt image must be skipped and reported, not crash the run.
    corrupt = next(row for row in items.values() if row["image"])
    (data / corrupt["image"]).write_bytes(b"\xff\xd8 truncated jpeg")
    stdout, result = run_pipeline(data, root / "out", epochs=3)
    return {"root": root, "data": data, "items": items, "stdout": stdout, "result": result,
            "corrupt": corrupt, "user_key_file": user_key_file(root / "out")}

"""The next-day run on the embedded sample: a second `mmfuse run` into the same
run directory, on a day with new items and more interactions, encodes only
what is new and warm-starts from the first day's blessed model. What that
saves in time is benchmarks/next_day.py's to measure: on a shared machine a
wall-time comparison here failed by load alone (day 2 690 s, day 1 599 s)."""
import pytest

from benchmarks.next_day import make_days
from dataset.sample import write_sample_dataset
from tests.mmfuse_runs import run_pipeline

pytestmark = pytest.mark.slow


def test_next_day_reuses_features_and_warm_starts(tmp_path):
    write_sample_dataset(str(tmp_path / "sample"))
    sizes = make_days(str(tmp_path / "sample"), str(tmp_path), new_items=0.01, new_interactions=0.1)
    assert sizes["items"] == (297, 300)

    _, day1 = run_pipeline(tmp_path / "day1", tmp_path / "out", epochs=3)
    assert day1["warm_start"] is None
    assert day1["feature_cache"]["hits"] == 0 and day1["feature_cache"]["misses"] > 500

    _, day2 = run_pipeline(tmp_path / "day2", tmp_path / "out", epochs=3)
    cache = day2["feature_cache"]
    # Every text and photo of day 1 is a hit; the misses are the 3 new items'
    # title and photo and the new interactions' new queries.
    assert cache["hits"] >= day1["feature_cache"]["misses"] - 1
    assert 0 < cache["misses"] < cache["hits"] / 5 and cache["refused"] == 0
    version = int(day1["pushed_model"].rstrip("/").rsplit("/", 1)[1])
    assert day2["warm_start"]["from_version"] == version
    assert day2["warm_start"]["new_ids"]["model/item_tower/item_id/embedding/embeddings"] == 3
    assert day2["blessed"] is True

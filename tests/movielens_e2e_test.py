"""The whole pipeline on real data: MovieLens-100K, converted from
$MMFUSE_DATA_DIR, must be blessed and beat a popularity ranking on the same
eval split (seen items not excluded, all 1,682 movies ranked)."""
import collections
import os

import pytest

from dataset.contract import read_dataset
from dataset.converters import convert
from dataset.splits import TRAIN, assign_splits
from evaluation.metrics import metrics_from_ranks
from tests.mmfuse_runs import run_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


def _source():
    root = os.environ.get("MMFUSE_DATA_DIR")
    path = os.path.join(root or "", "movielens-100k")
    if not root or not os.path.isdir(path):
        pytest.skip("needs $MMFUSE_DATA_DIR/movielens-100k")
    return path


def _popularity_recall_at_100(data_dir: str) -> float:
    dataset = read_dataset(data_dir, check_images=False)
    splits = assign_splits(dataset.interactions)
    counts = collections.Counter(row.item_id for row, split in zip(dataset.interactions, splits)
                                 if split == TRAIN)
    by_popularity = sorted(dataset.items, key=lambda item: -counts[item])
    rank = {item: position for position, item in enumerate(by_popularity, 1)}
    ranks = [rank[row.item_id] for row, split in zip(dataset.interactions, splits) if split != TRAIN]
    return metrics_from_ranks(ranks)["recall@100"]


def test_movielens_run_is_blessed_and_beats_popularity(tmp_path):
    data = tmp_path / "ml100k"
    convert("movielens-100k", _source(), str(data))
    # Two epochs: the eval split's recall@100 was 0.39 after them (0.40 after
    # three) against popularity's 0.30; the third epoch cost about 80 s.
    _, result = run_pipeline(data, tmp_path / "out", epochs=2)
    assert result["blessed"] and os.path.isdir(result["pushed_model"])
    popularity = _popularity_recall_at_100(str(data))
    assert result["metrics"]["recall@100"] > popularity + 0.02, (result["metrics"], popularity)

"""Assigns interactions to the train and eval splits (DESIGN.md, "Splits").

The pipeline and `mmfuse evaluate` both call `assign_splits`, so the same data
always splits the same way. The hash is md5 rather than Python's `hash()`,
which is salted per process.
"""
from __future__ import annotations

import collections
import hashlib
from typing import Dict, List, Sequence

from dataset.contract import DatasetError, Interaction

TRAIN = "train"
EVAL = "eval"
SPLIT_METHODS = ("random", "temporal", "last")
EVAL_FRACTION = 0.2


def assign_splits(interactions: Sequence[Interaction], method: str = "random") -> List[str]:
    """Returns TRAIN or EVAL for each interaction, in order."""
    if method == "random":
        return [_hashed_split(_split_key(row)) for row in interactions]
    if method == "temporal":
        return _temporal_splits(interactions)
    if method == "last":
        return _last_visit_splits(interactions)
    raise ValueError(f"unknown split method {method!r}; expected one of {', '.join(SPLIT_METHODS)}")


def _split_key(row: Interaction) -> str:
    # A search row is split by its query text, so no eval query is seen in training.
    if row.query:
        return "query\x1f" + row.query.lower()
    return "\x1f".join((row.user_id, row.item_id, str(row.timestamp or "")))


def _hashed_split(key: str) -> str:
    bucket = int.from_bytes(hashlib.md5(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return EVAL if bucket < EVAL_FRACTION else TRAIN


def _temporal_splits(interactions: Sequence[Interaction]) -> List[str]:
    """Each user's last 20% of interactions by timestamp go to eval.

    Anonymous rows have no history to order, so they fall back to the hashed
    split of their query.
    """
    by_user = _rows_by_user(interactions, "temporal")
    splits = [TRAIN] * len(interactions)
    for user, indices in by_user.items():
        if not user:
            continue
        indices.sort(key=lambda i: (interactions[i].timestamp, interactions[i].row))
        num_eval = int(round(len(indices) * EVAL_FRACTION))
        for index in indices[len(indices) - num_eval:]:
            splits[index] = EVAL
    return _anonymous_hashed(interactions, by_user, splits)


def _last_visit_splits(interactions: Sequence[Interaction]) -> List[str]:
    """Every row at each user's latest timestamp (their last visit or basket)
    goes to eval, when the user has rows at an earlier timestamp too; a user
    with a single visit stays in train. Anonymous rows as in `temporal`."""
    by_user = _rows_by_user(interactions, "last")
    splits = [TRAIN] * len(interactions)
    for user, indices in by_user.items():
        if not user:
            continue
        times = [interactions[i].timestamp for i in indices]
        last = max(times)
        if min(times) < last:
            for index, timestamp in zip(indices, times):
                if timestamp == last:
                    splits[index] = EVAL
    return _anonymous_hashed(interactions, by_user, splits)


def _anonymous_hashed(interactions, by_user, splits: List[str]) -> List[str]:
    for index in by_user.get("", ()):
        splits[index] = _hashed_split(_split_key(interactions[index]))
    return splits


def _rows_by_user(interactions: Sequence[Interaction], method: str) -> Dict[str, List[int]]:
    """Row indices by user ("" for anonymous rows); a user's row without a
    timestamp is an error."""
    by_user: Dict[str, List[int]] = collections.defaultdict(list)
    for index, row in enumerate(interactions):
        if row.user_id and row.timestamp is None:
            raise DatasetError(
                f"interactions.csv: line {row.row}: field timestamp is empty, "
                f"and the {method} split needs one on every row with a user")
        by_user[row.user_id].append(index)
    return by_user


"""Tests of dataset.splits: the random (hashed) and temporal train/eval splits."""
import json
import os
import random
import subprocess
import sys

import pytest

from dataset.contract import DatasetError, Interaction
from dataset.splits import EVAL, TRAIN, assign_splits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plain_rows(count, seed=0):
    rng = random.Random(seed)
    return [Interaction(row=index + 2, user_id=f"u{rng.randrange(300)}",
                        item_id=f"i{rng.randrange(1000)}",
                        timestamp=1_600_000_000 + rng.randrange(10_000_000))
            for index in range(count)]


def test_random_split_is_deterministic_and_only_train_or_eval():
    rows = plain_rows(500)
    first = assign_splits(rows, "random")
    assert first == assign_splits(list(rows), "random")
    assert first == assign_splits(rows)  # random is the default
    assert set(first) == {TRAIN, EVAL}
    assert len(first) == len(rows)


def test_random_split_depends_on_the_row_not_its_position():
    rows = plain_rows(300)
    by_row = dict(zip(rows, assign_splits(rows, "random")))
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    renumbered = [Interaction(row=1000 + n, user_id=r.user_id, item_id=r.item_id,
                              timestamp=r.timestamp, rating=5.0) for n, r in enumerate(shuffled)]
    assert assign_splits(renumbered, "random") == [by_row[r] for r in shuffled]


def test_random_split_is_the_same_in_another_process():
    """md5, not the per-process salted hash(): `mmfuse evaluate` must agree with the pipeline."""
    rows = plain_rows(200)
    here = assign_splits(rows, "random")
    script = (
        "import json, sys\n"
        "from dataset.contract import Interaction\n"
        "from dataset.splits import assign_splits\n"
        "rows = [Interaction(*r) for r in json.load(sys.stdin)]\n"
        "print(json.dumps(assign_splits(rows, 'random')))\n")
    payload = json.dumps([[r.row, r.user_id, r.item_id, r.timestamp] for r in rows])
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=REPO)
    there = subprocess.run([sys.executable, "-c", script], input=payload, capture_output=True,
                           text=True, env=env, cwd=REPO, check=True).stdout
    assert json.loads(there) == here


def test_random_split_puts_about_a_fifth_in_eval():
    rows = plain_rows(5000)
    share = assign_splits(rows, "random").count(EVAL) / len(rows)
    assert 0.17 < share < 0.23


def test_random_split_key_includes_user_item_and_timestamp():
    """Changing any one of them moves some rows across the split."""
    rows = plain_rows(400)
    base = assign_splits(rows, "random")
    for change in (lambda r: Interaction(r.row, r.user_id + "x", r.item_id, r.timestamp),
                   lambda r: Interaction(r.row, r.user_id, r.item_id + "x", r.timestamp),
                   lambda r: Interaction(r.row, r.user_id, r.item_id, r.timestamp + 1)):
        assert assign_splits([change(r) for r in rows], "random") != base


def test_search_rows_split_by_query_text_in_any_case():
    rng = random.Random(7)
    queries = [f"colour{n} kind{n % 7}" for n in range(60)]
    rows = []
    for index in range(1500):
        query = rng.choice(queries)
        query = rng.choice([query, query.upper(), query.title(), query.capitalize()])
        user = rng.choice(["", f"u{rng.randrange(100)}"])  # anonymous or not
        rows.append(Interaction(row=index + 2, user_id=user, item_id=f"i{rng.randrange(500)}",
                                timestamp=rng.randrange(10**9), query=query))
    splits = assign_splits(rows, "random")
    by_query = {}
    for row, split in zip(rows, splits):
        by_query.setdefault(row.query.lower(), set()).add(split)
    assert all(len(assigned) == 1 for assigned in by_query.values()), by_query
    eval_queries = {q for q, s in by_query.items() if s == {EVAL}}
    train_queries = {row.query.lower() for row, s in zip(rows, splits) if s == TRAIN}
    assert eval_queries and train_queries
    assert not eval_queries & train_queries


def test_mixed_rows_keep_eval_queries_out_of_train():
    rows = plain_rows(1000) + [
        Interaction(row=5000 + n, user_id=f"u{n}", item_id=f"i{n}", timestamp=n,
                    query=f"query {n % 40}") for n in range(400)]
    splits = assign_splits(rows, "random")
    train_queries = {r.query for r, s in zip(rows, splits) if s == TRAIN and r.query}
    eval_queries = {r.query for r, s in zip(rows, splits) if s == EVAL and r.query}
    assert eval_queries
    assert not train_queries & eval_queries
    plain = splits[:1000]
    assert EVAL in plain and TRAIN in plain


# --- temporal --------------------------------------------------------------------------------

# round(0.2 * n) by hand, for each user's history length n.
EXPECTED_EVAL_COUNTS = {1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 7: 1, 8: 2, 10: 2, 12: 2, 13: 3, 20: 4}


def temporal_rows(seed=0):
    rng = random.Random(seed)
    rows = []
    for user, count in enumerate(EXPECTED_EVAL_COUNTS):
        times = rng.sample(range(1_000_000), count)
        for time in times:  # unsorted, and users interleaved below
            rows.append((f"u{user}", time))
    rng.shuffle(rows)
    return [Interaction(row=n + 2, user_id=user, item_id=f"i{n}", timestamp=time)
            for n, (user, time) in enumerate(rows)]


def test_temporal_split_puts_each_users_latest_fifth_in_eval():
    rows = temporal_rows()
    splits = assign_splits(rows, "temporal")
    for user, count in enumerate(EXPECTED_EVAL_COUNTS):
        mine = [(row.timestamp, split) for row, split in zip(rows, splits)
                if row.user_id == f"u{user}"]
        assert len(mine) == count
        expected_eval = EXPECTED_EVAL_COUNTS[count]
        ordered = [split for _, split in sorted(mine)]
        assert ordered == [TRAIN] * (count - expected_eval) + [EVAL] * expected_eval, user


def test_temporal_split_breaks_timestamp_ties_by_line():
    rows = [Interaction(row=line, user_id="u", item_id=f"i{line}", timestamp=100)
            for line in (2, 3, 4, 5, 6, 7, 8, 9, 10, 11)]
    reordered = rows[5:] + rows[:5]
    splits = dict(zip((r.row for r in reordered), assign_splits(reordered, "temporal")))
    assert [line for line, split in splits.items() if split == EVAL] == [10, 11]


def test_temporal_split_of_anonymous_rows_follows_their_query():
    anonymous = [Interaction(row=n + 2, user_id="", item_id="i1", query=f"q{n}")
                 for n in range(200)]  # no timestamps: allowed without a user
    temporal = assign_splits(anonymous, "temporal")
    assert temporal == assign_splits(anonymous, "random")
    assert EVAL in temporal and TRAIN in temporal


def test_temporal_split_needs_timestamps_and_names_the_line():
    rows = [Interaction(row=2, user_id="u1", item_id="i1", timestamp=5),
            Interaction(row=3, user_id="u1", item_id="i2", timestamp=6),
            Interaction(row=7, user_id="u2", item_id="i3", timestamp=None)]
    with pytest.raises(DatasetError) as error:
        assign_splits(rows, "temporal")
    assert "line 7" in str(error.value)
    assert "timestamp" in str(error.value)
    # The random split does not need timestamps.
    assert len(assign_splits(rows, "random")) == 3


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="'chronological'"):
        assign_splits(plain_rows(3), "chronological")


# --- last ------------------------------------------------------------------------------------

def test_last_split_holds_out_each_users_latest_visit():
    rows = [Interaction(row=2, user_id="u1", item_id="i1", timestamp=5),
            Interaction(row=3, user_id="u1", item_id="i2", timestamp=9),
            Interaction(row=4, user_id="u1", item_id="i3", timestamp=9),  # the same basket
            Interaction(row=5, user_id="u1", item_id="i1", timestamp=7),
            Interaction(row=6, user_id="u2", item_id="i1", timestamp=3),  # one visit: all train
            Interaction(row=7, user_id="u2", item_id="i2", timestamp=3)]
    assert assign_splits(rows, "last") == [TRAIN, EVAL, EVAL, TRAIN, TRAIN, TRAIN]


def test_last_split_needs_timestamps_and_hashes_anonymous_rows():
    anonymous = [Interaction(row=n + 2, user_id="", item_id="i1", query=f"q{n}") for n in range(50)]
    assert assign_splits(anonymous, "last") == assign_splits(anonymous, "random")
    with pytest.raises(DatasetError, match="line 9.*last split"):
        assign_splits([Interaction(row=9, user_id="u", item_id="i1")], "last")

from benchmarks import live
from dataset.contract import Dataset, Interaction, Item


def test_the_live_split_gives_each_user_a_recent_history():
    rows = [Interaction(n, "u1", f"i{n}", timestamp=100 - n) for n in range(8)]  # newest first
    rows += [Interaction(20 + n, "u2", f"i{n}", timestamp=n) for n in range(3)]  # too few
    dataset = Dataset("d", {f"i{n}": Item(f"i{n}") for n in range(8)}, rows, {})
    training, asked = live.live_split(dataset, recent=3)
    held_out, recent, seen = asked["u1"]
    # By time: i7 (oldest) ... i0 (newest); i0 held out, i1-i3 given, newest first.
    assert (held_out, recent) == ("i0", ["i1", "i2", "i3"])
    assert seen == {f"i{n}" for n in range(1, 8)}
    assert sorted(row.item_id for row in training if row.user_id == "u1") == ["i4", "i5", "i6", "i7"]
    assert "u2" not in asked and len([row for row in training if row.user_id == "u2"]) == 3

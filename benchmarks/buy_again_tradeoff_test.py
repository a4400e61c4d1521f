"""benchmarks/buy_again_tradeoff.py on a small shop where half the customers
rebuy their staples and everyone also buys new things."""
import random

import pytest

from benchmarks import buy_again_tradeoff as tradeoff
from dataset.contract import Dataset, Interaction, Item


def shop(customers: int = 60, visits: int = 6, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    items = {f"i{n}": Item(f"i{n}", title=f"thing {n}") for n in range(80)}
    rows = []
    for customer in range(customers):
        staples = rng.sample(range(20), 3)
        for visit in range(visits):
            basket = {f"i{rng.choice(staples)}"} if customer % 2 else set()
            basket |= {f"i{20 + rng.randrange(60)}" for _ in range(3)}
            rows += [Interaction(row=len(rows) + 2, user_id=f"c{customer}", item_id=item,
                                 timestamp=1000 * visit + customer) for item in sorted(basket)]
    return Dataset("/shop", items, rows, {})


def test_the_weight_trades_past_items_for_new_ones_on_both_splits():
    rows = tradeoff.measure(shop(), [0.5, 500.0])
    by = {(row["split"], row["variant"]): row for row in rows}
    assert {split for split, _ in by} == {"validation", "eval"}
    for split in ("validation", "eval"):
        low, high = by[split, "ease+buy-again, weight 0.5"], by[split, "ease+buy-again, weight 500"]
        assert low["recall@20_repeat"] > high["recall@20_repeat"]
        assert high["recall@20_new"] >= low["recall@20_new"]
        assert tradeoff.meets_goal(by[split, "ease"], rows) is None


def test_the_validation_split_holds_out_each_customers_last_training_purchase():
    dataset = shop()
    validation = tradeoff.carves(dataset)["validation"]
    latest = max(row.timestamp for row in dataset.interactions if row.user_id == "c1")
    assert all(row.timestamp < latest for row in validation.interactions if row.user_id == "c1")
    assert len(validation.interactions) < len(dataset.interactions)


def test_a_bad_weight_list_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        tradeoff.main(["--data", "/nowhere", "--weights", "a,b"])
    assert exit_.value.code == 2
    assert "--weights takes comma-separated" in capsys.readouterr().err

"""Retrieval metrics from the rank of the held-out item among all candidates.

Each eval row has one relevant item, so recall@k is the share of rows whose
item ranks within k, ndcg@k is the mean of 1/log2(1 + rank) over those rows,
and MRR is the mean reciprocal rank. The training callback, the Evaluator's
metric and `mmfuse evaluate` all sum `rank_contributions` and divide by the row count.
"""
import math
from typing import Dict, Sequence

DEFAULT_KS = (10, 20, 100)


def rank_contributions(rank: float, ks: Sequence[int] = DEFAULT_KS) -> Dict[str, float]:
    """One row's contribution to each metric; `rank` is 1-based."""
    values = {"mrr": 1.0 / rank}
    for k in ks:
        hit = rank <= k
        values[f"recall@{k}"] = float(hit)
        values[f"ndcg@{k}"] = 1.0 / math.log2(1.0 + rank) if hit else 0.0
    return values


def metrics_from_ranks(ranks: Sequence[float], ks: Sequence[int] = DEFAULT_KS) -> Dict[str, float]:
    totals = {name: 0.0 for name in rank_contributions(1.0, ks)}
    for rank in ranks:
        for name, value in rank_contributions(rank, ks).items():
            totals[name] = totals.get(name, 0.0) + value
    return {name: total / max(len(ranks), 1) for name, total in totals.items()}

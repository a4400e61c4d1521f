"""Ranking metrics of top-k lists (best first) against the items that were relevant.

For one list and its relevant items, each with a gain (its grade; 1 when the
data have no grades):

- recall@k: the share of the relevant items that are in the top k.
- ndcg@k: DCG@k / ideal DCG@k, where DCG@k sums gain / log2(1 + rank) over the
  top k (items that are not relevant gain 0) and the ideal DCG@k is that of the
  relevant items sorted by gain, so a list can reach 1 however many are relevant.
- hit@k: 1 when at least one relevant item is in the top k.
- reciprocal rank: 1 / the rank of the first relevant item; 0 when none is in
  the list. Lists are only as long as was asked (the largest k), so its mean
  (MRR) is at most 1 / that length below the MRR over full ranks.

With one relevant item of gain 1 - a held-out interaction - recall@k equals
hit@k, ndcg@k is 1 / log2(1 + rank) and the reciprocal rank is 1 / rank: the
Evaluator's figures for one eval row (`rank_contributions`).

Over all the lists of an evaluation:

- coverage@k: the share of the catalogue that appears in at least one top-k list.
- diversity@k (intra-list diversity): for each list, the mean over pairs of
  items in its top k of 1 - Jaccard(A, B), A and B the two items' sets of
  categorical attribute tokens ("colour=red", one token per value of a
  multi-valued cell); then the mean over lists. A pair with an item that has
  no attributes says nothing and is left out; so is a list with no pair left.
  None when no list has a pair (e.g. a catalogue without attributes).
Retrieval metrics from the rank of the held-out item among all candidates
(`rank_contributions`, `metrics_from_ranks`): each eval row has one relevant
item, so recall@k is the share of rows whose item ranks within k, ndcg@k the
mean of 1/log2(1 + rank) over those rows, and MRR the mean reciprocal rank.
The training callback, the Evaluator's metric and `mmfuse evaluate` all sum
`rank_contributions` and divide by the row count.
"""
from __future__ import annotations

import math
from typing import AbstractSet, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

DEFAULT_KS = (10, 20, 100)


def list_metrics(ranked: Sequence[str], relevant: Mapping[str, float],
                 ks: Sequence[int]) -> Dict[str, float]:
    """recall@k, ndcg@k and hit@k for each k, and "rr" (reciprocal rank), of
    one ranked list against `relevant` (item id -> gain > 0)."""
    if not relevant:
        raise ValueError("a list needs at least one relevant item to be scored")
    bad = {item: gain for item, gain in relevant.items() if not gain > 0}
    if bad:
        raise ValueError(f"gains of relevant items must be positive, not {bad}")
    ideal = sorted(relevant.values(), reverse=True)
    # Rank (1-based) and gain of each relevant item found in the list.
    found = [(rank, relevant[item]) for rank, item in enumerate(ranked, start=1)
             if item in relevant]
    values = {"rr": 1.0 / found[0][0] if found else 0.0}
    for k in ks:
        in_top = [(rank, gain) for rank, gain in found if rank <= k]
        values[f"recall@{k}"] = len(in_top) / len(relevant)
        values[f"ndcg@{k}"] = (sum(gain / math.log2(1 + rank) for rank, gain in in_top)
                               / _dcg(ideal[:k]))
        values[f"hit@{k}"] = float(bool(in_top))
    return values


def _dcg(gains: Sequence[float]) -> float:
    return sum(gain / math.log2(2 + index) for index, gain in enumerate(gains))


def mean_metrics(rows: Sequence[Mapping[str, float]]) -> Dict[str, float]:
    """The mean of each metric over `rows` (each row one list's or one held-out
    interaction's figures); empty for no rows."""
    if not rows:
        return {}
    return {name: sum(row[name] for row in rows) / len(rows) for name in rows[0]}


def coverage(lists: Iterable[Sequence[str]], ks: Sequence[int],
             catalogue_size: int) -> Dict[str, float]:
    """coverage@k for each k over `lists`."""
    if catalogue_size <= 0:
        raise ValueError("coverage needs a catalogue with at least one item")
    covered: Dict[int, set] = {k: set() for k in ks}
    for ranked in lists:
        for k in ks:
            covered[k].update(ranked[:k])
    return {f"coverage@{k}": len(covered[k]) / catalogue_size for k in ks}


def intra_list_diversity(lists: Iterable[Sequence[str]], attributes: Mapping[str, AbstractSet[str]],
                         ks: Sequence[int]) -> Dict[str, Optional[float]]:
    """diversity@k for each k over `lists`; `attributes` maps an item id to its
    attribute tokens (an item it lacks has none)."""
    largest = max(ks)
    sums = {k: 0.0 for k in ks}
    counts = {k: 0 for k in ks}
    for ranked in lists:
        dissimilarity, has_attributes = _pairwise_dissimilarity(ranked[:largest], attributes)
        for k in ks:
            # Pairs (i < j) within the top k whose items both have attributes.
            mask = np.triu(np.outer(has_attributes[:k], has_attributes[:k]), 1)
            pairs = int(mask.sum())
            if pairs:
                sums[k] += float(dissimilarity[:k, :k][mask].sum()) / pairs
                counts[k] += 1
    return {f"diversity@{k}": sums[k] / counts[k] if counts[k] else None for k in ks}


def _pairwise_dissimilarity(ranked: Sequence[str], attributes: Mapping[str, AbstractSet[str]]):
    """1 - Jaccard between every two items of `ranked` (a [n, n] matrix), and
    which of them have any attribute."""
    token_sets: List[AbstractSet[str]] = [attributes.get(item, frozenset()) for item in ranked]
    columns = {token: index for index, token in enumerate(set().union(*token_sets))}
    tokens = np.zeros((len(ranked), len(columns)), dtype=np.float32)
    for row, token_set in enumerate(token_sets):
        tokens[row, [columns[token] for token in token_set]] = 1.0
    shared = tokens @ tokens.T
    sizes = tokens.sum(axis=1)
    union = sizes[:, None] + sizes[None, :] - shared
    # Pairs with an empty union are masked out by the caller; 1 keeps the division defined.
    jaccard = shared / np.maximum(union, 1.0)
    return 1.0 - jaccard, sizes > 0

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

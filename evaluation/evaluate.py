"""The offline evaluation protocol: `mmfuse evaluate` and the quality benchmark.

Rows are the dataset's interactions (for a catalogue-only dataset, the
pipeline's own rows: each item as a search for itself by its title and by a
few of its attribute values, `dataset.contract.training_interactions`), split by
`dataset.splits.assign_splits`, so the eval rows are the pipeline's.

Recommendation (eval rows without a query): one list per eval user, the top
max(k) of `ranker.recommend`.
- recall@k, ndcg@k and mrr are means over held-out interactions: each eval row
  counts once, scored by the rank of its item in its user's list. That is the
  Evaluator's averaging (evaluation/metrics.py), so without `exclude_seen` the
  figures are the pipeline's (MRR only counts ranks within max(k)).
- hit@k is a mean over users: the share of eval users with at least one of
  their held-out items in their top k.
- coverage@k and diversity@k are over the users' lists (evaluation/metrics.py).
- `exclude_seen` removes each user's train items (from any train row of theirs)
  from their list before it is cut to k; the ranker is asked for k plus that
  many. A held-out item is thereby removed only when the user also has it in
  train: such an eval row is a repeat, which a list of unseen items can never
  contain, so it is left out of the means and counted in
  "repeat_rows_left_out" rather than scored as a certain miss.
- Without `exclude_seen`, recall@k is also given apart for the repeat rows
  (the held-out item is in the user's train items: buying again) as
  "recall@k_repeat" and for the others as "recall@k_new", with their counts
  "repeat_rows" and "new_rows".

Search (eval rows with a query), under "search": rows are grouped by query text
lower-cased (as the split groups them), and each query is asked once, without
a user, since several users may have asked it. Its relevant items are its
rows' items with gain = the row's rating (1 when it has none), the largest
when an item repeats; a gain of 0 or below is not relevant. recall@k, ndcg@k,
hit@k, mrr are means over queries; coverage@k and diversity@k over their lists.
When the rows carry ratings, "judged_ndcg@k" is the judged re-ranking of the
Home Depot protocol: each query's judged items alone, ordered by the ranker's
score for them (ties in an order fixed by a hash of the item id, so the file's
order cannot leak), nDCG@k with gain = rating; queries whose judged items all
have the same rating (any order is ideal) are left out.

`min_rating` (optional) makes an eval row relevant only when its rating is at
least that (rows without a rating always are); judged re-ranking uses all
judged items whatever it is.
"""
from __future__ import annotations

import collections
import hashlib
import time
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from dataset import pseudonyms
from dataset.contract import Dataset, Interaction, attribute_tokens, read_dataset, training_interactions
from dataset.splits import EVAL, TRAIN, assign_splits
from evaluation import metrics
from evaluation.metrics import DEFAULT_KS
from evaluation.rankers import BATCH_SIZE, RECOMMEND, SEARCH, Ranker, SavedModelRanker


def split_rows(dataset: Dataset, split_method: str) -> Tuple[List[Interaction], List[Interaction]]:
    """(train rows, eval rows), split as the pipeline splits them."""
    rows = training_interactions(dataset)
    assigned = assign_splits(rows, split_method)
    return ([row for row, split in zip(rows, assigned) if split == TRAIN],
            [row for row, split in zip(rows, assigned) if split == EVAL])


def attribute_sets(dataset: Dataset) -> Dict[str, frozenset]:
    """Item id -> its attribute tokens, as the model's item tower sees them."""
    return {item_id: frozenset(attribute_tokens(item))
            for item_id, item in dataset.items.items() if item.attributes}


def evaluate(dataset: Dataset, ranker: Ranker, split_method: str = "random",
             ks: Sequence[int] = DEFAULT_KS, exclude_seen: bool = False,
             min_rating: Optional[float] = None) -> Dict[str, object]:
    """The figures described in the module docstring, as a JSON-ready dict."""
    ks = tuple(sorted(set(ks)))
    if not ks or ks[0] < 1:
        raise ValueError(f"cut-offs must be positive integers, not {ks}")
    train, eval_rows = split_rows(dataset, split_method)
    attributes = attribute_sets(dataset)
    result: Dict[str, object] = {"ranker": ranker.name, "split": split_method,
                                 "exclude_seen": exclude_seen, "ks": list(ks),
                                 "catalogue_items": len(dataset.items)}
    if min_rating is not None:
        result["min_rating"] = min_rating
    unanswered = []
    recommendation_rows = [row for row in eval_rows if not row.query]
    if recommendation_rows:
        if RECOMMEND in ranker.questions:
            seen = _seen_items(train)
            result.update(_recommendation_metrics(
                dataset, ranker, recommendation_rows, seen if exclude_seen else None, ks,
                attributes, min_rating, train_items=seen))
        else:
            unanswered.append(RECOMMEND)
    search_rows = [row for row in eval_rows if row.query]
    if search_rows:
        if SEARCH in ranker.questions:
            result["search"] = _search_metrics(dataset, ranker, search_rows, ks, attributes,
                                               min_rating)
        else:
            unanswered.append(SEARCH)
    if unanswered:
        result["unanswered"] = unanswered
    return result


def _seen_items(train: Sequence[Interaction]) -> Dict[str, Set[str]]:
    seen: Dict[str, Set[str]] = collections.defaultdict(set)
    for row in train:
        if row.user_id:
            seen[row.user_id].add(row.item_id)
    return seen


def _is_relevant(row: Interaction, min_rating: Optional[float]) -> bool:
    return min_rating is None or row.rating is None or row.rating >= min_rating


def _recommendation_metrics(dataset, ranker, rows, seen, ks, attributes, min_rating,
                            train_items=None):
    """`seen` is each user's train items when they are excluded, else None;
    `train_items` each user's train items."""
    relevant = [row for row in rows if _is_relevant(row, min_rating)]
    scored = [row for row in relevant if row.item_id not in (seen or {}).get(row.user_id, ())]
    held_out: Dict[str, Set[str]] = collections.defaultdict(set)
    for row in scored:
        held_out[row.user_id].add(row.item_id)
    lists = _recommendation_lists(ranker, list(held_out), max(ks), seen or {})
    per_row = [metrics.list_metrics(lists[row.user_id], {row.item_id: 1.0}, ks) for row in scored]
    per_user = [metrics.list_metrics(lists[user], dict.fromkeys(items, 1.0), ks)
                for user, items in held_out.items()]
    row_means, user_means = metrics.mean_metrics(per_row), metrics.mean_metrics(per_user)
    result: Dict[str, object] = {"rows": len(scored), "users": len(held_out)}
    if seen is not None:
        result["repeat_rows_left_out"] = len(relevant) - len(scored)
    for k in ks:
        result[f"recall@{k}"] = row_means.get(f"recall@{k}")
        result[f"ndcg@{k}"] = row_means.get(f"ndcg@{k}")
        result[f"hit@{k}"] = user_means.get(f"hit@{k}")
    result["mrr"] = row_means.get("rr")
    if seen is None and train_items is not None:
        result.update(_repeat_split(scored, per_row, train_items, ks))
    result.update(_list_metrics(dataset, list(lists.values()), ks, attributes))
    return result


def _repeat_split(rows, per_row, train_items, ks) -> Dict[str, object]:
    """recall@k of the repeat rows and of the new rows (module docstring)."""
    parts: Dict[str, list] = {"repeat": [], "new": []}
    for row, values in zip(rows, per_row):
        parts["repeat" if row.item_id in train_items.get(row.user_id, ()) else "new"].append(values)
    split: Dict[str, object] = {}
    for name, values in parts.items():
        split[f"{name}_rows"] = len(values)
        means = metrics.mean_metrics(values)
        for k in ks:
            split[f"recall@{k}_{name}"] = means.get(f"recall@{k}")
    return split


def _recommendation_lists(ranker: Ranker, users: List[str], k: int,
                          seen: Mapping[str, Set[str]]) -> Dict[str, List[str]]:
    """Each user's top k, their seen items left out. Users go to the ranker in
    batches of similar history length, each asking for k plus the longest."""
    users = sorted(users, key=lambda user: len(seen.get(user, ())))
    lists = {}
    for start in range(0, len(users), BATCH_SIZE):
        batch = users[start:start + BATCH_SIZE]
        extra = max(len(seen.get(user, ())) for user in batch)
        ranked = ranker.recommend(batch, k + extra)
        for user, items in zip(batch, ranked.item_ids):
            excluded = seen.get(user, ())
            lists[user] = [item for item in items if item not in excluded][:k]
    return lists


def _list_metrics(dataset, lists, ks, attributes):
    result = metrics.coverage(lists, ks, len(dataset.items))
    result.update(metrics.intra_list_diversity(lists, attributes, ks))
    return result


def _search_metrics(dataset, ranker, rows, ks, attributes, min_rating):
    judged: Dict[str, Dict[str, float]] = collections.defaultdict(dict)
    relevant: Dict[str, Dict[str, float]] = collections.defaultdict(dict)
    text: Dict[str, str] = {}
    for row in rows:
        query = row.query.lower()
        text.setdefault(query, row.query)
        gain = 1.0 if row.rating is None else row.rating
        judged[query][row.item_id] = max(gain, judged[query].get(row.item_id, gain))
        if gain > 0 and _is_relevant(row, min_rating):
            relevant[query][row.item_id] = judged[query][row.item_id]
    queries = list(relevant)
    ranked = ranker.search([text[query] for query in queries], [""] * len(queries), max(ks))
    per_query = [metrics.list_metrics(items, relevant[query], ks)
                 for query, items in zip(queries, ranked.item_ids)]
    means = metrics.mean_metrics(per_query)
    result: Dict[str, object] = {"rows": len(rows), "queries": len(queries),
                                 "queries_without_relevant": len(judged) - len(queries)}
    for k in ks:
        for name in ("recall", "ndcg", "hit"):
            result[f"{name}@{k}"] = means.get(f"{name}@{k}")
    result["mrr"] = means.get("rr")
    result.update(_list_metrics(dataset, ranked.item_ids, ks, attributes))
    if any(row.rating is not None for row in rows):
        result.update(judged_reranking(ranker, text, judged, ks))
    return result


def judged_reranking(ranker: Ranker, text: Mapping[str, str],
                     judged: Mapping[str, Mapping[str, float]],
                     ks: Sequence[int]) -> Dict[str, object]:
    """judged_ndcg@k: each query's judged items ordered by the ranker's score.
    `judged` maps a query key to {item id: rating}; `text` a key to the text asked."""
    queries = [query for query, gains in judged.items()
               if len(set(gains.values())) > 1 and max(gains.values()) > 0]
    candidates = [list(judged[query]) for query in queries]
    scores = ranker.score_search([text[query] for query in queries], [""] * len(queries),
                                 candidates)
    per_query = []
    for query, items, item_scores in zip(queries, candidates, scores):
        order = sorted(zip(items, item_scores), key=lambda pair: (-pair[1], _tie_break(pair[0])))
        gains = {item: gain for item, gain in judged[query].items() if gain > 0}
        per_query.append(metrics.list_metrics([item for item, _ in order], gains, ks))
    means = metrics.mean_metrics(per_query)
    result: Dict[str, object] = {"judged_queries": len(queries)}
    for k in ks:
        result[f"judged_ndcg@{k}"] = means.get(f"ndcg@{k}")
    return result


def _tie_break(item_id: str) -> bytes:
    return hashlib.md5(item_id.encode("utf-8")).digest()


def evaluate_model(data_dir: str, model_path: str, split_method: str = "random",
                   ks: Sequence[int] = DEFAULT_KS, exclude_seen: bool = False,
                   user_key_file: Optional[str] = None) -> Dict[str, object]:
    """`mmfuse evaluate`: reads the dataset (DatasetError when it is bad), loads
    the pushed model (FileNotFoundError when there is none) and evaluates it,
    asking about users by their pseudonyms under the key in `user_key_file`
    (UserKeyError when it cannot be read; None: users asked about as they are)."""
    started = time.time()
    dataset = read_dataset(data_dir, check_images=False)
    user_key = pseudonyms.load_key(user_key_file) if user_key_file else None
    ranker = SavedModelRanker(model_path, user_key=user_key)
    result = evaluate(dataset, ranker, split_method, ks, exclude_seen)
    result.update({"data": dataset.directory, "model": ranker.path,
                   "wall_time_s": round(time.time() - started, 1)})
    return result

"""Things that rank the catalogue, behind one interface, so that the pushed
model and the baselines are measured by the same code.

A `Ranker` answers some of three questions, named in its `questions`:
"recommend" (`recommend(user_ids, k)`: the top k items per user), "search"
(`search(queries, user_ids, k)`; `score_search(queries, user_ids, candidates)`
scores given items for each query, for re-ranking judged items) and
"image_search" (`image_search(images, k)`: encoded photos). Lists come
back best first with their scores. Rankers that score the whole catalogue in
numpy break ties by catalogue order.

- `SavedModelRanker`: the pushed SavedModel, through its serving signatures.
- `TowersRanker`: a SavedModel's towers alone for `recommend` (the user's
  query vector against the catalogue, without the buy-again mix).
- `Popularity`: items by their number of train interactions, the same list for
  everyone and every query.
- `OwnHistory`: each user's own train items, most recently had first, then
  the other items by popularity (the "buy it again" shelf).
- `BuyAgainMix`: another ranker's `recommend` with the user's past items
  mixed in as the exported `recommend` mixes them (trainer/repeat_buying.py),
  the histories built from the train rows as the pipeline builds them.
- `EASE`: Steck's closed-form item-item model (Embarrassingly Shallow
  Autoencoders, WWW 2019) on the binary user x item matrix of the train split.
- `BM25`: Okapi BM25 over each item's text (title, description, attribute values).

The baselines that learn from interactions take the train split's rows only.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import re
import unicodedata
from typing import Callable, Dict, FrozenSet, Iterator, List, Mapping, Optional, Sequence

import numpy as np
from scipy import sparse

from dataset import pseudonyms
from dataset.contract import Interaction, Item

RECOMMEND = "recommend"
SEARCH = "search"
IMAGE_SEARCH = "image_search"
# Rows per call: a batch of scores over a large catalogue stays in the tens of MB.
BATCH_SIZE = 256


@dataclasses.dataclass
class Ranked:
    """One list per user or query, best first."""
    item_ids: List[List[str]]
    scores: List[List[float]]


class Ranker:
    name = "ranker"
    questions: FrozenSet[str] = frozenset()

    def recommend(self, user_ids: Sequence[str], k: int) -> Ranked:
        raise NotImplementedError(f"{self.name} does not recommend")

    def search(self, queries: Sequence[str], user_ids: Sequence[str], k: int) -> Ranked:
        raise NotImplementedError(f"{self.name} does not search")

    def score_search(self, queries: Sequence[str], user_ids: Sequence[str],
                     candidates: Sequence[Sequence[str]]) -> List[List[float]]:
        """For each query, the score of each of its candidate items (-inf for
        an item the ranker does not know)."""
        raise NotImplementedError(f"{self.name} does not search")

    def image_search(self, images: Sequence[bytes], k: int) -> Ranked:
        raise NotImplementedError(f"{self.name} does not search by image")


def _batches(count: int, size: int) -> Iterator[slice]:
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


class _CatalogueScorer(Ranker):
    """A ranker that computes a [batch, catalogue] score matrix in numpy;
    subclasses provide `_user_scores` and/or `_query_scores`."""

    def __init__(self, item_ids: Sequence[str]):
        self.item_ids = list(item_ids)
        self._item_index = {item_id: index for index, item_id in enumerate(self.item_ids)}
        self._item_array = np.asarray(self.item_ids, dtype=object)

    def _user_scores(self, user_ids: Sequence[str]) -> np.ndarray:
        raise NotImplementedError(f"{self.name} does not recommend")

    def _query_scores(self, queries: Sequence[str], user_ids: Sequence[str]) -> np.ndarray:
        raise NotImplementedError(f"{self.name} does not search")

    def recommend(self, user_ids, k):
        return self._top_k(lambda rows: self._user_scores(user_ids[rows]), len(user_ids), k)

    def search(self, queries, user_ids, k):
        return self._top_k(lambda rows: self._query_scores(queries[rows], user_ids[rows]),
                           len(queries), k)

    def score_search(self, queries, user_ids, candidates):
        result = []
        for rows in _batches(len(queries), BATCH_SIZE):
            scores = self._query_scores(queries[rows], user_ids[rows])
            for row_scores, items in zip(scores, candidates[rows]):
                result.append([float(row_scores[self._item_index[item]])
                               if item in self._item_index else -math.inf for item in items])
        return result

    def _top_k(self, scores_of: Callable[[slice], np.ndarray], count: int, k: int) -> Ranked:
        item_ids, scores = [], []
        for rows in _batches(count, BATCH_SIZE):
            batch = scores_of(rows)
            # A stable sort keeps catalogue order among equal scores.
            order = np.argsort(-batch, axis=1, kind="stable")[:, :k]
            item_ids.extend(self._item_array[order].tolist())
            scores.extend(np.take_along_axis(batch, order, axis=1).tolist())
        return Ranked(item_ids, scores)


class Popularity(_CatalogueScorer):
    name = "popularity"
    questions = frozenset({RECOMMEND, SEARCH})

    def __init__(self, item_ids: Sequence[str], train: Sequence[Interaction]):
        super().__init__(item_ids)
        self.counts = np.zeros(len(self.item_ids), dtype=np.float32)
        for row in train:
            if row.item_id in self._item_index:
                self.counts[self._item_index[row.item_id]] += 1

    def _user_scores(self, user_ids):
        return np.broadcast_to(self.counts, (len(user_ids), len(self.counts)))

    def _query_scores(self, queries, user_ids):
        return self._user_scores(user_ids)


class OwnHistory(Popularity):
    """A user's train items by when they last had them (latest first; items
    of one visit, which share a timestamp, by popularity), then everything else
    by popularity. Rows without a timestamp are ordered by their position."""
    name = "own-history"
    questions = frozenset({RECOMMEND})

    def __init__(self, item_ids: Sequence[str], train: Sequence[Interaction]):
        super().__init__(item_ids, train)
        last: Dict[str, Dict[int, tuple]] = collections.defaultdict(dict)
        for position, row in enumerate(train):
            if row.user_id and row.item_id in self._item_index:
                item = self._item_index[row.item_id]
                when = position if row.timestamp is None else row.timestamp
                last[row.user_id][item] = max(when, last[row.user_id].get(item, when))
        # Per user: items latest first, scored above every popularity score.
        self._history = {user: sorted(items, key=lambda item: (items[item], self.counts[item]),
                                      reverse=True)
                         for user, items in last.items()}
        self._popularity = self.counts / (self.counts.max() + 1.0) if len(self.counts) else self.counts

    def _user_scores(self, user_ids):
        scores = np.tile(self._popularity, (len(user_ids), 1))
        for row, user in enumerate(user_ids):
            history = self._history.get(user, ())
            scores[row, history] = 2.0 + np.arange(len(history), 0, -1, dtype=np.float32)
        return scores


class BuyAgainMix(_CatalogueScorer):
    """`base`'s scores with the buy-again mix of trainer/repeat_buying.py, fitted
    on `train`: each user's RECENT latest rows (by timestamp, then row), their
    item counts and how many rows their last visit (latest timestamp) has;
    `new_item_weight` is the configuration's `export.new_item_weight`."""
    questions = frozenset({RECOMMEND})

    def __init__(self, base: _CatalogueScorer, train: Sequence[Interaction],
                 new_item_weight: float):
        import tensorflow as tf

        from trainer import repeat_buying

        super().__init__(base.item_ids)
        self.name = f"{base.name}+buy-again"
        self._tf, self._mix, self._base = tf, repeat_buying.mix_scores, base
        self._user_row: Dict[str, int] = {}
        rows: Dict[str, list] = collections.defaultdict(list)
        for position, row in enumerate(train):
            if row.user_id and row.item_id in self._item_index:
                rows[row.user_id].append((row.timestamp or 0, position,
                                          self._item_index[row.item_id] + 1))  # 0: unknown
        recent = np.zeros((len(rows) + 1, repeat_buying.RECENT), np.int64)
        counts: List[Dict[int, int]] = [{}]
        last_visit_rows = np.zeros(len(rows) + 1, np.int64)
        item_counts = np.zeros(len(self.item_ids) + 1)
        for user, entries in rows.items():
            self._user_row[user] = len(counts)
            entries.sort(reverse=True)
            items = [item for _, _, item in entries]
            recent[len(counts), :min(len(items), repeat_buying.RECENT)] = items[:repeat_buying.RECENT]
            # Rows without a timestamp (None: 0) are each a visit of their own.
            latest = entries[0][0]
            last_visit_rows[len(counts)] = (sum(when == latest for when, _, _ in entries)
                                            if latest else 1)
            counts.append(dict(collections.Counter(items)))
            np.add.at(item_counts, items, 1)
        self.model = repeat_buying.fit(recent, counts, item_counts, new_item_weight,
                                       last_visit_rows)
        self.tables = (None if self.model is None else
                       repeat_buying.BuyAgainTables(self.model, repeat_buying.past_items(recent, counts)))

    def recommend(self, user_ids, k):
        return self._top_k(lambda rows: self._mixed(user_ids[rows], k), len(user_ids), k)

    def _mixed(self, user_ids, k):
        tf = self._tf
        scores = np.asarray(self._base._user_scores(user_ids), np.float32)
        if self.tables is None:
            return scores
        # Column 0 is the unknown item of the exported model's catalogue.
        scores = tf.concat([tf.zeros([len(user_ids), 1]), scores], axis=1)
        past = self.tables.user_past_items(tf.constant([self._user_row.get(u, 0) for u in user_ids]))
        mixed = self._mix(scores, past[0], self.tables.probabilities(*past),
                          self.tables.new_item_rates, tf.constant(k))
        return mixed.numpy()[:, 1:]


class EASE(_CatalogueScorer):
    """B = argmin ||X - XB||^2 + l2 ||B||^2 with diag(B) = 0, in closed form:
    P = (X^T X + l2 I)^-1, B_ij = -P_ij / P_jj off the diagonal. A user's
    scores are their row of X times B; a user without train rows scores 0 everywhere."""
    name = "ease"
    questions = frozenset({RECOMMEND})
    # The item-item matrix is dense: 20k items take 1.6 GB in float32 (3.2 GB while inverting).
    MAX_ITEMS = 20_000

    def __init__(self, item_ids: Sequence[str], train: Sequence[Interaction], l2: float = 500.0):
        super().__init__(item_ids)
        if len(self.item_ids) > self.MAX_ITEMS:
            raise ValueError(
                f"EASE needs a dense item x item matrix; {len(self.item_ids)} items are more "
                f"than the {self.MAX_ITEMS} it accepts")
        if not l2 > 0:
            raise ValueError(f"EASE's L2 weight must be positive, not {l2}")
        self._user_row: Dict[str, int] = {}
        cells = set()  # (user row, item column); repeated interactions count once
        for row in train:
            if row.user_id and row.item_id in self._item_index:
                user = self._user_row.setdefault(row.user_id, len(self._user_row))
                cells.add((user, self._item_index[row.item_id]))
        cell_array = np.asarray(sorted(cells), dtype=np.int64).reshape(-1, 2)
        self.interactions = sparse.csr_matrix(
            (np.ones(len(cell_array), dtype=np.float32), (cell_array[:, 0], cell_array[:, 1])),
            shape=(len(self._user_row), len(self.item_ids)))
        gram = (self.interactions.T @ self.interactions).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += l2
        inverse = np.linalg.inv(gram)
        weights = -inverse / np.diag(inverse)[None, :]
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights = weights.astype(np.float32)

    def _user_scores(self, user_ids):
        rows = [self._user_row.get(user, -1) for user in user_ids]
        known = np.asarray([row >= 0 for row in rows])
        scores = np.zeros((len(user_ids), len(self.item_ids)), dtype=np.float32)
        if known.any():
            history = self.interactions[[row for row in rows if row >= 0]]
            scores[known] = history @ self.weights
        return scores


_WORD = re.compile(r"[^\W_]+")
_APOSTROPHES = re.compile(r"(?<=\w)['\u2019](?=\w)")


def tokenize(text: str) -> List[str]:
    """Words of `text`: Unicode-normalised, accents dropped, case-folded; an
    apostrophe inside a word is dropped ("men's" -> "mens") and any other
    punctuation separates words ("2-in-1" -> "2", "in", "1")."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(char for char in decomposed if not unicodedata.combining(char))
    return _WORD.findall(_APOSTROPHES.sub("", plain.casefold()))


def item_text(item: Item) -> str:
    """What BM25 indexes of an item: title, description and attribute values."""
    return " ".join([item.title, item.description, *(value for _, value in item.attributes)])


class BM25(_CatalogueScorer):
    """Okapi BM25: score(q, d) = sum over the words t of q of
    idf(t) * f(t, d) (k1 + 1) / (f(t, d) + k1 (1 - b + b |d| / avgdl)), with
    idf(t) = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5)) (never negative). A word
    repeated in the query counts once per occurrence."""
    name = "bm25"
    questions = frozenset({SEARCH})

    def __init__(self, items: Mapping[str, Item], k1: float = 1.2, b: float = 0.75):
        super().__init__(list(items))
        self._vocabulary: Dict[str, int] = {}
        rows, columns, counts = [], [], []
        lengths = np.zeros(len(self.item_ids), dtype=np.float64)
        for row, item in enumerate(items.values()):
            words = collections.Counter(tokenize(item_text(item)))
            lengths[row] = sum(words.values())
            for word, count in words.items():
                rows.append(row)
                columns.append(self._vocabulary.setdefault(word, len(self._vocabulary)))
                counts.append(count)
        frequencies = sparse.csr_matrix(
            (np.asarray(counts, dtype=np.float64), (rows, columns)),
            shape=(len(self.item_ids), len(self._vocabulary)))
        documents = len(self.item_ids)
        document_frequency = np.bincount(frequencies.indices, minlength=len(self._vocabulary))
        idf = np.log1p((documents - document_frequency + 0.5) / (document_frequency + 0.5))
        average_length = max(lengths.mean(), 1e-9)
        # Per stored (item, word) entry: the length norm of its item row.
        norm = k1 * (1.0 - b + b * lengths / average_length)
        entry_norm = np.repeat(norm, np.diff(frequencies.indptr))
        data = frequencies.data
        frequencies.data = idf[frequencies.indices] * data * (k1 + 1.0) / (data + entry_norm)
        # Words x items, so a batch of query vectors times it gives [queries, items].
        self.weights = frequencies.T.tocsr().astype(np.float32)

    def _query_scores(self, queries, user_ids):
        rows, columns = [], []
        for row, query in enumerate(queries):
            for word in tokenize(query):
                if word in self._vocabulary:
                    rows.append(row)
                    columns.append(self._vocabulary[word])
        words = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)),
                                  shape=(len(queries), len(self._vocabulary)))
        return (words @ self.weights).toarray()


class SavedModelRanker(Ranker):
    """The pushed model: `path` is a version directory (with saved_model.pb) or a
    TF Serving model base, whose newest version is used. The model knows users
    by their pseudonyms: with `user_key` (the run's, dataset/pseudonyms.py)
    raw user ids are hashed before they are asked about."""
    name = "model"
    questions = frozenset({RECOMMEND, SEARCH, IMAGE_SEARCH})
    # score_search asks for the whole catalogue per query, so it sends fewer rows per call.
    SCORE_BATCH_SIZE = 32
    _EVERY_ITEM = 2**31 - 1  # the signatures clip k to the catalogue

    def __init__(self, path: str, batch_size: int = BATCH_SIZE, user_key: Optional[bytes] = None):
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        import tensorflow as tf

        from serving import model_store

        self._tf = tf
        if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            self.path = path
            self.model = tf.saved_model.load(path)
        else:
            version, self.model = model_store.load_newest(path)
            self.path = os.path.join(path, str(version))
        self.batch_size = batch_size
        self.user_key = user_key

    def _users(self, user_ids: Sequence[str]) -> np.ndarray:
        if self.user_key is None:
            return np.asarray(user_ids, dtype=object)
        return np.array([pseudonyms.pseudonym(user, self.user_key) for user in user_ids], dtype=object)

    def _call(self, signature: str, k: int, **inputs: Sequence[str]):
        tf = self._tf
        answer = self.model.signatures[signature](
            k=tf.constant(k, tf.int32), **{name: tf.constant(list(values), tf.string)
                                           for name, values in inputs.items()})
        return answer["item_ids"].numpy(), answer["scores"].numpy()

    def _ranked(self, signature: str, k: int, **inputs: Sequence[str]) -> Ranked:
        count = len(next(iter(inputs.values())))
        ranked = Ranked([], [])
        for rows in _batches(count, self.batch_size):
            item_ids, scores = self._call(signature, k, **{name: values[rows]
                                                           for name, values in inputs.items()})
            ranked.item_ids.extend([[item.decode() for item in row] for row in item_ids])
            ranked.scores.extend(scores.tolist())
        return ranked

    def recommend(self, user_ids, k):
        return self._ranked("recommend", k, user_id=self._users(user_ids))

    def search(self, queries, user_ids, k):
        return self._ranked("search", k, query=queries, user_id=self._users(user_ids))

    def image_search(self, images, k):
        return self._ranked("image_search", k, image=images)

    def score_search(self, queries, user_ids, candidates):
        result = []
        user_ids = self._users(user_ids)
        for rows in _batches(len(queries), self.SCORE_BATCH_SIZE):
            item_ids, scores = self._call("search", self._EVERY_ITEM, query=queries[rows],
                                          user_id=user_ids[rows])
            for row_ids, row_scores, items in zip(item_ids, scores, candidates[rows]):
                score_of = dict(zip(row_ids.tolist(), row_scores.tolist()))
                result.append([score_of.get(item.encode(), -math.inf) for item in items])
        return result


class TowersRanker(SavedModelRanker):
    """`recommend` from the model's tables: each user's query vector (from the
    export) times the catalogue, index 0 (unknown) left out; no buy-again mix."""
    name = "towers"
    questions = frozenset({RECOMMEND})

    def recommend(self, user_ids, k):
        tf = self._tf
        queries, candidates = self.model.user_queries.numpy(), self.model.candidates.numpy()
        item_ids = self.model.item_ids.numpy()
        ranked = Ranked([], [])
        for rows in _batches(len(user_ids), self.batch_size):
            users = self._user_indices(list(self._users(user_ids[rows])))
            scores = queries[users] @ candidates.T
            scores[:, 0] = -np.inf
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            ranked.item_ids.extend([[item.decode() for item in row] for row in item_ids[order]])
            ranked.scores.extend(np.take_along_axis(scores, order, axis=1).tolist())
        return ranked

    def _user_indices(self, user_ids):
        """The export's user lookup (transform/preprocessing.py IdLookup: line + 1, 0 unknown),
        through its restored table."""
        tf = self._tf
        table = self.model.user_index._table
        found = tf.raw_ops.LookupTableFindV2(
            table_handle=table.resource_handle, keys=tf.constant(user_ids, tf.string),
            default_value=tf.constant(-1, tf.int64))
        return found.numpy() + 1

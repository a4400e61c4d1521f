"""The serving SavedModel: the signatures of docs/design.md over an exact top-k.

`search` and `image_search` feed raw strings through the Transform graph (the
training preprocessing itself) and embed them with the query tower;
`recommend` and `similar_items` need only an id's index (looked up in the
Transform's own vocabularies) and a row of a table computed at export: every
user's query vector, every item's vector. Each signature then scores the whole
catalogue with one matrix product and `tf.math.top_k`: ops that stock TF
Serving has.
`search` adds to the towers' scores the lexical ones (trainer/lexical.py), a
sparse product with the catalogue's BM25 table, also computed at export.
`recommend_with_history` runs the query tower per request on the recent items
a request names (merged with the user's known history), so a click a second
ago counts. Both, and `search` without words, add on a catalogue small
enough for it the item-to-item stage's scores of the user's items
(trainer/item_item.py). `embed_items` and `set_item_rows` are for `mmfuse catalog`
(serving/catalog.py): new items embedded by this model's own Transform graph
and item tower, and the id -> catalogue row table rebuilt after an edit.

With `export.index` partitioned (or `auto` on a large catalogue) the
signatures that answer a top-k read only a shortlist that the partitioned
index (trainer/index.py) finds, and re-score it exactly; `search` adds its
lexical best to the shortlist and `recommend` the user's past items, so the
buy-again mix sees every item it would have. An index that finds fewer than
k + 2 items falls back to the exact top-k. `rank_examples` (the release gate)
stays exact.

Every top-k answer also carries what a person reads of each item, `titles`
and `attributes` (strings aligned with `item_ids`, cut to the `export`
settings' lengths), so that any client of TF Serving can show them without a
catalogue. `recommend` and `search` say whether each user is known
(`known_user`): an unknown one gets the cold-start answer, that of a user
with no history. `similar_items` refuses an item id the model does not know
(INVALID_ARGUMENT naming it, raised in the graph as TF Serving reports it).

Signatures take `k` as an input. TF Serving requires every signature input in a
request, so clients send it; `mmfuse serve` fills in k=10 (and an empty
`user_id` for `search`) when a request leaves them out.
"""


from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from mmfuse.config import ExportSettings
from trainer import index as catalogue_index
from trainer import lexical, repeat_buying
from trainer.item_item import ItemItemStage
from trainer.data import CATALOG_FEATURES, QUERY_FEATURES, dense_embeddings, vocabulary_sizes
from trainer.model import RetrievalModel, no_text_queries, ranks_of_items
from transform import features as f
from transform.preprocessing import IdLookup

_STRINGS = tf.TensorSpec([None], tf.string)
_STRING_ROWS = tf.TensorSpec([None, None], tf.string)
_K = tf.TensorSpec([], tf.int32)
# Answer outputs shown beside each item id -> the variable holding them per item index.
DISPLAY_TABLES = {"titles": "item_titles", "attributes": "item_attributes"}


def shortened(texts: Sequence[bytes], length: int) -> list:
    """UTF-8 `texts` cut to `length` characters, "…" marking a cut."""
    kept = []
    for text in texts:
        text = text.decode("utf-8")
        if len(text) > length:
            text = text[:length - 1] + "…" if length > 1 else text[:length]
        kept.append(text.encode("utf-8"))
    return kept


def display_tables(display: Dict[str, Sequence[bytes]], settings: ExportSettings) -> Dict[str, list]:
    """trainer/data.py `load_display`'s titles and attributes, shortened as
    `settings` say, under their answers' output names."""
    return {"titles": shortened(display[f.DISPLAY_TITLE], settings.title_length),
            "attributes": shortened(display[f.DISPLAY_ATTRIBUTES], settings.attributes_length)}


class CatalogueModule(tf.Module):
    """The catalogue (ids, vectors, display fields, the id -> row table), its
    index and the top-k over it: what `ServingModule` answers from, and the
    serving benchmark's stand-in model (benchmarks/serving.py) too."""
    # None: no buy-again mix, no item-to-item stage; 0: no lexical scores
    # (ServingModule sets them).
    buy_again = None
    item_item = None
    lexical_weight = 0.0

    def __init__(self, item_ids: Sequence[bytes], candidates: np.ndarray,
                 display: Optional[Dict[str, Sequence[bytes]]], settings: ExportSettings):
        super().__init__()
        # Variables of unknown length, so that a loaded model's catalogue can be
        # replaced by one of another size and re-saved without retraining.
        self.item_ids = tf.Variable(item_ids, trainable=False, shape=[None], name="item_ids")
        self.candidates = tf.Variable(candidates, trainable=False, shape=[None, candidates.shape[1]],
                                      name="candidates")
        # None: every top-k is exact. Catalogue edits refresh it (index.refresh_model).
        self.index = None
        if settings.index != "exact":
            self.index = catalogue_index.PartitionedIndex(
                candidates, settings.index_partitions, settings.index_probes,
                settings.index_shortlist, settings.index_dtype)
        # Catalogue size from which the index answers (`auto`; 1: always). A
        # variable, so that a benchmark can serve one model both ways.
        self.index_from_items = tf.Variable(
            settings.index_min_items if settings.index == "auto" else 1, trainable=False,
            dtype=tf.int64, name="index_from_items")
        # What answers show of each item, by item index (`display_tables`; row 0 empty).
        for output, table in DISPLAY_TABLES.items():
            rows = (display or {}).get(output)
            rows = [b""] * len(item_ids) if rows is None else list(rows)
            if len(rows) != len(item_ids):
                raise ValueError(f"{len(rows)} {output} for a catalogue of {len(item_ids)} rows")
            setattr(self, table, tf.Variable(rows, trainable=False, shape=[None], name=table))
        # Item id -> catalogue row. Mutable (`set_item_rows`), since `mmfuse
        # catalog` adds and removes rows, after which they differ from the
        # item index; 0 (the unknown item) for an id not in the catalogue.
        self.item_rows = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, 0,
                                                                 name="item_rows")
        self.item_rows.insert(tf.constant(item_ids[1:], tf.string),
                              tf.range(1, len(item_ids), dtype=tf.int64))

    def _scores(self, query: tf.Tensor, query_tokens: tf.Tensor = None) -> tf.Tensor:
        """[batch, catalogue]: the towers' cosine and, given the query's
        words, their lexical score."""
        # catalogue x query, then transposed: the faster product when the
        # catalogue is much longer than the batch (2-5x at 44k-1M items).
        scores = tf.transpose(tf.matmul(self.candidates, query, transpose_b=True))
        if query_tokens is None or self.lexical_weight == 0:
            return scores
        return lexical.search_scores(scores, self.lexical_weight, self.lexical_entries.value(),
                                     self.lexical_weights.value(), self.token_vocabulary_size,
                                     query_tokens)

    def _top_k(self, scores: tf.Tensor, k: tf.Tensor, exclude: tf.Tensor = None,
               rows: tf.Tensor = None):
        """The answer of the best k of `scores` [batch, catalogue], or given
        `rows` [batch, n] (the catalogue row of each column, 0: none) of a
        shortlist's `scores` [batch, n]."""
        # Index 0 (the unknown item) and `exclude` (an index per row) are never
        # answers: take a few more than k and drop them, rather than masking
        # the whole score matrix.
        dropped = 1 if exclude is None else 2
        k = tf.clip_by_value(k, 1, tf.shape(scores)[1] - dropped)
        top = tf.math.top_k(scores, k=k + dropped)
        indices = top.indices if rows is None else tf.cast(
            tf.gather(rows, top.indices, batch_dims=1), tf.int32)
        keep = indices != 0
        if exclude is not None:
            keep &= indices != tf.cast(exclude, tf.int32)[:, None]
        indices = tf.ragged.boolean_mask(indices, keep)[:, :k].to_tensor()
        values = tf.ragged.boolean_mask(top.values, keep)[:, :k].to_tensor()
        return self._answer(indices, values)

    def _answer(self, indices: tf.Tensor, scores: tf.Tensor) -> Dict[str, tf.Tensor]:
        """The outputs of a top-k answer given its item indices [batch, k]:
        ids, scores and the display fields, all aligned."""
        answer = {"item_ids": _rows(self.item_ids, indices), "scores": scores}
        for output, table in DISPLAY_TABLES.items():
            answer[output] = _rows(getattr(self, table), indices)
        return answer

    def _with_buy_again(self, scores: tf.Tensor, past_items, k: tf.Tensor,
                        shortlist: tf.Tensor = None, query: tf.Tensor = None,
                        item_item: tf.Tensor = None):
        """The towers' scores with the user's past items (items, counts,
        recency, lengths: repeat_buying.PastItems rows, by item index) mixed
        in by their buy-again probability. Given a `shortlist` [batch, n] of
        catalogue rows that `scores` score, (mixed scores, rows) over the
        shortlist and the past items, which are scored for `query` and
        added after it (each item once), with `item_item` [batch, catalogue]
        added to them."""
        items, counts, recency, lengths = past_items
        # Item index -> catalogue row: they part after `mmfuse catalog` edits,
        # and a removed item (row 0) must not come back as a past item.
        past = self.item_rows.lookup(tf.gather(self.item_vocabulary, items))
        past = tf.reshape(past, tf.shape(items))
        probability = self.buy_again.probabilities(items, counts, recency, lengths)
        if shortlist is None:
            return repeat_buying.mix_scores(scores, past, probability,
                                            self.buy_again.new_item_rates, k)
        # mix_scores takes column 0 for the unknown item: a column of none
        # first, then the shortlist less the past items, then the past items.
        again = tf.reduce_any((shortlist[:, :, None] == past[:, None, :])
                              & (past[:, None, :] > 0), axis=2)
        shortlist = tf.where(again, tf.zeros_like(shortlist), shortlist)
        none = tf.zeros_like(shortlist[:, :1])
        rows = tf.concat([none, shortlist, past], axis=1)
        scores = self._exact_scores(query, rows, item_item)
        columns = 1 + tf.shape(shortlist, out_type=tf.int64)[1] + tf.range(
            tf.shape(past, out_type=tf.int64)[1])
        past_columns = tf.where(past > 0, columns[None, :], 0)
        return repeat_buying.mix_scores(scores, past_columns, probability,
                                        self.buy_again.new_item_rates, k), rows

    def _exact_scores(self, query: tf.Tensor, rows: tf.Tensor,
                      item_item: tf.Tensor = None) -> tf.Tensor:
        """[batch, n] the towers' cosine of each query with its catalogue
        `rows` [batch, n] (plus their `item_item` scores, [batch, catalogue]);
        -inf where a row is 0 (none)."""
        scores = tf.einsum("bnd,bd->bn", _rows(self.candidates, rows), query)
        if item_item is not None:
            scores += tf.gather(item_item, rows, batch_dims=1)
        return tf.where(rows > 0, scores, -np.inf)

    def _ranked(self, query: tf.Tensor, k: tf.Tensor, exclude: tf.Tensor = None,
                query_tokens: tf.Tensor = None, past_items=None,
                item_item: tf.Tensor = None) -> Dict[str, tf.Tensor]:
        """The top-k answer for `query` [batch, dim]: exact, or through the
        index (module docstring); `query_tokens` adds search's lexical
        scores, `item_item` [batch, catalogue] the item-to-item stage's,
        `past_items` mixes in buy-again."""
        def exact():
            scores = self._scores(query, query_tokens)
            if item_item is not None:
                scores += item_item
            if past_items is not None:
                scores = self._with_buy_again(scores, past_items, k)
            return self._top_k(scores, k, exclude)

        if self.index is None:
            return exact()

        def shortlisted():
            size = tf.maximum(self.index.shortlist_size, k + 2)
            rows = self.index.shortlist(query, size)
            if query_tokens is not None and self.lexical_weight > 0:
                rows, lexical_scores = self._with_lexical_best(rows, query_tokens, size)
            enough = tf.reduce_all(tf.math.count_nonzero(rows, axis=1) >= tf.cast(k, tf.int64) + 2)

            def answer():
                if past_items is not None:
                    scores, all_rows = self._with_buy_again(None, past_items, k, rows, query,
                                                            item_item)
                    return self._top_k(scores, k, exclude, all_rows)
                scores = self._exact_scores(query, rows, item_item)
                if query_tokens is not None and self.lexical_weight > 0:
                    scores += self.lexical_weight * tf.gather(lexical_scores, rows, batch_dims=1)
                return self._top_k(scores, k, exclude, rows)

            return tf.cond(enough, answer, exact)

        items = tf.shape(self.candidates.value(), out_type=tf.int64)[0] - 1
        return tf.cond(items >= self.index_from_items, shortlisted, exact)

    def _with_lexical_best(self, rows: tf.Tensor, query_tokens: tf.Tensor, size: tf.Tensor):
        """The index's shortlist `rows` [batch, n] followed by the items of
        the best lexical scores not in it (a rare word's match may be far
        from the query's vector), and the lexical scores [batch, catalogue]."""
        scores = lexical.normalised_scores(self.lexical_entries.value(), self.lexical_weights.value(),
                                           tf.shape(self.candidates.value())[0],
                                           self.token_vocabulary_size, query_tokens)
        best = tf.math.top_k(scores, k=tf.minimum(size, tf.shape(scores)[1]))
        best_rows = tf.where(best.values > 0, tf.cast(best.indices, tf.int64), 0)
        listed = tf.reduce_any(best_rows[:, :, None] == rows[:, None, :], axis=2)
        return tf.concat([rows, tf.where(listed, tf.zeros_like(best_rows), best_rows)], axis=1), scores

    @tf.function(input_signature=[_STRINGS, _K])
    def similar_items(self, item_id, k):
        # A mutable table (`mmfuse catalog` edits it) has no static shape; the top-k needs one.
        item_row = tf.reshape(self.item_rows.lookup(item_id), tf.shape(item_id))
        known = item_row > 0
        # An in-graph check, so that TF Serving too answers INVALID_ARGUMENT naming the id.
        check = tf.debugging.Assert(
            tf.reduce_all(known),
            ["similar_items: item id(s) unknown to the model:", tf.boolean_mask(item_id, ~known)],
            summarize=10)
        with tf.control_dependencies([check]):
            item_row = tf.identity(item_row)
        return self._ranked(_rows(self.candidates, item_row), k, exclude=item_row)

    @tf.function(input_signature=[_STRINGS])
    def set_item_rows(self, item_ids):
        """Rebuilds the id -> row table from the catalogue's ids [n] (row 0
        unknown); `mmfuse catalog` calls it after changing `item_ids`."""
        self.item_rows.remove(self.item_rows.export()[0])
        self.item_rows.insert(item_ids[1:], tf.range(1, tf.size(item_ids, out_type=tf.int64)))
        return self.item_rows.size()


class ServingModule(CatalogueModule):
    """The exported model: the towers, the Transform graph and the tables
    computed at export, over the catalogue of `CatalogueModule`."""

    def __init__(self, model: RetrievalModel, tft_output: tft.TFTransformOutput,
                 lexical_weight: float, display: Optional[Dict[str, Sequence[bytes]]] = None,
                 buy_again: Optional[repeat_buying.BuyAgainTables] = None,
                 settings: ExportSettings = ExportSettings(),
                 item_item: Optional[ItemItemStage] = None):
        # Index -> item id; index 0 is "unknown" and is never returned.
        item_ids = [b"<unknown>"] + tft_output.vocabulary_by_name(f.ITEM_VOCABULARY)
        super().__init__(item_ids, model.catalog_embeddings(), display, settings)
        # None: `recommend` is the towers' ranking alone.
        self.buy_again = buy_again
        self.item_item = item_item
        self.model = model
        self.tft_layer = tft_output.transform_features_layer()
        self._raw_spec = tft_output.raw_feature_spec()
        # Fixed, unlike `item_ids`: what each item index of the towers names.
        self.item_vocabulary = tf.constant(item_ids, tf.string)
        # A user's recommend query depends on nothing but the user (id and
        # training history), so it is computed once here instead of per request.
        self.user_queries = tf.Variable(model.user_embeddings(), trainable=False, name="user_queries")
        # Weight 0: search is the towers' alone, and no table is saved.
        self.lexical_weight = lexical_weight
        if lexical_weight > 0:
            entries, weights = lexical.bm25_weights(model.catalog.content[f.ITEM_TOKENS].numpy())
            # Variables of unknown length, as the catalogue's are
            # (serving/model_store.py replace_catalogue keeps them in step).
            self.lexical_entries = tf.Variable(entries, trainable=False, shape=[None, 2],
                                               name="lexical_entries")
            self.lexical_weights = tf.Variable(weights, trainable=False, shape=[None],
                                               name="lexical_weights")
            self.token_vocabulary_size = vocabulary_sizes(tft_output)[f.TOKEN_VOCABULARY]
            # What BM25 is computed from, so that `mmfuse catalog` can
            # recompute the table over an edited catalogue.
            pairs, counts, lengths = lexical.term_counts(model.catalog.content[f.ITEM_TOKENS].numpy())
            self.lexical_counts = tf.Variable(counts, trainable=False, shape=[None],
                                              name="lexical_counts")
            self.item_lengths = tf.Variable(lengths, trainable=False, shape=[None],
                                            name="item_lengths")
        self.user_index = IdLookup(tft_output.vocabulary_file_by_name(f.USER_VOCABULARY))
        # The Transform's item index: what the towers' id embeddings know.
        self.item_index = IdLookup(tft_output.vocabulary_file_by_name(f.ITEM_VOCABULARY))

    def _transform(self, **raw: tf.Tensor):
        """Raw [batch] tensors -> transformed features. Features a request does
        not carry are fed empty, so the Transform graph always sees its full
        input signature, exactly as in training."""
        batch_size = tf.shape(next(iter(raw.values())), out_type=tf.int64)[0]
        inputs = {}
        for name, spec in self._raw_spec.items():
            if name in raw:
                # [batch] single values; [batch, n] lists (attributes), "" = none.
                value = raw[name] if raw[name].shape.rank == 2 else tf.reshape(raw[name], [-1, 1])
                inputs[name] = tf.sparse.from_dense(value)
            else:
                inputs[name] = tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0], spec.dtype),
                                               tf.stack([batch_size, 1]))
        return dense_embeddings(self.tft_layer(inputs))

    def _query_embeddings(self, transformed):
        return self.model.query_tower({name: transformed[name] for name in QUERY_FEATURES})

    def _history(self, user_index: tf.Tensor, recent_item_index: tf.Tensor) -> tf.Tensor:
        """[batch, RECENT_ITEMS_LENGTH] item indices, newest first (0 pads): a
        request's recent items (`recent_item_index` [batch, n], 0 = none)
        before the history training saw."""
        known = self.model.users.recent_items(user_index)
        merged = tf.concat([recent_item_index, known], axis=1)
        merged = tf.ragged.boolean_mask(merged, merged > 0)[:, :f.RECENT_ITEMS_LENGTH]
        return merged.to_tensor(default_value=0, shape=[None, f.RECENT_ITEMS_LENGTH])

    def _item_item_scores(self, user_index: tf.Tensor,
                          recent: tf.Tensor = None) -> Optional[tf.Tensor]:
        """[batch, catalogue] the item-to-item stage's scores for users by
        index (0: no user, no items) who also had `recent` [batch, n] (item
        indices, 0 pads), or None without the stage."""
        if self.item_item is None:
            return None
        items = self.item_item.user_items_of(user_index)
        if recent is not None:
            items = tf.concat([recent, items], axis=1)
        # Item index of each catalogue row; 0 (no id weights) for an added item.
        return self.item_item.scores(items, self.item_index(self.item_ids.value()))

    def _item_item_without_words(self, transformed) -> Optional[tf.Tensor]:
        """`_item_item_scores` for the rows of `transformed` without words,
        which ask what `recommend` asks, and 0 for rows with words."""
        user_index = transformed[f.USER_INDEX]
        no_words = transformed[f.QUERY_TEXT_EMBEDDING + "_present"] == 0
        # Rows with words ask as no user: their share of the sparse product is empty.
        return self._item_item_scores(tf.where(no_words, user_index, tf.zeros_like(user_index)))

    def _user_query_embeddings(self, transformed):
        """A request names its user; the user's recent items are the ones
        training saw (the users split), looked up by user index."""
        transformed[f.RECENT_ITEM_INDICES] = self.model.users.recent_items(transformed[f.USER_INDEX])
        return self._query_embeddings(transformed)

    @tf.function(input_signature=[_STRINGS, _K])
    def recommend(self, user_id, k):
        user_index = self.user_index(user_id)
        past_items = None if self.buy_again is None else self.buy_again.user_past_items(user_index)
        answer = self._ranked(_rows(self.user_queries, user_index), k, past_items=past_items,
                              item_item=self._item_item_scores(user_index))
        answer["known_user"] = user_index > 0
        return answer

    @tf.function(input_signature=[_STRINGS, _STRING_ROWS, _K])
    def recommend_with_history(self, user_id, recent_item_ids, k):
        """`recommend` with the items a user (or an anonymous visitor: user_id
        "") just interacted with, newest first, padded with "". Ids the model
        does not know are left out and counted in `unknown_recent_items`."""
        recent = self.item_index(recent_item_ids)
        unknown = tf.reduce_sum(tf.cast((recent == 0) & (recent_item_ids != ""), tf.int32), axis=1)
        user_index = self.user_index(user_id)
        history = self._history(user_index, recent)
        past_items = (None if self.buy_again is None
                      else repeat_buying.past_items_of_history(history))
        answer = self._ranked(self.model.query_tower(no_text_queries(user_index, history)), k,
                              past_items=past_items,
                              item_item=self._item_item_scores(user_index, recent))
        return {**answer, "known_user": user_index > 0,
                "unknown_recent_items": unknown}

    @tf.function(input_signature=[_STRINGS, _STRINGS, _K])
    def search(self, query, user_id, k):
        transformed = self._transform(query=query, user_id=user_id)
        answer = self._ranked(self._user_query_embeddings(transformed), k,
                              query_tokens=transformed[f.QUERY_TOKENS],
                              item_item=self._item_item_without_words(transformed))
        answer["known_user"] = transformed[f.USER_INDEX] > 0
        return answer

    @tf.function(input_signature=[_STRINGS, _K])
    def image_search(self, image, k):
        # A query of the photo alone, as training's photo queries are (trainer/model.py).
        return self._ranked(self._query_embeddings(self._transform(image=image)), k)

    @tf.function(input_signature=[_STRINGS, _STRINGS, _STRINGS, _STRING_ROWS, _STRINGS])
    def embed_items(self, item_id, title, description, attributes, image):
        """New items' vectors, word indices (for search's BM25 table) and
        display fields (as Transform writes them, before shortening), from
        the same Transform graph and item tower as the trained catalogue's.
        `attributes` are "column=value" tokens padded with ""; an empty
        title, description or image is absent. Their ids are not the
        model's, so the id modality sees none of them."""
        transformed = self._transform(item_id=item_id, title=title, description=description,
                                      attributes=attributes, image=image)
        item = {name: transformed[name] for name in CATALOG_FEATURES}
        item[f.ITEM_INDEX] = tf.zeros_like(transformed[f.ITEM_INDEX])
        item[f.ITEM_ID_LEARNED] = tf.zeros(tf.shape(item_id), tf.float32)
        return {"embeddings": self.model.item_tower(item), "item_tokens": transformed[f.ITEM_TOKENS],
                "titles": transformed[f.DISPLAY_TITLE],
                "attributes": transformed[f.DISPLAY_ATTRIBUTES]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def rank_examples(self, examples):
        """For the Evaluator: the rank of each example's item for its user/query,
        scored as the answer a client gets would rank it (`search` for rows
        with words, `recommend`, buy-again included, for rows without), and
        the size of the catalogue it ranks in, on every row, from which the
        release gate (pipeline/release_gate.py) takes its cut-off and floor."""
        raw = tf.io.parse_example(examples, self._raw_spec)
        transformed = dense_embeddings(self.tft_layer(raw))
        scores = self._scores(self._query_embeddings(transformed), transformed[f.QUERY_TOKENS])
        # Row 0 of the catalogue is the unknown item, which is never ranked.
        catalogue_size = tf.shape(self.candidates, out_type=tf.int64)[0] - 1
        no_query = transformed[f.QUERY_TEXT_EMBEDDING + "_present"] == 0
        item_item = self._item_item_without_words(transformed)
        if item_item is not None:
            scores += item_item
        if self.buy_again is not None:
            # The gate must judge what `recommend` serves; every rank is
            # exact, so the whole catalogue is mixed (k = its size).
            mixed = self._with_buy_again(
                scores, self.buy_again.user_past_items(transformed[f.USER_INDEX]),
                tf.shape(scores)[1])
            scores = tf.where(no_query[:, None], mixed, scores)
        ranks = ranks_of_items(scores, transformed[f.ITEM_INDEX])
        return {"rank": ranks, "catalogue_size": tf.fill(tf.shape(ranks), catalogue_size)}


def _rows(variable: tf.Variable, indices: tf.Tensor) -> tf.Tensor:
    """Rows of a variable, gathered from a plain read of it. A gather on the
    variable itself (a sparse read) switches it to copy-on-read for good, and
    every later plain read, the catalogue product included, would then copy
    the whole catalogue: 3.6x slower `recommend`s at 1M items once one
    `similar_items` had run."""
    return tf.gather(variable.value(), indices)


def export_serving_model(model: RetrievalModel, tft_output: tft.TFTransformOutput, path: str,
                         lexical_weight: float,
                         display: Optional[Dict[str, Sequence[bytes]]] = None,
                         buy_again: Optional[repeat_buying.BuyAgainTables] = None,
                         settings: ExportSettings = ExportSettings(),
                         item_item: Optional[ItemItemStage] = None) -> None:
    """Saves the serving model; `display` is `display_tables`' output (None:
    empty titles and attributes); `buy_again` None: `recommend` is the towers' alone;
    `item_item` None: no item-to-item stage; `settings`' index settings choose the top-k."""
    module = ServingModule(model, tft_output, lexical_weight, display, buy_again, settings,
                           item_item)
    signatures = {
        "recommend": module.recommend,
        "recommend_with_history": module.recommend_with_history,
        "search": module.search,
        "similar_items": module.similar_items,
        "image_search": module.image_search,
        "serving_default": module.rank_examples,
    }
    tf.saved_model.save(module, path, signatures=signatures)

"""The serving SavedModel: the signatures of DESIGN.md over an exact top-k.

`search` and `image_search` feed raw strings through the Transform graph (the
training preprocessing itself) and embed them with the query tower;
`recommend` and `similar_items` need only an id's index (looked up in the
Transform's own vocabularies) and a row of a table computed at export: every
user's query vector, every item's vector. Each signature then scores the whole
catalogue with one matrix product and `tf.math.top_k`: ops that stock TF
Serving has.
`search` adds to the towers' scores the lexical ones (trainer/lexical.py), a
sparse product with the catalogue's BM25 table, also computed at export.

Signatures take `k` as an input. TF Serving requires every signature input in a
request, so clients send it; `mmfuse serve` fills in k=10 (and an empty
`user_id` for `search`) when a request leaves them out.
"""


import tensorflow as tf
import tensorflow_transform as tft

from trainer import lexical, repeat_buying
from trainer.data import QUERY_FEATURES, dense_embeddings, vocabulary_sizes
from trainer.model import RetrievalModel, ranks_of_items
from transform import features as f
from transform.preprocessing import IdLookup

_STRINGS = tf.TensorSpec([None], tf.string)
_K = tf.TensorSpec([], tf.int32)


class ServingModule(tf.Module):
    def __init__(self, model: RetrievalModel, tft_output: tft.TFTransformOutput,
                 lexical_weight: float, buy_again: repeat_buying.BuyAgainTables = None):
        super().__init__()
        # None: `recommend` is the towers' ranking alone.
        self.buy_again = buy_again
        self.model = model
        self.tft_layer = tft_output.transform_features_layer()
        self._raw_spec = tft_output.raw_feature_spec()
        # Index -> item id; index 0 is "unknown" and is never returned.
        item_ids = [b"<unknown>"] + tft_output.vocabulary_by_name(f.ITEM_VOCABULARY)
        candidates = model.catalog_embeddings()
        # Variables of unknown length, so that a loaded model's catalogue can be
        # replaced by one of another size and re-saved without retraining.
        self.item_ids = tf.Variable(item_ids, trainable=False, shape=[None], name="item_ids")
        self.candidates = tf.Variable(candidates, trainable=False, shape=[None, candidates.shape[1]],
                                      name="candidates")
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
        self.user_index = IdLookup(tft_output.vocabulary_file_by_name(f.USER_VOCABULARY))
        self.item_index = IdLookup(tft_output.vocabulary_file_by_name(f.ITEM_VOCABULARY))

    def _transform(self, **raw: tf.Tensor):
        """Raw [batch] tensors -> transformed features. Features a request does
        not carry are fed empty, so the Transform graph always sees its full
        input signature, exactly as in training."""
        batch_size = tf.shape(next(iter(raw.values())), out_type=tf.int64)[0]
        inputs = {}
        for name, spec in self._raw_spec.items():
            if name in raw:
                inputs[name] = tf.sparse.from_dense(tf.reshape(raw[name], [-1, 1]))
            else:
                inputs[name] = tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0], spec.dtype),
                                               tf.stack([batch_size, 1]))
        return dense_embeddings(self.tft_layer(inputs))

    def _query_embeddings(self, transformed):
        return self.model.query_tower({name: transformed[name] for name in QUERY_FEATURES})

    def _user_query_embeddings(self, transformed):
        """A request names its user; the user's recent items are the ones
        training saw (the users split), looked up by user index."""
        transformed[f.RECENT_ITEM_INDICES] = self.model.users.recent_items(transformed[f.USER_INDEX])
        return self._query_embeddings(transformed)

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

    def _top_k(self, scores: tf.Tensor, k: tf.Tensor, exclude: tf.Tensor = None):
        # Index 0 (the unknown item) and `exclude` (an index per row) are never
        # answers: take a few more than k and drop them, rather than masking
        # the whole score matrix.
        dropped = 1 if exclude is None else 2
        k = tf.clip_by_value(k, 1, tf.shape(scores)[1] - dropped)
        top = tf.math.top_k(scores, k=k + dropped)
        keep = top.indices != 0
        if exclude is not None:
            keep &= top.indices != tf.cast(exclude, tf.int32)[:, None]
        indices = tf.ragged.boolean_mask(top.indices, keep)[:, :k].to_tensor()
        values = tf.ragged.boolean_mask(top.values, keep)[:, :k].to_tensor()
        return {"item_ids": _rows(self.item_ids, indices), "scores": values}

    def _with_buy_again(self, scores: tf.Tensor, past_items, k: tf.Tensor) -> tf.Tensor:
        """The towers' scores with the user's past items (items, counts,
        recency, lengths: repeat_buying.PastItems rows) mixed in by their
        buy-again probability; unchanged without a buy-again model."""
        if self.buy_again is None:
            return scores
        return repeat_buying.mix_scores(scores, past_items[0],
                                        self.buy_again.probabilities(*past_items),
                                        self.buy_again.new_item_rates, k)

    @tf.function(input_signature=[_STRINGS, _K])
    def recommend(self, user_id, k):
        user_index = self.user_index(user_id)
        scores = self._scores(_rows(self.user_queries, user_index))
        if self.buy_again is not None:
            scores = self._with_buy_again(scores, self.buy_again.user_past_items(user_index), k)
        return self._top_k(scores, k)

    @tf.function(input_signature=[_STRINGS, _STRINGS, _K])
    def search(self, query, user_id, k):
        transformed = self._transform(query=query, user_id=user_id)
        return self._top_k(self._scores(self._user_query_embeddings(transformed),
                                        transformed[f.QUERY_TOKENS]), k)

    @tf.function(input_signature=[_STRINGS, _K])
    def similar_items(self, item_id, k):
        item_index = self.item_index(item_id)
        query = _rows(self.candidates, item_index)
        return self._top_k(self._scores(query), k, exclude=item_index)

    @tf.function(input_signature=[_STRINGS, _K])
    def image_search(self, image, k):
        # A query of the photo alone, as training's photo queries are (trainer/model.py).
        return self._top_k(self._scores(self._query_embeddings(self._transform(image=image))), k)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def rank_examples(self, examples):
        """For the Evaluator: the rank of each example's item for its user/query,
        scored as `search` scores it (with no words, as `recommend` does), and
        the size of the catalogue it ranks in, on every row, from which the
        release gate (pipeline/release_gate.py) takes its cut-off and floor."""
        raw = tf.io.parse_example(examples, self._raw_spec)
        transformed = dense_embeddings(self.tft_layer(raw))
        scores = self._scores(self._query_embeddings(transformed), transformed[f.QUERY_TOKENS])
        ranks = ranks_of_items(scores, transformed[f.ITEM_INDEX])
        # Row 0 of the catalogue is the unknown item, which is never ranked.
        catalogue_size = tf.shape(self.candidates, out_type=tf.int64)[0] - 1
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
                         buy_again: repeat_buying.BuyAgainTables = None) -> None:
    module = ServingModule(model, tft_output, lexical_weight, buy_again)
    signatures = {
        "recommend": module.recommend,
        "search": module.search,
        "similar_items": module.similar_items,
        "image_search": module.image_search,
        "serving_default": module.rank_examples,
    }
    tf.saved_model.save(module, path, signatures=signatures)

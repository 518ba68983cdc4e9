"""The SavedModels of a run: raw-id histories -> query embeddings -> top-k items.

Retrieval is two steps, so that any scorer is served as it was trained:

1. candidate generation: ScaNN (approximate, dot product) finds the nearest
   neighbours of each of the scorer's probe vectors (`Scorer.probe_vectors`: the
   query itself, or each of a multi-interest query's M vectors);
2. exact re-score: the run's scorer scores the merged, de-duplicated candidates
   (`Scorer.score_candidates`), and the best k are returned.

The brute-force index scores the whole catalogue with the scorer
(`Scorer.score_matrix`) block by block (`tfrec_proxy.topk.ChunkedTopK`, TFRS
`BruteForce` with an exact chunked top-k), so it is exact for every scorer and query
shape, and, being stock TensorFlow ops only, its SavedModel loads in a TensorFlow (or
TF Serving) without ScaNN or this library.
"""

import math
from typing import Dict, Mapping

import numpy as np

from tfrec_proxy._tf import tf, tfrs
from tfrec_proxy.config import ExportConfig
from tfrec_proxy.data.vocab import Vocabulary
from tfrec_proxy.layers.towers import HISTORY
from tfrec_proxy.run_format import PAD_ID
from tfrec_proxy.topk import ChunkedTopK


def pack_histories(indices: tf.Tensor, max_len: int) -> tf.Tensor:
    """Left-aligns histories of item indices the way the query tower expects.

    Args:
        indices: `[B, L']` int32 item indices, 0 = padding anywhere in the row.
        max_len: History length L fed to the query tower.

    Returns:
        `[B, max_len]` int32: each row's non-padding items in order, the most recent
        `max_len` of them, left-padded with 0.
    """
    items = tf.ragged.boolean_mask(indices, tf.not_equal(indices, 0))
    items = items[:, -max_len:]
    lengths = items.row_lengths()
    right_padded = items.to_tensor(default_value=0, shape=[None, max_len])
    reversed_items = tf.reverse_sequence(right_padded, lengths, seq_axis=1, batch_axis=0)
    return tf.reverse(reversed_items, axis=[1])


def query_input_specs(query_tower: tf.keras.layers.Layer) -> Dict[str, tf.TensorSpec]:
    """The query SavedModel's inputs: the raw-id history plus the tower's context."""
    specs = {HISTORY: tf.TensorSpec([None, None], tf.int64, name=HISTORY)}
    for name, spec in getattr(query_tower, "context_specs", {}).items():
        specs[name] = tf.TensorSpec(spec.shape, spec.dtype, name=name)
    return specs


class QueryModule(tf.Module):
    """Raw item-id histories (+ context) -> query embeddings, and the run's scorer.

    The vocabulary lookup is inside the graph: unknown ids map to the OOV index,
    -1 is padding.
    """

    def __init__(self, query_tower: tf.keras.layers.Layer, scorer: tf.keras.layers.Layer,
                 vocab: Vocabulary, max_len: int, query_shape: tuple) -> None:
        super().__init__()
        self.query_tower = query_tower
        self.scorer = scorer
        self.max_len = max_len
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(vocab.ids, tf.int64),
                tf.range(2, vocab.size, dtype=tf.int64)),
            default_value=Vocabulary.OOV)
        specs = query_input_specs(query_tower)
        self.embed = tf.function(self._embed, input_signature=[specs])
        query_spec = tf.TensorSpec([None, *query_shape], tf.float32, name="queries")
        dim = query_shape[-1]
        self.score_matrix = tf.function(
            lambda queries, candidates: {"scores": scorer.score_matrix(queries, candidates)},
            input_signature=[query_spec, tf.TensorSpec([None, dim], tf.float32,
                                                       name="candidates")])
        self.score_candidates = tf.function(
            lambda queries, candidates: {
                "scores": scorer.score_candidates(queries, candidates)},
            input_signature=[query_spec, tf.TensorSpec([None, None, dim], tf.float32,
                                                       name="candidates")])

    def _embed(self, features: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        history = features[HISTORY]
        indices = tf.where(tf.equal(history, PAD_ID), tf.constant(0, tf.int64),
                           self.table.lookup(history))
        packed = pack_histories(tf.cast(indices, tf.int32), self.max_len)
        tf.debugging.assert_positive(
            tf.reduce_sum(tf.cast(packed > 0, tf.int32), axis=1),
            message="every history needs at least one item id (-1 is padding)")
        inputs = dict(features)
        inputs[HISTORY] = packed
        return {"embedding": self.query_tower(inputs, training=False)}

    def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
        return {"serving_default": self.embed.get_concrete_function(),
                "score_matrix": self.score_matrix.get_concrete_function(),
                "score_candidates": self.score_candidates.get_concrete_function()}


class ItemModule(tf.Module):
    """Item attributes (+ context) -> item vectors through the run's item tower, for
    items outside the vocabulary (they get the OOV index: no per-item parameters).

    Args:
        candidate_tower: The trained item tower (takes `"attributes"` / `"context"`).
        attribute_dim: d_A.
        context_dim: d_C.
    """

    def __init__(self, candidate_tower: tf.keras.layers.Layer, attribute_dim: int,
                 context_dim: int) -> None:
        super().__init__()
        self.candidate_tower = candidate_tower
        self.embed = tf.function(self._embed, input_signature=[
            tf.TensorSpec([None, attribute_dim], tf.float32, name="attributes"),
            tf.TensorSpec([None, context_dim], tf.float32, name="context")])

    def _embed(self, attributes: tf.Tensor, context: tf.Tensor) -> Dict[str, tf.Tensor]:
        ids = tf.fill(tf.shape(attributes)[:1], tf.constant(Vocabulary.OOV, tf.int32))
        vectors = self.candidate_tower({"item_id": ids, "attributes": attributes,
                                        "context": context}, training=False)
        return {"embedding": tf.cast(vectors, tf.float32)}


class ScorerBruteForce(tfrs.layers.factorized_top_k.BruteForce):
    """TFRS `BruteForce` scoring the catalogue with a run's scorer (any query shape)."""

    def __init__(self, scorer: tf.keras.layers.Layer, k: int, **kwargs) -> None:
        super().__init__(k=k, **kwargs)
        self.scorer = scorer

    def _compute_score(self, queries: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        return self.scorer.score_matrix(queries, candidates)


class RetrievalModule(tf.Module):
    """Raw histories (+ context) and k -> top-k raw item ids and exact scores.

    Args:
        query: The run's `QueryModule` (or any module with `embed`, `scorer` and
            either `query_tower` or `input_specs`, e.g. FELRec's cache lookup).
        index: An exact index (`is_exact()`: `topk.ChunkedTopK`, `ScorerBruteForce`;
            identifiers = raw ids) or TFRS `ScaNN` (identifiers = candidate
            positions; its hits are re-scored exactly).
        candidate_ids: `[N]` raw ids by candidate position.
        candidate_embeddings: `[N, d]` by candidate position.
        max_k: Largest k a caller may ask for.
        probe_k: Neighbours ScaNN returns per probe vector (>= max_k).
    """

    def __init__(self, query: QueryModule, index: tfrs.layers.factorized_top_k.TopK,
                 candidate_ids: np.ndarray, candidate_embeddings: np.ndarray,
                 max_k: int, probe_k: int) -> None:
        super().__init__()
        self.query = query
        self.index = index
        self.max_k = max_k
        self.probe_k = probe_k
        self.exact = bool(index.is_exact())
        if not self.exact:
            self.candidate_ids = tf.Variable(candidate_ids, trainable=False, name="ids")
            self.candidate_embeddings = tf.Variable(candidate_embeddings, trainable=False,
                                                    name="embeddings")
        # A query module may declare its own inputs (FELRec's: a user id, no history).
        specs = getattr(query, "input_specs", None) or query_input_specs(query.query_tower)
        self.retrieve = tf.function(self._retrieve, input_signature=[
            specs, tf.TensorSpec([], tf.int32, name="k")])

    def _retrieve(self, features: Mapping[str, tf.Tensor], k: tf.Tensor
                  ) -> Dict[str, tf.Tensor]:
        tf.debugging.assert_positive(k, message="k must be >= 1")
        tf.debugging.assert_less_equal(
            k, self.max_k, message=f"k must be <= max_k={self.max_k} fixed at export")
        queries = self.query.embed(features)["embedding"]
        # The index always retrieves max_k; the caller's k is a slice of that list,
        # so one SavedModel serves every k up to max_k.
        if self.exact:
            scores, ids = self.index(queries, k=self.max_k)
        else:
            scores, ids = self._generate_and_rescore(queries)
        return {"ids": ids[:, :k], "scores": scores[:, :k]}

    def _generate_and_rescore(self, queries: tf.Tensor):
        probes = self.query.scorer.probe_vectors(queries)  # [B, P, d]
        batch = tf.shape(probes)[0]
        probe_scores, positions = self.index(tf.reshape(probes, [-1, probes.shape[-1]]),
                                             k=self.probe_k)
        # ScaNN returns fewer than probe_k columns, padded with NaN scores, when the
        # searched leaves hold fewer points: keep whatever width came back and mark
        # the padding -1 (sorted first, then scored -inf).
        valid = tf.reshape(tf.math.is_finite(probe_scores), [batch, -1])
        positions = tf.where(valid, tf.reshape(positions, [batch, -1]), -1)
        width = tf.shape(positions)[1]
        positions = tf.pad(positions, [[0, 0], [0, tf.maximum(self.max_k - width, 0)]],
                           constant_values=-1)  # top_k needs >= max_k columns
        positions = tf.sort(positions, axis=1)
        drop = tf.concat([tf.zeros([batch, 1], tf.bool),
                          tf.equal(positions[:, 1:], positions[:, :-1])], axis=1)
        drop = drop | (positions < 0)
        candidates = tf.gather(self.candidate_embeddings, tf.maximum(positions, 0))
        scores = self.query.scorer.score_candidates(queries, candidates)  # [B, P*n]
        scores = tf.where(drop, tf.fill(tf.shape(scores), -np.inf), scores)
        top_scores, top = tf.math.top_k(scores, k=self.max_k)
        top_positions = tf.maximum(tf.gather(positions, top, batch_dims=1), 0)
        return top_scores, tf.gather(self.candidate_ids, top_positions)


def scann_parameters(num_candidates: int, config: ExportConfig, max_k: int) -> Dict[str, int]:
    """ScaNN tree/reorder settings by catalogue size (explicit config values win).

    ~sqrt(N) leaves, a tenth of them searched (at least 10 or all), and 4 x max_k
    candidates re-scored exactly.
    """
    leaves = config.scann_num_leaves or max(1, min(num_candidates, round(math.sqrt(num_candidates))))
    to_search = config.scann_leaves_to_search or min(leaves, max(10, math.ceil(leaves / 10)))
    reorder = config.scann_reorder or min(num_candidates, 4 * max_k)
    return {"num_leaves": leaves, "num_leaves_to_search": to_search,
            "num_reordering_candidates": max(reorder, max_k)}


def build_index(name: str, scorer: tf.keras.layers.Layer, embeddings: np.ndarray,
                ids: np.ndarray, max_k: int, scann: Dict[str, int], probe_k: int
                ) -> tfrs.layers.factorized_top_k.TopK:
    """An indexed TFRS top-k layer: `"brute_force"` (exact under `scorer`, chunked,
    raw ids) or `"scann"` (approximate dot product, identifiers = candidate positions)."""
    if name == "brute_force":
        index = ChunkedTopK(scorer, k=max_k)
        index.index(tf.constant(embeddings), tf.constant(ids, tf.int64))
        return index
    index = tfrs.layers.factorized_top_k.ScaNN(
        k=probe_k, num_leaves=scann["num_leaves"],
        num_leaves_to_search=scann["num_leaves_to_search"],
        num_reordering_candidates=max(scann["num_reordering_candidates"], probe_k))
    index.index(tf.constant(embeddings))
    return index


def save_retrieval_model(path: str, query: "QueryModule",
                         index: tfrs.layers.factorized_top_k.TopK, candidate_ids: np.ndarray,
                         candidate_embeddings: np.ndarray, max_k: int, probe_k: int) -> None:
    """Writes one run retrieval SavedModel (`RetrievalModule`, its `retrieve` as
    `serving_default`) to `path`; ScaNN's ops are allowed in the graph."""
    module = RetrievalModule(query, index, candidate_ids, candidate_embeddings, max_k, probe_k)
    tf.saved_model.save(
        module, str(path),
        signatures={"serving_default": module.retrieve.get_concrete_function()},
        options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))

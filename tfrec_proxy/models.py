"""The two-tower retrieval model: towers + scorer + batch-softmax task.

Nothing paper-specific lives here: papers swap the query tower (multi-interest,
RAM, ProxySR), the candidate tower (PIR, FELRec), the scorer or the per-example
weights, and keep this training step.
"""

from typing import Any, Dict, Mapping, Optional

import numpy as np

from tfrec_proxy._tf import tf, tfrs
from tfrec_proxy.config import ModelConfig
from tfrec_proxy.layers.encoders import SelfAttentionEncoder
from tfrec_proxy.layers.extraction import SequenceExtraction
from tfrec_proxy.layers.towers import ITEM_ID, ItemTower, QueryTower
from tfrec_proxy.scoring import get_scorer
from tfrec_proxy.tasks import BatchSoftmax

HISTORY = "history"
TARGET = "target"
SAMPLE_WEIGHT = "sample_weight"


class RetrievalModel(tfrs.Model):
    """Two-tower retrieval model trained with in-batch softmax.

    Batches are dicts with `"history"` (`[B, L]` int item indices, left-padded),
    `"target"` (`[B]` int item index of the next item) and optionally
    `"sample_weight"` (`[B]` float).

    Args:
        query_tower: Layer mapping `[B, L]` histories to `[B, d]` or `[B, M, d]`.
        candidate_tower: Layer mapping a candidate feature dict to `[B, d]`.
        task: `BatchSoftmax` loss over the score matrix.
        scorer: Affinity layer with `score_matrix`/`score_candidates`.
        sampling_probability: `[V]` probability of each item index appearing as an
            in-batch candidate (training target frequency), for logQ correction;
            None disables the correction.
    """

    def __init__(self, query_tower: tf.keras.layers.Layer,
                 candidate_tower: tf.keras.layers.Layer, task: BatchSoftmax,
                 scorer: tf.keras.layers.Layer,
                 sampling_probability: Optional[np.ndarray] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.task = task
        self.scorer = scorer
        self.sampling_probability = None
        if sampling_probability is not None:
            # A non-trainable variable so the table is checkpointed with the model.
            self.sampling_probability = tf.Variable(
                np.asarray(sampling_probability, np.float32), trainable=False,
                name="sampling_probability")

    @staticmethod
    def candidate_features(item_ids: tf.Tensor) -> Dict[str, tf.Tensor]:
        """The candidate tower's feature dict for `[B]` item indices."""
        return {ITEM_ID: item_ids}

    def compute_loss(self, features: Mapping[str, tf.Tensor],
                     training: bool = False) -> tf.Tensor:
        """Batch-softmax loss of one batch (see `BatchSoftmax`)."""
        target = features[TARGET]
        queries = self.query_tower(features[HISTORY], training=training)
        candidates = self.candidate_tower(self.candidate_features(target), training=training)
        scores = self.scorer.score_matrix(queries, candidates)
        probability = None
        if self.sampling_probability is not None:
            probability = tf.gather(self.sampling_probability, target)
        return self.task(scores, candidate_ids=target,
                         candidate_sampling_probability=probability,
                         sample_weight=features.get(SAMPLE_WEIGHT))

    def train_step(self, features: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        # TFRS's train_step applies raw gradients; `optimizer.minimize` with the tape
        # also applies loss scaling when Keras wraps the optimizer for mixed precision.
        with tf.GradientTape() as tape:
            loss = self.compute_loss(features, training=True)
            regularization_loss = tf.add_n([tf.constant(0.0)] + [
                tf.reduce_sum(tf.cast(term, tf.float32)) for term in self.losses])
            total_loss = loss + regularization_loss
        self.optimizer.minimize(total_loss, self.trainable_variables, tape=tape)
        metrics = {metric.name: metric.result() for metric in self.metrics}
        metrics.update(loss=loss, regularization_loss=regularization_loss,
                       total_loss=total_loss)
        return metrics

    def item_embeddings(self, vocab_size: int, batch_size: int = 8192) -> np.ndarray:
        """Candidate-tower outputs for every item index.

        Args:
            vocab_size: V; rows 0 (padding) and 1 (OOV) are included so row i is
                item index i.
            batch_size: Items per forward pass.

        Returns:
            `[V, d]` float32 array.
        """
        outputs = []
        for start in range(0, vocab_size, batch_size):
            ids = tf.range(start, min(start + batch_size, vocab_size), dtype=tf.int32)
            outputs.append(self.candidate_tower(self.candidate_features(ids),
                                                training=False).numpy())
        return np.concatenate(outputs, axis=0)

    def query_embeddings(self, histories: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Query-tower outputs for `[N, L]` left-padded histories -> `[N, (M,) d]`."""
        outputs = []
        for start in range(0, len(histories), batch_size):
            outputs.append(self.query_tower(
                tf.constant(histories[start:start + batch_size]), training=False).numpy())
        return np.concatenate(outputs, axis=0)


def build_model(config: ModelConfig, vocab_size: int, max_len: int,
                sampling_probability: Optional[np.ndarray] = None) -> RetrievalModel:
    """Builds the baseline model described by `config`.

    Args:
        config: Model settings.
        vocab_size: Item vocabulary size (padding and OOV included).
        max_len: History length L.
        sampling_probability: `[vocab_size]` in-batch sampling probabilities; used
            only when `config.logq_correction`.

    Returns:
        An uncompiled `RetrievalModel`.
    """
    if config.item_hidden_units[-1] != config.embedding_dim:
        raise ValueError(
            f"The item tower's last layer ({config.item_hidden_units[-1]}) must equal "
            f"embedding_dim ({config.embedding_dim}) so both towers share a space.")
    if sampling_probability is not None and len(sampling_probability) != vocab_size:
        raise ValueError(f"sampling_probability has {len(sampling_probability)} entries; "
                         f"expected vocab_size={vocab_size}.")
    encoder = SelfAttentionEncoder(vocab_size, config.embedding_dim, max_len,
                                   config.num_layers, config.num_heads, config.dropout,
                                   name="encoder")
    query_tower = QueryTower(encoder, SequenceExtraction(config.extraction, name="extraction"),
                             name="query_tower")
    candidate_tower = ItemTower(vocab_size, config.item_hidden_units, name="candidate_tower")
    task = BatchSoftmax(config.remove_accidental_hits, config.temperature, name="task")
    return RetrievalModel(
        query_tower, candidate_tower, task, get_scorer(config.scorer),
        sampling_probability if config.logq_correction else None)

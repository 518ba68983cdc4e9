"""Training objectives that score other candidates than the batch's own targets.

The toolkit's default is the in-batch softmax with logQ (`tfrec_proxy.tasks`). The
SASRec / RAM papers train otherwise, and these objectives give their numbers:

* `"bce"` (`SampledBCE`): binary cross-entropy with one uniformly sampled negative
  per target (SASRec eq. 6 / RAM eq. 6): `-log s(r_pos) - log(1 - s(r_neg))`.
* `"full-softmax"` (`FullSoftmax`): softmax cross-entropy over every item of the
  catalogue (SASRec+CE), for catalogues whose `[N, V]` score matrix fits in memory.
* `"margin"` (`MarginLoss`, ProxySR eq. 8 + eq. 9's distance term): the hinge
  `[m + d(s, i+) - d(s, i-)]_+` over N uniform negatives per target, with the
  distance `d = -score` (eq. 7 under the `"proxysr"` scorer), plus
  `lambda_dist * d(s, i+)`.
* `"sampled-softmax"` (`SampledSoftmax`): softmax over the positive and S negatives
  shared by the batch, drawn uniformly or by popularity, with the logQ correction
  `s - log q` (Bengio & Senecal; TFRS has no sampled-negative task, and Keras's
  `tf.nn.sampled_softmax_loss` needs a class-weight matrix, not a tower).

Each objective is called with the `[N, (M,) d]` queries, the `[N]` target indices, a
function embedding item indices with the candidate tower (so PIR and other towers
work unchanged), the run's scorer (dot or MUR eq. 4) and `[N]` per-example weights,
and returns the weighted summed loss. Padding (0) and OOV (1) are never candidates.
Negatives are drawn by the layer's Keras random generator (`BaseRandomLayer`), so a
resumed run draws what an uninterrupted one does (`tfrec_proxy.backup`).
"""

from typing import Any, Callable, Dict, Optional

import numpy as np

from tfrec_proxy._tf import tf

OBJECTIVES = ("bce", "full-softmax", "sampled-softmax", "margin")
SAMPLERS = ("uniform", "popularity")
FIRST_ITEM = 2
_MASKED = -1e9

Embed = Callable[[tf.Tensor], tf.Tensor]


def _weighted_sum(losses: tf.Tensor, sample_weight: Optional[tf.Tensor]) -> tf.Tensor:
    if sample_weight is not None:
        losses = losses * tf.cast(sample_weight, tf.float32)
    return tf.reduce_sum(losses)


def _categorical(layer: Any, log_q: tf.Tensor, count: int, dtype: tf.DType) -> tf.Tensor:
    """`[count]` draws from `softmax(log_q)` by the layer's Keras random generator (a
    checkpointed `tf.random.Generator` under `tfrec_proxy.backup.checkpointable_random`,
    else TF's stateful op)."""
    seed = layer._random_generator.make_seed_for_stateless_op()
    if seed is None:
        return tf.random.categorical(log_q[tf.newaxis, :], count, dtype=dtype)[0]
    return tf.random.stateless_categorical(log_q[tf.newaxis, :], count, seed,
                                           dtype=dtype)[0]


def _positive_scores(scorer: Any, queries: tf.Tensor, positives: tf.Tensor) -> tf.Tensor:
    """`[N]` scores of each query against its own `[N, d]` positive."""
    return tf.cast(scorer.score_candidates(queries, positives[:, tf.newaxis, :])[:, 0],
                   tf.float32)


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class SampledBCE(tf.keras.__internal__.layers.BaseRandomLayer):
    """Binary cross-entropy with `num_negatives` uniform negatives per target.

    Args:
        vocab_size: V; negatives are drawn from the real items 2..V-1.
        num_negatives: Negatives per target (SASRec / RAM: 1).

    Example:

        objective = SampledBCE(vocab_size=100)
        loss = objective(queries, targets, embed, DotScorer())
    """

    def __init__(self, vocab_size: int, num_negatives: int = 1, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if vocab_size <= FIRST_ITEM or num_negatives < 1:
            raise ValueError(f"SampledBCE needs vocab_size > 2 and num_negatives >= 1, got "
                             f"{vocab_size} and {num_negatives}.")
        self.vocab_size = vocab_size
        self.num_negatives = num_negatives

    def call(self, queries: tf.Tensor, target: tf.Tensor, embed: Embed, scorer: Any,
             sample_weight: Optional[tf.Tensor] = None,
             negatives: Optional[tf.Tensor] = None) -> tf.Tensor:
        """Summed loss: `softplus(-r_pos) + sum_j softplus(r_neg_j)` per target,
        negatives equal to the target left out.

        Args:
            queries: `[N, (M,) d]`.
            target: `[N]` item indices.
            embed: item indices `[K]` -> `[K, d]` (the candidate tower).
            scorer: The run's scorer.
            sample_weight: `[N]` weights.
            negatives: `[N, num_negatives]` indices to use instead of drawing them.
        """
        count = tf.shape(target)[0]
        if negatives is None:
            negatives = self._random_generator.random_uniform(
                [count, self.num_negatives], FIRST_ITEM, self.vocab_size, dtype=target.dtype)
        positive = _positive_scores(scorer, queries, embed(target))
        negative_vectors = embed(tf.reshape(negatives, [-1]))
        negative_vectors = tf.reshape(negative_vectors,
                                      [count, self.num_negatives, negative_vectors.shape[-1]])
        negative = tf.cast(scorer.score_candidates(queries, negative_vectors), tf.float32)
        hit = tf.cast(tf.equal(negatives, target[:, tf.newaxis]), tf.float32)
        losses = tf.nn.softplus(-positive) + tf.reduce_sum(
            (1.0 - hit) * tf.nn.softplus(negative), axis=1)
        return _weighted_sum(losses, sample_weight)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, num_negatives=self.num_negatives)
        return config


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class FullSoftmax(tf.keras.layers.Layer):
    """Softmax cross-entropy over the whole catalogue (SASRec+CE).

    The candidate tower embeds all V items once per step; padding and OOV columns are
    masked.

    Args:
        vocab_size: V.
        temperature: Optional logit temperature.

    Example:

        objective = FullSoftmax(vocab_size=100)
        loss = objective(queries, targets, embed, DotScorer())
    """

    def __init__(self, vocab_size: int, temperature: Optional[float] = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if vocab_size <= FIRST_ITEM:
            raise ValueError(f"FullSoftmax needs vocab_size > 2, got {vocab_size}.")
        self.vocab_size = vocab_size
        self.temperature = temperature

    def call(self, queries: tf.Tensor, target: tf.Tensor, embed: Embed, scorer: Any,
             sample_weight: Optional[tf.Tensor] = None) -> tf.Tensor:
        """Summed `-log softmax_V(r)[target]`."""
        items = embed(tf.range(self.vocab_size, dtype=target.dtype))
        scores = tf.cast(scorer.score_matrix(queries, items), tf.float32)  # [N, V]
        if self.temperature is not None:
            scores = scores / self.temperature
        special = tf.range(self.vocab_size) < FIRST_ITEM
        scores = tf.where(special[tf.newaxis, :], _MASKED, scores)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=scores)
        return _weighted_sum(losses, sample_weight)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, temperature=self.temperature)
        return config


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class SampledSoftmax(tf.keras.__internal__.layers.BaseRandomLayer):
    """Softmax over each target and `num_negatives` negatives shared by the batch,
    with the logQ correction of the sampling distribution.

    Args:
        vocab_size: V.
        num_negatives: S, negatives per step.
        sampler: `"uniform"` over the real items, or `"popularity"` (the training
            targets' frequencies, `set_probabilities`).
        temperature: Optional logit temperature.

    Example:

        objective = SampledSoftmax(vocab_size=100, num_negatives=20)
        loss = objective(queries, targets, embed, DotScorer())
    """

    def __init__(self, vocab_size: int, num_negatives: int = 100, sampler: str = "uniform",
                 temperature: Optional[float] = None, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if sampler not in SAMPLERS:
            raise ValueError(f"Unknown negative sampler {sampler!r}; expected one of "
                             f"{SAMPLERS}.")
        if vocab_size <= FIRST_ITEM or num_negatives < 1:
            raise ValueError(f"SampledSoftmax needs vocab_size > 2 and num_negatives >= 1, "
                             f"got {vocab_size} and {num_negatives}.")
        self.vocab_size = vocab_size
        self.num_negatives = num_negatives
        self.sampler = sampler
        self.temperature = temperature
        uniform = np.zeros(vocab_size, np.float32)
        uniform[FIRST_ITEM:] = 1.0 / (vocab_size - FIRST_ITEM)
        self.probabilities = tf.Variable(uniform, trainable=False, name="probabilities")

    def set_probabilities(self, probabilities: np.ndarray) -> None:
        """The `[V]` popularity distribution (`sampler="popularity"`); renormalised
        over the real items."""
        values = np.asarray(probabilities, np.float64).copy()
        if values.shape != (self.vocab_size,) or not np.all(np.isfinite(values)) \
                or np.any(values < 0):
            raise ValueError(f"probabilities must be [{self.vocab_size}] finite, >= 0.")
        values[:FIRST_ITEM] = 0.0
        if values.sum() <= 0:
            raise ValueError("probabilities put no mass on real items.")
        self.probabilities.assign((values / values.sum()).astype(np.float32))

    def call(self, queries: tf.Tensor, target: tf.Tensor, embed: Embed, scorer: Any,
             sample_weight: Optional[tf.Tensor] = None,
             negatives: Optional[tf.Tensor] = None) -> tf.Tensor:
        """Summed `-log softmax([r_pos, r_neg] - log q)[0]`, negatives equal to the
        row's target masked.

        Args:
            queries, target, embed, scorer, sample_weight: As in `SampledBCE`.
            negatives: `[S]` indices to use instead of drawing them.
        """
        log_q = tf.math.log(tf.maximum(self.probabilities, 1e-30))
        if negatives is None:
            negatives = _categorical(self, log_q, self.num_negatives, target.dtype)  # [S]
        positive = _positive_scores(scorer, queries, embed(target))  # [N]
        negative = tf.cast(scorer.score_matrix(queries, embed(negatives)), tf.float32)
        logits = tf.concat([(positive - tf.gather(log_q, target))[:, tf.newaxis],
                            negative - tf.gather(log_q, negatives)[tf.newaxis, :]], axis=1)
        if self.temperature is not None:
            logits = logits / self.temperature
        hit = tf.equal(negatives[tf.newaxis, :], target[:, tf.newaxis])
        logits = tf.concat([logits[:, :1], tf.where(hit, _MASKED, logits[:, 1:])], axis=1)
        losses = -tf.nn.log_softmax(logits, axis=1)[:, 0]
        return _weighted_sum(losses, sample_weight)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, num_negatives=self.num_negatives,
                      sampler=self.sampler, temperature=self.temperature)
        return config


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class MarginLoss(tf.keras.__internal__.layers.BaseRandomLayer):
    """ProxySR's hinge loss (eq. 8) with the distance regulariser of eq. 9.

    Args:
        vocab_size: V; negatives are uniform over the real items.
        num_negatives: N negatives per target.
        margin: m >= 0.
        lambda_dist: Weight of `sum d(s, i+)` (eq. 9).

    Example:

        objective = MarginLoss(vocab_size=100, num_negatives=5, margin=0.5)
        loss = objective(queries, targets, embed, ProxyDistanceScorer())
    """

    def __init__(self, vocab_size: int, num_negatives: int = 1, margin: float = 0.5,
                 lambda_dist: float = 0.0, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if vocab_size <= FIRST_ITEM or num_negatives < 1 or not margin >= 0 \
                or not lambda_dist >= 0:
            raise ValueError(f"MarginLoss needs vocab_size > 2, num_negatives >= 1, "
                             f"margin >= 0 and lambda_dist >= 0; got {vocab_size}, "
                             f"{num_negatives}, {margin}, {lambda_dist}.")
        self.vocab_size, self.num_negatives = vocab_size, num_negatives
        self.margin, self.lambda_dist = float(margin), float(lambda_dist)

    def call(self, queries: tf.Tensor, target: tf.Tensor, embed: Embed, scorer: Any,
             sample_weight: Optional[tf.Tensor] = None,
             negatives: Optional[tf.Tensor] = None) -> tf.Tensor:
        """Summed `sum_j [m + d_pos - d_neg_j]_+ + lambda_dist d_pos` (negatives equal
        to the target left out); arguments as in `SampledBCE`."""
        count = tf.shape(target)[0]
        if negatives is None:
            negatives = self._random_generator.random_uniform(
                [count, self.num_negatives], FIRST_ITEM, self.vocab_size, dtype=target.dtype)
        positive = -_positive_scores(scorer, queries, embed(target))  # distances
        vectors = embed(tf.reshape(negatives, [-1]))
        vectors = tf.reshape(vectors, [count, self.num_negatives, vectors.shape[-1]])
        negative = -tf.cast(scorer.score_candidates(queries, vectors), tf.float32)
        hit = tf.cast(tf.equal(negatives, target[:, tf.newaxis]), tf.float32)
        hinge = (1.0 - hit) * tf.nn.relu(self.margin + positive[:, tf.newaxis] - negative)
        losses = tf.reduce_sum(hinge, axis=1) + self.lambda_dist * positive
        return _weighted_sum(losses, sample_weight)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, num_negatives=self.num_negatives,
                      margin=self.margin, lambda_dist=self.lambda_dist)
        return config


def build_objective(name: str, vocab_size: int, num_negatives: int, sampler: str,
                    temperature: Optional[float],
                    sampling_probability: Optional[np.ndarray],
                    margin: float = 0.5, lambda_dist: float = 0.0) -> tf.keras.layers.Layer:
    """The objective `name` of `OBJECTIVES` (popularity negatives from
    `sampling_probability` when given; restoring reads them from the checkpoint)."""
    if name == "bce":
        return SampledBCE(vocab_size, num_negatives=1, name="task")
    if name == "full-softmax":
        return FullSoftmax(vocab_size, temperature, name="task")
    if name == "margin":
        return MarginLoss(vocab_size, num_negatives, margin, lambda_dist, name="task")
    if name == "sampled-softmax":
        objective = SampledSoftmax(vocab_size, num_negatives, sampler, temperature,
                                   name="task")
        if sampler == "popularity" and sampling_probability is not None:
            objective.set_probabilities(sampling_probability)
        return objective
    raise ValueError(f"Unknown objective {name!r}; expected one of {OBJECTIVES}.")

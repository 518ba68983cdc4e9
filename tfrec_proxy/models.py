"""The two-tower retrieval model (towers + scorer + batch-softmax task) and model kinds.

Nothing paper-specific lives in `RetrievalModel`: papers swap the query tower
(multi-interest, RAM, ProxySR), the candidate tower (PIR, FELRec), the scorer or the
per-item loss weights, and keep this training step. A model kind is a builder
registered in `tfrec_proxy.registry.MODEL_KINDS` with its options dataclass;
`build_model` and `restore_model` dispatch on `ModelConfig.kind`.

Two batch layouts are trained:

* per-prefix: `{"history": [B, L], "target": [B]}`, one example per prefix;
* all positions: `{"history": [B, L], "targets": [B, L]}`, whole sequences encoded
  once by a causal query tower, the loss taken at every position whose target is not
  0; the in-batch negatives are all targets of the batch.
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional

import numpy as np

from tfrec_proxy._tf import tf, tfrs
from tfrec_proxy.config import ModelConfig
from tfrec_proxy.cross_replica import gather_candidates
from tfrec_proxy.felrec_losses import FELREC_LOSSES
from tfrec_proxy.layers.encoders import SelfAttentionEncoder
from tfrec_proxy.layers.item_norm import ITEM_NORM_MODES, ItemNormalization
from tfrec_proxy.layers.towers import HISTORY, ITEM_ID, ItemTower, QueryTower
from tfrec_proxy.layers.ram import UserEmbedding
from tfrec_proxy.registry import ENCODERS, EXTRACTIONS, ITEM_TOWERS, MODEL_KINDS, SCORERS
from tfrec_proxy.scoring import Scorer, build_scorer
from tfrec_proxy.objectives import OBJECTIVES, SAMPLERS, build_objective
from tfrec_proxy.tasks import LOSSES, BatchSoftmax, qmargin_margins

TARGET = "target"
TARGETS = "targets"
SAMPLE_WEIGHT = "sample_weight"
# Inputs a model reads besides the query features.
_NON_QUERY_KEYS = (TARGET, TARGETS, SAMPLE_WEIGHT)
# History positions per forward pass when embedding queries for evaluation: a batch
# of 4,096 histories of L = 200 at d = 256 (attention [B, heads, L, L] in every
# block) took more than 20 GB; 65,536 positions bound it to a few hundred MB.
EVAL_POSITIONS = 65_536


def eval_batch_size(max_len: int, limit: int = 4096) -> int:
    """Histories per evaluation forward pass: at most `limit`, at most
    `EVAL_POSITIONS` history positions."""
    return max(1, min(limit, EVAL_POSITIONS // max(int(max_len), 1)))


@dataclasses.dataclass
class BuildContext:
    """What a model kind's builder needs besides its config; all of it recoverable
    from a run folder (vocabulary and config), so `restore_model` needs no data.

    Attributes:
        vocab_size: Item vocabulary size V (padding and OOV included).
        max_len: History length L.
        sampling_probability: `[V]` in-batch sampling probabilities (logQ), or None
            when restoring (the checkpoint holds the trained table).
        item_features: The run's item attributes/context
            (`tfrec_proxy.data.item_features.ItemFeatures`), or None.
        item_counts: `[V]` training-target counts (e.g. PIR's top-K items), or
            None when restoring.
        trained_positions: The most history positions a training example holds
            (position embeddings past it are shared, see `SelfAttentionEncoder`):
            `max_len - 3` for chunked sequences (leave-one-out holds out the last
            two items of a chunk of at most `max_len`), `max_len` for the per-user
            split (`tfrec_proxy.data.prepare.trained_positions`).
        user_ids: Raw ids of the training users, for encoders with a user
            embedding (RAM); None when restoring (the checkpoint holds them).
        num_users: Their number (needed to build the user table when restoring).
    """

    vocab_size: int
    max_len: int
    sampling_probability: Optional[np.ndarray] = None
    item_features: Optional[Any] = None
    item_counts: Optional[np.ndarray] = None
    trained_positions: Optional[int] = None
    user_ids: Optional[np.ndarray] = None
    num_users: Optional[int] = None


class RetrievalModel(tfrs.Model):
    """Two-tower retrieval model trained with in-batch softmax.

    Args:
        query_tower: Layer mapping a query feature dict (`"history"` `[B, L]` int
            item indices, left-padded, plus any context) to `[B, d]` or `[B, M, d]`.
        candidate_tower: Layer mapping a candidate feature dict to `[B, d]`.
        task: `BatchSoftmax` loss over the score matrix.
        scorer: A `tfrec_proxy.scoring.Scorer`.
        vocab_size: V, the size of the per-item tables.
        sampling_probability: `[V]` probability of each item index appearing as an
            in-batch candidate, for logQ correction; None disables the correction.
        item_margins: `[V]` margins subtracted from each positive's logit by
            target item (the Qmargin baseline), or None for none.

    Per-item loss weights (`item_loss_weights`, `[V]`, ones by default) multiply each
    example's loss by the weight of its target item (density weighting, frequency
    balance); like the sampling probabilities they are a non-trainable variable, so
    they are checkpointed with the model.

    Example:

        model = build_model(ModelConfig(), vocab_size=1002, max_len=30,
                            sampling_probability=probabilities)
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
        model.fit(make_sequence_dataset(split.train_sequences, 64), epochs=5)
    """

    def __init__(self, query_tower: tf.keras.layers.Layer,
                 candidate_tower: tf.keras.layers.Layer, task: BatchSoftmax,
                 scorer: Scorer, vocab_size: int,
                 sampling_probability: Optional[np.ndarray] = None,
                 item_margins: Optional[np.ndarray] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.task = task
        self.scorer = scorer
        self.vocab_size = vocab_size
        self.sampling_probability = None
        if sampling_probability is not None:
            if len(sampling_probability) != vocab_size:
                raise ValueError(f"sampling_probability has {len(sampling_probability)} "
                                 f"entries; expected vocab_size={vocab_size}.")
            self.sampling_probability = tf.Variable(
                np.asarray(sampling_probability, np.float32), trainable=False,
                name="sampling_probability")
        self.item_loss_weights = tf.Variable(tf.ones([vocab_size], tf.float32),
                                             trainable=False, name="item_loss_weights")
        # Score each replica's queries against every replica's candidates
        # (`tfrec_proxy.cross_replica`); set from `TrainConfig.cross_replica_negatives`.
        self.cross_replica_negatives = False
        self.item_margins = None
        if item_margins is not None:
            if len(item_margins) != vocab_size:
                raise ValueError(f"item_margins has {len(item_margins)} entries; expected "
                                 f"vocab_size={vocab_size}.")
            self.item_margins = tf.Variable(np.asarray(item_margins, np.float32),
                                            trainable=False, name="item_margins")

    @staticmethod
    def candidate_features(item_ids: tf.Tensor) -> Dict[str, tf.Tensor]:
        """The candidate tower's feature dict for `[B]` item indices."""
        return {ITEM_ID: item_ids}

    @staticmethod
    def query_features(features: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """The query tower's inputs from a batch: everything but the targets/weights."""
        return {name: value for name, value in features.items()
                if name not in _NON_QUERY_KEYS}

    def sample_query_features(self, histories: tf.Tensor) -> Dict[str, tf.Tensor]:
        """`{"history": histories}` plus zero-valued context features of the query
        tower (e.g. an unknown `"user_id"`), to build or probe the tower."""
        features = {HISTORY: histories}
        for name, spec in self.query_tower.context_specs.items():
            shape = [int(histories.shape[0])] + [int(d) for d in spec.shape[1:]]
            features[name] = tf.zeros(shape, spec.dtype)
        return features

    def set_item_loss_weights(self, weights: np.ndarray) -> None:
        """Sets the `[V]` per-item loss weights (finite, >= 0)."""
        weights = np.asarray(weights, np.float32)
        if weights.shape != (self.vocab_size,):
            raise ValueError(f"item loss weights must have shape ({self.vocab_size},), "
                             f"got {weights.shape}.")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError("item loss weights must be finite and >= 0.")
        self.item_loss_weights.assign(weights)

    def compute_loss(self, features: Mapping[str, tf.Tensor],
                     training: bool = False) -> tf.Tensor:
        """Batch-softmax loss of one batch, per-prefix or all-positions layout."""
        query_features = self.query_features(features)
        if TARGETS in features:
            targets = features[TARGETS]
            positions = self.query_tower.encode_positions(query_features, training=training)
            has_target = tf.not_equal(targets, 0)
            queries = tf.boolean_mask(positions, has_target)  # [N, d]
            target = tf.boolean_mask(targets, has_target)  # [N]
            sample_weight = None
        else:
            target = features[TARGET]
            queries = self.query_tower(query_features, training=training)
            sample_weight = features.get(SAMPLE_WEIGHT)
        if not isinstance(self.task, BatchSoftmax):
            # An objective over other candidates (tfrec_proxy.objectives: sampled BCE,
            # full or sampled softmax); per-example weights as below.
            weights = tf.gather(self.item_loss_weights, target)
            if sample_weight is not None:
                weights = weights * tf.cast(sample_weight, tf.float32)

            def embed(ids: tf.Tensor) -> tf.Tensor:
                return self.candidate_tower(self.candidate_features(ids), training=training)

            return self.task(queries, target, embed, self.scorer, sample_weight=weights)
        candidates = self.candidate_tower(self.candidate_features(target), training=training)
        probability = None
        if self.sampling_probability is not None:
            probability = tf.gather(self.sampling_probability, target)
        candidate_ids = target
        if self.cross_replica_negatives and training:
            # Training only: Keras's evaluation step under MultiWorkerMirroredStrategy
            # gives replica tensors no device, which all_gather needs ("destinations
            # can not be empty"); validation losses stay per replica.
            candidates, candidate_ids, probability = gather_candidates(
                candidates, target, probability)
        scores = self.scorer.score_matrix(queries, candidates)
        weights = tf.gather(self.item_loss_weights, target)
        if sample_weight is not None:
            weights = weights * tf.cast(sample_weight, tf.float32)
        margin = None
        if self.item_margins is not None:
            margin = tf.gather(self.item_margins, target)
        return self.task(scores, candidate_ids=candidate_ids,
                         candidate_sampling_probability=probability,
                         sample_weight=weights, positive_margin=margin)

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

    def item_embeddings(self, vocab_size: Optional[int] = None,
                        batch_size: int = 8192) -> np.ndarray:
        """Candidate-tower outputs for every item index.

        Args:
            vocab_size: V (default the model's); rows 0 (padding) and 1 (OOV) are
                included so row i is item index i.
            batch_size: Items per forward pass.

        Returns:
            `[V, d]` float32 array.
        """
        vocab_size = self.vocab_size if vocab_size is None else vocab_size
        outputs = []
        for start in range(0, vocab_size, batch_size):
            ids = tf.range(start, min(start + batch_size, vocab_size), dtype=tf.int32)
            outputs.append(self.candidate_tower(self.candidate_features(ids),
                                                training=False).numpy())
        return np.concatenate(outputs, axis=0)

    def query_embeddings(self, histories: np.ndarray, batch_size: Optional[int] = None,
                         context: Optional[Mapping[str, np.ndarray]] = None) -> np.ndarray:
        """Query-tower outputs for `[N, L]` left-padded histories -> `[N, (M,) d]`.

        Args:
            histories: `[N, L]` int item indices.
            batch_size: Histories per forward pass (default `eval_batch_size(L)`:
                at most 4,096 histories and 65,536 history positions).
            context: Optional `[N, ...]` context features, by name.
        """
        histories = np.asarray(histories)
        batch_size = batch_size or eval_batch_size(histories.shape[-1] if histories.ndim
                                                   else 1)
        outputs = []
        for start in range(0, len(histories), batch_size):
            stop = start + batch_size
            features = {HISTORY: tf.constant(histories[start:stop])}
            for name, values in (context or {}).items():
                features[name] = tf.constant(values[start:stop])
            outputs.append(self.query_tower(features, training=False).numpy())
        return np.concatenate(outputs, axis=0)


@MODEL_KINDS.register("two_tower")
def build_two_tower(config: ModelConfig, options: None,
                    context: BuildContext) -> RetrievalModel:
    """The baseline: self-attention user tower (causal when `all_positions`) and the
    configured item tower (`item_tower`; the id + MLP tower has IDW §4.4 sizes by
    default); with `share_item_encoder` the user tower embeds history items with it."""
    candidate_tower = build_item_tower(config, context)
    shared = config.share_item_encoder or ITEM_TOWERS.get(config.item_tower).metadata.get(
        "shares_history", False)
    encoder_entry = ENCODERS.get(config.encoder)
    encoder = encoder_entry.target(config, context, candidate_tower if shared else None)
    if encoder_entry.metadata.get("query_tower"):  # the encoder is the whole tower
        return assemble(config, context, encoder, candidate_tower)
    user_embedding = None
    if encoder_entry.metadata.get("user_embedding"):
        user_embedding = UserEmbedding(config.embedding_dim, user_ids=context.user_ids,
                                       num_users=context.num_users, name="user_embedding")
    query_tower = QueryTower(encoder, build_extraction(config), user_embedding,
                             name="query_tower")
    return assemble(config, context, query_tower, candidate_tower)


@ENCODERS.register("self-attention")
def build_self_attention_encoder(config: ModelConfig, context: BuildContext,
                                 item_encoder: Optional[tf.keras.layers.Layer]
                                 ) -> SelfAttentionEncoder:
    """The IDW paper's self-attention encoder (§4.4), causal when `all_positions`."""
    # Only the positions training histories reach are trained (BuildContext).
    trained_positions = context.trained_positions or max(1, context.max_len - 3)
    return SelfAttentionEncoder(
        context.vocab_size, config.embedding_dim, context.max_len, config.num_layers,
        config.num_heads, config.dropout, causal=config.all_positions,
        num_positions=trained_positions, oov_rate=config.history_oov_rate,
        item_encoder=item_encoder, name="encoder")


@ITEM_TOWERS.register("id")
def build_id_tower(config: ModelConfig, context: BuildContext) -> ItemTower:
    """The `"id"` item tower: id embedding + MLP (`item_hidden_units`)."""
    return ItemTower(context.vocab_size, config.item_hidden_units, name="candidate_tower")


def build_item_tower(config: ModelConfig, context: BuildContext) -> tf.keras.layers.Layer:
    """The item tower registered as `config.item_tower` (`ITEM_TOWERS`)."""
    return ITEM_TOWERS.get(config.item_tower).target(config, context)


def build_extraction(config: ModelConfig) -> tf.keras.layers.Layer:
    """The extraction layer registered as `config.extraction` (`EXTRACTIONS`)."""
    return EXTRACTIONS.get(config.extraction).target(config)


def resolve_scorer(config: ModelConfig) -> str:
    """The scorer name a config trains with: `config.scorer`, or for `"auto"` the
    encoder's own (`"proxysr"` for ProxySR), else the extraction's default (`"mur"`
    for MUR, else `"dot"`)."""
    if config.scorer != "auto":
        return config.scorer
    encoder_scorer = ENCODERS.get(config.encoder).metadata.get("scorer")
    if encoder_scorer is not None:
        return encoder_scorer
    return EXTRACTIONS.get(config.extraction).metadata.get("scorer", "dot")


def assemble(config: ModelConfig, context: BuildContext, query_tower: tf.keras.layers.Layer,
             candidate_tower: tf.keras.layers.Layer) -> RetrievalModel:
    """A `RetrievalModel` from two towers plus the config's scorer, item norm and
    loss; the last step of every kind's builder."""
    if config.loss in OBJECTIVES:
        task = build_objective(config.loss, context.vocab_size, config.sampled_negatives,
                               config.negative_sampler, config.temperature,
                               context.sampling_probability, config.margin,
                               config.lambda_dist)
    else:
        task = BatchSoftmax(config.remove_accidental_hits, config.temperature,
                            focal_gamma=config.focal_gamma if config.loss == "focal" else None,
                            name="task")
    scorer = build_scorer(resolve_scorer(config), config.scorer_options, name="scorer")
    if config.item_norm != "none":
        candidate_tower = ItemNormalization(candidate_tower, config.item_norm,
                                            name="item_norm")
    probability = context.sampling_probability
    if probability is None:  # restoring
        # A placeholder the checkpoint overwrites with the trained table.
        probability = np.full(context.vocab_size, 1.0 / context.vocab_size, np.float32)
    margins = None
    if config.loss == "qmargin":
        margins = qmargin_margins(probability, config.qmargin_max)
    return RetrievalModel(query_tower, candidate_tower, task, scorer, context.vocab_size,
                          probability if config.logq_correction else None,
                          item_margins=margins)


def check_model_config(config: ModelConfig) -> Any:
    """Validates a model config before any data is read or trained on.

    Returns:
        The kind's parsed options.

    Raises:
        ValueError: an unknown kind or scorer, bad options, or inconsistent sizes.
    """
    entry = MODEL_KINDS.get(config.kind)
    options = entry.parse_options(config.options, "config.model.options")
    EXTRACTIONS.get(config.extraction)
    ITEM_TOWERS.get(config.item_tower)
    ENCODERS.get(config.encoder)
    for name in ("num_proxies", "frequent_bias_k"):
        value = getattr(config, name)
        low = 1 if name == "num_proxies" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    SCORERS.get(resolve_scorer(config)).parse_options(config.scorer_options,
                                                      "config.model.scorer_options")
    if isinstance(config.num_interests, bool) or not isinstance(config.num_interests, int) \
            or config.num_interests < 1:
        raise ValueError(f"num_interests (M) must be an integer >= 1, got "
                         f"{config.num_interests!r}.")
    if config.loss not in LOSSES + OBJECTIVES + FELREC_LOSSES:
        raise ValueError(f"Unknown loss {config.loss!r}; expected one of "
                         f"{LOSSES + OBJECTIVES + FELREC_LOSSES}.")
    if (config.loss in FELREC_LOSSES) != (config.encoder == "felrec"):
        raise ValueError(f"loss {config.loss!r} with encoder {config.encoder!r}: FELRec's "
                         f"losses {FELREC_LOSSES} go with --encoder felrec, and --encoder "
                         "felrec trains with one of them (infonce: FELRec-Q, byol: "
                         "FELRec-P).")
    if config.negative_sampler not in SAMPLERS:
        raise ValueError(f"Unknown negative_sampler {config.negative_sampler!r}; expected "
                         f"one of {SAMPLERS}.")
    if isinstance(config.sampled_negatives, bool) or not isinstance(
            config.sampled_negatives, int) or config.sampled_negatives < 1:
        raise ValueError(f"sampled_negatives must be an integer >= 1, got "
                         f"{config.sampled_negatives!r}.")
    if not config.focal_gamma >= 0:
        raise ValueError(f"focal_gamma must be >= 0, got {config.focal_gamma}.")
    if not config.qmargin_max > 0:
        raise ValueError(f"qmargin_max must be > 0, got {config.qmargin_max}.")
    if config.item_norm not in ITEM_NORM_MODES:
        raise ValueError(f"Unknown item_norm {config.item_norm!r}; expected one of "
                         f"{ITEM_NORM_MODES}.")
    if config.item_tower == "id" and config.item_hidden_units \
            and config.item_hidden_units[-1] != config.embedding_dim:
        raise ValueError(
            f"The item tower's last layer ({config.item_hidden_units[-1]}) must equal "
            f"embedding_dim ({config.embedding_dim}) so both towers share a space.")
    return options


def build_model(config: ModelConfig, vocab_size: int, max_len: int,
                sampling_probability: Optional[np.ndarray] = None, *,
                item_features: Optional[Any] = None,
                item_counts: Optional[np.ndarray] = None,
                trained_positions: Optional[int] = None,
                user_ids: Optional[np.ndarray] = None,
                num_users: Optional[int] = None) -> RetrievalModel:
    """Builds the model of kind `config.kind` (registered in `MODEL_KINDS`).

    Args:
        config: Model settings.
        vocab_size: Item vocabulary size (padding and OOV included).
        max_len: History length L.
        sampling_probability: `[vocab_size]` in-batch sampling probabilities; used
            only when `config.logq_correction`.
        item_features: Item attributes/context aligned with the vocabulary
            (`ItemFeatures`), for attribute-aware item towers.
        item_counts: `[vocab_size]` training counts (PIR's top-K items).
        trained_positions: See `BuildContext` (default `max_len - 3`).
        user_ids, num_users: The training users (encoders with a user embedding).

    Returns:
        An uncompiled `RetrievalModel`.
    """
    options = check_model_config(config)
    if sampling_probability is not None and len(sampling_probability) != vocab_size:
        raise ValueError(f"sampling_probability has {len(sampling_probability)} entries; "
                         f"expected vocab_size={vocab_size}.")
    if user_ids is not None:
        user_ids = np.unique(np.asarray(user_ids, np.int64))
        num_users = len(user_ids)
    context = BuildContext(vocab_size, max_len, sampling_probability, item_features,
                           item_counts, trained_positions, user_ids, num_users)
    return MODEL_KINDS.get(config.kind).target(config, options, context)

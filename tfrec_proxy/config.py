"""Run configuration: data, model, training and export settings as dataclasses.

A `RunConfig` is written to `config.json` in every run folder, so a run can be rebuilt
(`tfrec-proxy export`) and re-evaluated (`tfrec-proxy evaluate`) from the folder alone.
"""

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from tfrec_proxy.config_parsing import _from_dict, parse_dataclass  # noqa: F401
from tfrec_proxy.felrec_config import FELRecConfig  # noqa: F401  (re-exported)


@dataclasses.dataclass
class SyntheticConfig:
    """Parameters of the IDW Appendix A generator (`tfrec_proxy.data.generate_long_tail`).

    The defaults make the embedded default dataset: big enough to show a long tail,
    small enough that `tfrec-proxy train` finishes in minutes on 2 CPU cores.
    `attribute_dim > 0` adds item attributes, noisy functions of each item's
    cluster (`attribute_noise` the noise scale), for attribute-aware item towers.
    `session_length` is the mean session length of `DataConfig.source =
    "synthetic-sessions"` (each user's clicks cut into sessions, `to_sessions`).

    The clock (`tfrec_proxy.data.synthetic_timeline`): `timeline="per-user"` keeps
    the generator's `timestamp` (the click's position in its user's sequence, so
    every user starts at 0); `"interleaved"` puts every user on one global clock in
    [0, 1): a user arrives at a uniform time in `[0, 1 - activity_span)` and spreads
    its clicks over the next `activity_span` of the clock, a share `late_users` of
    the users arrives in the last fifth of the clock (new users of a chronological
    split), and a share `late_items` of the items is released in the last fifth
    (clicks on them before their release go to another item of the same cluster:
    new items). `"auto"` is `"interleaved"` for `DataConfig.split = "chronological"`
    (FELRec), `"per-user"` otherwise (so other runs see the same data as before).
    """

    num_users: int = 2000
    num_items: int = 1000
    num_clusters: int = 20
    seq_len: int = 30
    interest_skew: float = 1.0
    item_skew: float = 0.5
    interests_per_user: int = 3
    alpha: float = 0.6
    gamma: float = 0.3
    epsilon: float = 0.1
    seed: int = 0
    attribute_dim: int = 0
    attribute_noise: float = 0.5
    session_length: int = 8
    timeline: str = "auto"
    activity_span: float = 0.5
    late_users: float = 0.0
    late_items: float = 0.0


@dataclasses.dataclass
class DataConfig:
    """Where interactions come from and how sequences are built.

    Attributes:
        source: `"synthetic"` (the embedded generator), `"file"` (read from `path`),
            `"dataframe"` (a pandas frame handed to `prepare_data`/`train` in
            Python; it cannot be re-read from the config alone) or `"sessions"` (a
            session log at `path`, default the shared Diginetica sample; the
            ProxySR §4.1 session task, `tfrec_proxy.data.sessions`) or
            `"synthetic-sessions"` (the generator's clicks cut into sessions of
            `synthetic.session_length` views on average, known users, the same task).
        path: A file or folder for `source="file"`.
        file_format: `"auto"` (by extension and content), `"movielens"`
            (`ratings.dat`), `"sasrec"` (`user item` text), `"csv"`, `"tsv"` or
            `"parquet"` (a table with named columns, below).
        user_column: User id column of a table or data frame.
        item_column: Item id column of a table or data frame.
        time_column: Timestamp column of a table or data frame; None uses the row
            order as time order.
        synthetic: Generator parameters for `source="synthetic"` (its `seed` is the
            data seed, separate from the training seed).
        max_len: Sequences longer than this are split into several (IDW §4.1); also
            the history length fed to the query tower.
        min_len: Chunks shorter than this are dropped; at least 3 (the validation
            and test targets each need a history). A chunk of n items gives n - 3
            training examples, one validation and one test example.
        item_features: A table of item attributes/context (CSV, TSV or Parquet, one
            row per item; `tfrec_proxy.data.item_features`), read by attribute-aware
            item towers (PIR). None: for a file source, `<data file>.items.tsv`
            beside the interactions when it exists (ML-1M's genres); for synthetic
            data, the generator's attributes when `synthetic.attribute_dim > 0`.
        item_feature_spec: The table's columns (`ItemFeatureSpec.from_dict` form:
            `{"id_column": ..., "columns": {name: {"kind": ...}}}`); empty infers
            it (`ItemFeatureSpec.infer`).
        cold_items: Share of the items held out of training entirely (every
            interaction with them removed), in [0, 1); each user's first
            interaction with one becomes a cold test example (metrics `cold/...`;
            `tfrec_proxy.data.cold_items`).
        cold_seed: Seed of the cold-item draw.
        min_item_count: `source="sessions"`: items seen fewer times are dropped
            (ProxySR §4.1: 5); sessions shorter than `min_len` too.
        split: `"chunked"` (IDW §4.1: sequences cut into chunks of at most
            `max_len`, each chunk's last two items held out) or `"per-user"` (the
            SASRec protocol, RAM §6.3: one sequence per user, its last item test,
            second last validation, training on the `max_len` items before them;
            older items are not trained on), or `"chronological"` (FELRec's
            protocol, Weimann & Conrad §3.1: every interaction on one time line,
            the first 80% train, the next 10% validation, the last 10% test,
            `tfrec_proxy.data.chronological`; only with `ModelConfig.encoder =
            "felrec"`).
        time_order: How `split="chronological"` orders the interactions:
            `"timestamp"` (the time column), `"round-robin"` (each user's k-th
            interaction before any user's (k+1)-th, users in order of first
            appearance: for files without timestamps, e.g. SASRec's ml-1m.txt,
            whose line order only orders each user's own interactions; not the
            paper's protocol) or `"auto"` (round-robin for SASRec-format files and
            `time_column=None`, else the timestamps).
    """

    source: str = "synthetic"
    path: Optional[str] = None
    file_format: str = "auto"
    user_column: str = "user_id"
    item_column: str = "item_id"
    time_column: Optional[str] = "timestamp"
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    max_len: int = 30
    min_len: int = 3
    item_features: Optional[str] = None
    item_feature_spec: Dict[str, Any] = dataclasses.field(default_factory=dict)
    cold_items: float = 0.0
    cold_seed: int = 0
    split: str = "chunked"
    min_item_count: int = 5
    time_order: str = "auto"


@dataclasses.dataclass
class ModelConfig:
    """Two-tower model; defaults are the IDW paper's §4.4 sizes.

    Attributes:
        kind: Registered model kind (`tfrec_proxy.registry.MODEL_KINDS`); the
            baseline is `"two_tower"`. A kind's own settings go in `options`.
        options: The kind's own settings, checked against the dataclass it
            registered (unknown keys are errors).
        embedding_dim: Output size of both towers (d).
        num_layers: Self-attention blocks in the query tower.
        num_heads: Attention heads per block.
        dropout: Dropout rate inside the query tower.
        item_hidden_units: Dense layer sizes of the id item tower's MLP; the last
            one must equal `embedding_dim`.
        encoder: Registered sequence encoder (`tfrec_proxy.registry.ENCODERS`):
            `"self-attention"` (IDW §4.4), `"sasrec"` (Kang & McAuley), `"ram"`
            (RAM: reused item representations + user embedding, eq. 5) or
            `"ram-u"` (RAM without it); `num_layers` is the number of blocks.
            `"felrec"`: FELRec's cache-based towers (no embedding tables), trained
            by `tfrec_proxy.felrec_training` with the `felrec` settings and
            `loss="infonce"` / `"byol"` on `DataConfig.split="chronological"`.
        item_tower: Registered item tower (`tfrec_proxy.registry.ITEM_TOWERS`):
            `"id"` (id embedding + MLP) or `"pir"` (PIR proxy-based item
            representation from the run's item features, eqs. 11-18).
        num_proxies: n_proxy of `item_tower="pir"`.
        frequent_bias_k: K of `item_tower="pir"`: the most frequent training items
            that learn a proxy-weight bias (eq. 18); 0 is content-only.
        share_item_encoder: Embed the user tower's history items with the item
            tower (shared weights, as PIR and CARCA do) instead of the sequence
            encoder's own id embedding.
        extraction: Registered extraction (`tfrec_proxy.registry.EXTRACTIONS`):
            how the sequence encoder's outputs become the user representation:
            `"last"` (most recent position), `"mean"` (masked mean) or `"mur"` (MUR
            parametric attention, IDW §3.1: `num_interests` vectors `[M, d]`).
        num_interests: M, the user vectors of `extraction="mur"` (IDW §4.3: 5; 1
            is the paper's SUR); unused by the other extractions.
        scorer: Registered scorer (`tfrec_proxy.registry.SCORERS`): the affinity
            between query and candidate vectors: `"dot"` (max over the vectors of
            a multi-vector query, TFRS's max-sim), `"mur"` (IDW eq. 4) or
            `"auto"`: `"mur"` for `extraction="mur"`, else `"dot"`.
        scorer_options: The scorer's own settings, checked like `options`.
        loss: `"softmax"` (batch softmax, IDW eq. 3, the default), `"focal"` (focal loss,
            Lin et al.: `-(1 - p)^gamma log p`) or `"qmargin"` (LDAM-style margin
            `delta_y ~ p(y)^(-1/4)` subtracted from the positive's logit, Cao et
            al.) (IDW §4.3 baselines).
            The SASRec / RAM objectives (`tfrec_proxy.objectives`): `"bce"`
            (binary cross-entropy, one uniform negative per target),
            `"full-softmax"` (softmax over every item) and `"sampled-softmax"`
            (`sampled_negatives` negatives per step by `negative_sampler`, logQ);
            `"margin"`: ProxySR's hinge loss (eq. 8) over `sampled_negatives`
            uniform negatives per target, distance = -score.
            FELRec's (`encoder="felrec"` only): `"infonce"` (FELRec-Q, eqs. 1-2,
            symmetric InfoNCE against queues) or `"byol"` (FELRec-P, eqs. 3-4).
        focal_gamma: gamma of `loss="focal"`.
        sampled_negatives: Negatives per step of `loss="sampled-softmax"` (per
            target for `loss="margin"`).
        margin: m of `loss="margin"` (ProxySR eq. 8).
        lambda_dist: `loss="margin"`: weight of the distance regulariser (eq. 9).
        lambda_orthog: `encoder="proxysr"`: weight of the orthogonality
            regulariser (eq. 9).
        negative_sampler: `"uniform"` or `"popularity"` negatives of
            `loss="sampled-softmax"`.
        qmargin_max: The largest `loss="qmargin"` margin (that of the rarest item),
            in logit units; the others scale as `p(y)^(-1/4)`.
        item_norm: `"none"`, `"train"` (item vectors L2-normalised in training and
            serving, Kim & Kim) or `"posthoc"` (trained unnormalised, normalised for
            evaluation and serving only, Kang et al.) (IDW §4.3 baselines).
        all_positions: Train on every position of each sequence in one causal
            forward pass (loss at each position, targets = the per-prefix
            examples); every built-in extraction supports it (MUR attends over
            each prefix's positions). False encodes every prefix separately
            (non-causal encoder).
        history_oov_rate: Share of training history items replaced by the OOV
            index, so the OOV embedding that serves unknown ids is trained.
        logq_correction: Subtract log p(item) from in-batch logits.
        remove_accidental_hits: Mask in-batch negatives equal to the positive.
        temperature: Optional logit temperature.
        felrec: FELRec's settings (`encoder="felrec"`; paper defaults).
    """

    kind: str = "two_tower"
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    embedding_dim: int = 16
    num_layers: int = 2
    num_heads: int = 4
    dropout: float = 0.1
    item_hidden_units: Tuple[int, ...] = (16, 16)
    encoder: str = "self-attention"
    item_tower: str = "id"
    num_proxies: int = 32
    frequent_bias_k: int = 1000
    share_item_encoder: bool = False
    extraction: str = "last"
    num_interests: int = 5
    scorer: str = "auto"
    scorer_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    loss: str = "softmax"
    focal_gamma: float = 2.0
    sampled_negatives: int = 100
    negative_sampler: str = "uniform"
    margin: float = 0.5
    lambda_dist: float = 0.0
    lambda_orthog: float = 0.0
    qmargin_max: float = 1.0
    item_norm: str = "none"
    all_positions: bool = True
    history_oov_rate: float = 0.01
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    temperature: Optional[float] = None
    felrec: FELRecConfig = dataclasses.field(default_factory=FELRecConfig)


@dataclasses.dataclass
class IDWConfig:
    """Iterative density weighting (IDW paper §3.3, Algorithms 1-2; §4.4 defaults).

    Attributes:
        momentum: m of the weight update (eq. 9), in [0, 1).
        eta: Stopping threshold on `||w(t+1) - w(t)||` (Algorithm 1), > 0.
        max_iterations: MAX_T, the most sleep/wake iterations.
        wake_epochs: Training epochs of each wake phase.
        pretrain_epochs: Epochs of the unweighted pre-training (None:
            `TrainConfig.epochs`, with early stopping).
        calibration_epochs: Epochs of the user-tower calibration (item tower
            frozen, unweighted loss; None: `TrainConfig.epochs`, with early stopping).
        calibrate: Run the user-tower calibration (§4.6.3 ablates it).
        bandwidth: Gaussian kernel bandwidth l of eq. 7 (None: Scott's rule).
        exact_max_items: Catalogues up to this size get the exact density; larger
            ones a bounded-memory estimate against `reference_size` items drawn in
            proportion to the weights.
        reference_size: Reference items of that estimate (4,096: relative
            densities within 0.005 mean absolute error of exact on 20k items, see
            BENCHMARKS.md).
    """

    momentum: float = 0.9
    eta: float = 4e-4
    max_iterations: int = 10
    wake_epochs: int = 1
    pretrain_epochs: Optional[int] = None
    calibration_epochs: Optional[int] = None
    calibrate: bool = True
    bandwidth: Optional[float] = None
    exact_max_items: int = 16384
    reference_size: int = 4096


@dataclasses.dataclass
class TrainConfig:
    """Keras `fit` settings.

    Attributes:
        epochs: Maximum epochs (early stopping may end sooner).
        batch_size: Training targets per replica per step (global = this x
            replicas). With `ModelConfig.all_positions`, whole sequences are batched,
            as many as hold about this many targets.
        learning_rate: The optimizer's learning rate (IDW §4.4, Adam: 0.01).
        optimizer: `"adam"` (default) or `"sgd"` (momentum 0.9). SGD is linear in
            the gradients, so float rounding stays at rounding size; Adam divides by
            the gradient's running scale, which turns rounding noise on parameters
            whose gradient is ~0 into steps of the learning rate's size (seen when
            comparing distributed runs).
        early_stopping_patience: Epochs without improvement of `monitor` before
            stopping; 0 disables early stopping.
        monitor: Validation metric to watch (`val_hr@20`, `val_ndcg@20`, `val_loss`).
        eval_ks: Cut-offs for HR@k / NDCG@k.
        min_sequences_per_batch: With `ModelConfig.all_positions`, the fewest
            sequences a step holds, even when that is more than `batch_size` targets:
            every in-batch negative comes from these sequences, and too few users per
            step starve the tail (on the synthetic default, 9 sequences per step
            halved full-ranking tail HR@20 against 76; see BENCHMARKS.md).
        num_negatives: Sampled negatives per evaluation example (IDW: 99); a user
            with fewer eligible items gets fewer, with a warning.
        eval_chunks: `"all"` evaluates every chunk's held-out items (IDW §4.1);
            `"last"` only each user's last chunk, whose held-out items no training
            target follows. Applies to validation (early stopping) and test.
        full_ranking_history: What the full-ranking metrics do with the user's own
            items: `"kept"` ranks the target against every item (RAM §6.3, the
            default), `"removed"` skips the user's other interacted items (the
            full-sort convention of RecBole and several SASRec papers; the target is
            never skipped). Sampled negatives never include them either way.
        seed: Training seed (TensorFlow, shuffling, negative sampling); the
            synthetic data has its own seed (`SyntheticConfig.seed`).
        strategy: `"default"`, `"mirrored"` or `"multi_worker"` (tf.distribute).
        cross_replica_negatives: With several replicas, score each replica's
            queries against the whole global batch's candidates (ids and logQ
            probabilities gathered too) instead of its own slice
            (`tfrec_proxy.cross_replica`); in-batch softmax losses only.
        mixed_precision: Use the `mixed_float16` Keras policy (GPU).
        jit_compile: XLA-compile the train step.
        tensorboard_dir: Write TensorBoard logs here when set.
        time_budget_minutes: Stop training once this much wall time has passed
            since the first `fit` started (checked after every step; later phases
            are skipped; early stopping still restores the best weights); None for
            no limit.
        backup_dir: Back up the training progress here after every epoch and
            resume from it when the same run is started again
            (`tfrec_proxy.backup`); deleted once the run is exported. None: no
            backup.
        weighting: Per-example loss weights by target item: `"none"`,
            `"frequency"` (IDW eq. 5, `1 / p(y)`, normalised to a mean of 1) or
            `"idw"` (iterative density weighting, `idw` settings).
        idw: Settings of `weighting="idw"`.
    """

    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 0.01
    optimizer: str = "adam"
    early_stopping_patience: int = 3
    monitor: str = "val_ndcg@20"
    eval_ks: Tuple[int, ...] = (5, 20)
    min_sequences_per_batch: int = 64
    num_negatives: int = 99
    eval_chunks: str = "all"
    full_ranking_history: str = "kept"
    seed: int = 0
    strategy: str = "default"
    cross_replica_negatives: bool = False
    mixed_precision: bool = False
    jit_compile: bool = False
    tensorboard_dir: Optional[str] = None
    time_budget_minutes: Optional[float] = None
    backup_dir: Optional[str] = None
    weighting: str = "none"
    idw: IDWConfig = dataclasses.field(default_factory=IDWConfig)


@dataclasses.dataclass
class ExportConfig:
    """Run-folder export settings.

    Attributes:
        max_k: Largest k a caller may ask of the exported retrieval models.
        scann_num_leaves: ScaNN partitions; None picks ~sqrt(#candidates).
        scann_leaves_to_search: Partitions searched per query; None picks a tenth
            of the leaves (at least 10, at most all).
        scann_reorder: Candidates re-scored exactly; None picks 4 x max_k.
        scann_target_recall: Recall@10 (against exact top-k) that the ScaNN settings
            are tuned to at export, on validation queries
            (`tfrec_proxy.scann_tuning.tune_scann`); None, or any explicit
            `scann_*` value above, keeps the size rule instead.
        scann_tuning_queries: Most validation queries the tuning measures on.
    """

    max_k: int = 100
    scann_num_leaves: Optional[int] = None
    scann_leaves_to_search: Optional[int] = None
    scann_reorder: Optional[int] = None
    scann_target_recall: Optional[float] = 0.95
    scann_tuning_queries: int = 1000

    def tunes_scann(self) -> bool:
        """Whether export tunes ScaNN to `scann_target_recall` (no explicit settings)."""
        explicit = (self.scann_num_leaves, self.scann_leaves_to_search, self.scann_reorder)
        return self.scann_target_recall is not None and all(v is None for v in explicit)


@dataclasses.dataclass
class RunConfig:
    """Everything needed to rebuild a run."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "RunConfig":
        """Builds a config from a (possibly partial) dict; unknown keys are errors."""
        return _from_dict(cls, values, "config")

    def to_json(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "RunConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:  # ValueError: bad JSON or UTF-8
            raise ValueError(f"Cannot read run config {str(path)!r}: {error}") from error
        return cls.from_dict(values)

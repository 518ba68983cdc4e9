"""The training flags of `tfrec-proxy train` / `config`: one `ConfigFlag` per
`RunConfig` field a flag overrides (`CONFIG_FLAGS`), their value parsers, and mirrors
of the library's choice lists.

Nothing here imports TensorFlow, NumPy or pandas (so `--help` stays fast): choices
that the library also defines are repeated, and `tests/test_cli.py` checks that they
agree.
"""

import argparse
import dataclasses
import re
from typing import Any, Callable, Optional, Sequence, Tuple

DEFAULT_DATA_PATH = "../shared/data/ml-1m"
# Mirrors of library constants (checked by the tests): importing their modules would
# import TensorFlow (training) or pandas (data).
STRATEGIES = ("default", "mirrored", "multi_worker")  # tfrec_proxy.training.STRATEGIES
OPTIMIZERS = ("adam", "sgd")  # tfrec_proxy.training.OPTIMIZERS
EVAL_CHUNKS = ("all", "last")  # tfrec_proxy.training.EVAL_CHUNKS
FULL_RANKING_HISTORY = ("kept", "removed")  # tfrec_proxy.evaluation.FULL_RANKING_HISTORY
# data.prepare.DATA_SOURCES less "dataframe"
DATA_SOURCES = ("synthetic", "file", "sessions", "synthetic-sessions", "shards")
PATH_SOURCES = ("file", "sessions", "shards")  # sources read from --data-path
FILE_FORMATS = ("auto", "movielens", "sasrec", "csv", "tsv", "parquet")  # data.loaders
EXTRACTIONS = ("last", "mean", "mur")  # registry.EXTRACTIONS (built-in names)
SCORERS = ("auto", "dot", "mur")  # registry.SCORERS (built-in names) and "auto"
LOSSES = ("softmax", "focal", "qmargin",  # tasks.LOSSES + objectives.OBJECTIVES
          "bce", "full-softmax", "sampled-softmax", "margin",
          "infonce", "byol")  # + felrec_losses.FELREC_LOSSES
SAMPLERS = ("uniform", "popularity")  # objectives.SAMPLERS
ITEM_NORMS = ("none", "train", "posthoc")  # layers.item_norm.ITEM_NORM_MODES
WEIGHTINGS = ("none", "frequency", "idw")  # registry.WEIGHTINGS (built-in names)
ITEM_TOWERS = ("id", "pir", "shared")  # registry.ITEM_TOWERS (built-in names)
ENCODERS = ("self-attention", "sasrec", "ram", "ram-u",  # registry.ENCODERS
            "proxysr", "proxysr-user", "felrec")
SPLITS = ("chunked", "per-user", "chronological")  # data.prepare.SPLITS
TIME_ORDERS = ("auto", "timestamp", "round-robin")  # data.felrec_data.TIME_ORDERS
TIMELINES = ("auto", "per-user", "interleaved")  # data.synthetic_timeline.TIMELINES
FELREC_OPTIMIZERS = ("sgd", "adam")  # felrec_training.OPTIMIZERS
FELREC_SCHEDULES = ("cosine", "constant")  # felrec_training.LR_SCHEDULES
FELREC_NORMALIZATIONS = ("batch", "layer")  # layers.felrec.NORMALIZATIONS


# Plain ASCII numbers only: Python's int()/float() also take other scripts' digits,
# underscores ("1_000") and surrounding spaces, which a typo should not pass as.
_NUMBER_TEXT = {int: re.compile(r"[+-]?[0-9]+"),
                float: re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")}
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def _number(kind: Callable[[str], Any], what: str, check: Callable[[Any], bool]
            ) -> Callable[[str], Any]:
    """An argparse `type` parsing with `kind` (ASCII digits; ints within int64) and
    accepting values passing `check`."""
    def parse(text: str) -> Any:
        if not _NUMBER_TEXT[kind].fullmatch(text):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        value = kind(text)
        if kind is int and not INT64_MIN <= value <= INT64_MAX:
            raise argparse.ArgumentTypeError(f"expected {what} within int64, got {text!r}")
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    parse.__name__ = what  # argparse names the type in some messages
    return parse


any_int = _number(int, "an integer", lambda value: True)
# NumPy's legacy seeding (tf.keras.utils.set_random_seed) takes [0, 2**32).
seed_int = _number(int, "a seed in [0, 2**32)", lambda value: 0 <= value < 2 ** 32)
positive_int = _number(int, "a positive integer", lambda value: value >= 1)
non_negative_int = _number(int, "a non-negative integer", lambda value: value >= 0)
positive_float = _number(float, "a positive number", lambda value: 0 < value < float("inf"))
finite_float = _number(float, "a finite number", lambda value: abs(value) < float("inf"))
unit_interval = _number(float, "a number in [0, 1)", lambda value: 0 <= value < 1)
fraction = _number(float, "a number in (0, 1]", lambda value: 0 < value <= 1)


@dataclasses.dataclass(frozen=True)
class ConfigFlag:
    """A command-line flag that overrides one `RunConfig` field.

    Attributes:
        flag: The option string, e.g. `"--epochs"`.
        field: Dotted field path in `RunConfig`, e.g. `"train.epochs"`.
        help: Help text; the field's default value is appended.
        type: argparse `type` (ignored when `const` is set).
        choices: Allowed values.
        const: For a switch: the value stored when the flag is given.
    """

    flag: str
    field: str
    help: str
    type: Optional[Callable[[str], Any]] = None
    choices: Optional[Sequence[str]] = None
    const: Any = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


CONFIG_FLAGS: Tuple[ConfigFlag, ...] = (
    # Data.
    ConfigFlag("--data", "data.source", "data source: the synthetic long-tail generator, "
               "an interaction file (--data-path), a session log (--data-path; "
               "default the shared Diginetica sample) for the session task, or the "
               "generator's clicks cut into sessions (synthetic-sessions, known users), "
               "or the TFRecord shards of pipelines/beam_preprocess.py (shards, "
               "--data-path DIR)", choices=DATA_SOURCES),
    ConfigFlag("--data-path", "data.path", "interaction file or folder (ratings.dat, "
               f"ml-1m.txt, CSV/TSV/Parquet); implies --data file (default for --data "
               f"file: {DEFAULT_DATA_PATH})"),
    ConfigFlag("--data-format", "data.file_format", "format of --data-path (auto: by "
               "extension and content)", choices=FILE_FORMATS),
    ConfigFlag("--user-column", "data.user_column", "user id column of a CSV/TSV/Parquet table"),
    ConfigFlag("--item-column", "data.item_column", "item id column of a CSV/TSV/Parquet table"),
    ConfigFlag("--time-column", "data.time_column", "timestamp column of a CSV/TSV/Parquet "
               "table; '' uses the row order as time order"),
    ConfigFlag("--num-users", "data.synthetic.num_users", "synthetic users",
               type=positive_int),
    ConfigFlag("--num-items", "data.synthetic.num_items", "synthetic items",
               type=positive_int),
    ConfigFlag("--num-clusters", "data.synthetic.num_clusters", "synthetic interest "
               "clusters", type=positive_int),
    ConfigFlag("--interest-skew", "data.synthetic.interest_skew", "synthetic interest "
               "power-law exponent", type=finite_float),
    ConfigFlag("--data-seed", "data.synthetic.seed", "seed of the synthetic dataset "
               "(--seed does not change the data)", type=seed_int),
    ConfigFlag("--max-len", "data.max_len", "history length; longer sequences are split",
               type=positive_int),
    ConfigFlag("--session-length", "data.synthetic.session_length", "--data "
               "synthetic-sessions: mean views per session (>= 3)", type=positive_int),
    ConfigFlag("--min-item-count", "data.min_item_count", "--data sessions: drop items seen "
               "fewer times (ProxySR: 5)", type=positive_int),
    ConfigFlag("--split", "data.split", "chunked: sequences cut at --max-len, each chunk's "
               "last two items held out (IDW); per-user: one sequence per user, last item "
               "test, second last validation, the --max-len before them trained (SASRec); "
               "chronological: one time line, first 80%% train, next 10%% validation, "
               "last 10%% test (FELRec, --encoder felrec)", choices=SPLITS),
    ConfigFlag("--time-order", "data.time_order", "--split chronological: order by the "
               "timestamps, or round-robin (every user's k-th interaction before any "
               "user's (k+1)-th; for files without timestamps such as ml-1m.txt; not the "
               "FELRec paper's protocol); auto: round-robin for SASRec-format files",
               choices=TIME_ORDERS),
    ConfigFlag("--timeline", "data.synthetic.timeline", "synthetic clock: per-user "
               "positions, or one interleaved clock (auto: interleaved for --split "
               "chronological)", choices=TIMELINES),
    ConfigFlag("--activity-span", "data.synthetic.activity_span", "interleaved clock: share "
               "of the clock a user's clicks span",
               type=_number(float, "a number in (0, 1)", lambda value: 0 < value < 1)),
    ConfigFlag("--late-users", "data.synthetic.late_users", "interleaved clock: share of "
               "the users arriving in its last fifth (new users of a chronological split)",
               type=unit_interval),
    ConfigFlag("--late-items", "data.synthetic.late_items", "interleaved clock: share of "
               "the items released in its last fifth (new items)", type=unit_interval),
    ConfigFlag("--item-features", "data.item_features", "item attribute table (CSV/TSV/"
               "Parquet, one row per item) for --item-tower pir (default: <data file>"
               ".items.tsv beside the interactions when present, e.g. ML-1M's genres)"),
    ConfigFlag("--cold-items", "data.cold_items", "share of the items held out of training "
               "entirely, evaluated as cold items (metrics cold/...)", type=unit_interval),
    ConfigFlag("--attribute-dim", "data.synthetic.attribute_dim", "synthetic item "
               "attributes per item, noisy functions of its cluster (0 = none)",
               type=non_negative_int),
    ConfigFlag("--attribute-noise", "data.synthetic.attribute_noise", "noise scale of the "
               "synthetic item attributes",
               type=_number(float, "a number >= 0", lambda value: 0 <= value < float("inf"))),
    # Model.
    ConfigFlag("--item-tower", "model.item_tower", "item tower: id embedding + MLP, PIR "
               "proxy-based representation from the item features, or shared: the "
               "encoder's own item embedding table (SASRec's tied embeddings)",
               choices=ITEM_TOWERS),
    ConfigFlag("--num-proxies", "model.num_proxies", "n_proxy, the proxy embeddings of "
               "--item-tower pir", type=positive_int),
    ConfigFlag("--frequent-bias-k", "model.frequent_bias_k", "K, the most frequent items "
               "with a learned proxy-weight bias (--item-tower pir; 0 = content only)",
               type=non_negative_int),
    ConfigFlag("--share-item-encoder", "model.share_item_encoder", "embed history items "
               "with the item tower (shared weights) instead of the encoder's id table",
               const=True),
    ConfigFlag("--embedding-dim", "model.embedding_dim", "output size of both towers "
               "(also the item tower's last layer)", type=positive_int),
    ConfigFlag("--encoder", "model.encoder", "sequence encoder of the query tower: the IDW "
               "self-attention encoder, SASRec, RAM (reused item representations + user "
               "embedding), RAM-u (without it), ProxySR (session proxies, "
               "--num-proxies; scored by eq. 7) or ProxySR with eq. 10's per-user bias "
               "(proxysr-user)", choices=ENCODERS),
    ConfigFlag("--num-layers", "model.num_layers", "attention blocks in the query tower "
               "(also --num-blocks)", type=positive_int),
    ConfigFlag("--num-blocks", "model.num_layers", "n_b, attention blocks of the encoder "
               "(same as --num-layers)", type=positive_int),
    ConfigFlag("--num-heads", "model.num_heads", "attention heads per block",
               type=positive_int),
    ConfigFlag("--dropout", "model.dropout", "dropout rate in the query tower",
               type=unit_interval),
    ConfigFlag("--per-prefix", "model.all_positions", "encode every history prefix "
               "separately instead of all positions in one causal pass", const=False),
    ConfigFlag("--extraction", "model.extraction", "user representation from the "
               "encoder's outputs: last position, masked mean, or MUR parametric "
               "attention (--num-interests vectors)", choices=EXTRACTIONS),
    ConfigFlag("--num-interests", "model.num_interests", "M, the user vectors of "
               "--extraction mur (1 = SUR)", type=positive_int),
    ConfigFlag("--scorer", "model.scorer", "query-item affinity: dot (max over a "
               "multi-vector query), mur (IDW eq. 4), auto (mur for --extraction mur)",
               choices=SCORERS),
    ConfigFlag("--loss", "model.loss", "batch softmax, focal loss, Qmargin (LDAM-style "
               "margins ~ p(y)^-1/4), or the SASRec/RAM objectives: bce (one sampled "
               "negative per target), full-softmax (all items), sampled-softmax "
               "(--sampled-negatives per step), margin (ProxySR's hinge loss)",
               choices=LOSSES),
    ConfigFlag("--sampled-negatives", "model.sampled_negatives", "negatives per step of "
               "--loss sampled-softmax (per target for --loss margin)", type=positive_int),
    ConfigFlag("--margin", "model.margin", "m of --loss margin (ProxySR eq. 8)",
               type=_number(float, "a number >= 0", lambda value: 0 <= value < float("inf"))),
    ConfigFlag("--lambda-dist", "model.lambda_dist", "--loss margin: weight of the distance "
               "regulariser (ProxySR eq. 9)",
               type=_number(float, "a number >= 0", lambda value: 0 <= value < float("inf"))),
    ConfigFlag("--lambda-orthog", "model.lambda_orthog", "--encoder proxysr: weight of the "
               "orthogonality regulariser (ProxySR eq. 9)",
               type=_number(float, "a number >= 0", lambda value: 0 <= value < float("inf"))),
    ConfigFlag("--negative-sampler", "model.negative_sampler", "negatives of --loss "
               "sampled-softmax: uniform or by popularity", choices=SAMPLERS),
    ConfigFlag("--focal-gamma", "model.focal_gamma", "gamma of --loss focal",
               type=_number(float, "a number >= 0", lambda value: 0 <= value < float("inf"))),
    ConfigFlag("--qmargin-max", "model.qmargin_max", "largest margin of --loss qmargin (the "
               "rarest item's), in logits", type=positive_float),
    ConfigFlag("--item-norm", "model.item_norm", "L2-normalise item vectors: never, in "
               "training and serving, or post hoc (serving only)", choices=ITEM_NORMS),
    # FELRec (--encoder felrec; paper defaults).
    ConfigFlag("--felrec-dim", "model.felrec.dim", "FELRec model width d (cached vector "
               "size)", type=positive_int),
    ConfigFlag("--felrec-layers", "model.felrec.num_layers", "FELRec Transformer encoder "
               "layers N", type=positive_int),
    ConfigFlag("--felrec-heads", "model.felrec.num_heads", "FELRec attention heads h",
               type=positive_int),
    ConfigFlag("--felrec-ff-dim", "model.felrec.ff_dim", "FELRec feed-forward width d_ff",
               type=positive_int),
    ConfigFlag("--felrec-dropout", "model.felrec.dropout", "FELRec dropout P_drop",
               type=unit_interval),
    ConfigFlag("--queue-size", "model.felrec.queue_size", "FELRec-Q (--loss infonce) queue "
               "length K", type=positive_int),
    ConfigFlag("--felrec-temperature", "model.felrec.temperature", "FELRec-Q temperature "
               "tau", type=positive_float),
    ConfigFlag("--history-len", "model.felrec.history_len", "FELRec: most recent items of "
               "a user / users of an item encoded", type=positive_int),
    ConfigFlag("--felrec-normalization", "model.felrec.normalization", "FELRec MLP "
               "normalisation (layer: the paper's -LN ablation)",
               choices=FELREC_NORMALIZATIONS),
    ConfigFlag("--share-heads", "model.felrec.share_heads", "FELRec: one projection MLP for "
               "users and items (-shareMLP ablation)", const=True),
    ConfigFlag("--remove-queue-hits", "model.felrec.remove_queue_hits", "FELRec-Q: leave "
               "queue entries of the positive's own user/item out of the softmax "
               "(default: kept as negatives, the paper's loss)", const=True),
    ConfigFlag("--no-padding-slot", "model.felrec.padding_slot", "FELRec: only empty "
               "histories get the zero-vector padding slot (default: every history "
               "shorter than --history-len does, as the reference code)", const=False),
    ConfigFlag("--felrec-optimizer", "model.felrec.optimizer", "FELRec optimizer: SGD "
               "(momentum 0.9, paper) or Adam; base rate --learning-rate",
               choices=FELREC_OPTIMIZERS),
    ConfigFlag("--felrec-lr-schedule", "model.felrec.lr_schedule", "FELRec learning-rate "
               "schedule per epoch: warm-up then cosine decay (paper), or constant",
               choices=FELREC_SCHEDULES),
    ConfigFlag("--warmup-epochs", "model.felrec.warmup_epochs", "FELRec warm-up epochs of "
               "the cosine schedule (at most --epochs - 1)", type=non_negative_int),
    ConfigFlag("--felrec-eval-reset", "model.felrec.eval_reset", "FELRec: also evaluate the "
               "paper's reset mode (cache cleared, representations recomputed from "
               "scratch; metrics reset/...)", const=True),
    # Training.
    ConfigFlag("--epochs", "train.epochs", "maximum training epochs", type=positive_int),
    ConfigFlag("--batch-size", "train.batch_size", "training targets per replica per step",
               type=positive_int),
    ConfigFlag("--learning-rate", "train.learning_rate", "the optimizer's learning rate",
               type=positive_float),
    ConfigFlag("--optimizer", "train.optimizer", "Adam, or SGD with momentum 0.9",
               choices=OPTIMIZERS),
    ConfigFlag("--patience", "train.early_stopping_patience", "epochs without improvement "
               "of --monitor before stopping; 0 disables early stopping",
               type=non_negative_int),
    ConfigFlag("--monitor", "train.monitor", "validation metric watched by early stopping "
               "(val_loss, val_hr@K or val_ndcg@K for K in the config's eval_ks)"),
    ConfigFlag("--min-sequences-per-batch", "train.min_sequences_per_batch", "fewest "
               "sequences per step when training all positions (in-batch negatives come "
               "from them)", type=positive_int),
    ConfigFlag("--num-negatives", "train.num_negatives", "sampled negatives per "
               "evaluation example", type=positive_int),
    ConfigFlag("--eval-chunks", "train.eval_chunks", "evaluate every chunk's held-out "
               "items, or only each user's last chunk", choices=EVAL_CHUNKS),
    ConfigFlag("--full-ranking-history", "train.full_ranking_history", "full-ranking "
               "metrics rank the target against every item (kept, RAM 6.3) or skip the "
               "user's other items (removed, RecBole's full sort)",
               choices=FULL_RANKING_HISTORY),
    ConfigFlag("--seed", "train.seed", "training seed: weights, shuffling, negative "
               "sampling (the synthetic data has --data-seed)", type=seed_int),
    ConfigFlag("--strategy", "train.strategy", "tf.distribute strategy", choices=STRATEGIES),
    ConfigFlag("--cross-replica-negatives", "train.cross_replica_negatives", "with several "
               "replicas, every query sees the global batch's candidates as negatives",
               const=True),
    ConfigFlag("--mixed-precision", "train.mixed_precision", "mixed_float16 Keras policy "
               "(GPU)", const=True),
    ConfigFlag("--jit-compile", "train.jit_compile", "XLA-compile the train step",
               const=True),
    ConfigFlag("--tensorboard-dir", "train.tensorboard_dir", "write TensorBoard logs here"),
    ConfigFlag("--time-budget", "train.time_budget_minutes", "stop training after this many "
               "minutes (the best weights so far are kept; later phases skipped)",
               type=positive_float),
    ConfigFlag("--backup-dir", "train.backup_dir", "back up training after every epoch; "
               "rerunning the same command resumes from there (deleted once exported)"),
    ConfigFlag("--weighting", "train.weighting", "per-example loss weights: none, frequency "
               "balance (1/p(y)) or IDW iterative density weighting", choices=WEIGHTINGS),
    ConfigFlag("--idw-momentum", "train.idw.momentum", "IDW weight momentum m (eq. 9)",
               type=unit_interval),
    ConfigFlag("--idw-eta", "train.idw.eta", "IDW stopping threshold on ||w(t+1) - w(t)||",
               type=positive_float),
    ConfigFlag("--idw-max-iterations", "train.idw.max_iterations", "most IDW sleep/wake "
               "iterations", type=positive_int),
    ConfigFlag("--idw-wake-epochs", "train.idw.wake_epochs", "epochs per IDW wake phase",
               type=positive_int),
    ConfigFlag("--idw-pretrain-epochs", "train.idw.pretrain_epochs", "epochs of IDW's "
               "unweighted pre-training (default --epochs, early stopping)",
               type=positive_int),
    ConfigFlag("--idw-calibration-epochs", "train.idw.calibration_epochs", "epochs of IDW's "
               "user-tower calibration (default --epochs, early stopping)",
               type=positive_int),
    ConfigFlag("--no-idw-calibration", "train.idw.calibrate", "skip IDW's user-tower "
               "calibration", const=False),
    # Export.
    ConfigFlag("--max-k", "export.max_k", "largest k served by the export",
               type=positive_int),
    ConfigFlag("--scann-target-recall", "export.scann_target_recall", "recall@10 the "
               "exported ScaNN settings are tuned to on validation queries",
               type=fraction),
)

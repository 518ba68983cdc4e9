"""Training pipeline: prepare data, build the model under a strategy, `fit` one or more
phases, evaluate, export. `tfrec-proxy train` is a thin wrapper around `train`.

A method that needs several `fit` calls (pre-training, a weighted phase, a
calibration phase with the item tower frozen) passes `phases=[Phase(...), ...]`; each
phase may freeze sub-layers, set the per-item loss weights and add its own callbacks.
Without `phases`, the schedule is that of the config's loss weighting
(`TrainConfig.weighting`, registered in `tfrec_proxy.registry.WEIGHTINGS`: one plain
phase, frequency-balanced weights, or IDW's pre-train / sleep-wake / calibration).
"""

import dataclasses
import datetime
import importlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from tfrec_proxy._tf import tf
from tfrec_proxy.backup import TrainingBackup, checkpointable_random, random_generators
from tfrec_proxy.config import RunConfig, TrainConfig
from tfrec_proxy.data import PreparedData, Vocabulary, prepare_data
from tfrec_proxy.data.prepare import CHUNKS, trained_positions
from tfrec_proxy.evaluation import FULL_RANKING_HISTORY, evaluate_model, overall_metrics
from tfrec_proxy.export import export_run
from tfrec_proxy.metrics.clustering import silhouette_score
from tfrec_proxy.models import (RetrievalModel, build_model, check_model_config,
                                resolve_scorer)
from tfrec_proxy.phases import ItemWeights, Phase
from tfrec_proxy.schedule import build_towers, check_trainable, run_schedule
from tfrec_proxy.registry import ENCODERS, WEIGHTINGS
from tfrec_proxy.data.item_features import SPEC_FILE, ItemFeatures
from tfrec_proxy.run_format import USERS_FILE, RunFormatError

STRATEGIES = ("default", "mirrored", "multi_worker")
OPTIMIZERS = ("adam", "sgd")  # TrainConfig.optimizer (schedule.make_optimizer)
EVAL_CHUNKS = CHUNKS
__all__ = ["EVAL_CHUNKS", "ItemWeights", "OPTIMIZERS", "Phase", "STRATEGIES", "TrainResult",
           "check_train_config", "format_metrics", "get_strategy", "is_chief",
           "read_item_features", "restore_model", "train"]


def get_strategy(name: str) -> tf.distribute.Strategy:
    """`"default"` (one device), `"mirrored"` (all local GPUs) or `"multi_worker"`
    (`MultiWorkerMirroredStrategy`, cluster from the `TF_CONFIG` environment variable)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r}; expected one of {STRATEGIES}.")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes outputs: always, except on the non-chief workers
    of a multi-worker cluster (task `chief`, or `worker` 0 when there is no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    spec = resolver.cluster_spec()
    cluster = spec.as_dict() if spec else {}
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


@dataclasses.dataclass
class TrainResult:
    """What `train` produced."""

    model: RetrievalModel
    data: PreparedData
    history: Dict[str, List[float]]
    metrics: Dict[str, float]
    run_dir: Optional[Path]
    seconds: float
    phases: List[Dict[str, Any]] = dataclasses.field(default_factory=list)


def check_train_config(train: TrainConfig) -> None:
    """Fails fast on settings Keras would only warn about (or fail on late)."""
    monitors = ["val_loss"] + [f"val_{name}@{k}" for k in train.eval_ks
                               for name in ("hr", "ndcg")]
    if train.early_stopping_patience > 0 and train.monitor not in monitors:
        raise ValueError(f"Unknown early-stopping monitor {train.monitor!r}; expected one "
                         f"of {monitors} (eval_ks={list(train.eval_ks)}).")
    if train.full_ranking_history not in FULL_RANKING_HISTORY:
        raise ValueError(f"Unknown full_ranking_history {train.full_ranking_history!r}; "
                         f"expected one of {FULL_RANKING_HISTORY}.")
    if train.eval_chunks not in EVAL_CHUNKS:
        raise ValueError(f"Unknown eval_chunks {train.eval_chunks!r}; expected one of "
                         f"{EVAL_CHUNKS}.")
    if train.min_sequences_per_batch < 1:
        raise ValueError(f"min_sequences_per_batch must be >= 1, got "
                         f"{train.min_sequences_per_batch}.")
    if train.num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {train.num_negatives}.")
    if train.strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {train.strategy!r}; expected one of {STRATEGIES}.")
    if train.optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {train.optimizer!r}; expected one of "
                         f"{OPTIMIZERS}.")
    if train.time_budget_minutes is not None and not train.time_budget_minutes > 0:
        raise ValueError(f"time_budget_minutes must be > 0 (or None for no limit), got "
                         f"{train.time_budget_minutes}.")
    entry = WEIGHTINGS.get(train.weighting)
    check = entry.metadata.get("check")
    if check is not None:
        check(train)


def _run_name() -> str:
    return "run-" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")


def train(config: Optional[RunConfig] = None, *, output_dir: Union[str, Path] = "saved_models",
          run_name: Optional[str] = None, export: bool = True,
          verbose: Union[int, str] = "auto", data: Optional[PreparedData] = None,
          interactions: Optional[pd.DataFrame] = None,
          callbacks: Sequence[tf.keras.callbacks.Callback] = (),
          phases: Optional[Sequence[Phase]] = None) -> TrainResult:
    """Trains, evaluates and (optionally) exports a retrieval model.

    Args:
        config: Run settings; defaults train the baseline on the synthetic data.
        output_dir: Parent folder of run folders.
        run_name: Run folder name; default `run-<UTC timestamp>`. An existing folder
            is an error, raised before training starts.
        export: Write the run folder (on the chief only, under multi-worker).
        verbose: Keras `fit` verbosity (progress bar with `"auto"` on a terminal).
        data: Already prepared data for `config.data` (skips preparation).
        interactions: A pandas frame of interactions (`config.data.source =
            "dataframe"`), with the config's user/item/time column names.
        callbacks: Keras callbacks added to every phase.
        phases: The `fit` schedule; default: the schedule of
            `config.train.weighting` (for `"none"` one phase of `config.train.epochs`).
            Giving phases with a weighting other than `"none"` is an error.

    An encoder registered with a `trainer` module (`--encoder felrec`) is trained by
    that module's `train` instead (`tfrec_proxy.felrec_training.train`).

    Returns:
        A `TrainResult`; `history` concatenates the phases' epochs, `phases` lists
        `{"name", "epochs", "seconds"}` in order (and the phase's callback
        summaries, e.g. IDW's iterations).
    """
    config = config or RunConfig()
    trainer = ENCODERS.get(config.model.encoder).metadata.get("trainer")
    if trainer is not None:  # a method with its own training path (FELRec)
        if data is not None or phases is not None:
            raise ValueError(f"encoder {config.model.encoder!r} trains through "
                             f"{trainer}; it takes neither data= nor phases=.")
        check_model_config(config.model)
        return importlib.import_module(trainer).train(
            config, output_dir=output_dir, run_name=run_name, export=export,
            verbose=verbose, interactions=interactions, callbacks=callbacks)
    check_model_config(config.model)
    check_train_config(config.train)
    if phases is not None:
        if config.train.weighting != "none":
            raise ValueError(f"phases were given and train.weighting is "
                             f"{config.train.weighting!r}; pass one or the other (the "
                             "weighting builds its own phases).")
        phases = list(phases)
        if not phases:
            raise ValueError("phases is empty; expected at least one Phase.")
    run_dir = new_run_dir(output_dir, run_name) if export else None
    started = time.perf_counter()
    tf.keras.utils.set_random_seed(config.train.seed)
    data = data or prepare_data(config.data, interactions=interactions)
    if phases is None:
        phases = list(WEIGHTINGS.get(config.train.weighting).target(config, data))
    strategy = get_strategy(config.train.strategy)
    policy = tf.keras.mixed_precision.global_policy()
    if config.train.mixed_precision:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    backup = None
    try:
        with strategy.scope(), checkpointable_random():
            model = build_model(config.model, data.vocab.size, config.data.max_len,
                                data.sampling_probability, item_features=data.item_features,
                                item_counts=data.item_counts,
                                trained_positions=trained_positions(config.data),
                                user_ids=_users_if_needed(config, data))
            # Every layer (and dropout generator) now, so a backup's checkpoint covers
            # them and a resumed run restores into them before its first step.
            build_towers(model, config.data.max_len)
            generators = random_generators(model)
            # Inside the scope: it may build the item tower's variables (IDW).
            check_trainable(model, phases)
        model.cross_replica_negatives = config.train.cross_replica_negatives
        if config.train.backup_dir:
            backup = TrainingBackup(config.train.backup_dir, config.to_dict(),
                                    chief=is_chief(strategy))
            backup.generators = generators
        history, done = run_schedule(model, strategy, config, data, phases, callbacks,
                                     verbose, backup)
    finally:
        tf.keras.mixed_precision.set_global_policy(policy)
    train_seconds = time.perf_counter() - started
    ranking_history = config.train.full_ranking_history
    metrics = evaluate_model(model, data, "test", ks=config.train.eval_ks,
                             num_negatives=config.train.num_negatives, seed=config.train.seed,
                             chunks=config.train.eval_chunks, history=ranking_history)
    if data.cold is not None and len(data.cold):
        # Items held out of training entirely (DataConfig.cold_items).
        cold = evaluate_model(model, data, "cold", ks=config.train.eval_ks,
                              num_negatives=config.train.num_negatives, seed=config.train.seed,
                              history=ranking_history)
        metrics.update(overall_metrics(cold, "cold/"))
    if data.test_unseen is not None and data.test_unseen.any():
        # The session task's next-unseen-item targets (ProxySR §4.1).
        unseen = evaluate_model(model, data, "test_unseen", ks=config.train.eval_ks,
                                num_negatives=config.train.num_negatives,
                                seed=config.train.seed, history=ranking_history)
        metrics.update(overall_metrics(unseen, "unseen/"))
    if data.item_clusters is not None:
        # Clustering quality of the item vectors against the synthetic ground truth
        # (IDW §3.2, mean silhouette).
        metrics["items/silhouette"] = silhouette_score(
            model.item_embeddings(data.vocab.size)[2:], data.item_clusters[2:],
            seed=config.train.seed)
    if run_dir is not None:
        results = {"test": metrics, "data": data.summary(), "history": history,
                   "phases": done, "epochs": sum(p["epochs"] for p in done),
                   "train_seconds": round(train_seconds, 2), "method": method_summary(config)}
        if backup is not None and backup.resuming:
            results["resumed"] = backup.summary()
        stats = {"counts": data.item_counts}
        if data.item_clusters is not None:
            stats["clusters"] = data.item_clusters
        state = _run_state(phases)
        if is_chief(strategy):
            export_run(model, run_dir, vocab=data.vocab, config=config, metrics=results,
                       item_stats=stats, state=state, item_features=data.item_features,
                       tuning_queries=_tuning_queries(model, data, config))
        else:
            # Non-chief workers take part in the same steps but write to a scratch
            # folder that is thrown away, as Keras's multi-worker guide does.
            with tempfile.TemporaryDirectory() as scratch:
                export_run(model, Path(scratch) / "run", vocab=data.vocab, config=config,
                           metrics=results, item_stats=stats, state=state,
                           item_features=data.item_features)
            run_dir = None
    if backup is not None:  # the run is exported (or was not to be): nothing to resume
        backup.remove()
    return TrainResult(model, data, history, metrics, run_dir,
                       time.perf_counter() - started, done)


def new_run_dir(output_dir: Union[str, Path], run_name: Optional[str] = None) -> Path:
    """`output_dir/run_name` (default a timestamped name) for a run to be exported;
    FileExistsError if it exists (a finished run is never overwritten)."""
    run_dir = Path(output_dir) / (run_name or _run_name())
    if run_dir.exists():
        raise FileExistsError(f"Run folder {str(run_dir)!r} exists; choose another run "
                              "name or remove it.")
    return run_dir


def _tuning_queries(model: RetrievalModel, data: PreparedData, config: RunConfig
                    ) -> Optional[Dict[str, np.ndarray]]:
    """Query-tower inputs of up to `export.scann_tuning_queries` validation examples
    (a fixed random sample), on which export tunes ScaNN; None when it does not."""
    examples = data.split.validation
    if not config.export.tunes_scann() or len(examples) == 0:
        return None
    rng = np.random.default_rng(config.train.seed)
    rows = np.sort(rng.permutation(len(examples))[:config.export.scann_tuning_queries])
    features = {"history": examples.history[rows].astype(np.int32)}
    if "user_id" in model.query_tower.context_specs:
        features["user_id"] = examples.owner[rows].astype(np.int64)
    return features


def _users_if_needed(config: RunConfig, data: PreparedData) -> Optional[np.ndarray]:
    """The raw ids of the users a user embedding learns (RAM's u, ProxySR's eq. 10
    bias): the training examples' owners, less the anonymous (< 0); None when the
    encoder has no user embedding."""
    if not ENCODERS.get(config.model.encoder).metadata.get("user_embedding"):
        return None
    owners = np.unique(data.split.train.owner.astype(np.int64))
    owners = owners[owners >= 0]
    if len(owners) == 0:
        raise ValueError(f"--encoder {config.model.encoder} learns a per-user embedding, "
                         "but no training example has a known user (all anonymous).")
    return owners


def method_summary(config: RunConfig) -> Dict[str, Any]:
    """Which method a run trained (for `metrics.json`): encoder, item tower,
    extraction, M, scorer, loss, item norm and weighting."""
    model = config.model
    return {"encoder": model.encoder, "item_tower": model.item_tower,
            "extraction": model.extraction,
            "num_interests": model.num_interests if model.extraction == "mur" else 1,
            "scorer": resolve_scorer(model), "loss": model.loss,
            "item_norm": model.item_norm, "weighting": config.train.weighting}


def _run_state(phases: Sequence[Phase]) -> Dict[str, Dict[str, np.ndarray]]:
    """The arrays that phases' callbacks save with the run (`run_state()`)."""
    state: Dict[str, Dict[str, np.ndarray]] = {}
    for phase in phases:
        for callback in phase.callbacks:
            if hasattr(callback, "run_state"):
                state.update(callback.run_state())
    return state


def restore_model(run_dir: Union[str, Path]) -> Tuple[RetrievalModel, Vocabulary, RunConfig]:
    """Rebuilds a run's Keras model from its `config.json`, `vocabulary.json` and
    `weights/` checkpoint (dispatching on the config's model kind); the data is not
    needed (the logQ and loss-weight tables are checkpointed).

    Returns:
        `(model, vocabulary, config)`.
    """
    run_dir = Path(run_dir)
    # Only what the model is rebuilt from is needed, so an incomplete or older export
    # (missing SavedModels, outdated manifest) can be repaired by re-exporting.
    needed = ("config.json", "vocabulary.json", "weights/checkpoint")
    missing = [name for name in needed if not (run_dir / name).exists()]
    if missing:
        raise RunFormatError(f"Cannot rebuild a model from {str(run_dir)!r}: missing "
                             f"{missing}; expected a run folder written by `tfrec-proxy train`.")
    config = RunConfig.from_json(run_dir / "config.json")
    vocab = Vocabulary.load(run_dir / "vocabulary.json")
    users = None
    if (run_dir / USERS_FILE).exists():
        users = json.loads((run_dir / USERS_FILE).read_text())["ids"]
    model = build_model(config.model, vocab.size, config.data.max_len,
                        item_features=read_item_features(run_dir),
                        trained_positions=trained_positions(config.data), user_ids=users)
    build_towers(model, config.data.max_len)  # so the checkpoint restores into them now
    status = model.load_weights(str(run_dir / "weights" / "model"))
    status.expect_partial().assert_existing_objects_matched()
    return model, vocab, config


def read_item_features(run_dir: Union[str, Path]) -> Optional[ItemFeatures]:
    """A run folder's item features (`item_features.json` / `.npz`), or None."""
    run_dir = Path(run_dir)
    return ItemFeatures.load(run_dir) if (run_dir / SPEC_FILE).exists() else None


def format_metrics(metrics: Dict[str, Any]) -> str:
    """Pretty JSON for printing results."""
    return json.dumps(metrics, indent=2, sort_keys=True)

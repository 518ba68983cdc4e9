"""Runs a training schedule: the phases' `fit` calls in order, with the time budget
and, when the run has a backup folder, a backup after every epoch and phase and the
resume from one (`tfrec_proxy.backup`). `tfrec_proxy.training.train` calls
`run_schedule`.
"""

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from tfrec_proxy._tf import tf
from tfrec_proxy.backup import EpochBackup, TrainingBackup, keyed, state_of
from tfrec_proxy.callbacks import TimeBudget
from tfrec_proxy.config import RunConfig
from tfrec_proxy.data import EpochShuffled, PreparedData, make_dataset, sequences_per_batch
from tfrec_proxy.data.datasets import training_tensors
from tfrec_proxy.evaluation import SampledRankingCallback
from tfrec_proxy.models import RetrievalModel, eval_batch_size
from tfrec_proxy.phases import Phase

History = Dict[str, List[float]]
__all__ = ["build_towers", "check_trainable", "concat_history", "run_schedule", "sublayer"]


def sublayer(model: RetrievalModel, path: str) -> tf.keras.layers.Layer:
    """The sub-layer at attribute path `path` (e.g. `"query_tower.encoder"`)."""
    layer: Any = model
    for part in path.split("."):
        if not hasattr(layer, part):
            raise ValueError(f"Cannot freeze {path!r}: the model has no {part!r} there; "
                             "expected a path such as 'candidate_tower' or "
                             "'query_tower.encoder'.")
        layer = getattr(layer, part)
    return layer


def build_towers(model: RetrievalModel, max_len: int) -> None:
    """Creates both towers' variables (one call each on padding)."""
    model.query_tower(model.sample_query_features(tf.zeros([1, max_len], tf.int32)))
    model.candidate_tower(model.candidate_features(tf.zeros([1], tf.int32)))


def check_trainable(model: RetrievalModel, phases: Sequence[Phase]) -> None:
    """Fails before training when a phase must train a sub-layer that is frozen in
    that phase, not trainable or without trainable weights."""
    for phase in phases:
        for path in phase.needs_trainable:
            layer = sublayer(model, path)
            if path in phase.frozen or not layer.trainable:
                raise ValueError(f"Phase {phase.name!r} must train {path!r}, but it is "
                                 "frozen (IDW re-weights by the item tower's outputs, so it "
                                 "needs a trainable item tower).")
            if path == "candidate_tower":  # build its variables to count them
                layer(model.candidate_features(tf.constant([2], tf.int32)))
            if not layer.trainable_weights:
                raise ValueError(f"Phase {phase.name!r} must train {path!r}, but it has no "
                                 "trainable weights.")


def _datasets(config: RunConfig, data: PreparedData, model: RetrievalModel,
              global_batch: int) -> Tuple[EpochShuffled, tf.data.Dataset]:
    users = "user_id" in model.query_tower.context_specs
    if config.model.all_positions and model.query_tower.supports_all_positions:
        sequences = data.split.train_sequences
        per_batch = max(sequences_per_batch(sequences, global_batch),
                        config.train.min_sequences_per_batch)
        stream = EpochShuffled(training_tensors(sequences, users), per_batch,
                               seed=config.train.seed)
    else:
        stream = EpochShuffled(training_tensors(data.split.train, users), global_batch,
                               seed=config.train.seed)
    # Validation examples are single histories of width L, not sequences of targets:
    # batches are bounded in history positions (`eval_batch_size`), not targets.
    width = data.split.validation.history.shape[-1]
    return stream, make_dataset(data.split.validation,
                                min(global_batch, eval_batch_size(width, global_batch)),
                                with_users=users)


def _phase_callbacks(config: RunConfig, data: PreparedData, phase: Phase,
                     extra: Sequence[tf.keras.callbacks.Callback], verbose: int,
                     model: RetrievalModel) -> List[tf.keras.callbacks.Callback]:
    train = config.train
    callbacks: List[tf.keras.callbacks.Callback] = [SampledRankingCallback(
        data, "validation", ks=train.eval_ks, num_negatives=train.num_negatives,
        seed=train.seed, chunks=train.eval_chunks)]
    if phase.early_stopping and train.early_stopping_patience > 0:
        callbacks.append(tf.keras.callbacks.EarlyStopping(
            monitor=train.monitor, mode="min" if train.monitor.endswith("loss") else "max",
            patience=train.early_stopping_patience, restore_best_weights=True,
            verbose=verbose))
    if train.tensorboard_dir:
        callbacks.append(tf.keras.callbacks.TensorBoard(
            log_dir=str(Path(train.tensorboard_dir) / phase.name)
            if phase.name != "train" else train.tensorboard_dir))
    tower = getattr(model, "query_tower", None)
    own = list(tower.training_callbacks()) if hasattr(tower, "training_callbacks") else []
    return callbacks + own + list(extra) + list(phase.callbacks)


def _append(history: History, done: List[Dict[str, Any]], record: Dict[str, Any],
            phase_history: Dict[str, Sequence[float]]) -> None:
    """Adds a finished phase: its record, and its epochs to the run's history (NaN
    where a phase did not log a key)."""
    offset = sum(p["epochs"] for p in done)
    epochs = record["epochs"]
    for key, values in phase_history.items():
        history.setdefault(key, [math.nan] * offset).extend(float(v) for v in values)
    for column in history.values():
        column.extend([math.nan] * (offset + epochs - len(column)))
    done.append(record)


def concat_history(before: History, after: Dict[str, Sequence[float]]) -> History:
    """The epochs of a resumed phase's earlier processes, then this one's."""
    before_len = len(next(iter(before.values()), []))
    after_len = len(next(iter(after.values()), []))
    joined: History = {}
    for key in set(before) | set(after):
        joined[key] = ([*before.get(key, [math.nan] * before_len)]
                       + [float(v) for v in after.get(key, [math.nan] * after_len)])
    return joined


def run_schedule(model: RetrievalModel, strategy: tf.distribute.Strategy,
                 config: RunConfig, data: PreparedData, phases: Sequence[Phase],
                 callbacks: Sequence[tf.keras.callbacks.Callback],
                 verbose: Union[int, str], backup: Optional[TrainingBackup] = None
                 ) -> Tuple[History, List[Dict[str, Any]]]:
    """Fits the phases in order (see `tfrec_proxy.training.train`).

    Returns:
        `(history, phases)`: the epochs of every phase concatenated, and per phase
        `{"name", "epochs", "seconds", ...summaries}`.
    """
    global_batch = config.train.batch_size * strategy.num_replicas_in_sync
    stream, validation_ds = _datasets(config, data, model, global_batch)
    started = time.perf_counter()
    earlier = backup.earlier_seconds if backup else 0.0

    def seconds() -> float:
        return earlier + time.perf_counter() - started

    budget = None
    if config.train.time_budget_minutes is not None:  # the clock starts with fit
        budget = TimeBudget(started + 60.0 * config.train.time_budget_minutes - earlier)
    schedule_callbacks: Dict[str, Any] = {}
    for index, phase in enumerate(phases):
        schedule_callbacks.update(keyed(phase.callbacks, f"phase{index}"))
    finished = backup.finished_phases() if backup else []
    if backup is not None and backup.resuming:
        if verbose != 0:
            print(f"Resuming from the backup in {str(backup.directory)!r}: "
                  f"{backup.summary()}", flush=True)
        backup.restore_states(schedule_callbacks)
        if backup.resume_point(len(finished)) is None:  # stopped at a phase boundary
            backup.restore_model(model)  # (mid-phase: with the optimizer, later)
    history: History = {}
    done: List[Dict[str, Any]] = []
    saved: List[Dict[str, Any]] = []  # done, with histories, for the backup
    for index, phase in enumerate(phases):
        if index < len(finished):  # finished by an earlier process
            _append(history, done, finished[index]["record"], finished[index]["history"])
            saved.append(finished[index])
            continue
        point = backup.resume_point(index) if backup else None
        phase_started = time.perf_counter()
        out_of_time = budget is not None and budget.expired
        run_it = not out_of_time and (point is not None or phase.prepare is None
                                      or phase.prepare(model, data) is not False)
        fitted: Dict[str, List[float]] = {}
        prior = backup.phase_history() if point is not None else {}
        if run_it:
            extra = [*callbacks, *([budget] if budget else [])]
            fit_callbacks = _phase_callbacks(config, data, phase, extra,
                                             int(verbose != 0), model)
            if backup is not None:
                fit_callbacks.append(EpochBackup(
                    backup, index, keyed(fit_callbacks, "fit"), schedule_callbacks, saved,
                    prior, resume=point is not None, seconds=seconds))
            fitted = _fit_phase(model, strategy, config, data, phase, stream, index,
                                validation_ds, fit_callbacks, verbose, point,
                                backup.restore_model if backup is not None else None)
        phase_history = concat_history(prior, fitted)
        record = {"name": phase.name, "epochs": len(phase_history.get("loss", [])),
                  "seconds": round(time.perf_counter() - phase_started, 2),
                  **phase.summary()}
        if out_of_time:
            record["time_budget"] = "skipped"
        elif budget is not None and budget.stopped_at is not None:
            record["time_budget"] = "stopped"
        _append(history, done, record, phase_history)
        saved.append({"record": record, "history": phase_history})
        if backup is not None:
            backup.save(model, phase=index + 1, epoch=0, stopped=False, history={},
                        done=saved, optimizer=False, train_seconds=seconds(),
                        states={key: state_of(c) for key, c in schedule_callbacks.items()})
    return history, done


def make_optimizer(name: str, learning_rate: float) -> tf.keras.optimizers.Optimizer:
    """A fresh optimizer for one phase: `"adam"` or `"sgd"` (momentum 0.9)."""
    if name == "sgd":
        return tf.keras.optimizers.SGD(learning_rate, momentum=0.9)
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate)
    raise ValueError(f"Unknown optimizer {name!r}; expected 'adam' or 'sgd'.")


def _fit_phase(model: RetrievalModel, strategy: tf.distribute.Strategy, config: RunConfig,
               data: PreparedData, phase: Phase, stream: EpochShuffled, index: int,
               validation_ds: tf.data.Dataset,
               callbacks: Sequence[tf.keras.callbacks.Callback],
               verbose: Union[int, str], point: Optional[Tuple[int, bool]],
               restore: Optional[Callable[[Any], None]]) -> Dict[str, List[float]]:
    """Freezes, sets weights, compiles (a fresh optimizer) and fits one phase; with
    `point = (epochs done, stop requested)` the optimizer and model are restored
    and `fit` continues at that epoch (none more when a stop was requested)."""
    frozen = [sublayer(model, path) for path in phase.frozen]
    if phase.item_loss_weights is not None:
        weights = phase.item_loss_weights
        model.set_item_loss_weights(weights(model, data) if callable(weights) else weights)
    for layer in frozen:
        layer.trainable = False
    epochs = phase.epochs or config.train.epochs
    first = 0
    try:
        with strategy.scope():
            model.compile(optimizer=make_optimizer(
                config.train.optimizer, phase.learning_rate or config.train.learning_rate),
                jit_compile=config.train.jit_compile)
            if point is not None and restore is not None:
                model.optimizer.build(model.trainable_variables)
                restore(model)
                first = point[0]
                if point[1]:  # the last backed-up epoch asked to stop
                    epochs = first
        fitted = model.fit(
            stream.epochs(first, epochs, stream=index), validation_data=validation_ds,
            epochs=epochs, initial_epoch=first, steps_per_epoch=stream.steps_per_epoch,
            callbacks=list(callbacks), verbose=verbose)
    finally:
        for layer in frozen:
            layer.trainable = True
    return fitted.history

"""FELRec's training path (Weimann & Conrad §2.4-§2.7, §3): `train` for `--encoder felrec`.

`tfrec_proxy.training.train` hands configs with `model.encoder = "felrec"` to `train`
here. The steps:

1. data: `prepare_chronological` (one time line, 80/10/10, partitions, leak-free
   histories of `model.felrec.history_len` entities);
2. model: a `FELRecModel` (variant from `model.loss`: `"infonce"` = FELRec-Q,
   `"byol"` = FELRec-P) whose cache holds a row for every user and item of the time
   line (rows stay empty until the model writes them, so no capacity is grown
   mid-run and checkpoints keep one shape);
3. Keras `fit` over the training interactions in time order, never shuffled, with
   `ResetCache` (an empty cache at every epoch start, §2.4), the learning-rate
   schedule (SGD + cosine after warm-up, §2.6), `OnlineValidation` (validation
   interactions scored online after every epoch, `val_normalized_rank` /
   `val_hr@10` in the history; best epoch restored at the end, §3.3), `CacheSpread`
   (`cache_user_cosine` / `cache_item_cosine`: how collapsed the cache is) and the
   caller's callbacks;
4. test: the cache kept, the test interactions scored online per partition
   (`tfrec_proxy.felrec_evaluation`); with `model.felrec.eval_reset` also the
   paper's "reset" mode (§4.4, `reset/...`);
5. export: the run folder with the cache (`tfrec_proxy.felrec_export`).

The paper's "zero-shot" mode (§4.4: a model trained on one dataset represents
another from an empty cache) is `zero_shot` (CLI: `tfrec-proxy evaluate --run DIR
--data-path OTHER`).
"""

import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd

from tfrec_proxy._tf import tf
from tfrec_proxy.backup import (EpochBackup, TrainingBackup, checkpointable_random, keyed,
                                random_generators, state_of)
from tfrec_proxy.callbacks import TimeBudget
from tfrec_proxy.config import DataConfig, RunConfig
from tfrec_proxy.data.felrec_data import ChronologicalData, prepare_chronological
from tfrec_proxy.felrec import CacheSpread, FELRecModel, ResetCache
from tfrec_proxy.felrec_evaluation import OnlineEvaluator, OnlineValidation, summarize
from tfrec_proxy.felrec_losses import loss_variant
from tfrec_proxy.layers.felrec import NORMALIZATIONS
from tfrec_proxy.schedule import concat_history

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("cosine", "constant")
ETA_MIN = 1e-7  # the reference schedule's floor


def check_felrec_config(config: RunConfig) -> str:
    """Fails fast on settings FELRec cannot use; returns the variant ("q" or "p").

    Raises:
        ValueError: naming the bad setting and what was expected.
    """
    variant = loss_variant(config.model.loss)
    if config.data.split != "chronological":
        raise ValueError(f"--encoder felrec trains on the chronological protocol "
                         f"(§3.1): set --split chronological (DataConfig.split); got "
                         f"{config.data.split!r}.")
    felrec, train = config.model.felrec, config.train
    for name in ("dim", "num_layers", "num_heads", "ff_dim", "queue_size", "history_len",
                 "eval_negatives", "hr_k"):
        value = getattr(felrec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model.felrec.{name} must be an integer >= 1, got {value!r}.")
    if felrec.dim % felrec.num_heads or felrec.dim % 2:
        raise ValueError(f"model.felrec.dim={felrec.dim} must be even and divisible by "
                         f"num_heads={felrec.num_heads}.")
    if not 0.0 <= felrec.dropout < 1.0:
        raise ValueError(f"model.felrec.dropout must be in [0, 1), got {felrec.dropout!r}.")
    if not felrec.temperature > 0:
        raise ValueError(f"model.felrec.temperature must be > 0, got "
                         f"{felrec.temperature!r}.")
    for name, value, allowed in (("normalization", felrec.normalization, NORMALIZATIONS),
                                 ("optimizer", felrec.optimizer, OPTIMIZERS),
                                 ("lr_schedule", felrec.lr_schedule, LR_SCHEDULES)):
        if value not in allowed:
            raise ValueError(f"model.felrec.{name} must be one of {allowed}, got {value!r}.")
    if isinstance(felrec.warmup_epochs, bool) or felrec.warmup_epochs < 0:
        raise ValueError(f"model.felrec.warmup_epochs must be >= 0, got "
                         f"{felrec.warmup_epochs!r}.")
    unsupported = {"train.weighting": (train.weighting, "none"),
                   "train.strategy": (train.strategy, "default"),
                   "train.mixed_precision": (train.mixed_precision, False)}
    for name, (value, expected) in unsupported.items():
        if value != expected:
            raise ValueError(f"--encoder felrec does not support {name}={value!r}; expected "
                             f"{expected!r}.")
    if train.time_budget_minutes is not None and not train.time_budget_minutes > 0:
        raise ValueError(f"time_budget_minutes must be > 0 (or None), got "
                         f"{train.time_budget_minutes}.")
    return variant


def build_felrec_model(config: RunConfig, num_users: int, num_items: int) -> FELRecModel:
    """The `FELRecModel` of `config` with a cache of `num_users` x `num_items` rows."""
    felrec = config.model.felrec
    return FELRecModel(
        num_users, num_items, variant=loss_variant(config.model.loss), dim=felrec.dim,
        num_layers=felrec.num_layers, num_heads=felrec.num_heads, ff_dim=felrec.ff_dim,
        dropout=felrec.dropout, num_positions=max(512, felrec.history_len),
        queue_size=felrec.queue_size, temperature=felrec.temperature,
        share_heads=felrec.share_heads, normalization=felrec.normalization,
        remove_queue_hits=felrec.remove_queue_hits, padding_slot=felrec.padding_slot,
        name="felrec")


def build_variables(model: FELRecModel) -> None:
    """Creates every weight (encoder, heads, BatchNorm statistics, and the optimizer's
    slots when compiled) with one inference call on a padding-only probe, so `fit`
    traces its step once and checkpoints restore into existing variables."""
    probe = {"user": tf.zeros([1], tf.int32), "item": tf.zeros([1], tf.int32),
             "user_history": -tf.ones([1, 1], tf.int32),
             "item_history": -tf.ones([1, 1], tf.int32)}
    model.loss_from_representations(*model.encode(probe), training=False, batch=probe)
    if model.optimizer is not None:
        model.optimizer.build(model.trainable_variables)


def learning_rate(epoch: int, base: float, epochs: int, warmup: int,
                  schedule: str = "cosine") -> float:
    """The reference code's per-epoch rate: linear warm-up from `ETA_MIN` over
    `warmup` epochs, then cosine decay to `ETA_MIN` at the last epoch (§2.6)."""
    if schedule == "constant":
        return base
    if epoch < warmup:
        return ETA_MIN + (base - ETA_MIN) * epoch / warmup
    span = max(1, epochs - warmup - 1)
    return ETA_MIN + 0.5 * (base - ETA_MIN) * (1.0 + math.cos(math.pi * (epoch - warmup)
                                                              / span))


def _optimizer(config: RunConfig) -> tf.keras.optimizers.Optimizer:
    rate = config.train.learning_rate
    if config.model.felrec.optimizer == "sgd":  # clipvalue: the reference clips to 1
        return tf.keras.optimizers.SGD(rate, momentum=0.9, clipvalue=1.0)
    return tf.keras.optimizers.Adam(rate, clipvalue=1.0)


def parameter_counts(model: FELRecModel) -> Dict[str, int]:
    """Trainable parameters: `encoder`, `heads` (projection/prediction MLPs) and
    `total`; none of them depends on the number of users or items."""
    def count(variables: Any) -> int:
        return int(sum(int(np.prod(v.shape)) for v in {id(v): v for v in variables}.values()))

    total = count(model.trainable_variables)
    encoder = count(model.encoder.trainable_variables)
    return {"encoder": encoder, "heads": total - encoder, "total": total}


def dataset(data: ChronologicalData, name: str, batch_size: int) -> tf.data.Dataset:
    """The `name` interactions in time order, batched, never shuffled."""
    features = data.split.part(name).features()
    return tf.data.Dataset.from_tensor_slices(features).batch(batch_size)


def evaluate_test(model: FELRecModel, data: ChronologicalData, config: RunConfig,
                  reset: bool = False, sign: int = 1,
                  evaluator: Optional[OnlineEvaluator] = None) -> Dict[str, float]:
    """Test metrics of the online pass (the cache as training and validation left it)
    or, with `reset`, of the reset mode (§4.4): empty cache, training and validation
    replayed by the trained encoder, then the test pass. The reset mode leaves the
    cache as it found it. Scores are `sign * cosine` (the validation's direction)."""
    felrec = config.model.felrec
    evaluator = evaluator or OnlineEvaluator(model, config.train.batch_size,
                                             felrec.eval_negatives, felrec.hr_k,
                                             config.train.seed)
    split = data.split
    if not reset:
        return summarize(evaluator.run(split.test, sign), split.test, felrec.hr_k)
    saved = model.cache.get_weights()
    try:
        model.reset_cache()
        evaluator.replay(split.train)
        evaluator.replay(split.validation)
        return summarize(evaluator.run(split.test, sign), split.test, felrec.hr_k,
                         "reset/")
    finally:
        model.cache.set_weights(saved)


def train(config: RunConfig, *, output_dir: Union[str, Path] = "saved_models",
          run_name: Optional[str] = None, export: bool = True,
          verbose: Union[int, str] = "auto", interactions: Optional[pd.DataFrame] = None,
          callbacks: Sequence[tf.keras.callbacks.Callback] = ()) -> Any:
    """Trains, evaluates and (optionally) exports FELRec (`training.train` calls it).

    Args:
        config: Run settings (`model.encoder = "felrec"`, `model.loss` "infonce" or
            "byol", `data.split = "chronological"`, `model.felrec` sizes).
        output_dir, run_name, export, verbose, callbacks: As `training.train`.
        interactions: The frame of `data.source = "dataframe"`.

    Returns:
        A `TrainResult` (`model`: the `FELRecModel`, `data`: `ChronologicalData`,
        `metrics`: test metrics by partition, `history`: loss and validation
        metrics per epoch).
    """
    from tfrec_proxy.felrec_export import export_felrec_run, serving_state
    from tfrec_proxy.training import TrainResult, new_run_dir

    check_felrec_config(config)
    run_dir = new_run_dir(output_dir, run_name) if export else None
    started = time.perf_counter()
    tf.keras.utils.set_random_seed(config.train.seed)
    felrec, train_config = config.model.felrec, config.train
    data = prepare_chronological(config.data, interactions, felrec.history_len)
    split = data.split
    with checkpointable_random():
        model = build_felrec_model(config, split.num_users, split.num_items)
        model.compile(optimizer=_optimizer(config), jit_compile=train_config.jit_compile)
        build_variables(model)
        generators = random_generators(model)
    epochs = train_config.epochs
    warmup = min(felrec.warmup_epochs, max(epochs - 1, 0))
    evaluator = OnlineEvaluator(model, train_config.batch_size, felrec.eval_negatives,
                                felrec.hr_k, train_config.seed)
    validation = OnlineValidation(evaluator, split.validation,
                                  patience=train_config.early_stopping_patience)
    schedule = tf.keras.callbacks.LearningRateScheduler(
        lambda epoch, _: learning_rate(epoch, train_config.learning_rate, epochs, warmup,
                                       felrec.lr_schedule))
    backup = None
    if train_config.backup_dir:
        backup = TrainingBackup(train_config.backup_dir, config.to_dict())
        backup.generators = generators
    earlier = backup.earlier_seconds if backup else 0.0
    extra: List[tf.keras.callbacks.Callback] = []
    if train_config.tensorboard_dir:
        extra.append(tf.keras.callbacks.TensorBoard(log_dir=train_config.tensorboard_dir))
    if train_config.time_budget_minutes is not None:
        extra.append(TimeBudget(time.perf_counter() - earlier
                                + 60.0 * train_config.time_budget_minutes))
    fit_callbacks = [ResetCache(), schedule, CacheSpread(seed=train_config.seed), validation,
                     *extra, *callbacks]
    history = _fit(model, data, config, fit_callbacks, verbose, backup,
                   lambda: earlier + time.perf_counter() - started)
    train_seconds = time.perf_counter() - started
    sign = validation.sign
    metrics = evaluate_test(model, data, config, sign=sign, evaluator=evaluator)
    if felrec.eval_reset:
        metrics.update(evaluate_test(model, data, config, reset=True, sign=sign,
                                     evaluator=evaluator))
    epochs_run = len(history.get("loss", []))
    phases = [{"name": "train", "epochs": epochs_run, "seconds": round(train_seconds, 2),
               "best_epoch": None if validation.best_epoch is None
               else validation.best_epoch + 1, "warmup_epochs": warmup,
               "score_sign": sign}]
    if run_dir is not None:
        results = {"test": metrics, "validation": validation.best_metrics,
                   "data": data.summary(), "history": history,
                   "phases": phases, "epochs": epochs_run,
                   "train_seconds": round(train_seconds, 2),
                   "method": method_summary(config)}
        if backup is not None and backup.resuming:
            results["resumed"] = backup.summary()
        export_felrec_run(model, run_dir, config=config,
                          state=serving_state(data, sign), metrics=results)
    if backup is not None:  # exported (or not to be): nothing left to resume
        backup.remove()
    return TrainResult(model, data, history, metrics, run_dir,
                       time.perf_counter() - started, phases)


def _fit(model: FELRecModel, data: ChronologicalData, config: RunConfig,
         callbacks: List[tf.keras.callbacks.Callback], verbose: Union[int, str],
         backup: Optional[TrainingBackup], seconds: Any) -> Dict[str, List[float]]:
    """Keras `fit` over the training interactions in time order; with a backup,
    after every epoch and at the end (`tfrec_proxy.backup`), resuming from it."""
    epochs, first = config.train.epochs, 0
    states = keyed(callbacks, "fit")
    prior: Dict[str, List[float]] = {}
    if backup is not None and backup.resuming:
        if verbose != 0:
            print(f"Resuming from the backup in {str(backup.directory)!r}: "
                  f"{backup.summary()}", flush=True)
        backup.restore_model(model)
        backup.restore_states(states)
        finished = backup.finished_phases()
        if finished:  # trained by an earlier process (which did not export)
            return {k: list(v) for k, v in finished[0]["history"].items()}
        point = backup.resume_point(0)
        if point is not None:
            first, prior = point[0], backup.phase_history()
            epochs = first if point[1] else epochs  # its last epoch asked to stop
    if backup is not None:
        callbacks = [*callbacks, EpochBackup(backup, 0, states, {}, [], prior,
                                             resume=first > 0, seconds=seconds)]
    fitted = model.fit(dataset(data, "train", config.train.batch_size), epochs=epochs,
                       initial_epoch=first, shuffle=False, verbose=verbose,
                       callbacks=callbacks)
    history = concat_history(prior, fitted.history)
    if backup is not None:
        record = {"name": "train", "epochs": len(history.get("loss", []))}
        backup.save(model, phase=1, epoch=0, stopped=False, history={},
                    done=[{"record": record, "history": history}], optimizer=False,
                    states={key: state_of(c) for key, c in states.items()},
                    train_seconds=seconds())
    return history


def method_summary(config: RunConfig) -> Dict[str, Any]:
    """Which method a run trained (`metrics.json`'s `method`)."""
    felrec = config.model.felrec
    return {"encoder": "felrec", "variant": f"FELRec-{loss_variant(config.model.loss).upper()}",
            "loss": config.model.loss, "scorer": "cosine", "dim": felrec.dim,
            "num_layers": felrec.num_layers, "history_len": felrec.history_len,
            "optimizer": felrec.optimizer, "lr_schedule": felrec.lr_schedule}


def zero_shot(run_dir: Union[str, Path], data: DataConfig,
              interactions: Optional[pd.DataFrame] = None, *, split: str = "test",
              prefix: str = "zero_shot/") -> Dict[str, float]:
    """The paper's zero-shot mode (§4.4, FELRec-Q-zero): a trained run's encoder
    represents another dataset from an empty cache.

    The data is split chronologically (80/10/10); the encoder replays the
    interactions before `split` (inference, writing a fresh cache) and is scored
    online on `split`, per partition (relative to that data's own training part).
    On the run's own data this is the reset mode (§4.4, FELRec-Q-reset; `tfrec-proxy
    evaluate --run DIR`). Nothing in the run changes.

    Args:
        run_dir: A FELRec run folder.
        data: The data (`split` is forced to "chronological").
        interactions: Its frame when `data.source = "dataframe"`.
        split: "test" (training and validation replayed) or "validation".
        prefix: Metric name prefix.

    Returns:
        `{prefix}{partition}/normalized_rank`, `/hr@k`, `/count`.
    """
    import dataclasses

    from tfrec_proxy.felrec_export import restore_felrec_model

    if split not in ("validation", "test"):
        raise ValueError(f"split must be 'validation' or 'test', got {split!r}.")
    model, config, state = restore_felrec_model(run_dir)
    other = prepare_chronological(dataclasses.replace(data, split="chronological"),
                                  interactions, config.model.felrec.history_len)
    model.ensure_capacity(other.split.num_users, other.split.num_items)
    model.reset_cache()
    felrec = config.model.felrec
    evaluator = OnlineEvaluator(model, config.train.batch_size, felrec.eval_negatives,
                                felrec.hr_k, config.train.seed)
    evaluator.replay(other.split.train)
    if split == "test":
        evaluator.replay(other.split.validation)
    part = other.split.part(split)
    return summarize(evaluator.run(part, state.score_sign), part, felrec.hr_k, prefix)

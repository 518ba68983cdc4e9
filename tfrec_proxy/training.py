"""Training pipeline: prepare data, build the model under a strategy, `fit`, evaluate,
export. `tfrec-proxy train` is a thin wrapper around `train`.
"""

import dataclasses
import datetime
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from tfrec_proxy._tf import tf
from tfrec_proxy.config import RunConfig, TrainConfig
from tfrec_proxy.data import PreparedData, Vocabulary, make_dataset, prepare_data
from tfrec_proxy.evaluation import SampledRankingCallback, evaluate_model
from tfrec_proxy.export import RunFormatError, export_run
from tfrec_proxy.models import RetrievalModel, build_model

STRATEGIES = ("default", "mirrored", "multi_worker")


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


@dataclasses.dataclass
class TrainResult:
    """What `train` produced."""

    model: RetrievalModel
    data: PreparedData
    history: Dict[str, List[float]]
    metrics: Dict[str, float]
    run_dir: Optional[Path]
    seconds: float


def _check_monitor(train: TrainConfig) -> None:
    """Fails fast on a monitor no callback logs (Keras would only warn, never stop)."""
    monitors = ["val_loss"] + [f"val_{name}@{k}" for k in train.eval_ks
                               for name in ("hr", "ndcg")]
    if train.early_stopping_patience > 0 and train.monitor not in monitors:
        raise ValueError(f"Unknown early-stopping monitor {train.monitor!r}; expected one "
                         f"of {monitors} (eval_ks={list(train.eval_ks)}).")


def _callbacks(config: RunConfig, data: PreparedData,
               verbose: int = 1) -> List[tf.keras.callbacks.Callback]:
    train = config.train
    callbacks: List[tf.keras.callbacks.Callback] = [
        SampledRankingCallback(data, "validation", ks=train.eval_ks, seed=train.seed)]
    if train.early_stopping_patience > 0:
        callbacks.append(tf.keras.callbacks.EarlyStopping(
            monitor=train.monitor, mode="min" if train.monitor.endswith("loss") else "max",
            patience=train.early_stopping_patience, restore_best_weights=True,
            verbose=verbose))
    if train.tensorboard_dir:
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=train.tensorboard_dir))
    return callbacks


def train(config: Optional[RunConfig] = None, *, output_dir: Union[str, Path] = "saved_models",
          run_name: Optional[str] = None, export: bool = True,
          verbose: Union[int, str] = "auto", data: Optional[PreparedData] = None) -> TrainResult:
    """Trains, evaluates and (optionally) exports a retrieval model.

    Args:
        config: Run settings; defaults train the baseline on the synthetic data.
        output_dir: Parent folder of run folders.
        run_name: Run folder name; default `run-<UTC timestamp>`. An existing folder
            is an error, raised before training starts.
        export: Write the run folder.
        verbose: Keras `fit` verbosity (progress bar with `"auto"` on a terminal).
        data: Already prepared data for `config.data` (skips preparation).

    Returns:
        A `TrainResult`.
    """
    config = config or RunConfig()
    _check_monitor(config.train)
    run_dir = None
    if export:
        run_dir = Path(output_dir) / (run_name or "run-" + datetime.datetime.now(
            datetime.timezone.utc).strftime("%Y%m%d-%H%M%S"))
        if run_dir.exists():
            raise FileExistsError(f"Run folder {str(run_dir)!r} exists; choose another run "
                                  "name or remove it.")
    started = time.perf_counter()
    tf.keras.utils.set_random_seed(config.train.seed)
    data = data or prepare_data(config.data)
    strategy = get_strategy(config.train.strategy)
    policy = tf.keras.mixed_precision.global_policy()
    if config.train.mixed_precision:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():
            model = build_model(config.model, data.vocab.size, config.data.max_len,
                                data.sampling_probability)
            model.compile(optimizer=tf.keras.optimizers.Adam(config.train.learning_rate),
                          jit_compile=config.train.jit_compile)
        global_batch = config.train.batch_size * strategy.num_replicas_in_sync
        train_ds = make_dataset(data.split.train, global_batch, shuffle=True,
                                seed=config.train.seed)
        validation_ds = make_dataset(data.split.validation, global_batch)
        history = model.fit(train_ds, validation_data=validation_ds,
                            epochs=config.train.epochs,
                            callbacks=_callbacks(config, data, verbose=int(verbose != 0)),
                            verbose=verbose)
    finally:
        tf.keras.mixed_precision.set_global_policy(policy)
    metrics = evaluate_model(model, data, "test", ks=config.train.eval_ks, seed=config.train.seed)
    if run_dir is not None:
        results = {"test": metrics, "data": data.summary(),
                   "epochs": len(history.history.get("loss", [])),
                   "train_seconds": round(time.perf_counter() - started, 2)}
        export_run(model, run_dir, vocab=data.vocab, config=config, metrics=results)
    return TrainResult(model, data, history.history, metrics, run_dir,
                       time.perf_counter() - started)


def restore_model(run_dir: Union[str, Path]) -> Tuple[RetrievalModel, Vocabulary, RunConfig]:
    """Rebuilds a run's Keras model from its `config.json`, `vocabulary.json` and
    `weights/` checkpoint; the data is not needed (the logQ table is checkpointed).

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
    # A placeholder: the checkpoint restores the trained sampling probabilities.
    placeholder = np.full(vocab.size, 1.0 / vocab.size, np.float32)
    model = build_model(config.model, vocab.size, config.data.max_len, placeholder)
    # Create the towers' variables so the checkpoint restores into them now.
    model.query_tower(tf.zeros([1, config.data.max_len], tf.int32))
    model.candidate_tower(model.candidate_features(tf.zeros([1], tf.int32)))
    status = model.load_weights(str(run_dir / "weights" / "model"))
    status.expect_partial().assert_existing_objects_matched()
    return model, vocab, config


def format_metrics(metrics: Dict[str, Any]) -> str:
    """Pretty JSON for printing results."""
    return json.dumps(metrics, indent=2, sort_keys=True)

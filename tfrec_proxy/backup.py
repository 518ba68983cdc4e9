"""Crash and resume: training progress backed up after every epoch, so a killed run
continues where it stopped and ends as an uninterrupted run would (same seed).

With `TrainConfig.backup_dir` (`tfrec-proxy train --backup-dir DIR`) every epoch end
and every phase end writes into DIR:

* `progress.json`: the config, the phase and epoch reached, whether the last epoch
  asked `fit` to stop, the current phase's history, the finished phases' records
  and histories, the callbacks' states and the training seconds so far;
* `ckpt-<n>.*`: a TF checkpoint of the model (towers, loss-weight and logQ tables,
  FELRec's cache), the phase's optimizer (mid-phase) and the dropout layers'
  random-generator states;
* `arrays-<n>.npz`: the array-valued callback states (IDW's item weights, the best
  weights that early stopping or FELRec's validation will restore).

The checkpoint and arrays are written first and `progress.json` is replaced
atomically, then the previous checkpoint is deleted: a kill at any moment leaves a
consistent backup. Rerunning the same command finds it and resumes: finished phases
are skipped, the interrupted phase restarts at the epoch after the last backed-up
one with its optimizer, callbacks, dropout stream and data order (the training
input's order in an epoch is a function of the seed and the epoch only,
`tfrec_proxy.data.EpochShuffled`). A backup of another config is an error. The
folder is deleted once the run is exported (the export itself is atomic). Under
multi-worker training every worker reads DIR (a shared file system); only the chief
writes there.

Why not Keras's `BackupAndRestore`: it backs up one `fit` call (IDW's schedule is
three), keeps no callback state (EarlyStopping's patience and best weights, IDW's
weights) and restarts dropout's random stream and the data order from their
beginnings, so a resumed run would differ from an uninterrupted one.

A callback keeps state across a resume by having `get_state()` (a dict of JSON
values, NumPy arrays or lists of arrays) and `set_state(state)`; Keras's
`EarlyStopping` is handled here.
"""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from tfrec_proxy._tf import tf

PROGRESS_FILE = "progress.json"
FORMAT = 1
__all__ = ["EpochBackup", "PROGRESS_FILE", "TrainingBackup", "checkpointable_random",
           "keyed", "random_generators", "state_of"]


@contextlib.contextmanager
def checkpointable_random() -> Iterator[None]:
    """Layers built inside draw dropout masks from a `tf.random.Generator` (Keras's
    `enable_tf_random_generator`), whose state `TrainingBackup` checkpoints; Keras's
    default stateful ops restart their stream in a new process. The previous
    setting is restored on exit."""
    experimental = tf.keras.backend.experimental
    was = experimental.is_tf_random_generator_enabled()
    experimental.enable_tf_random_generator()
    try:
        yield
    finally:
        if not was:
            experimental.disable_tf_random_generator()


def random_generators(model: tf.keras.layers.Layer) -> List[tf.random.Generator]:
    """The `tf.random.Generator`s of the model's random layers (dropout), created now
    if not yet, in a fixed order. Keras leaves them out of checkpoints on purpose
    (backward compatibility), so they are reached through its private
    `_random_generator`; layers built outside `checkpointable_random` have none."""
    found: List[tf.random.Generator] = []
    for layer in [model, *model.submodules]:
        rng = getattr(layer, "_random_generator", None)
        if rng is None or not hasattr(rng, "_maybe_init"):
            continue
        rng._maybe_init()
        generator = getattr(rng, "_generator", None)
        if isinstance(generator, tf.random.Generator):
            found.append(generator)
    return found


def _early_stopping_state(callback: tf.keras.callbacks.EarlyStopping) -> Dict[str, Any]:
    return {"wait": int(callback.wait), "stopped_epoch": int(callback.stopped_epoch),
            "best": float(getattr(callback, "best", np.nan)), "best_epoch": int(callback.best_epoch),
            "best_weights": (None if callback.best_weights is None
                             else [np.asarray(w) for w in callback.best_weights])}


def _set_early_stopping_state(callback: tf.keras.callbacks.EarlyStopping,
                              state: Mapping[str, Any]) -> None:
    callback.wait, callback.stopped_epoch = state["wait"], state["stopped_epoch"]
    callback.best, callback.best_epoch = state["best"], state["best_epoch"]
    callback.best_weights = state["best_weights"]


def state_of(callback: Any) -> Optional[Dict[str, Any]]:
    """A callback's state to back up (`get_state()`, EarlyStopping's fields), or
    None when it keeps none."""
    if isinstance(callback, tf.keras.callbacks.EarlyStopping):
        return _early_stopping_state(callback)
    if hasattr(callback, "get_state") and hasattr(callback, "set_state"):
        return dict(callback.get_state())
    return None


def _set_state(callback: Any, state: Mapping[str, Any]) -> None:
    if isinstance(callback, tf.keras.callbacks.EarlyStopping):
        _set_early_stopping_state(callback, state)
    else:
        callback.set_state(dict(state))


def keyed(callbacks: Sequence[Any], prefix: str) -> Dict[str, Any]:
    """`{prefix/index:ClassName: callback}` for the callbacks that keep state."""
    return {f"{prefix}/{i}:{type(c).__name__}": c for i, c in enumerate(callbacks)
            if isinstance(c, tf.keras.callbacks.EarlyStopping)
            or (hasattr(c, "get_state") and hasattr(c, "set_state"))}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return {"__float__": repr(value)}
    return value


def _split_states(states: Mapping[str, Mapping[str, Any]]
                  ) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """JSON part and `{name: array}` part of callback states."""
    plain: Dict[str, Any] = {}
    arrays: Dict[str, np.ndarray] = {}
    for key, state in states.items():
        entry: Dict[str, Any] = {}
        for name, value in state.items():
            where = f"{key}/{name}"
            if isinstance(value, np.ndarray):
                arrays[where] = value
                entry[name] = {"__array__": where}
            elif (isinstance(value, (list, tuple)) and value
                  and all(isinstance(v, (np.ndarray, np.generic)) for v in value)):
                names = [f"{where}/{i}" for i in range(len(value))]
                arrays.update(zip(names, map(np.asarray, value)))
                entry[name] = {"__arrays__": names}
            else:
                entry[name] = _jsonable(value)
        plain[key] = entry
    return plain, arrays


def _join_states(plain: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
                 ) -> Dict[str, Dict[str, Any]]:
    def value(v: Any) -> Any:
        if isinstance(v, dict) and "__array__" in v:
            return arrays[v["__array__"]]
        if isinstance(v, dict) and "__arrays__" in v:
            return [arrays[name] for name in v["__arrays__"]]
        if isinstance(v, dict) and "__float__" in v:
            return float(v["__float__"])
        return v
    return {key: {name: value(v) for name, v in state.items()}
            for key, state in plain.items()}


def _floats(logs: Mapping[str, Any]) -> Dict[str, float]:
    return {key: float(value) for key, value in logs.items()
            if np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.number)}


class TrainingBackup:
    """The backup folder of one run (see the module docstring).

    Args:
        directory: The folder (created on the first save).
        config: The run's config as a dict (`RunConfig.to_dict()`); a backup found
            there must have the same config, `train.backup_dir` aside.
        chief: Whether this process writes `directory` (else a scratch folder).

    Raises:
        ValueError: the folder holds a backup of another config or format.

    Example:

        backup = TrainingBackup("saved_models/.backup", config.to_dict())
        backup.resuming  # True when a killed run left progress there
    """

    def __init__(self, directory: Union[str, Path], config: Mapping[str, Any],
                 chief: bool = True) -> None:
        self.directory = Path(directory)
        self.config = _comparable(config)
        self.chief = chief
        self._scratch: Optional[str] = None
        self.progress = self._load()
        self._counter = int(self.progress["counter"]) if self.progress else 0
        self._found = None  # where the found backup stood (progress changes on save)
        if self.progress:
            self._found = {"phase": int(self.progress["phase"]),
                           "epoch": int(self.progress["epoch"]),
                           "earlier_seconds": float(self.progress["train_seconds"])}
        self.generators: List[tf.random.Generator] = []

    def _load(self) -> Optional[Dict[str, Any]]:
        path = self.directory / PROGRESS_FILE
        if not path.exists():
            return None
        try:
            progress = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"{str(path)!r} is not valid JSON ({error}); remove the "
                             "backup folder to train from the start.") from None
        if progress.get("format") != FORMAT:
            raise ValueError(f"{str(path)!r} has backup format {progress.get('format')!r}"
                             f"; expected {FORMAT}. Remove the folder to start afresh.")
        if _as_read_now(progress["config"]) != self.config:
            raise ValueError(f"The backup in {str(self.directory)!r} is of another config; "
                             "rerun with the config that wrote it, or remove the folder / "
                             "choose another --backup-dir to train from the start.")
        return progress

    # -- what a resumed run skips -------------------------------------------------

    @property
    def resuming(self) -> bool:
        """Whether a backup was found."""
        return self._found is not None

    def finished_phases(self) -> List[Dict[str, Any]]:
        """`[{"record": ..., "history": ...}]` of the phases the backup finished."""
        return list(self.progress["done"]) if self.progress else []

    def resume_point(self, phase: int) -> Optional[Tuple[int, bool]]:
        """`(epochs done, stop requested)` when `phase` is the one to continue
        mid-way (its first epochs are backed up), else None."""
        progress = self.progress
        if progress is None or progress["phase"] != phase or progress["epoch"] == 0:
            return None
        return int(progress["epoch"]), bool(progress["stopped"])

    def phase_history(self) -> Dict[str, List[float]]:
        """The interrupted phase's history so far."""
        return {k: list(v) for k, v in self.progress["history"].items()} \
            if self.progress else {}

    @property
    def earlier_seconds(self) -> float:
        """Training seconds that earlier processes spent on this run."""
        return self._found["earlier_seconds"] if self._found else 0.0

    def summary(self) -> Dict[str, Any]:
        """Where this process resumed (phase index, epochs done in it, earlier
        training seconds), for `metrics.json`; `{}` when it did not."""
        if not self._found:
            return {}
        return {**self._found, "earlier_seconds": round(self._found["earlier_seconds"], 2)}

    # -- restoring ------------------------------------------------------------------

    def _checkpoint(self, model: Any, optimizer: bool) -> tf.train.Checkpoint:
        parts: Dict[str, Any] = {"model": model, "rng": list(self.generators)}
        if optimizer:
            parts["optimizer"] = model.optimizer
        return tf.train.Checkpoint(**parts)

    def restore_model(self, model: Any) -> None:
        """Restores the backed-up model weights, dropout generators and (mid-phase)
        the optimizer, whose variables must exist (`optimizer.build`)."""
        progress = self.progress
        if not progress or not progress.get("checkpoint"):
            return
        with_optimizer = bool(progress["optimizer"])
        prefix = str(self.directory / progress["checkpoint"])
        self._checkpoint(model, with_optimizer).read(prefix).assert_existing_objects_matched()

    def restore_states(self, callbacks: Mapping[str, Any]) -> None:
        """Sets the backed-up states of `callbacks` (`keyed` names) that have one."""
        if not self.progress:
            return
        states = self._states()
        for key, callback in callbacks.items():
            if key in states:
                _set_state(callback, states[key])

    def _states(self) -> Dict[str, Dict[str, Any]]:
        arrays: Dict[str, np.ndarray] = {}
        name = self.progress.get("arrays")
        if name:
            with np.load(self.directory / name, allow_pickle=False) as stored:
                arrays = {key: stored[key] for key in stored.files}
        return _join_states(self.progress["states"], arrays)

    # -- saving ---------------------------------------------------------------------

    def _target(self) -> Path:
        if self.chief:
            return self.directory
        if self._scratch is None:  # other workers write too (collective), then drop it
            self._scratch = tempfile.mkdtemp(prefix="tfrec-proxy-backup-")
        return Path(self._scratch)

    def save(self, model: Any, *, phase: int, epoch: int, stopped: bool,
             history: Mapping[str, Sequence[float]], done: Sequence[Mapping[str, Any]],
             states: Mapping[str, Mapping[str, Any]], optimizer: bool,
             train_seconds: float) -> None:
        """Writes a backup: checkpoint and arrays first, then `progress.json`
        atomically, then the previous checkpoint is deleted."""
        target = self._target()
        target.mkdir(parents=True, exist_ok=True)
        previous = self.progress
        self._counter += 1
        name = f"ckpt-{self._counter}"
        self._checkpoint(model, optimizer).write(str(target / name))
        plain, arrays = _split_states(states)
        arrays_name = None
        if arrays:
            arrays_name = f"arrays-{self._counter}.npz"
            with open(target / arrays_name, "wb") as handle:
                np.savez(handle, **arrays)
        progress = {"format": FORMAT, "config": self.config, "counter": self._counter,
                    "phase": phase, "epoch": epoch, "stopped": bool(stopped),
                    "history": {k: [float(v) for v in values] for k, values in history.items()},
                    "done": [dict(d) for d in done], "states": plain,
                    "checkpoint": name, "optimizer": bool(optimizer),
                    "arrays": arrays_name, "train_seconds": float(train_seconds)}
        temporary = target / (PROGRESS_FILE + ".tmp")
        temporary.write_text(json.dumps(progress, indent=1))
        os.replace(temporary, target / PROGRESS_FILE)
        self.progress = progress
        if previous:
            _remove_checkpoint(target, previous)

    def remove(self) -> None:
        """Deletes the backup (after the run is exported)."""
        if self.chief and self.directory.exists():
            shutil.rmtree(self.directory)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def _remove_checkpoint(folder: Path, progress: Mapping[str, Any]) -> None:
    name = progress.get("checkpoint")
    for path in folder.glob(f"{name}.*") if name else ():
        path.unlink(missing_ok=True)
    if progress.get("arrays"):
        (folder / progress["arrays"]).unlink(missing_ok=True)


def _comparable(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The config without `train.backup_dir`, through JSON (tuples -> lists)."""
    values = json.loads(json.dumps(dict(config)))
    values.get("train", {}).pop("backup_dir", None)
    return values


def _as_read_now(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A backup's stored config as this code reads it (`RunConfig.from_dict`), so a
    field added to the config since the backup was written takes its default instead
    of making the same settings look like another config; unreadable (e.g. a field
    removed since): the stored dict as it is."""
    from tfrec_proxy.config import RunConfig  # (config does not import this module)

    try:
        return _comparable(RunConfig.from_dict(dict(config)).to_dict())
    except (TypeError, ValueError, KeyError):
        return _comparable(config)


class EpochBackup(tf.keras.callbacks.Callback):
    """Backs up after every epoch of one phase's `fit`; restores the phase's callback
    states at `on_train_begin` when resuming. Place it last, after the callbacks
    whose end-of-epoch work (early stopping, IDW's sleep) the backup must include.

    Args:
        backup: The run's `TrainingBackup`.
        phase: Index of the phase in the schedule.
        fit_callbacks: `keyed` callbacks of this `fit` (their states are saved).
        schedule_callbacks: `keyed` callbacks of every phase (saved too).
        done: Records of the finished phases.
        history: The phase's history before this `fit` (resumed epochs).
        resume: Restore `fit_callbacks`' states at the start.
        seconds: Callable giving the run's training seconds so far.
    """

    def __init__(self, backup: TrainingBackup, phase: int, fit_callbacks: Mapping[str, Any],
                 schedule_callbacks: Mapping[str, Any], done: Sequence[Mapping[str, Any]],
                 history: Mapping[str, Sequence[float]], resume: bool, seconds: Any) -> None:
        super().__init__()
        self.backup, self.phase = backup, phase
        self.fit_callbacks, self.schedule_callbacks = fit_callbacks, schedule_callbacks
        self.done = list(done)
        self.history = {k: list(v) for k, v in history.items()}
        self.resume, self.seconds = resume, seconds

    def on_train_begin(self, logs: Optional[Dict[str, Any]] = None) -> None:
        if self.resume:  # after the callbacks' own on_train_begin resets
            self.backup.restore_states(self.fit_callbacks)

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        values = _floats(logs or {})
        done_before = len(next(iter(self.history.values()), []))
        for key in set(self.history) | set(values):
            column = self.history.setdefault(key, [float("nan")] * done_before)
            column.append(values.get(key, float("nan")))
        states = {key: state_of(c) for key, c in
                  {**self.schedule_callbacks, **self.fit_callbacks}.items()}
        self.backup.save(self.model, phase=self.phase, epoch=epoch + 1,
                         stopped=bool(self.model.stop_training), history=self.history,
                         done=self.done, states=states, optimizer=True,
                         train_seconds=self.seconds())

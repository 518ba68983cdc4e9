"""IDW: iterative density weighting with user-tower calibration (IDW paper §3.3,
Algorithms 1-2).

Algorithm 1 as a training schedule (`TrainConfig.weighting = "idw"`):

1. `pretrain`: the unweighted loss (eq. 3), with early stopping: theta(0), phi(0).
2. `idw`: the sleep/wake loop inside one `fit` call, run by the `DensityWeighting`
   callback. Sleep (Algorithm 2, `tfrec_proxy.weighting.density`): the item tower's
   outputs for every item, their Gaussian-kernel density under the current item
   weights (eq. 7, Scott's-rule bandwidth), relative density (eq. 8), `h = 1 - p'`
   and the momentum update (eq. 9). Stop when `||w(t+1) - w(t)|| < eta` or after
   `max_iterations` wakes; otherwise wake: `wake_epochs` epochs of the weighted loss
   (eq. 10) with `w(t+1)`.
3. `calibrate`: the item tower frozen, the unweighted loss again, early stopping.

How the weights enter the loss. `w` is a distribution over items: `w(0)` is the
normalised training-target frequency (Algorithm 1, line 2), and eq. 9 mixes in
`h / sum(h)`. We read eq. 10 as the loss whose *item distribution* is `w`, i.e.
each example with target y is weighted `w_y / p(y)`, p the empirical target
frequency (normalised to a mean of 1 over the training examples, see
`example_weights`). This makes `w(0)` exactly the unweighted loss that pre-training
minimised (Algorithm 1, line 3), a uniform `w` exactly frequency balance (eq. 5,
"1 / p(y)"), and `w -> h / sum(h)` the density-balanced loss in between. Read
literally as a per-example weight `w_y` (a probability), the first wakes would
weight each example by its target's frequency, up-weighting head items by orders
of magnitude, the opposite of the paper's stated aim.

State: the weights, iteration, phase and per-iteration trace are an `IDWState`,
saved with the run as `state/idw.npz` and restorable (`IDWState.from_run`), and a
`DensityWeighting` built from a restored state continues from its iteration.
"""

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from tfrec_proxy._checks import check_positive_int
from tfrec_proxy._tf import tf
from tfrec_proxy.phases import Phase
from tfrec_proxy.registry import WEIGHTINGS
from tfrec_proxy.weighting.baselines import check_counts
from tfrec_proxy.weighting.density import update_weights, weight_change

STATE_FILE = "idw.npz"
PHASES = ("pretrain", "idw", "calibrate", "done")


def check_idw_config(idw: Any) -> None:
    """Validates `IDWConfig` settings before anything is trained.

    Raises:
        ValueError: naming the bad setting and the expected range.
    """
    if not 0.0 <= idw.momentum < 1.0:
        raise ValueError(f"idw.momentum (m) must be in [0, 1), got {idw.momentum!r}.")
    if not idw.eta > 0:
        raise ValueError(f"idw.eta must be > 0, got {idw.eta!r}.")
    check_positive_int("idw.max_iterations", idw.max_iterations)
    check_positive_int("idw.wake_epochs", idw.wake_epochs)
    for name in ("pretrain_epochs", "calibration_epochs"):
        value = getattr(idw, name)
        if value is not None:
            check_positive_int(f"idw.{name}", value)
    if idw.bandwidth is not None and not idw.bandwidth > 0:
        raise ValueError(f"idw.bandwidth must be > 0 (or None for Scott's rule), got "
                         f"{idw.bandwidth!r}.")
    check_positive_int("idw.exact_max_items", idw.exact_max_items)
    check_positive_int("idw.reference_size", idw.reference_size)


def example_weights(weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-item loss weights of the wake loss for item distribution `w` (see module).

    Args:
        weights: `[V]` IDW item weights `w` (a distribution over items).
        counts: `[V]` training-target counts.

    Returns:
        `[V]` float32: `w_y / p(y)` for trained items (p = counts / total), scaled so
        the mean over the training examples is 1; 0 for items that are never a
        training target.
    """
    counts = check_counts(counts)
    weights = np.asarray(weights, np.float64)
    if weights.shape != counts.shape:
        raise ValueError(f"weights have shape {weights.shape}; expected {counts.shape}.")
    seen = counts > 0
    mass = weights[seen].sum()
    if not mass > 0:
        raise ValueError("IDW weights give no mass to any trained item.")
    result = np.zeros_like(weights)
    result[seen] = weights[seen] * counts.sum() / (counts[seen] * mass)
    return result.astype(np.float32)


@dataclasses.dataclass
class IDWState:
    """Where Algorithm 1 is.

    Attributes:
        weights: `[V]` current item weights w(t) (None before initialisation).
        iteration: Wake phases done (t).
        phase: One of `PHASES`.
        converged: Whether the stopping rule fired (else `max_iterations` ended it).
        changes: `||w(t+1) - w(t)||` of every sleep phase, in order.
        sleep_seconds: Wall time of every sleep phase.
        silhouettes: Mean silhouette of the item vectors against ground-truth
            clusters at every sleep (synthetic data only; else empty).
    """

    weights: Optional[np.ndarray] = None
    iteration: int = 0
    phase: str = "pretrain"
    converged: bool = False
    changes: List[float] = dataclasses.field(default_factory=list)
    sleep_seconds: List[float] = dataclasses.field(default_factory=list)
    silhouettes: List[float] = dataclasses.field(default_factory=list)

    def to_arrays(self) -> Dict[str, np.ndarray]:
        """The state as named arrays (the `state/idw.npz` contents)."""
        weights = np.zeros(0, np.float64) if self.weights is None else self.weights
        return {"weights": np.asarray(weights, np.float64),
                "iteration": np.asarray(self.iteration, np.int64),
                "phase": np.asarray(self.phase), "converged": np.asarray(self.converged),
                "changes": np.asarray(self.changes, np.float64),
                "sleep_seconds": np.asarray(self.sleep_seconds, np.float64),
                "silhouettes": np.asarray(self.silhouettes, np.float64)}

    @classmethod
    def from_arrays(cls, arrays: Dict[str, np.ndarray]) -> "IDWState":
        weights = np.asarray(arrays["weights"], np.float64)
        phase = str(arrays["phase"])
        if phase not in PHASES:
            raise ValueError(f"IDW state phase {phase!r} is not one of {PHASES}.")
        return cls(weights=weights if weights.size else None,
                   iteration=int(arrays["iteration"]), phase=phase,
                   converged=bool(arrays["converged"]),
                   changes=[float(v) for v in arrays["changes"]],
                   sleep_seconds=[float(v) for v in arrays["sleep_seconds"]],
                   silhouettes=[float(v) for v in arrays["silhouettes"]])

    @classmethod
    def from_run(cls, run_dir: Union[str, Path]) -> "IDWState":
        """The state an IDW run saved (`state/idw.npz`).

        Raises:
            FileNotFoundError: the run was not trained with IDW.
        """
        path = Path(run_dir) / "state" / STATE_FILE
        if not path.exists():
            raise FileNotFoundError(f"{str(path)!r} does not exist: the run in "
                                    f"{str(run_dir)!r} was not trained with IDW.")
        with np.load(path) as arrays:
            return cls.from_arrays({name: arrays[name] for name in arrays.files})


class DensityWeighting(tf.keras.callbacks.Callback):
    """Algorithm 1's sleep/wake loop as a Keras callback of one `fit` call.

    `begin(model, data)` (the phase's `prepare` hook) runs the first sleep before
    `fit`; after every `wake_epochs` epochs the callback runs the next sleep and
    either sets the new weights or stops training (converged, or `max_iterations`
    wakes done).

    Args:
        counts: `[V]` training-target counts (w(0) is their normalised form).
        momentum: m of eq. 9.
        eta: Stopping threshold on `||w(t+1) - w(t)||`.
        max_iterations: The most wake phases.
        wake_epochs: Epochs per wake phase.
        density_options: Passed to `update_weights` (`bandwidth`,
            `exact_max_items`, `reference_size`, `seed`).
        clusters: `[V]` ground-truth clusters (-1 for none) to trace the silhouette.
        state: An `IDWState` to continue from (default: a fresh one).

    Example:

        idw = DensityWeighting(data.item_counts, momentum=0.9, eta=4e-4)
        phase = Phase("idw", epochs=10, prepare=idw.begin, callbacks=[idw])
    """

    def __init__(self, counts: np.ndarray, momentum: float = 0.9, eta: float = 4e-4,
                 max_iterations: int = 10, wake_epochs: int = 1,
                 density_options: Optional[Dict[str, Any]] = None,
                 clusters: Optional[np.ndarray] = None,
                 state: Optional[IDWState] = None) -> None:
        super().__init__()
        self.counts = check_counts(counts)
        self.active = np.arange(len(self.counts)) >= 2  # padding and OOV carry no weight
        self.momentum, self.eta = momentum, eta
        self.max_iterations, self.wake_epochs = max_iterations, wake_epochs
        self.density_options = dict(density_options or {})
        self.clusters = clusters
        self.state = state or IDWState()
        self.next_phase = "calibrate"  # the state's phase once the loop ends
        self._model: Any = None

    def initial_weights(self) -> np.ndarray:
        """w(0): the normalised training-target frequency over real items."""
        counts = np.where(self.active, self.counts, 0.0)
        return counts / counts.sum()

    def begin(self, model: Any, data: Any = None) -> bool:
        """The first sleep, before the phase's `fit`; False when there is nothing to
        wake for (converged at once, or the iterations were all done)."""
        self._model = model
        if self.state.weights is None:
            self.state.weights = self.initial_weights()
        self.state.phase = "idw"
        if self.state.iteration >= self.max_iterations or self.state.converged:
            return False
        return self._sleep()

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, float]] = None) -> None:
        if (epoch + 1) % self.wake_epochs:
            return
        self.state.iteration += 1
        if self.state.iteration >= self.max_iterations or not self._sleep():
            self.model.stop_training = True

    def on_train_end(self, logs: Optional[Dict[str, float]] = None) -> None:
        self.state.phase = self.next_phase

    def _sleep(self) -> bool:
        """Algorithm 2; sets the next wake's weights unless converged (-> False)."""
        model = self._model if self._model is not None else self.model
        started = time.perf_counter()
        embeddings = model.item_embeddings()
        options = dict(self.density_options)
        # A new reference draw per sleep (large catalogues), so eq. 9's momentum
        # averages the Monte-Carlo noise out instead of repeating one draw's.
        options["seed"] = options.get("seed", 0) + len(self.state.changes)
        new = update_weights(self.state.weights, embeddings, self.momentum,
                             active=self.active, **options)
        change = weight_change(self.state.weights, new)
        self.state.changes.append(change)
        if self.clusters is not None:
            from tfrec_proxy.metrics.clustering import silhouette_score
            self.state.silhouettes.append(silhouette_score(
                embeddings[self.active], self.clusters[self.active], max_points=2048))
        self.state.sleep_seconds.append(time.perf_counter() - started)
        if change < self.eta:
            self.state.converged = True
            return False
        self.state.weights = new
        model.set_item_loss_weights(example_weights(new, self.counts))
        return True

    def summary(self) -> Dict[str, Any]:
        """For `metrics.json`: iterations, stopping, per-sleep changes and times."""
        return {"idw": {"iterations": self.state.iteration,
                        "converged": self.state.converged,
                        "changes": [round(v, 8) for v in self.state.changes],
                        "sleep_seconds": [round(v, 4) for v in self.state.sleep_seconds],
                        "silhouettes": [round(v, 4) for v in self.state.silhouettes]}}

    def run_state(self) -> Dict[str, Dict[str, np.ndarray]]:
        """`{"idw.npz": arrays}` for the run folder."""
        return {STATE_FILE: self.state.to_arrays()}

    def get_state(self) -> Dict[str, np.ndarray]:
        """The `IDWState` as arrays, for a training backup (`tfrec_proxy.backup`)."""
        return self.state.to_arrays()

    def set_state(self, state: Dict[str, np.ndarray]) -> None:
        """Restores `get_state()` in place (the calibration phase shares the state)."""
        restored = IDWState.from_arrays(state)
        for field in dataclasses.fields(IDWState):
            setattr(self.state, field.name, getattr(restored, field.name))


class _Calibration(tf.keras.callbacks.Callback):
    """Marks the state's phase during and after calibration."""

    def __init__(self, state: IDWState) -> None:
        super().__init__()
        self.state = state

    def on_train_begin(self, logs: Optional[Dict[str, float]] = None) -> None:
        self.state.phase = "calibrate"

    def on_train_end(self, logs: Optional[Dict[str, float]] = None) -> None:
        self.state.phase = "done"

    def run_state(self) -> Dict[str, Dict[str, np.ndarray]]:
        return {STATE_FILE: self.state.to_arrays()}


def idw_schedule(config: Any, data: Any, state: Optional[IDWState] = None) -> List[Phase]:
    """Algorithm 1 as phases: pretrain, the sleep/wake loop, calibration.

    Args:
        config: The `RunConfig` (`train.idw` settings, `train.seed`).
        data: The `PreparedData` (target counts; synthetic clusters for the trace).
        state: Continue from a saved `IDWState` (skips the phases it finished).

    Returns:
        The phases; the `idw` phase's `DensityWeighting` is `phases[1].callbacks[0]`.
    """
    idw = config.train.idw
    check_idw_config(idw)
    callback = DensityWeighting(
        data.item_counts, idw.momentum, idw.eta, idw.max_iterations, idw.wake_epochs,
        density_options={"bandwidth": idw.bandwidth, "exact_max_items": idw.exact_max_items,
                         "reference_size": idw.reference_size, "seed": config.train.seed},
        clusters=data.item_clusters, state=state)
    callback.next_phase = "calibrate" if idw.calibrate else "done"
    ones = np.ones(data.vocab.size, np.float32)
    phases = []
    if callback.state.phase == "pretrain":
        phases.append(Phase("pretrain", epochs=idw.pretrain_epochs, item_loss_weights=ones))
    if callback.state.phase in ("pretrain", "idw"):
        remaining = idw.max_iterations - callback.state.iteration
        phases.append(Phase("idw", epochs=max(1, remaining) * idw.wake_epochs,
                            callbacks=[callback], early_stopping=False,
                            prepare=callback.begin, needs_trainable=("candidate_tower",)))
    if idw.calibrate and callback.state.phase != "done":
        phases.append(Phase("calibrate", epochs=idw.calibration_epochs,
                            frozen=("candidate_tower",), item_loss_weights=ones,
                            callbacks=[_Calibration(callback.state)]))
    return phases


WEIGHTINGS.register("idw", check=lambda train: check_idw_config(train.idw))(idw_schedule)

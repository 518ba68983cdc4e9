"""Training schedules: a run is one or more `fit` calls (phases).

A method that needs several `fit` calls (pre-training, weighted phases, a calibration
with the item tower frozen) describes them as `Phase`s; `tfrec_proxy.training.train`
runs them in order. A loss weighting registered in `tfrec_proxy.registry.WEIGHTINGS`
is a function `(RunConfig, PreparedData) -> [Phase, ...]`.
"""

import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence, Union

import numpy as np

ItemWeights = Union[np.ndarray, Callable[[Any, Any], np.ndarray]]


@dataclasses.dataclass
class Phase:
    """One `fit` call of a training schedule.

    Attributes:
        name: Shown in logs and stored with the history.
        epochs: Epochs of this phase (None: `TrainConfig.epochs`).
        frozen: Model sub-layers not trained in this phase, as attribute paths of
            the `RetrievalModel` (e.g. `"candidate_tower"`, `"query_tower.encoder"`).
        item_loss_weights: `[V]` per-item loss weights set before the phase, or a
            function `(model, data) -> [V]` computing them; None keeps the current
            weights.
        callbacks: Keras callbacks of this phase only. A callback with a
            `run_state()` method (returning `{file name: {array name: array}}`)
            has those arrays written into the run folder, and one with `summary()`
            has that dict stored in `metrics.json` under the phase's name.
        early_stopping: Apply the config's early stopping in this phase.
        learning_rate: Adam learning rate of this phase (None: the config's).
        prepare: Called as `prepare(model, data)` right before the phase's `fit`;
            returning False skips the phase (e.g. IDW converged at its first sleep).
        needs_trainable: Sub-layers (paths as in `frozen`) this phase must train;
            checked before the first phase starts.
    """

    name: str = "train"
    epochs: Optional[int] = None
    frozen: Sequence[str] = ()
    item_loss_weights: Optional[ItemWeights] = None
    callbacks: Sequence[Any] = ()
    early_stopping: bool = True
    learning_rate: Optional[float] = None
    prepare: Optional[Callable[[Any, Any], bool]] = None
    needs_trainable: Sequence[str] = ()

    def summary(self) -> Dict[str, Any]:
        """The phase's callbacks' summaries (see `callbacks`), merged."""
        merged: Dict[str, Any] = {}
        for callback in self.callbacks:
            if hasattr(callback, "summary"):
                merged.update(callback.summary())
        return merged

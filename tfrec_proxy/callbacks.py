"""Keras callbacks of the training loop that Keras lacks.

* `TimeBudget`: stops `fit` once a wall-clock deadline has passed (checked after
  every step), for "best model within N minutes" runs (`TrainConfig.time_budget_minutes`).
  Keras's `EarlyStopping` watches a metric, not the clock; `BackupAndRestore` and
  `TerminateOnNaN` neither.
"""

import time
from typing import Any, Dict, Optional

from tfrec_proxy._tf import tf


class TimeBudget(tf.keras.callbacks.Callback):
    """Stops training after the step during which `deadline` passed.

    One instance serves every phase of a run: once expired, `fit` calls stop after
    their first step and `expired` tells the caller to skip the rest. Early stopping
    (placed before this callback) still restores the best weights seen.

    Args:
        deadline: `time.perf_counter()` value after which training stops.

    Example:

        budget = TimeBudget(time.perf_counter() + 600)  # ten minutes
        model.fit(dataset, epochs=100, callbacks=[budget])
    """

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline
        self.stopped_at: Optional[Dict[str, int]] = None
        self._epoch = 0

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return time.perf_counter() >= self.deadline

    def on_epoch_begin(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        if self.expired:
            self.model.stop_training = True
            if self.stopped_at is None:
                self.stopped_at = {"epoch": self._epoch, "step": batch}

"""The plain schedules: no weighting, and frequency balance (IDW paper eq. 5).

Weightings are registered in `tfrec_proxy.registry.WEIGHTINGS` as functions
`(RunConfig, PreparedData) -> [Phase, ...]` (see `tfrec_proxy.phases`); the per-item
weights they set multiply each example's loss by its target's weight
(`RetrievalModel.item_loss_weights`, the one place loss weights enter).

The other imbalance baselines of §4.3 are not weightings: focal loss and Qmargin
change the loss (`ModelConfig.loss`, `tfrec_proxy.tasks`), item norm the item tower
(`ModelConfig.item_norm`, `tfrec_proxy.layers.item_norm`).
"""

from typing import Any, List

import numpy as np

from tfrec_proxy.data.sequences import check_counts as check_data_counts
from tfrec_proxy.phases import Phase
from tfrec_proxy.registry import WEIGHTINGS


def check_counts(counts: np.ndarray) -> np.ndarray:
    """`[V]` training-target counts as float64, checked like the data's
    (`tfrec_proxy.data.sequences.check_counts`) and not all zero."""
    counts = check_data_counts(counts)
    if counts.sum() <= 0:
        raise ValueError("item counts are all zero: no training target to weight.")
    return counts


def frequency_weights(counts: np.ndarray) -> np.ndarray:
    """Frequency balance (eq. 5): each example weighted by `1 / p(y)` of its target.

    Scaled so that the mean weight over the training examples is 1 (the optimum of
    eq. 5 is unchanged, and the loss keeps the unweighted loss's scale). Items that
    are never a training target get 0 (they are never weighted).

    Args:
        counts: `[V]` training-target counts by item index.

    Returns:
        `[V]` float32 weights: `N / (V_seen * n_y)` where `n_y > 0`, else 0.
    """
    counts = check_counts(counts)
    seen = counts > 0
    weights = np.zeros_like(counts)
    weights[seen] = counts.sum() / (seen.sum() * counts[seen])
    return weights.astype(np.float32)


@WEIGHTINGS.register("none")
def no_weighting(config: Any, data: Any) -> List[Phase]:
    """One phase of `TrainConfig.epochs`, every example weighted 1."""
    return [Phase()]


@WEIGHTINGS.register("frequency")
def frequency_balance(config: Any, data: Any) -> List[Phase]:
    """One phase with the eq. 5 weights (a static weighting)."""
    return [Phase(item_loss_weights=frequency_weights(data.item_counts))]

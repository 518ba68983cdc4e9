"""Argument checks shared across modules (numpy only, no TensorFlow)."""

from typing import Any

import numpy as np


def check_positive_int(name: str, value: Any) -> None:
    """Raises `ValueError` naming `name` unless `value` is an integer >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")

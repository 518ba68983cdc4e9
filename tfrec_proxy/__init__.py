"""tfrec_proxy: two-tower retrieval for long-tailed, multi-interest catalogues on TFRS.

Importing this package is cheap: it does not import TensorFlow. It only sets
`TF_USE_LEGACY_KERAS=1` (TFRS 0.7.7 needs Keras 2; TensorFlow reads the variable when
`tf.keras` is first touched, so this works whether or not TensorFlow was imported
first) and, unless the caller set it, `TF_CPP_MIN_LOG_LEVEL=2` (no C++ start-up
chatter). The public names below are imported on first use (PEP 562), so
`tfrec_proxy.RunConfig` costs nothing while `tfrec_proxy.RetrievalModel` imports
TensorFlow through `tfrec_proxy._tf`, which checks that `tf.keras` is Keras 2.
"""

import importlib
import os
from typing import Any, Dict, List

# TFRS 0.7.7 works only with Keras 2, so the variable is set whatever its old value.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) is noise on CPU
# machines; respect a caller's own setting (the CLI reads the preset value too).
_PRESET_TF_CPP_MIN_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfrec_proxy.version import __version__  # noqa: E402  (after the environment set-up)

# Public name -> the module that defines it (imported on first access).
_LAZY: Dict[str, str] = {
    "DataConfig": "tfrec_proxy.config",
    "FELRecConfig": "tfrec_proxy.config",
    "ExportConfig": "tfrec_proxy.config",
    "ModelConfig": "tfrec_proxy.config",
    "RunConfig": "tfrec_proxy.config",
    "SyntheticConfig": "tfrec_proxy.config",
    "TrainConfig": "tfrec_proxy.config",
    "RunFormatError": "tfrec_proxy.run_format",
    "MODEL_KINDS": "tfrec_proxy.registry",
    "SCORERS": "tfrec_proxy.registry",
    "ENCODERS": "tfrec_proxy.registry",
    "EXTRACTIONS": "tfrec_proxy.registry",
    "ITEM_TOWERS": "tfrec_proxy.registry",
    "WEIGHTINGS": "tfrec_proxy.registry",
    "ItemFeatureSpec": "tfrec_proxy.data.item_features",
    "load_item_features": "tfrec_proxy.data.item_features",
    "add_items": "tfrec_proxy.new_items",
    "PreparedData": "tfrec_proxy.data",
    "Vocabulary": "tfrec_proxy.data",
    "generate_long_tail": "tfrec_proxy.data",
    "prepare_data": "tfrec_proxy.data",
    "RetrievalModel": "tfrec_proxy.models",
    "build_model": "tfrec_proxy.models",
    "DotScorer": "tfrec_proxy.scoring",
    "Scorer": "tfrec_proxy.scoring",
    "BatchSoftmax": "tfrec_proxy.tasks",
    "Phase": "tfrec_proxy.training",
    "TrainResult": "tfrec_proxy.training",
    "restore_model": "tfrec_proxy.training",
    "train": "tfrec_proxy.training",
    "evaluate_model": "tfrec_proxy.evaluation",
    "evaluate_run": "tfrec_proxy.evaluation",
    "export_run": "tfrec_proxy.export",
    "Run": "tfrec_proxy.serving",
    "FELRecModel": "tfrec_proxy.felrec",
    "FELRecRun": "tfrec_proxy.felrec_serving",
    "prepare_chronological": "tfrec_proxy.data.felrec_data",
    "update_cache": "tfrec_proxy.felrec_export",
    "load_run": "tfrec_proxy.serving",
    "recommend": "tfrec_proxy.serving",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    """Imports a public name's module on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tfrec_proxy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))

"""tfrec_proxy: two-tower retrieval for long-tailed, multi-interest catalogues on TFRS.

Importing this package sets `TF_USE_LEGACY_KERAS=1` before TensorFlow is imported
(TFRS 0.7.7 needs Keras 2); see `tfrec_proxy._tf`.
"""

from tfrec_proxy import _tf  # noqa: F401  (must come first: sets up TensorFlow/Keras)
from tfrec_proxy.config import (DataConfig, ExportConfig, ModelConfig, RunConfig,
                                SyntheticConfig, TrainConfig)
from tfrec_proxy.models import RetrievalModel, build_model
from tfrec_proxy.scoring import DotScorer
from tfrec_proxy.tasks import BatchSoftmax
from tfrec_proxy.version import __version__

__all__ = [
    "BatchSoftmax", "DataConfig", "DotScorer", "ExportConfig", "ModelConfig",
    "RetrievalModel", "RunConfig", "SyntheticConfig", "TrainConfig", "__version__",
    "build_model",
]

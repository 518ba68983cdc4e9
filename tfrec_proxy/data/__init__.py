"""Data: synthetic and real interactions, vocabularies, sequences and `tf.data` input.

Only `make_dataset` needs TensorFlow, and imports it when called. `prepare_data`
is the one path from a `DataConfig` to the split a run trains and evaluates on.
"""

from tfrec_proxy.data.loaders import (REQUIRED_COLUMNS, LoadReport, default_data_dir,
                                      load_interactions, validate_interactions)
from tfrec_proxy.data.sequences import (Examples, SequenceSplit, head_item_mask,
                                        item_frequencies, leave_one_out, make_dataset,
                                        sampling_probabilities, split_long_sequences,
                                        user_item_sets, user_sequences)
from tfrec_proxy.data.synthetic import SyntheticData, generate_long_tail
from tfrec_proxy.data.prepare import PreparedData, prepare_data
from tfrec_proxy.data.vocab import OOV, PAD, Vocabulary

__all__ = [
    "REQUIRED_COLUMNS", "LoadReport", "default_data_dir", "load_interactions",
    "validate_interactions",
    "Examples", "SequenceSplit", "head_item_mask", "item_frequencies", "leave_one_out",
    "make_dataset", "sampling_probabilities", "split_long_sequences", "user_item_sets",
    "user_sequences",
    "SyntheticData", "generate_long_tail",
    "OOV", "PAD", "Vocabulary",
    "PreparedData", "prepare_data",
]

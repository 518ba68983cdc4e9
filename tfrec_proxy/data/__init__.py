"""Data: synthetic and real interactions, vocabularies, sequences and `tf.data` input.

Only `make_dataset` and `make_sequence_dataset` need TensorFlow, and import it when
called. `prepare_data` is the one path from a `DataConfig` (and, for
`source="dataframe"`, a pandas frame) to the split a run trains and evaluates on.
"""

from tfrec_proxy.data.loaders import (FILE_FORMATS, REQUIRED_COLUMNS, LoadReport,
                                      default_data_dir, load_interactions,
                                      validate_interactions)
from tfrec_proxy.data.tables import select_columns
from tfrec_proxy.data.examples import Examples, SequenceExamples
from tfrec_proxy.data.datasets import (EpochShuffled, make_dataset, make_sequence_dataset,
                                       sequences_per_batch, training_tensors)
from tfrec_proxy.data.sequences import (SequenceSplit, head_item_mask, item_frequencies,
                                        leave_one_out, sampling_probabilities,
                                        split_long_sequences, user_item_sets, user_sequences)
from tfrec_proxy.data.synthetic import SyntheticData, generate_long_tail, to_sessions
from tfrec_proxy.data.prepare import DATA_SOURCES, PreparedData, prepare_data
from tfrec_proxy.data.vocab import OOV, PAD, Vocabulary

__all__ = [
    "FILE_FORMATS", "REQUIRED_COLUMNS", "LoadReport", "default_data_dir",
    "load_interactions", "validate_interactions", "select_columns",
    "EpochShuffled", "Examples", "SequenceExamples", "SequenceSplit", "head_item_mask",
    "item_frequencies",
    "leave_one_out", "make_dataset", "make_sequence_dataset", "sampling_probabilities",
    "sequences_per_batch", "split_long_sequences", "training_tensors", "user_item_sets",
    "user_sequences",
    "SyntheticData", "generate_long_tail", "to_sessions",
    "OOV", "PAD", "Vocabulary",
    "DATA_SOURCES", "PreparedData", "prepare_data",
]

"""`tf.data` input from examples. TensorFlow is imported only when a dataset is built."""

from typing import TYPE_CHECKING

import numpy as np

from tfrec_proxy._checks import check_positive_int
from tfrec_proxy.data.examples import Examples, SequenceExamples

if TYPE_CHECKING:
    from tfrec_proxy._tf import tf


def _batched(tensors: dict, size: int, batch_size: int, shuffle: bool, seed: int,
             drop_remainder: bool) -> "tf.data.Dataset":
    from tfrec_proxy._tf import tf  # TensorFlow only when a dataset is built

    dataset = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        dataset = dataset.shuffle(size, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(
        tf.data.AUTOTUNE)


def make_dataset(examples: Examples, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_remainder: bool = False, with_users: bool = False) -> "tf.data.Dataset":
    """Batches examples as a `tf.data.Dataset`.

    Args:
        examples: the examples.
        batch_size: B.
        shuffle: shuffle over the whole set, differently on every pass.
        seed: shuffle seed.
        drop_remainder: drop a last batch smaller than B.
        with_users: also give each example's raw user id (`Examples.owner`) as
            `"user_id"` (int64 `[B]`), for query towers with a user embedding.

    Returns:
        Dataset of `{"history": int32 [B, L], "target": int32 [B]}` (+ `"user_id"`).

    Raises:
        ValueError: `batch_size < 1` or `examples` is empty.
    """
    check_positive_int("batch_size", batch_size)
    if len(examples) == 0:
        raise ValueError("examples is empty: nothing to put in a dataset")
    tensors = {"history": examples.history.astype(np.int32),
               "target": examples.target.astype(np.int32)}
    if with_users:
        tensors["user_id"] = examples.owner.astype(np.int64)
    return _batched(tensors, len(examples), batch_size, shuffle, seed, drop_remainder)


def make_sequence_dataset(sequences: SequenceExamples, batch_size: int,
                          shuffle: bool = False, seed: int = 0,
                          drop_remainder: bool = False,
                          with_users: bool = False) -> "tf.data.Dataset":
    """Batches whole training sequences (all-positions training) as a `tf.data.Dataset`.

    Args:
        sequences: the sequences, e.g. `SequenceSplit.train_sequences`.
        batch_size: B, in sequences (see `sequences_per_batch` for a B that holds
            about a given number of targets).
        shuffle: shuffle the sequences over the whole set, differently on every pass.
        seed: shuffle seed.
        drop_remainder: drop a last batch smaller than B.
        with_users: also give each row's raw user id as `"user_id"` (int64 `[B]`).

    Returns:
        Dataset of `{"history": int32 [B, L], "targets": int32 [B, L]}` (+
        `"user_id"`).

    Raises:
        ValueError: `batch_size < 1` or `sequences` is empty.
    """
    check_positive_int("batch_size", batch_size)
    if len(sequences) == 0:
        raise ValueError("sequences is empty: nothing to put in a dataset")
    tensors = {"history": sequences.history.astype(np.int32),
               "targets": sequences.targets.astype(np.int32)}
    if with_users:
        tensors["user_id"] = sequences.user.astype(np.int64)
    return _batched(tensors, len(sequences), batch_size, shuffle, seed, drop_remainder)


def sequences_per_batch(sequences: SequenceExamples, target_batch: int) -> int:
    """Sequences per batch so that a batch holds about `target_batch` targets.

    Args:
        sequences: the training sequences.
        target_batch: wanted targets per batch.

    Returns:
        `max(1, round(target_batch / mean targets per sequence))` (Python `round`:
        halves go to the even number).

    Raises:
        ValueError: `target_batch < 1`, or `sequences` has no target.
    """
    check_positive_int("target_batch", target_batch)
    if sequences.num_targets == 0:
        raise ValueError(f"sequences has no training target ({len(sequences)} sequences); "
                         "expected at least one non-zero target")
    mean_targets = sequences.num_targets / len(sequences)
    return max(1, round(target_batch / mean_targets))

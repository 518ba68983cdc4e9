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
    return _batched(training_tensors(examples, with_users), len(examples), batch_size,
                    shuffle, seed, drop_remainder)


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
    return _batched(training_tensors(sequences, with_users), len(sequences), batch_size,
                    shuffle, seed, drop_remainder)


class EpochShuffled:
    """Training batches whose order in an epoch is a function of the seed, the
    stream and the epoch only, so a run resumed at epoch e (`tfrec_proxy.backup`)
    sees the batches an uninterrupted run sees there. (`Dataset.shuffle(...,
    reshuffle_each_iteration=True)` draws each epoch's order from a state that
    restarts in a new process.)

    Args:
        tensors: `{name: [N, ...] array}` of the examples (or sequences).
        batch_size: B.
        seed: Shuffle seed.
        drop_remainder: Drop a last batch smaller than B.

    Example:

        stream = EpochShuffled({"history": h, "target": t}, batch_size=256, seed=0)
        model.fit(stream.epochs(0, 10), epochs=10, steps_per_epoch=stream.steps_per_epoch)
    """

    def __init__(self, tensors: dict, batch_size: int, seed: int = 0,
                 drop_remainder: bool = False) -> None:
        check_positive_int("batch_size", batch_size)
        self.tensors, self.batch_size, self.seed = tensors, batch_size, int(seed)
        self.drop_remainder = drop_remainder
        self.size = len(next(iter(tensors.values())))
        if self.size == 0:
            raise ValueError("no examples: nothing to put in a dataset")
        full, rest = divmod(self.size, batch_size)
        self.steps_per_epoch = full + (0 if drop_remainder or not rest else 1)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.size} examples make no batch of {batch_size} with "
                             "drop_remainder")
        self._base = None

    def epochs(self, first: int, last: int, stream: int = 0) -> "tf.data.Dataset":
        """Epochs `first` to `last - 1` of stream `stream` (e.g. the phase index), one
        after another (`steps_per_epoch` batches each).

        Returns:
            Dataset of the batched tensors, `(last - first) * steps_per_epoch` batches.
        """
        from tfrec_proxy._tf import tf

        if not 0 <= first <= last:
            raise ValueError(f"expected 0 <= first <= last, got first={first}, "
                             f"last={last}")
        if self._base is None:
            self._base = {name: tf.constant(value) for name, value in self.tensors.items()}
        base, size, batch = self._base, self.size, self.batch_size
        key = (self.seed * 1_000_003 + stream * 10_007) % (2 ** 62)

        # A stateless draw per (key, epoch): Dataset.shuffle takes no tensor seed
        # once a global seed is set, and its stateful reshuffle restarts in a new
        # process.
        def one_epoch(epoch: "tf.Tensor") -> "tf.data.Dataset":
            order = tf.argsort(tf.random.stateless_uniform(
                [size], seed=tf.stack([tf.constant(key, tf.int64), epoch])))
            return tf.data.Dataset.from_tensor_slices(order).batch(
                batch, drop_remainder=self.drop_remainder)

        def gather(rows: "tf.Tensor") -> dict:
            return {name: tf.gather(value, rows) for name, value in base.items()}

        return (tf.data.Dataset.range(first, last).flat_map(one_epoch)
                .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .prefetch(tf.data.AUTOTUNE))


def training_tensors(examples: "Examples | SequenceExamples", with_users: bool = False
                     ) -> dict:
    """The arrays `make_dataset` / `make_sequence_dataset` batch, for
    `EpochShuffled`."""
    if isinstance(examples, SequenceExamples):
        tensors = {"history": examples.history.astype(np.int32),
                   "targets": examples.targets.astype(np.int32)}
        if with_users:
            tensors["user_id"] = examples.user.astype(np.int64)
        return tensors
    tensors = {"history": examples.history.astype(np.int32),
               "target": examples.target.astype(np.int32)}
    if with_users:
        tensors["user_id"] = examples.owner.astype(np.int64)
    return tensors


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

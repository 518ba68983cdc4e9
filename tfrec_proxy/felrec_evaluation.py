"""FELRec's online evaluation (Weimann & Conrad §2.7, §3.1, §3.3; §4.4's reset mode).

The model walks the validation or test interactions once, in time order, as it does
in training: for each batch it encodes the users' and items' histories (strictly
before each interaction, from the cache as it stands), scores, then writes the new
representations into the cache (so later interactions see them). Scores are cosine
similarities of representations (the projection heads are not used, §2.7).

For interaction r = (u, x) at time t:

* the user vector is u's new representation (its items before t, encoded now), the
  target's vector x's new representation (its users before t);
* the catalogue is every item with a representation before t: the items in the
  cache at the batch start plus those of the batch's earlier interactions (each
  with its latest representation before t: an earlier row of the same batch
  overrides the cache), plus x itself. A batch never sees its own later rows, so
  no future interaction reaches a score (the reference implementation scores a
  batch after writing all of it);
* normalised rank (§3.3) = (catalogue items other than x scoring >= x) /
  (catalogue size - 1): 0 is best, 1 worst; ties count against the target;
* the score is `sign * cosine`: as the reference code does (not in the paper's
  text), the direction is chosen on validation, `sign = -1` when ranking by
  ascending cosine gives the better validation rank (training aligns the projection
  heads' outputs, not the representations, which can come out anti-aligned);
* HR@k (§3.3: k = 10, 100 negatives): x ranked against `num_negatives` items drawn
  uniformly without replacement from the catalogue at the batch start less x (all
  of them when there are fewer), scored with their latest representations before t;
  a hit when fewer than k negatives score >= x. The reference draws with
  replacement from the whole catalogue (x included); we exclude x and repeats.

Metrics (`summarize`): `{partition}/normalized_rank`, `{partition}/hr@{k}` and
`{partition}/count` for "observed", "new_users", "new_items", "new_both" (user and
item both new, a subset of new_items) and "total".
"""

import dataclasses
from typing import Any, Dict, Optional, Sequence

import numpy as np

from tfrec_proxy._tf import tf
from tfrec_proxy.data.chronological import PARTITIONS, ChronologicalPart
from tfrec_proxy.felrec import BATCH_KEYS

SCORE_CELLS = 1 << 24  # scores held at once in the full-catalogue count (B x chunk)
REPORTED = PARTITIONS + ("new_both", "total")


@dataclasses.dataclass
class OnlineScores:
    """Per-interaction results of one online pass.

    Attributes:
        normalized_rank: `[n]` float64 in [0, 1].
        hit: `[n]` bool, the target in the top k against the sampled negatives.
        catalogue: `[n]` int64 catalogue size at the interaction.
        negatives: `[n]` int64 negatives the target was ranked against.
    """

    normalized_rank: np.ndarray
    hit: np.ndarray
    catalogue: np.ndarray
    negatives: np.ndarray


def summarize(scores: OnlineScores, part: ChronologicalPart, k: int = 10,
              prefix: str = "") -> Dict[str, float]:
    """Means per partition and in total: `{prefix}{partition}/normalized_rank`, `/hr@k`,
    `/count` (partitions without interactions get only their count, 0)."""
    metrics: Dict[str, float] = {}
    for name in REPORTED:
        rows = np.ones(len(part), bool) if name == "total" else part.mask(name)
        metrics[f"{prefix}{name}/count"] = int(rows.sum())
        if rows.any():
            metrics[f"{prefix}{name}/normalized_rank"] = float(
                scores.normalized_rank[rows].mean())
            metrics[f"{prefix}{name}/hr@{k}"] = float(scores.hit[rows].mean())
    return metrics


def _latest_before(items: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For `[B]` batch items and `[B, m]` query items: the batch row of the latest
    occurrence of `queries[r, n]` among rows < r, or -1."""
    size = len(items)
    keys = np.sort(items.astype(np.int64) * size + np.arange(size))
    wanted = queries.astype(np.int64) * size + np.arange(size)[:, None]
    position = np.searchsorted(keys, wanted, side="left") - 1
    found = keys[np.maximum(position, 0)]
    valid = (position >= 0) & (found // size == queries) & (queries >= 0)
    return np.where(valid, found % size, -1)


def _next_same(items: np.ndarray) -> np.ndarray:
    """`[B]` row of the next occurrence of each row's item in the batch, or B."""
    size = len(items)
    order = np.lexsort((np.arange(size), items))
    following = np.full(size, size)
    same = items[order[1:]] == items[order[:-1]]
    following[order[:-1][same]] = order[1:][same]
    return following


class OnlineEvaluator:
    """Compiled online scoring for one `FELRecModel` (reuse it across epochs).

    Args:
        model: The `FELRecModel`; its cache must hold every index the parts use.
        batch_size: Interactions per step (the cache is read at each step's start).
        num_negatives: Sampled negatives of HR@k (paper 100).
        k: HR@k's k (paper 10).
        seed: Seed of the negatives (the same draws for every call).

    Example:

        evaluator = OnlineEvaluator(model, batch_size=256)
        scores = evaluator.run(split.validation)   # writes the cache as it goes
        metrics = summarize(scores, split.validation)
    """

    def __init__(self, model: Any, batch_size: int = 1024, num_negatives: int = 100,
                 k: int = 10, seed: int = 0) -> None:
        if num_negatives < 1 or k < 1 or batch_size < 1:
            raise ValueError(f"OnlineEvaluator needs batch_size, num_negatives and k >= 1, "
                             f"got {batch_size}, {num_negatives}, {k}.")
        self.model, self.batch_size = model, int(batch_size)
        self.num_negatives, self.k, self.seed = int(num_negatives), int(k), int(seed)
        specs = {key: tf.TensorSpec([None] + [None] * key.endswith("history"), tf.int32)
                 for key in BATCH_KEYS}
        # No autograph: the steps have no Python control flow on tensors, and tracing
        # the encoder's layers unconverted is several times faster.
        self._score = tf.function(self._score_and_write, autograph=False, input_signature=[
            specs, tf.TensorSpec([None, self.num_negatives], tf.int64)])
        self._write = tf.function(self._encode_and_write, autograph=False,
                                  input_signature=[specs])

    def _encode_and_write(self, batch: Dict[str, tf.Tensor]) -> tf.Tensor:
        users, items = self.model.encode(batch, training=False)
        self.model.write_cache(batch, users, items)
        return tf.shape(users)[0]

    def _score_and_write(self, batch: Dict[str, tf.Tensor],
                         negatives: tf.Tensor) -> Dict[str, tf.Tensor]:
        cache = self.model.cache
        users, items = self.model.encode(batch, training=False)
        user = tf.math.l2_normalize(users, axis=1)
        fresh = tf.math.l2_normalize(items, axis=1)
        target = tf.reduce_sum(user * fresh, axis=1)
        table = tf.identity(cache.item_table)
        filled = tf.identity(cache.item_filled) > 0
        item = tf.cast(batch["item"], tf.int64)
        size = tf.shape(table, out_type=tf.int64)[0]
        chunk = tf.maximum(tf.constant(SCORE_CELLS, tf.int64)
                           // tf.maximum(tf.shape(user, out_type=tf.int64)[0], 1), 1)

        def count_chunk(start: tf.Tensor, above: tf.Tensor, below: tf.Tensor):
            rows = tf.range(start, tf.minimum(start + chunk, size))
            scores = tf.linalg.matmul(user, tf.math.l2_normalize(
                tf.gather(table, rows), axis=1), transpose_b=True)
            other = tf.gather(filled, rows)[None, :] \
                & tf.not_equal(rows[None, :], item[:, None])
            return (start + chunk,
                    above + tf.reduce_sum(tf.cast(other & (scores >= target[:, None]),
                                                  tf.int64), axis=1),
                    below + tf.reduce_sum(tf.cast(other & (scores <= target[:, None]),
                                                  tf.int64), axis=1))

        _, above, below = tf.while_loop(
            lambda start, *_: start < size, count_chunk,
            [tf.constant(0, tf.int64), tf.zeros_like(item), tf.zeros_like(item)])
        cached = tf.math.l2_normalize(tf.gather(table, item), axis=1)
        negative_vectors = tf.math.l2_normalize(
            tf.gather(table, tf.maximum(negatives, 0)), axis=2)
        outputs = {
            "target": target, "above": above, "below": below,
            "catalogue": tf.reduce_sum(tf.cast(filled, tf.int64)),
            "fresh": tf.linalg.matmul(user, fresh, transpose_b=True),
            "cached": tf.linalg.matmul(user, cached, transpose_b=True),
            "filled": tf.gather(filled, item),
            "negatives": tf.einsum("bd,bnd->bn", user, negative_vectors)}
        self.model.write_cache(batch, users, items)
        return outputs

    def replay(self, part: Any) -> None:
        """Encodes interactions in order and writes the cache, without scoring (the
        reset mode's pass over training and validation; `update_cache`).

        Args:
            part: A `ChronologicalPart`, or its `features()` dict of `[n]` / `[n, L]`
                arrays.
        """
        features = part if isinstance(part, dict) else part.features()
        size = len(features["user"])
        for start in range(0, size, self.batch_size):
            self._write({key: tf.constant(value[start:start + self.batch_size], tf.int32)
                         for key, value in features.items()})

    def _negatives(self, rng: np.random.Generator, pool: np.ndarray,
                   targets: np.ndarray) -> np.ndarray:
        """`[B, m]` item indices drawn without replacement from `pool` less each
        target (-1 pads rows whose pool is smaller than m)."""
        wanted = self.num_negatives
        out = np.full((len(targets), wanted), -1, np.int64)
        for row, target in enumerate(targets):
            drawn = pool[rng.choice(len(pool), size=min(wanted + 1, len(pool)),
                                    replace=False)] if len(pool) else pool
            drawn = drawn[drawn != target][:wanted]
            out[row, :len(drawn)] = drawn
        return out

    def run(self, part: ChronologicalPart, sign: int = 1) -> OnlineScores:
        """Scores every interaction of `part` in order (and writes the cache), by
        `sign * cosine` (`sign` 1 or -1)."""
        return self.run_both(part, (sign,))[sign]

    def run_both(self, part: ChronologicalPart, signs: Sequence[int] = (1, -1)
                 ) -> Dict[int, OnlineScores]:
        """One pass scored by `sign * cosine` for each of `signs`."""
        if not set(signs) <= {1, -1} or not signs:
            raise ValueError(f"score signs must be 1 or -1, got {signs!r}.")
        rng = np.random.default_rng([self.seed, 17])
        features = part.features()
        results: Dict[int, list] = {sign: [] for sign in signs}
        for start in range(0, len(part), self.batch_size):
            batch = {key: value[start:start + self.batch_size]
                     for key, value in features.items()}
            pool = np.flatnonzero(self.model.cache.item_filled.numpy() > 0)
            negatives = self._negatives(rng, pool, batch["item"])
            out = self._score({key: tf.constant(value, tf.int32)
                               for key, value in batch.items()},
                              tf.constant(negatives, tf.int64))
            out = {key: value.numpy() for key, value in out.items()}
            for sign in signs:
                results[sign].append(self._correct(batch["item"].astype(np.int64),
                                                   negatives, out, sign))
        empty = np.zeros(0)
        return {sign: OnlineScores(*(np.concatenate(values) for values in zip(*rows)))
                if rows else OnlineScores(empty, empty.astype(bool), empty.astype(np.int64),
                                          empty.astype(np.int64))
                for sign, rows in results.items()}

    def _correct(self, items: np.ndarray, negatives: np.ndarray,
                 out: Dict[str, np.ndarray], sign: int) -> tuple:
        """Applies the batch's earlier rows (their fresh item vectors) to each row."""
        size = len(items)
        rows = np.arange(size)
        target, fresh, cached = (sign * out[key] for key in ("target", "fresh", "cached"))
        # Row s's item counts for row r with its fresh vector when s is the latest
        # earlier occurrence of that item and the item is not r's target.
        latest = (rows[None, :] < rows[:, None]) \
            & (_next_same(items)[None, :] >= rows[:, None]) \
            & (items[None, :] != items[:, None])
        filled = out["filled"].astype(bool)
        above = target[:, None]
        counted = out["above" if sign > 0 else "below"]  # sign -1: "<=" in cosine
        count = counted - np.sum(latest & filled[None, :] & (cached >= above), axis=1) \
            + np.sum(latest & (fresh >= above), axis=1)
        catalogue = out["catalogue"] + np.sum(latest & ~filled[None, :], axis=1) + ~filled
        normalized = count / np.maximum(catalogue - 1, 1)
        source = _latest_before(items, negatives)
        scores = np.where(source >= 0, fresh[rows[:, None], np.maximum(source, 0)],
                          sign * out["negatives"])
        valid = negatives >= 0
        beaten = np.sum(valid & (scores >= above), axis=1)
        return (normalized, beaten < self.k, catalogue.astype(np.int64),
                valid.sum(axis=1).astype(np.int64))


def evaluate_online(model: Any, part: ChronologicalPart, *, batch_size: int = 1024,
                    num_negatives: int = 100, k: int = 10, seed: int = 0, sign: int = 1,
                    prefix: str = "") -> Dict[str, float]:
    """One online pass over `part` (writes the cache) -> `summarize` metrics."""
    evaluator = OnlineEvaluator(model, batch_size, num_negatives, k, seed)
    return summarize(evaluator.run(part, sign), part, k, prefix)


class OnlineValidation(tf.keras.callbacks.Callback):
    """After each training epoch, evaluates the validation interactions online (the
    cache as training left it, §2.7), in both score directions, and adds the better
    one's `val_normalized_rank` and `val_hr@{k}` and its `val_score_sign` (1: by
    cosine, -1: by -cosine) to the epoch logs; keeps the best epoch's weights (cache
    included) and sign, restores them at the end of training (§3.3: "revert the
    models to a checkpoint with the best validation rank"); stops after `patience`
    epochs without improvement (0: never).

    Place it after `ResetCache` (which clears the cache at each epoch start).

    Example:

        validation = OnlineValidation(OnlineEvaluator(model, 256), split.validation)
        model.fit(data, epochs=20, callbacks=[ResetCache(), validation])
        validation.sign  # the score direction of the best epoch
    """

    def __init__(self, evaluator: OnlineEvaluator, part: ChronologicalPart,
                 patience: int = 0) -> None:
        super().__init__()
        self.evaluator, self.part = evaluator, part
        self.patience = int(patience)
        self.best: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.best_metrics: Dict[str, float] = {}
        self.sign = 1
        self._best_weights: Optional[list] = None
        self._wait = 0
        self._last_epoch = -1

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, float]] = None) -> None:
        if not len(self.part):
            return
        k = self.evaluator.k
        both = {sign: summarize(scores, self.part, k)
                for sign, scores in self.evaluator.run_both(self.part).items()}
        sign = min(both, key=lambda s: (both[s]["total/normalized_rank"], -s))
        rank, hr = both[sign]["total/normalized_rank"], both[sign][f"total/hr@{k}"]
        if logs is not None:
            logs.update({"val_normalized_rank": rank, f"val_hr@{k}": hr,
                         "val_score_sign": float(sign)})
        self._last_epoch = epoch
        if self.best is None or rank < self.best:
            self.best, self.best_epoch, self._wait, self.sign = rank, epoch, 0, sign
            self.best_metrics = both[sign]
            self._best_weights = self.model.get_weights()
            return
        self._wait += 1
        if self.patience and self._wait >= self.patience:
            self.model.stop_training = True

    def get_state(self) -> Dict[str, Any]:
        """The best epoch so far (weights included) and the patience count, for a
        training backup (`tfrec_proxy.backup`)."""
        return {"best": self.best, "best_epoch": self.best_epoch,
                "best_metrics": dict(self.best_metrics), "sign": self.sign,
                "best_weights": self._best_weights, "wait": self._wait,
                "last_epoch": self._last_epoch}

    def set_state(self, state: Dict[str, Any]) -> None:
        """Restores `get_state()`."""
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.best_metrics, self.sign = dict(state["best_metrics"]), int(state["sign"])
        weights = state["best_weights"]
        self._best_weights = None if weights is None else [np.asarray(w) for w in weights]
        self._wait, self._last_epoch = int(state["wait"]), int(state["last_epoch"])

    def on_train_end(self, logs: Optional[Dict[str, Any]] = None) -> None:
        if self._best_weights is not None and self.best_epoch != self._last_epoch:
            self.model.set_weights(self._best_weights)

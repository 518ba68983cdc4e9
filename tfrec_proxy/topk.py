"""Exact top-k retrieval over a large catalogue, in blocks, with stock TensorFlow ops.

TFRS's `BruteForce` scores the whole catalogue at once: a `[B, C]` score matrix (4 GB
for 1,000 queries x 1M candidates) and one `tf.math.top_k` over rows of C scores, which
on CPU costs several times the matmul itself. TFRS has no chunked exact top-k, so
`chunked_top_k` (and the TFRS-style layer `ChunkedTopK`) does it here:

1. the catalogue is cut into blocks of `block_size` rows; per block the scorer gives
   `[B, n]` float32 scores (`score_fn(queries, block)`: a dot-product matmul, MUR's
   eq. 4, any `Scorer.score_matrix`);
2. per block, the scores are cut into groups of `group_size` adjacent candidates and
   the group maxima taken (`reduce_max`, one vectorised pass); the k groups with the
   largest maxima hold the block's top k (below), so `tf.math.top_k` (~4-5 ns per
   score on this CPU at k = 10, ~3x that at k = 100) runs over the `n / group_size`
   maxima and the `k x group_size` scores of the chosen groups, not over all n;
3. the blocks' results are concatenated in block order and merged by a second
   `tf.math.top_k`. For k > 16 each block keeps only its top `block_k` (see
   `chunked_top_k`): exact, with a recomputation for the rare queries whose top k
   crowds into one block.

Why step 2 is exact: if a candidate x of the top k lay in a group G that is not among
the k chosen groups, each chosen group's maximum would be `>= max(G) >= x`, and with
an equal maximum the chosen group has the lower group index, so it holds a candidate
before x in the tie order; k candidates would rank before x, a contradiction.

Ties: results are ordered by score (descending), then by candidate position
(ascending), exactly as `tf.math.top_k` over a full row orders them (equal values: the
lower index first), so ids equal TFRS `BruteForce`'s whenever the scores are equal.
The chosen groups are sorted by group index before their scores are gathered, and
blocks are merged in block order, so a lower position always wins a tie. Scores must
not be NaN. Equal scores: on this CPU a block's matmul gives the same float32 bits as
BruteForce's full matmul (checked at 1M x 64, 1,000 queries, blocks of 4k-64k and the
ragged tail), but TensorFlow does not promise it: a different GEMM kernel for a
block's shape (seen for a 2,999-row slice of a 3,000-row catalogue) can move a score
by one ulp and so swap two candidates whose scores are within an ulp.

Blocks up to `unroll_limit` are unrolled in the graph (TensorFlow's executor overlaps
one block's matmul with another's top-k; it keeps only a few blocks' scores alive at
once); beyond that a `tf.while_loop` runs over the blocks with a running merge, which
keeps the graph small for catalogues of tens of millions of candidates.
"""

from typing import Any, Callable, Optional, Tuple, Union

import numpy as np

from tfrec_proxy._tf import tf, tfrs

ScoreFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

DEFAULT_BLOCK_SIZE = 16_384
DEFAULT_GROUP_SIZE = 64
DEFAULT_UNROLL_LIMIT = 128


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_settings(k: int, total: int, block_size: int = DEFAULT_BLOCK_SIZE,
                   group_size: int = DEFAULT_GROUP_SIZE,
                   unroll_limit: int = DEFAULT_UNROLL_LIMIT) -> None:
    """Raises ValueError unless `1 <= k <= total` and the sizes are integers >= 1.

    Example:

        check_settings(k=10, total=1_000_000, block_size=16_384)
    """
    k = _check_int("k", k)
    if k > total:
        raise ValueError(f"k={k} exceeds the catalogue size ({total} candidates).")
    for name, value in (("block_size", block_size), ("group_size", group_size),
                        ("unroll_limit", unroll_limit)):
        _check_int(name, value)


def dot_scores(queries: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
    """`[B, d] x [n, d] -> [B, n]` inner products (TFRS `BruteForce`'s score)."""
    return tf.linalg.matmul(queries, tf.cast(candidates, queries.dtype), transpose_b=True)


def block_top_k(scores: tf.Tensor, k: int, group_size: int = DEFAULT_GROUP_SIZE
                ) -> Tuple[tf.Tensor, tf.Tensor]:
    """The top k of each row of one block's scores, through group maxima.

    Args:
        scores: `[B, n]` scores, not NaN.
        k: Results per row; `min(k, n)` are returned.
        group_size: Most adjacent scores per group (1: a plain `tf.math.top_k`);
            lowered to `n // (4 k)` when larger.

    Returns:
        `([B, min(k, n)] scores, [B, min(k, n)] int32 column positions)`, by score
        descending, then position ascending (as `tf.math.top_k(scores, k)`).

    Example:

        values, columns = block_top_k(tf.random.normal([4, 1000]), k=10)  # [4, 10] each
    """
    n = int(scores.shape[1])
    k = min(k, n)
    # Groups pay off while the k chosen groups hold far fewer scores than the block:
    # at most a quarter of it (k = 100 in a block of 8,192 gets groups of 20).
    group_size = min(group_size, n // (4 * k))
    if group_size <= 1:
        return tf.math.top_k(scores, k=k)
    groups = -(-n // group_size)
    if groups * group_size != n:  # ragged: -inf padding never outranks a real score
        scores = tf.pad(scores, [[0, 0], [0, groups * group_size - n]],
                        constant_values=tf.constant(-np.inf, scores.dtype))
    grouped = tf.reshape(scores, [-1, groups, group_size])
    _, chosen = tf.math.top_k(tf.reduce_max(grouped, axis=2), k=k)
    chosen = tf.sort(chosen, axis=1)  # position order, so ties go to the lower position
    values = tf.reshape(tf.gather(grouped, chosen, batch_dims=1), [-1, k * group_size])
    top, at = tf.math.top_k(values, k=k)
    columns = tf.gather(chosen, at // group_size, batch_dims=1) * group_size \
        + at % group_size
    return top, columns


def _merge(scores: tf.Tensor, positions: tf.Tensor, k: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """Top k of concatenated partial results (columns in position order for ties)."""
    top, at = tf.math.top_k(scores, k=k)
    return top, tf.gather(positions, at, batch_dims=1)


def _scan(queries: tf.Tensor, candidates: tf.Tensor, k: int, kept: int, score: ScoreFn,
          block_size: int, group_size: int, unroll_limit: int
          ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Top k over blocks that each keep their top `kept`; also the largest `kept`-th
    score of a block that had more (`[B]`, -inf if none): where it reaches the k-th
    result, that block may hold more of the top k than it kept."""
    total = int(candidates.shape[0])
    full, tail = divmod(total, block_size)
    floor = tf.fill(tf.shape(queries)[:1], tf.constant(-np.inf, candidates.dtype))

    def one_block(start: int, size: int, keep: int) -> Tuple[tf.Tensor, tf.Tensor]:
        values, columns = block_top_k(score(queries, candidates[start:start + size]),
                                      keep, group_size)
        return values, columns + start

    def lower(floor: tf.Tensor, values: tf.Tensor, size: int) -> tf.Tensor:
        return tf.maximum(floor, tf.cast(values[:, -1], floor.dtype)) if size > kept else floor

    head_blocks = -(-k // block_size)  # the loop's first state holds >= k candidates
    if full + bool(tail) <= unroll_limit or head_blocks >= full:
        parts = []
        for start in range(0, total, block_size):
            size = min(block_size, total - start)
            parts.append(one_block(start, size, kept))
            floor = lower(floor, parts[-1][0], size)
        if len(parts) == 1:
            return (*parts[0], floor)
        return (*_merge(tf.concat([v for v, _ in parts], 1),
                        tf.concat([p for _, p in parts], 1), k), floor)

    # Many blocks: a loop over [full, block_size, d] with a running [B, k] merge; the
    # earlier blocks' results come first in each merge, so ties keep position order.
    blocks = tf.reshape(candidates[:full * block_size], [full, block_size, -1])
    best_scores, best_positions = one_block(0, head_blocks * block_size, k)

    def body(i, best_scores, best_positions, floor):
        values, columns = block_top_k(score(queries, blocks[i]), kept, group_size)
        merged = _merge(tf.concat([best_scores, values], 1),
                        tf.concat([best_positions, columns + i * block_size], 1), k)
        return (i + 1, *merged, lower(floor, values, block_size))

    _, best_scores, best_positions, floor = tf.while_loop(
        lambda i, *_: i < full, body,
        (tf.constant(head_blocks), best_scores, best_positions, floor), parallel_iterations=2)
    if tail:
        values, columns = one_block(full * block_size, tail, kept)
        floor = lower(floor, values, tail)
        best_scores, best_positions = _merge(tf.concat([best_scores, values], 1),
                                             tf.concat([best_positions, columns], 1), k)
    return best_scores, best_positions, floor


def chunked_top_k(queries: tf.Tensor, candidates: tf.Tensor, k: int,
                  score_fn: Optional[ScoreFn] = None, *,
                  block_size: int = DEFAULT_BLOCK_SIZE,
                  group_size: int = DEFAULT_GROUP_SIZE,
                  unroll_limit: int = DEFAULT_UNROLL_LIMIT,
                  block_k: Optional[int] = None) -> Tuple[tf.Tensor, tf.Tensor]:
    """Exact top-k candidates of every query, scoring the catalogue block by block.

    Large k: `tf.math.top_k` with k = 100 costs ~3x k = 10 per score on CPU, so each
    block keeps only its top `block_k` (default: k up to 16, else
    `max(16, 4 k / blocks)`). That is exact unless one block holds more than
    `block_k` of a query's top k; such a block's `block_k`-th score reaches the k-th
    result (ties count), and those queries are recomputed with `block_k = k`.

    Args:
        queries: `[B, d]` or `[B, M, d]` (whatever `score_fn` takes).
        candidates: `[C, d]` candidate embeddings (C static).
        k: Results per query, `1 <= k <= C`.
        score_fn: `(queries, [n, d] block) -> [B, n]` scores, e.g.
            `scorer.score_matrix`; None is the dot product.
        block_size: Candidates scored at once (peak memory ~ B x block_size scores
            per block in flight).
        group_size: Most adjacent candidates per group maximum (1: no grouping).
        unroll_limit: Most blocks unrolled in the graph; more run in a
            `tf.while_loop`.
        block_k: Results kept per block (see above); None picks it.

    Returns:
        `([B, k] scores, [B, k] int32 candidate positions)`, ordered by score
        descending, then position ascending.

    Raises:
        ValueError: bad `k`, `block_size`, `group_size`, `unroll_limit`, `block_k`
            or shapes.

    Example:

        scores, positions = chunked_top_k(tf.random.normal([8, 64]),
                                          tf.random.normal([100_000, 64]), k=10)
    """
    candidates = tf.convert_to_tensor(candidates)
    if candidates.shape.rank != 2 or candidates.shape[0] is None:
        raise ValueError(f"candidates must be [C, d] with a static C, got {candidates.shape}.")
    total = int(candidates.shape[0])
    check_settings(k, total, block_size, group_size, unroll_limit)
    k, block_size, group_size = int(k), int(block_size), int(group_size)
    blocks = -(-total // block_size)
    if block_k is None:
        kept = min(k, max(16, -(-4 * k // blocks)))
    else:
        kept = min(k, _check_int("block_k", block_k))
    sizes = [min(block_size, total - start) for start in range(0, total, block_size)]
    if sum(min(kept, size) for size in sizes) < k:
        kept = k  # the blocks' results must hold at least k candidates
    score = score_fn or dot_scores
    scores, positions, floor = _scan(queries, candidates, k, kept, score, block_size,
                                     group_size, unroll_limit)
    if kept == k:
        return scores, positions
    redo = floor >= tf.cast(scores[:, -1], floor.dtype)

    def recompute() -> Tuple[tf.Tensor, tf.Tensor]:
        rows = tf.where(redo)
        exact = chunked_top_k(tf.boolean_mask(queries, redo), candidates, k, score_fn,
                              block_size=block_size, group_size=group_size,
                              unroll_limit=1, block_k=k)
        return (tf.tensor_scatter_nd_update(scores, rows, exact[0]),
                tf.tensor_scatter_nd_update(positions, rows, exact[1]))

    return tf.cond(tf.reduce_any(redo), recompute, lambda: (scores, positions))


class ChunkedTopK(tfrs.layers.factorized_top_k.BruteForce):
    """TFRS `BruteForce` with the exact chunked top-k (`chunked_top_k`) and any scorer.

    A drop-in for `BruteForce` / `savedmodels.ScorerBruteForce`: `index(candidates,
    identifiers)` stores both as (non-trainable) weights, `call(queries, k)` returns
    `([B, k] scores, [B, k] identifiers)`, `is_exact()` is True. It uses stock
    TensorFlow ops only, so a SavedModel holding it loads without this library.

    Args:
        scorer: An object with `score_matrix(queries, candidates) -> [B, C]` (a
            `tfrec_proxy.scoring.Scorer`, e.g. MUR's eq. 4 over `[B, M, d]`
            queries), or None for the dot product of `[B, d]` queries.
        k: Default k.
        block_size, group_size, unroll_limit, block_k: See `chunked_top_k`.
        query_model: Optional Keras model mapping raw features to queries.
        name: Layer name.

    Example:

        index = ChunkedTopK(k=10)
        index.index(tf.random.normal([100_000, 64]), tf.range(100_000, dtype=tf.int64))
        scores, ids = index(tf.random.normal([8, 64]))  # [8, 10] each
    """

    def __init__(self, scorer: Optional[Any] = None, k: int = 10, *,
                 block_size: int = DEFAULT_BLOCK_SIZE,
                 group_size: int = DEFAULT_GROUP_SIZE,
                 unroll_limit: int = DEFAULT_UNROLL_LIMIT,
                 block_k: Optional[int] = None,
                 query_model: Optional[tf.keras.Model] = None,
                 name: Optional[str] = None) -> None:
        super().__init__(query_model=query_model, k=_check_int("k", k), name=name)
        self.scorer = scorer
        self.block_size = _check_int("block_size", block_size)
        self.group_size = _check_int("group_size", group_size)
        self.unroll_limit = _check_int("unroll_limit", unroll_limit)
        self.block_k = None if block_k is None else _check_int("block_k", block_k)

    def index(self, candidates: tf.Tensor, identifiers: Optional[tf.Tensor] = None
              ) -> "ChunkedTopK":
        """Stores `[C, d]` candidates and their `[C]` identifiers (default: positions).

        Raises:
            ValueError: an empty or non-2-D catalogue, or mismatched identifiers.
        """
        candidates = tf.convert_to_tensor(candidates)
        if candidates.shape.rank != 2 or not candidates.shape[0]:
            raise ValueError(f"candidates must be a non-empty [C, d] matrix, got shape "
                             f"{candidates.shape}.")
        if candidates.shape[0] >= 2 ** 31:
            raise ValueError("ChunkedTopK supports fewer than 2**31 candidates.")
        return super().index(candidates, identifiers)

    def _compute_score(self, queries: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        if self.scorer is None:
            return dot_scores(queries, candidates)
        return self.scorer.score_matrix(queries, candidates)

    def call(self, queries: Union[tf.Tensor, dict], k: Optional[int] = None
             ) -> Tuple[tf.Tensor, tf.Tensor]:
        """`[B, d]` / `[B, M, d]` queries -> `([B, k] scores, [B, k] identifiers)`.

        Raises:
            ValueError: `index` was not called, or a bad k (< 1 or > catalogue).
        """
        if self._candidates is None:
            raise ValueError("The `index` method must be called first to create the "
                             "retrieval index.")
        k = self._k if k is None else k
        if self.query_model is not None:
            queries = self.query_model(queries)
        scores, positions = chunked_top_k(
            queries, tf.convert_to_tensor(self._candidates), k, self._compute_score,
            block_size=self.block_size, group_size=self.group_size,
            unroll_limit=self.unroll_limit, block_k=self.block_k)
        return scores, tf.gather(self._identifiers, positions)

    def is_exact(self) -> bool:
        return True

    def get_config(self) -> dict:
        # The scorer is a layer tracked as a sublayer (its weights are saved); Keras
        # configs cannot hold it, so the config lists the sizes only.
        return {"k": self._k, "block_size": self.block_size, "group_size": self.group_size,
                "unroll_limit": self.unroll_limit, "block_k": self.block_k,
                "name": self.name}

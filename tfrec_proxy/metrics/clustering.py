"""Clustering quality of item embeddings: the mean silhouette (MS) score.

Rousseeuw (1987), as used by the IDW paper (Mehta et al. 2023, §3.2) to score how
well learned item embeddings separate the ground-truth interest clusters. For a
point `p` of cluster `c`::

    a_p = mean Euclidean distance from p to the other points of c
    b_p = min over clusters c' != c of the mean distance from p to the points of c'
    s_p = (b_p - a_p) / max(a_p, b_p)

and `MS = mean_p s_p`, in [-1, 1]. Like scikit-learn, a point alone in its cluster
has `s_p = 0` (and so does a point with `a_p = b_p = 0`). Pure numpy: pairwise
distances in row blocks (float64, from norms and a matmul, self-distances exactly 0),
per-cluster distance sums by one one-hot matmul per block.
"""

import numbers
from typing import Optional

import numpy as np

# Rows per block of pairwise distances: 512 x 4096 float64 is 16 MiB.
_BLOCK_ROWS = 512


def silhouette_score(embeddings: np.ndarray, labels: np.ndarray,
                     max_points: Optional[int] = 4096, seed: int = 0) -> float:
    """Mean silhouette of `embeddings` clustered by `labels`.

    Points with a label < 0 (padding / OOV rows use -1) are left out entirely. When
    more than `max_points` points remain, a uniform random subset of `max_points` of
    them (`np.random.default_rng(seed)`, without replacement) is scored: both the
    points whose silhouettes are averaged and the clusters they are compared with come
    from that subset, so the cost is `O(max_points^2 d)` and the result is the exact
    silhouette of the subset (deterministic for a given seed).

    Args:
        embeddings: `[N, d]` real, finite embeddings.
        labels: `[N]` integer cluster ids; values < 0 are ignored.
        max_points: largest number of points scored (>= 2), or None for all of them.
        seed: seed of the subset draw.

    Returns:
        The mean silhouette, in [-1, 1].

    Raises:
        ValueError: for bad shapes or dtypes, non-finite embeddings, a bad
            `max_points` or `seed`, or fewer than 2 distinct labels >= 0 (after the
            subset draw).
    """
    embeddings = np.asarray(embeddings)
    labels = np.asarray(labels)
    if embeddings.ndim != 2 or not (np.issubdtype(embeddings.dtype, np.floating)
                                    or np.issubdtype(embeddings.dtype, np.integer)):
        raise ValueError(f"embeddings must be a real [N, d] array; got shape "
                         f"{embeddings.shape} and dtype {embeddings.dtype}.")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array; got shape {labels.shape} "
                         f"and dtype {labels.dtype}.")
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels has shape {labels.shape}; expected "
                         f"({embeddings.shape[0]},), one label per embedding row.")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("embeddings must be finite; got a NaN or infinite value.")
    if max_points is not None and (isinstance(max_points, bool) or not isinstance(
            max_points, numbers.Integral) or max_points < 2):
        raise ValueError(f"max_points must be None or an integer >= 2; got {max_points!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}.")

    keep = np.flatnonzero(labels >= 0)
    if max_points is not None and keep.size > max_points:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(keep, size=max_points, replace=False))
    classes, cluster = np.unique(labels[keep], return_inverse=True)
    if classes.size < 2:
        raise ValueError(f"silhouette_score needs >= 2 distinct labels >= 0; got "
                         f"{classes.size} ({classes.tolist()}) among {keep.size} points.")
    points = embeddings[keep].astype(np.float64)
    points -= points.mean(axis=0)  # centring limits cancellation in the norms trick
    n, num_clusters = points.shape[0], classes.size
    counts = np.bincount(cluster, minlength=num_clusters).astype(np.float64)
    one_hot = np.zeros((n, num_clusters))
    one_hot[np.arange(n), cluster] = 1.0
    norms = np.square(points).sum(axis=1)
    sums = np.empty((n, num_clusters))  # sums[p, c] = sum of distances from p to c
    for start in range(0, n, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, n)
        squared = norms[start:stop, None] + norms[None, :] - 2.0 * points[start:stop] @ points.T
        np.maximum(squared, 0.0, out=squared)
        distances = np.sqrt(squared, out=squared)
        distances[np.arange(stop - start), np.arange(start, stop)] = 0.0
        sums[start:stop] = distances @ one_hot

    rows = np.arange(n)
    own_size = counts[cluster]
    a = sums[rows, cluster] / np.maximum(own_size - 1.0, 1.0)
    mean_to = sums / counts
    mean_to[rows, cluster] = np.inf
    b = mean_to.min(axis=1)
    scale = np.maximum(a, b)
    defined = (own_size > 1) & (scale > 0)
    silhouettes = np.zeros(n)
    silhouettes[defined] = (b[defined] - a[defined]) / scale[defined]
    return float(silhouettes.mean())

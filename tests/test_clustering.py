"""Mean silhouette score (Rousseeuw 1987; IDW paper §3.2), pinned against hand values."""

import math

import numpy as np
import pytest

from tfrec_proxy.metrics.clustering import silhouette_score


def _brute_force(points, labels):
    """Pure-python double loop over the definition (singletons score 0)."""
    points, labels = points.tolist(), labels.tolist()
    clusters = sorted(set(labels))
    total = 0.0
    for p, (x, c) in enumerate(zip(points, labels)):
        own = [math.dist(x, y) for q, (y, l) in enumerate(zip(points, labels))
               if l == c and q != p]
        if not own:
            continue  # s_p = 0
        a = sum(own) / len(own)
        b = min(sum(math.dist(x, y) for y, l in zip(points, labels) if l == other)
                / labels.count(other) for other in clusters if other != c)
        total += (b - a) / max(a, b)
    return total / len(points)


def test_four_points_1d_by_hand():
    # Cluster 0 = {0, 1}, cluster 1 = {4, 6}.
    # p=0: a = 1, b = (4 + 6) / 2 = 5 -> s = 4/5
    # p=1: a = 1, b = (3 + 5) / 2 = 4 -> s = 3/4
    # p=4: a = 2, b = (4 + 3) / 2 = 3.5 -> s = 1.5/3.5 = 3/7
    # p=6: a = 2, b = (6 + 5) / 2 = 5.5 -> s = 3.5/5.5 = 7/11
    points = np.array([[0.0], [1.0], [4.0], [6.0]])
    labels = np.array([0, 0, 1, 1])
    expected = (4 / 5 + 3 / 4 + 3 / 7 + 7 / 11) / 4  # 0.65373...
    assert silhouette_score(points, labels) == pytest.approx(expected, rel=1e-12)


def test_separated_clusters_close_to_one():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    labels = np.repeat(np.arange(3), 20)
    points = centres[labels] + 0.1 * rng.standard_normal((60, 2))
    score = silhouette_score(points, labels)
    assert 0.99 < score <= 1.0
    # Shuffled labels: no structure, a score near 0.
    assert abs(silhouette_score(points, rng.permutation(labels))) < 0.2


def test_negative_labels_are_ignored():
    points = np.array([[0.0], [1.0], [4.0], [6.0], [0.5], [5.0]])
    labels = np.array([0, 0, 1, 1, -1, -1])
    assert silhouette_score(points, labels) == pytest.approx(
        silhouette_score(points[:4], labels[:4]), rel=1e-12)


def test_singleton_cluster_scores_zero():
    # Cluster 2 = {10} alone: s = 0. The four-point example's points keep their a; b is
    # now the min over two other clusters: p=0: min(5, 10) = 5, p=1: min(4, 9) = 4,
    # p=4: min(3.5, 6) = 3.5 (unchanged), p=6: min(5.5, 4) = 4 -> s = (4 - 2) / 4 = 1/2.
    points = np.array([[0.0], [1.0], [4.0], [6.0], [10.0]])
    labels = np.array([0, 0, 1, 1, 2])
    expected = (4 / 5 + 3 / 4 + 3 / 7 + 1 / 2 + 0.0) / 5  # 0.49571...
    assert silhouette_score(points, labels) == pytest.approx(expected, rel=1e-12)


def test_agrees_with_brute_force_double_loop():
    rng = np.random.default_rng(1)
    points = rng.standard_normal((30, 3))
    labels = rng.integers(0, 4, 30)
    labels[0] = 7  # a singleton too
    assert silhouette_score(points, labels) == pytest.approx(_brute_force(points, labels),
                                                             abs=1e-9)
    # Far from the origin (the norms trick must not lose the precision).
    assert silhouette_score(points + 1e3, labels) == pytest.approx(
        _brute_force(points + 1e3, labels), abs=1e-9)


def test_subset_mode_is_deterministic_per_seed():
    rng = np.random.default_rng(2)
    points = rng.standard_normal((500, 4))
    labels = rng.integers(0, 5, 500)
    points += 1.5 * np.eye(5, 4)[labels]  # some structure
    first = silhouette_score(points, labels, max_points=100, seed=3)
    assert silhouette_score(points, labels, max_points=100, seed=3) == first
    assert silhouette_score(points, labels, max_points=100, seed=4) != first
    # The subset score is the exact score of that subset of points.
    keep = np.sort(np.random.default_rng(3).choice(500, size=100, replace=False))
    assert first == pytest.approx(_brute_force(points[keep], labels[keep]), abs=1e-9)
    # max_points at or above N, or None, scores every point.
    full = silhouette_score(points, labels, max_points=None)
    assert silhouette_score(points, labels, max_points=500, seed=9) == full
    assert full == pytest.approx(_brute_force(points, labels), abs=1e-9)


@pytest.mark.parametrize("points, labels, kwargs, match", [
    (np.zeros((4, 2)), np.array([3, 3, 3, 3]), {}, r">= 2 distinct labels"),
    (np.zeros((4, 2)), np.array([0, -1, -1, -1]), {}, r">= 2 distinct labels"),
    (np.zeros((4, 2)), np.array([0.0, 1.0, 0.0, 1.0]), {}, r"labels must be a 1-D integer"),
    (np.zeros((4, 2)), np.array([0, 1, 0]), {}, r"labels has shape \(3,\); expected \(4,\)"),
    (np.zeros(4), np.array([0, 1, 0, 1]), {}, r"embeddings must be a real \[N, d\]"),
    (np.array([[0.0], [np.nan]]), np.array([0, 1]), {}, r"finite"),
    (np.zeros((4, 2)), np.array([0, 1, 0, 1]), {"max_points": 1}, r"max_points .*got 1"),
    (np.zeros((4, 2)), np.array([0, 1, 0, 1]), {"seed": -1}, r"seed .*got -1"),
])
def test_bad_inputs_raise(points, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        silhouette_score(points, labels, **kwargs)

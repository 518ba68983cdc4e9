"""Ranking metrics and evaluation protocols, pinned against hand-computed values."""

import math

import numpy as np
import pytest

from tfrec_proxy import metrics
from tfrec_proxy._tf import tf
from tfrec_proxy.metrics import (FIRST_ITEM, evaluate_embeddings, full_ranks, hit_rate, mrr,
                                 ndcg, popularity_groups, ranks_from_scores, sample_negatives,
                                 sampled_ranks, summarize)
from tfrec_proxy.scoring import DotScorer

# 1 / log2(3) and 1 / log2(7): the NDCG gains of ranks 1 and 5.
GAIN_1 = 0.6309297535714575
GAIN_5 = 0.3562071871080222

# A 6-item vocabulary (0 = PAD, 1 = OOV, real items 2..5) in d = 2, and three queries.
ITEMS = np.array([[0, 0], [0, 0], [1, 0], [0, 1], [1, 1], [-1, 0]], np.float32)
QUERIES = np.array([[2, 1], [0, 1], [-1, 0]], np.float32)
TARGETS = np.array([2, 3, 4])
# Scores of items 2..5:  q0: 2, 1, 3, -2 (target 2 -> item 4 beats it: rank 1)
#                        q1: 0, 1, 1, 0  (target 3 -> item 4 ties: rank 1)
#                        q2: -1, 0, -1, 1 (target 4 -> items 2 (tie), 3, 5: rank 3)
HAND_RANKS = [1, 1, 3]


def test_hit_rate_ndcg_mrr_by_hand():
    ranks = np.array([0, 1, 5, 30])
    assert hit_rate(ranks, 1) == 0.25
    assert hit_rate(ranks, 5) == 0.5
    assert hit_rate(ranks, 20) == 0.75
    assert ndcg(ranks, 1) == pytest.approx(0.25)
    assert ndcg(ranks, 5) == pytest.approx((1 + GAIN_1) / 4)  # 0.40773243839
    assert ndcg(ranks, 20) == pytest.approx((1 + GAIN_1 + GAIN_5) / 4)  # 0.49678423517
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 6 + 1 / 31) / 4)  # 0.42473118280
    assert mrr(ranks, 1) == 0.25
    assert mrr(ranks, 20) == pytest.approx((1 + 1 / 2 + 1 / 6) / 4)  # MRR@20: rank 30 counts 0


@pytest.mark.parametrize("call", [lambda: hit_rate([0, 1], 0), lambda: ndcg([0], 0),
                                  lambda: hit_rate([], 5), lambda: ndcg([], 5),
                                  lambda: mrr([]), lambda: mrr([-1]), lambda: mrr([0], 0)])
def test_metric_errors(call):
    with pytest.raises(ValueError):
        call()


def test_ranks_from_scores_pessimistic_ties_and_mask():
    target = np.array([0.5, 1.0])
    candidates = np.array([[0.5, 0.2, 0.9], [1.0, 1.0, 0.3]])
    # Ties count against the target.
    np.testing.assert_array_equal(ranks_from_scores(target, candidates), [2, 2])
    mask = np.array([[True, True, False], [False, True, True]])
    ranks = ranks_from_scores(target, candidates, mask)
    np.testing.assert_array_equal(ranks, [1, 1])
    assert ranks.dtype == np.int64
    with pytest.raises(ValueError, match="mask"):
        ranks_from_scores(target, candidates, mask[:, :2])


def test_sample_negatives_valid_and_deterministic():
    rng = np.random.default_rng(7)
    num_items, rows = 50, 300
    targets = rng.integers(2, num_items, rows)
    # Histories with PAD/OOV entries and repeats, sometimes containing the target.
    exclude = [rng.integers(0, num_items, rng.integers(0, 30)) for _ in range(rows)]
    negatives = sample_negatives(num_items, targets, exclude, num_negatives=10, seed=3)
    assert negatives.shape == (rows, 10) and negatives.dtype == np.int32
    for row, target, seen in zip(negatives, targets, exclude):
        assert len(set(row)) == 10
        assert row.min() >= 2 and row.max() < num_items
        assert target not in row and not set(row) & set(seen)
    np.testing.assert_array_equal(
        negatives, sample_negatives(num_items, targets, exclude, num_negatives=10, seed=3))
    assert not np.array_equal(
        negatives, sample_negatives(num_items, targets, exclude, num_negatives=10, seed=4))


def test_sample_negatives_after_rejection_rounds_run_out(monkeypatch):
    # One round only: the rows with a repeat or an excluded draw go to the exact sampler.
    monkeypatch.setattr(metrics.negatives, "_MAX_REJECTION_ROUNDS", 1)
    targets = np.full(200, 2)
    exclude = [np.array([3, 4, 5])] * 200
    negatives = sample_negatives(40, targets, exclude, num_negatives=10, seed=0)
    for row in negatives:
        assert len(set(row)) == 10 and not set(row) & {0, 1, 2, 3, 4, 5}


def test_sample_negatives_exhausted_pool_and_too_few():
    # Items 2..7; row 0 excludes its target 2 and item 3: exactly {4, 5, 6, 7} remain.
    negatives = sample_negatives(8, [2], [np.array([3, 0])], num_negatives=4)
    np.testing.assert_array_equal(negatives, [[4, 5, 6, 7]])
    with pytest.raises(ValueError, match="Row 1 has only 3 eligible"):
        sample_negatives(8, [2, 2], [np.array([]), np.array([3, 4])], num_negatives=4)
    with pytest.raises(ValueError, match=r"targets\[0\] = 1"):
        sample_negatives(8, [1], None, num_negatives=2)


@pytest.mark.parametrize("num_negatives", [3, 8])  # rejection path / exact path
def test_sample_negatives_uniform(num_negatives):
    # Items 2..11 minus target 2: 9 eligible, each drawn with probability k / 9.
    negatives = sample_negatives(12, np.full(9000, 2), None, num_negatives=num_negatives)
    counts = np.bincount(negatives.ravel(), minlength=12)[3:]
    expected = 9000 * num_negatives / 9
    np.testing.assert_allclose(counts, expected, rtol=0.05)


def test_sample_negatives_100k_rows():
    # Speed is a benchmark concern (pipelines/); here only correctness at scale.
    rng = np.random.default_rng(0)
    num_items, rows = 50_000, 100_000
    targets = rng.integers(2, num_items, rows)
    exclude = [rng.integers(2, num_items, 10) for _ in range(rows)]
    exclude[0] = np.append(exclude[0], targets[0])  # a target in its own history
    negatives = sample_negatives(num_items, targets, exclude)
    assert negatives.shape == (rows, 99)
    assert np.all(np.diff(negatives, axis=1) > 0)  # sorted, hence distinct
    assert negatives.min() >= FIRST_ITEM and negatives.max() < num_items
    assert not np.any(negatives == targets[:, None])
    # No (row, negative) pair is a (row, excluded item) pair.
    drawn = (np.arange(rows)[:, None] * num_items + negatives).ravel()
    excluded = np.concatenate([row * num_items + items for row, items in enumerate(exclude)])
    assert not np.isin(drawn, excluded).any()


def test_sampled_ranks_by_hand():
    negatives = np.array([[3, 5], [5, 2], [2, 3]])
    # q0: target 2 scores 2 vs 1, -2 -> 0; q1: target 3 scores 1 vs 0, 0 -> 0;
    # q2: target 4 scores -1 vs -1 (tie), 0 -> 2.
    ranks = sampled_ranks(DotScorer(), QUERIES, ITEMS, TARGETS, negatives, batch_size=2)
    np.testing.assert_array_equal(ranks, [0, 0, 2])
    # Maxsim over two query vectors: [1, 0] and [0, 1] score items 2, 3, 5 as 1, 1, 0.
    multi = np.array([[[1, 0], [0, 1]]], np.float32)
    np.testing.assert_array_equal(
        sampled_ranks(None, multi, ITEMS, [2], np.array([[3, 5]])), [1])


def test_sampled_ranks_ignore_padding():
    # Row 0: target 2 (score 2) vs item 3 (1) -> 0. Row 1: only padding -> 0.
    # Row 2: target 4 (score -1) vs items 2 (-1, a tie) and 5 (1) -> 2, padding ignored;
    # the padding of row 1 would tie with (and so beat) the target if it were scored.
    negatives = np.array([[3, -1, -1], [-1, -1, -1], [2, -1, 5]])
    np.testing.assert_array_equal(
        sampled_ranks(None, QUERIES, ITEMS, TARGETS, negatives, batch_size=2), [0, 0, 2])
    with pytest.raises(ValueError, match=r"negatives\[1, 0\] = 1; expected a real item in "
                                         r"\[2, 6\) or -1"):
        sampled_ranks(None, QUERIES, ITEMS, TARGETS, np.array([[3], [1], [2]]))
    with pytest.raises(ValueError, match=r"negatives\[0, 1\] = -2"):
        sampled_ranks(None, QUERIES, ITEMS, TARGETS, np.array([[3, -2], [2, 2], [2, 2]]))


def test_full_ranks_by_hand():
    np.testing.assert_array_equal(full_ranks(None, QUERIES, ITEMS, TARGETS), HAND_RANKS)
    # Row 0 drops item 4 and lists its own target (still ranked); row 2 drops item 5.
    exclude = [np.array([4, 2]), np.array([], np.int64), np.array([5, 0])]
    np.testing.assert_array_equal(
        full_ranks(None, QUERIES, ITEMS, TARGETS, exclude=exclude, chunk_size=1), [0, 1, 2])


def test_constant_model_gets_no_credit():
    items = np.zeros((10, 4), np.float32)
    queries = np.ones((3, 4), np.float32)
    targets = np.array([2, 5, 9])
    np.testing.assert_array_equal(full_ranks(None, queries, items, targets), [7, 7, 7])
    negatives = sample_negatives(10, targets, None, num_negatives=5)
    np.testing.assert_array_equal(sampled_ranks(None, queries, items, targets, negatives),
                                  [5, 5, 5])


def _brute_force_ranks(scores, targets, candidates, exclude):
    """Per row, counts candidates (not the target, not excluded) scoring >= the target."""
    ranks = []
    for row, target in enumerate(targets):
        skipped = {target} | (set(exclude[row]) if exclude is not None else set())
        counted = [c for c in candidates if c not in skipped]
        ranks.append(int(np.sum(scores[row, counted] >= scores[row, target])))
    return ranks


@pytest.mark.parametrize("multi_vector", [False, True])
@pytest.mark.parametrize("with_exclude", [False, True])
@pytest.mark.parametrize("subset", [False, True])
def test_full_ranks_matches_brute_force(multi_vector, with_exclude, subset):
    rng = np.random.default_rng(1)
    num_items, dim, rows = 40, 4, 10
    # Small integer values: exact float32 scores, with many ties.
    items = rng.integers(-2, 3, (num_items, dim)).astype(np.float32)
    shape = (rows, 3, dim) if multi_vector else (rows, dim)
    queries = rng.integers(-2, 3, shape).astype(np.float32)
    targets = rng.integers(2, num_items, rows)
    exclude = ([rng.integers(0, num_items, rng.integers(0, 12)) for _ in range(rows)]
               if with_exclude else None)
    if with_exclude:
        exclude[0] = np.append(exclude[0], targets[0])  # the target is never excluded
    candidates = (rng.permutation(np.arange(2, num_items))[:25] if subset
                  else np.arange(2, num_items))
    scores = (np.einsum("bmd,cd->bmc", queries, items).max(axis=1) if multi_vector
              else queries @ items.T)
    ranks = full_ranks(DotScorer(), tf.constant(queries), items, targets, exclude=exclude,
                       candidate_indices=candidates if subset else None,
                       query_batch_size=3, chunk_size=7)
    np.testing.assert_array_equal(ranks, _brute_force_ranks(scores, targets, candidates,
                                                            exclude))


def test_full_ranks_errors():
    with pytest.raises(ValueError, match="repeat"):
        full_ranks(None, QUERIES, ITEMS, TARGETS, candidate_indices=[2, 3, 3])
    with pytest.raises(ValueError, match=r"targets\[1\] = 0"):
        full_ranks(None, QUERIES, ITEMS, [2, 0, 4])
    with pytest.raises(ValueError, match="2 rows"):
        full_ranks(None, QUERIES[:2], ITEMS, TARGETS)
    with pytest.raises(ValueError, match=r"exclude\[1\] contains 6"):
        full_ranks(None, QUERIES, ITEMS, TARGETS, exclude=[[2], [6], []])


class _RecordingScorer:
    """A `DotScorer` that records the largest `score_matrix` tile it computed."""

    def __init__(self):
        self.scorer = DotScorer()
        self.max_tile = (0, 0)

    def score_matrix(self, queries, candidates):
        scores = self.scorer.score_matrix(queries, candidates)
        self.max_tile = max(self.max_tile, tuple(scores.shape))
        return scores

    def score_candidates(self, queries, candidates):
        return self.scorer.score_candidates(queries, candidates)


def test_full_ranks_large_catalogue_bounded_tiles():
    rng = np.random.default_rng(2)
    num_items = 200_000
    items = rng.integers(-3, 4, (num_items, 8)).astype(np.float32)
    queries = rng.integers(-3, 4, (5, 8)).astype(np.float32)
    targets = rng.integers(2, num_items, 5)
    scorer = _RecordingScorer()
    ranks = full_ranks(scorer, queries, items, targets, query_batch_size=4)
    assert scorer.max_tile == (4, 65536)
    scores = queries @ items.T
    target_scores = scores[np.arange(5), targets]
    # Every real item (the target included) scoring >= the target, minus the target.
    expected = np.sum(scores[:, 2:] >= target_scores[:, None], axis=1) - 1
    np.testing.assert_array_equal(ranks, expected)


def test_summarize_keys_groups_and_empty_group():
    ranks = np.array([0, 4, 9])
    groups = {"head": np.array([True, True, False]), "none": np.zeros(3, bool)}
    result = summarize(ranks, ks=(5,), groups=groups, prefix="full/")
    assert result["full/hr@5"] == pytest.approx(2 / 3)
    assert result["full/ndcg@5"] == pytest.approx((1 + 1 / math.log2(6)) / 3)
    assert result["full/mrr"] == pytest.approx((1 + 1 / 5 + 1 / 10) / 3)
    assert result["full/count"] == 3
    assert result["full/head/hr@5"] == 1.0
    assert result["full/head/mrr"] == pytest.approx((1 + 1 / 5) / 2)
    assert result["full/head/count"] == 2
    assert result["full/none/count"] == 0
    assert all(math.isnan(result[f"full/none/{key}"]) for key in ("hr@5", "ndcg@5", "mrr"))
    with pytest.raises(ValueError, match="groups"):
        summarize(ranks, groups={"bad": np.array([True, False])})


def test_evaluate_embeddings_by_hand_with_head_and_tail():
    # With 3 negatives out of 3 other real items the sampled ranks equal the full ones,
    # [1, 1, 3]. Head items {2, 3}: rows 0 and 1 are head, row 2 is tail.
    head_items = np.array([False, False, True, True, False, False])
    result = evaluate_embeddings(tf.constant(QUERIES), ITEMS, TARGETS, ks=(1, 2),
                                 head_items=head_items, num_negatives=3)
    expected = {
        "hr@1": 0.0, "ndcg@1": 0.0, "hr@2": 2 / 3, "ndcg@2": 2 * GAIN_1 / 3,
        "mrr@1": 0.0, "mrr@2": (1 / 2 + 1 / 2) / 3,
        "mrr": (1 / 2 + 1 / 2 + 1 / 4) / 3, "count": 3,
        "head/hr@1": 0.0, "head/ndcg@1": 0.0, "head/hr@2": 1.0, "head/ndcg@2": GAIN_1,
        "head/mrr@1": 0.0, "head/mrr@2": 0.5, "head/mrr": 0.5, "head/count": 2,
        "tail/hr@1": 0.0, "tail/ndcg@1": 0.0, "tail/hr@2": 0.0, "tail/ndcg@2": 0.0,
        "tail/mrr@1": 0.0, "tail/mrr@2": 0.0, "tail/mrr": 0.25, "tail/count": 1,
    }
    assert set(result) == {f"{p}/{k}" for p in ("sampled", "full") for k in expected}
    for prefix in ("sampled", "full"):
        for key, value in expected.items():
            assert result[f"{prefix}/{key}"] == pytest.approx(value), (prefix, key)


def test_evaluate_embeddings_exclusion():
    # Row 0 excludes 4, row 1 excludes 2, row 2 excludes 5: 2 eligible negatives each,
    # so the sampled ranks are [0, 1, 2]; the full ones are [1, 1, 3] unless the
    # exclusion also applies there.
    exclude = [np.array([4]), np.array([2]), np.array([5])]
    result = evaluate_embeddings(QUERIES, ITEMS, TARGETS, ks=(1,), exclude=exclude,
                                 num_negatives=2)
    assert result["sampled/mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert result["full/mrr"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 4) / 3)
    result = evaluate_embeddings(QUERIES, ITEMS, TARGETS, ks=(1,), exclude=exclude,
                                 sampled=False, exclude_seen_in_full=True)
    assert set(result) == {"full/hr@1", "full/ndcg@1", "full/mrr@1", "full/mrr", "full/count"}
    assert result["full/mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    with pytest.raises(ValueError, match="Nothing to evaluate"):
        evaluate_embeddings(QUERIES, ITEMS, TARGETS, sampled=False, full=False)


def test_integer_inputs_rank_like_floats():
    rng = np.random.default_rng(5)
    items = rng.normal(size=(12, 3)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(4, 3))
    targets = np.array([2, 5, 7, 11])
    np.testing.assert_array_equal(
        full_ranks(None, queries, items, targets),
        full_ranks(None, queries.astype(np.float32), items, targets))


def test_popularity_groups_by_hand():
    # Real items 2..8 with counts 5, 9, 9, 1, 0, 7, 3; PAD and OOV counts are ignored.
    counts = np.array([50, 50, 5, 9, 9, 1, 0, 7, 3])
    # By descending count, ties to the lower index: 3, 4, 7, 2, 8, 5, 6.
    groups = popularity_groups(counts, num_groups=3)  # 7 items: slices of 3, 2, 2
    assert list(groups) == ["pop1", "pop2", "pop3"]
    assert [np.flatnonzero(groups[f"pop{g}"]).tolist() for g in (1, 2, 3)] == [
        [3, 4, 7], [2, 8], [5, 6]]
    groups = popularity_groups(counts.astype(np.float32))  # 5 groups: 2, 2, 1, 1, 1
    assert [np.flatnonzero(mask).tolist() for mask in groups.values()] == [
        [3, 4], [2, 7], [8], [5], [6]]
    assert all(mask.dtype == bool and mask.shape == (9,) for mask in groups.values())
    # More groups than items: the last ones are empty.
    groups = popularity_groups(np.array([0, 0, 1, 2]), num_groups=3)
    assert [np.flatnonzero(mask).tolist() for mask in groups.values()] == [[3], [2], []]


@pytest.mark.parametrize("counts, num_groups, message", [
    (np.array([0, 0, 1, -1]), 2, r"counts\[3\] = -1; expected finite counts >= 0"),
    (np.array([0, 0, np.nan]), 2, r"counts\[2\] = nan"),
    (np.ones((2, 3)), 2, "1-D numeric"),
    (np.array([0]), 1, "1-D numeric"),
    (np.array([0, 0, 1]), 0, "num_groups must be a positive integer"),
])
def test_popularity_groups_errors(counts, num_groups, message):
    with pytest.raises(ValueError, match=message):
        popularity_groups(counts, num_groups)


def test_evaluate_embeddings_item_groups_by_hand():
    # Counts of items 2..5: 1, 5, 4, 0 -> ranked 3, 4, 2, 5: pop1 = {3, 4}, pop2 = {2, 5}.
    groups = popularity_groups(np.array([0, 0, 1, 5, 4, 0]), num_groups=2)
    # Ranks [1, 1, 3] (sampled = full with 3 negatives): pop1 holds rows 1 and 2 (targets
    # 3 and 4), pop2 row 0 (target 2).
    result = evaluate_embeddings(QUERIES, ITEMS, TARGETS, ks=(2,), num_negatives=3,
                                 item_groups=groups,
                                 head_items=np.array([False, False, True, True, False, False]))
    for prefix in ("sampled", "full"):
        assert result[f"{prefix}/pop1/count"] == 2
        assert result[f"{prefix}/pop1/hr@2"] == 0.5
        assert result[f"{prefix}/pop1/ndcg@2"] == pytest.approx(GAIN_1 / 2)
        assert result[f"{prefix}/pop1/mrr"] == pytest.approx((1 / 2 + 1 / 4) / 2)
        assert result[f"{prefix}/pop2/count"] == 1
        assert result[f"{prefix}/pop2/hr@2"] == 1.0
        assert result[f"{prefix}/pop2/mrr"] == 0.5
        assert result[f"{prefix}/head/count"] == 2 and result[f"{prefix}/tail/count"] == 1
    with pytest.raises(ValueError, match=r"item_groups\['tail'\] clashes"):
        evaluate_embeddings(QUERIES, ITEMS, TARGETS, head_items=np.ones(6, bool),
                            item_groups={"tail": np.ones(6, bool)})
    with pytest.raises(ValueError, match=r"item_groups\['pop1'\] must be a bool array of "
                                         r"shape \(6,\)"):
        evaluate_embeddings(QUERIES, ITEMS, TARGETS, item_groups={"pop1": np.ones(5, bool)})


def test_evaluate_embeddings_small_catalogue():
    # 4 real items, 99 negatives asked: each row is ranked among its 3 other items (2
    # when its history excludes one), as in the full ranking: sampled ranks [1, 1, 3].
    with pytest.warns(UserWarning, match="3 of 3 rows .* fewest negatives of any row: 3"):
        result = evaluate_embeddings(QUERIES, ITEMS, TARGETS, ks=(1,))
    assert result["sampled/mrr"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 4) / 3)
    assert result["sampled/mrr"] == result["full/mrr"]
    exclude = [np.array([4]), np.array([2]), np.array([5])]  # ranks [0, 1, 2] as above
    with pytest.warns(UserWarning, match="fewest negatives of any row: 2"):
        result = evaluate_embeddings(QUERIES, ITEMS, TARGETS, ks=(1,), exclude=exclude)
    assert result["sampled/mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)

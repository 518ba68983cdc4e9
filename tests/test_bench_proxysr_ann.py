"""`pipelines/bench_proxysr_ann.py`: ProxySR's ANN path (ScaNN by the probe + exact
eq. 7 re-rank) against exact eq. 7, on the quick mode's tiny catalogue."""

import sys
from pathlib import Path

import numpy as np
import pytest

from tfrec_proxy.config import ExportConfig

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(PIPELINES))
    try:
        import bench_proxysr_ann
    finally:
        sys.path.remove(str(PIPELINES))
    return bench_proxysr_ann


def _quick_data(bench, kind, spread=1.0, queries=40):
    quick = bench.QUICK
    rng = np.random.default_rng(0)
    directions = bench.item_directions(rng, quick["catalogue"], quick["dim"])
    items = bench.unit_ball_items(rng, directions, spread)
    return items, bench.synthetic_queries(rng, kind, items, queries)


def test_quick_recall_is_a_fraction_and_exhaustive_candidates_are_exact(bench):
    items, queries = _quick_data(bench, "targeted")
    count = len(items)
    rows = bench.benchmark(items, queries, bench.QUICK["lengths"], batch=20, repeats=1)
    assert [r["L"] for r in rows] == bench.QUICK["lengths"]
    for row in rows:
        assert 0.0 <= row["recall_ann"] <= 1.0 and 0.0 <= row["probe_exact_recall"] <= 1.0
        assert row["speedup"] > 0 and row["ann_qps"] > 0 and row["exact_qps"] > 0

    # A candidate list as long as the catalogue: every item is re-ranked exactly by
    # eq. 7, so the ANN top-10 is the brute-force top-10. (ScaNN can return the whole
    # catalogue only when it searches every leaf.)
    leaves = 8
    exhaustive = ExportConfig(scann_num_leaves=leaves, scann_leaves_to_search=leaves)
    rows = bench.benchmark(items, queries, [10, 200, count], batch=20, repeats=1,
                           export=exhaustive)
    full = rows[-1]
    assert full["L"] == count and full["error"] is None
    assert full["scann"]["num_leaves_to_search"] == full["scann"]["num_leaves"] == leaves
    assert full["recall_ann"] == 1.0 and full["probe_exact_recall"] == 1.0
    probe = [r["probe_exact_recall"] for r in rows]
    assert probe == sorted(probe)
    # Items of widely spread norms: the probe alone (exact top-10 by a_perp.I) misses
    # much of the eq. 7 top-10, so the short list is not exact.
    assert rows[0]["recall_ann"] < 1.0


def test_short_probes_need_long_lists(bench):
    """Short a_perp against items of spread norms: eq. 7's nearest items are the
    small-norm ones, which the probe's dot product ranks last."""
    items, queries = _quick_data(bench, "short")
    (row,) = bench.benchmark(items, queries, [50], batch=20, repeats=1)
    assert row["a_perp_median"] < 0.2
    assert row["probe_exact_recall"] < 0.5 and row["probe_len_99"] > 500

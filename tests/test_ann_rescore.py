"""The exported ANN path (`RetrievalModule`: ScaNN candidates, exact re-score) when
ScaNN returns fewer neighbours than asked: the searched leaves hold fewer points than
`probe_k`, so its answer is narrower and NaN-padded."""

import numpy as np
import pytest

from tfrec_proxy._tf import tf
from tfrec_proxy.savedmodels import RetrievalModule, build_index
from tfrec_proxy.scoring import DotScorer


class _Packed(tf.Module):  # the queries arrive as vectors: only the scorer is used
    def __init__(self, scorer):
        super().__init__()
        self.scorer, self.query_tower = scorer, None


@pytest.mark.parametrize("batch", [1, 4])
def test_short_scann_answers_are_padded_not_a_crash(batch):
    rng = np.random.default_rng(0)
    items = rng.normal(size=(2000, 8)).astype(np.float32)
    ids = np.arange(100, 2100, dtype=np.int64)
    scann = {"num_leaves": 45, "num_leaves_to_search": 2, "num_reordering_candidates": 1000}
    scorer = DotScorer()
    index = build_index("scann", scorer, items, ids, 1000, scann, 1000)
    module = RetrievalModule(_Packed(scorer), index, ids, items, max_k=1000, probe_k=1000)
    queries = tf.constant(rng.normal(size=(batch, 8)).astype(np.float32))
    scores, found = (t.numpy() for t in module._generate_and_rescore(queries))
    assert scores.shape == found.shape == (batch, 1000)
    exact = queries.numpy() @ items.T
    for row in range(batch):
        real = np.isfinite(scores[row])
        assert 0 < real.sum() < 1000  # 2 of 45 leaves: fewer than 1000 candidates
        assert not np.isnan(scores[row]).any() and (scores[row][~real] == -np.inf).all()
        assert real[:real.sum()].all()  # real candidates first, best first
        kept = found[row][real]
        assert len(set(kept.tolist())) == len(kept)  # no item twice
        np.testing.assert_allclose(scores[row][real], exact[row][kept - 100], rtol=1e-5,
                                   atol=1e-5)
        assert (np.diff(scores[row][real]) <= 1e-6).all()

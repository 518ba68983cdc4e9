"""ProxySR (§3, eqs. 1-10): layers, distance, losses, annealing and probes vs numpy."""

import numpy as np
import pytest

from tfrec_proxy._tf import tf
from tfrec_proxy.layers.proxysr import (
    ProxyDistanceScorer, ProxySelection, ProxySessionEncoder, ShortTermEncoder,
    TemperatureAnnealing, UnitBallConstraint, annealed_temperature, margin_loss,
    pack_query, project_onto_hyperplane, proxy_distance, regularisers)
from tfrec_proxy.layers.towers import ItemTower
from tfrec_proxy.scoring import build_scorer

from conftest import assert_round_trip, assert_runs_in_saved_model

RNG = np.random.default_rng(0)


def _normal(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def _unit(*shape):
    x = _normal(*shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_distance(p, s, v, items):  # eq. 6 + 7, items [C, d] -> [B, C]
    s_perp = s - (s * v).sum(-1, keepdims=True) * v
    i_perp = items[None] - (items[None] * v[:, None]).sum(-1, keepdims=True) * v[:, None]
    return (((p + s_perp)[:, None] - i_perp) ** 2).sum(-1)


def test_unit_ball_constraint():
    rows = np.array([[0.3, 0.4], [3.0, 4.0], [0.0, 0.0]], np.float32)
    out = UnitBallConstraint()(tf.constant(rows)).numpy()
    np.testing.assert_allclose(out, [[0.3, 0.4], [0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    clone = tf.keras.constraints.get(tf.keras.constraints.serialize(UnitBallConstraint(0)))
    assert isinstance(clone, UnitBallConstraint) and clone.axis == 0
    table = tf.keras.layers.Embedding(3, 2, embeddings_constraint=UnitBallConstraint())
    table.build([None])
    table.embeddings.assign(rows * 10)
    tf.keras.optimizers.SGD(0.0).apply_gradients([(tf.zeros([3, 2]), table.embeddings)])
    assert np.linalg.norm(table.embeddings.numpy(), axis=-1).max() <= 1 + 1e-6


def test_proxy_selection_eqs_1_2_3_6_and_10_against_numpy():
    d, k, hidden = 4, 3, 3  # hidden = (d + K) // 2
    layer = ProxySelection(num_proxies=k, max_len=5)
    items = _normal(2, 4, d)
    mask = np.array([[False, True, True, True], [False, False, True, True]])
    layer(items, mask)
    w1, w2, pos = _normal(d, hidden), _normal(hidden, k), _normal(5, d) * 0.1
    proxies, normals = _normal(k, d) * 0.5, _normal(k, d)
    for var, value in [(layer.hidden_kernel, w1), (layer.logit_kernel, w2),
                       (layer.position_embedding, pos), (layer.proxies, proxies),
                       (layer.normals, normals)]:
        var.assign(value)
    layer.temperature.assign(0.7)
    bias = _normal(2, k)
    pi, p, v = [t.numpy() for t in layer(items, mask, user_bias=bias,
                                         return_components=True)]
    for b in range(2):
        real = items[b, mask[b]]
        x = real + pos[:len(real)]  # forward positions, 0 = oldest real item
        h = x @ w1
        alpha = (np.where(h > 0, h, 0.1 * h) @ w2).mean(0)  # eq. 3
        want_pi = _softmax((alpha + bias[b]) / 0.7)  # eqs. 1 and 10
        mixed = want_pi @ proxies
        gamma = want_pi @ np.linalg.norm(proxies, axis=-1) / np.linalg.norm(mixed)
        unit_v = normals / np.linalg.norm(normals, axis=-1, keepdims=True)
        want_v = want_pi @ unit_v
        np.testing.assert_allclose(pi[b], want_pi, rtol=1e-5)
        np.testing.assert_allclose(p[b], gamma * mixed, rtol=1e-5, atol=1e-6)  # eq. 2
        np.testing.assert_allclose(v[b], want_v / np.linalg.norm(want_v), rtol=1e-5)
    # tau -> 0 gives one-hot weights and p = P_argmax.
    layer.temperature.assign(1e-4)
    pi, p, _ = layer(items, mask, return_components=True)
    np.testing.assert_allclose(p.numpy(), proxies[pi.numpy().argmax(-1)], atol=1e-5)
    with pytest.raises(ValueError, match="num_proxies \\(K\\) must be an integer >= 1"):
        ProxySelection(num_proxies=0, max_len=5)
    with pytest.raises(ValueError, match="initial_temperature must be > 0"):
        ProxySelection(num_proxies=2, max_len=5, initial_temperature=0.0)


def test_short_term_encoder_eq5_against_numpy_with_reverse_positions():
    d = 3
    layer = ShortTermEncoder(max_len=4)
    items = _normal(1, 4, d)
    mask = np.array([[False, True, True, True]])
    layer(items, mask)
    wq, wk, pos = layer.query_kernel.numpy(), layer.key_kernel.numpy(), _normal(4, d) * 0.3
    layer.position_embedding.assign(pos)
    out = layer(items, mask).numpy()
    real = items[0, 1:]
    x = real + pos[[2, 1, 0]]  # reverse: the most recent item has position 0
    q, keys = np.maximum(x @ wq, 0), np.maximum(x @ wk, 0)
    a = _softmax(q @ keys.T / np.sqrt(d))
    z = (a @ x + x)[-1]
    (w1, b1), (w2, b2) = layer.hidden.get_weights(), layer.output_dense.get_weights()
    np.testing.assert_allclose(out[0], np.maximum(z @ w1 + b1, 0) @ w2 + b2,
                               rtol=1e-5, atol=1e-6)
    # Without the padding column: same output.
    np.testing.assert_allclose(layer(items[:, 1:]).numpy(), out, rtol=1e-5, atol=1e-6)


def test_projection_eq6_is_orthogonal_and_idempotent():
    x, v = _normal(5, 6), _unit(5, 6)
    once = project_onto_hyperplane(tf.constant(x), v).numpy()
    np.testing.assert_allclose((once * v).sum(-1), 0.0, atol=1e-6)
    np.testing.assert_allclose(project_onto_hyperplane(once, v).numpy(), once, atol=1e-6)
    np.testing.assert_allclose(once, x - (x * v).sum(-1, keepdims=True) * v, atol=1e-6)


def test_distance_eq7_and_scorer_against_numpy():
    p, s, v, items = _normal(3, 5) * 0.5, _normal(3, 5) * 0.5, _unit(3, 5), _normal(7, 5)
    want = _np_distance(p, s, v, items)
    np.testing.assert_allclose(proxy_distance(p, s, v, items).numpy(), want, rtol=1e-5,
                               atol=1e-5)
    scorer = ProxyDistanceScorer()
    queries = pack_query(p, s, v)
    matrix = scorer.score_matrix(queries, items).numpy()
    np.testing.assert_allclose(matrix, -want, rtol=1e-5, atol=1e-5)
    picks = RNG.integers(0, 7, size=(3, 4))
    per_row = scorer.score_candidates(queries, items[picks]).numpy()
    np.testing.assert_allclose(per_row, np.take_along_axis(matrix, picks, 1), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(proxy_distance(p, s, v, items[picks]).numpy(),
                               np.take_along_axis(want, picks, 1), rtol=1e-5, atol=1e-5)
    assert isinstance(build_scorer("proxysr"), ProxyDistanceScorer)
    with pytest.raises(ValueError, match="packed \\[B, 2, d\\]"):
        scorer.score_matrix(tf.zeros([3, 5]), items)
    with pytest.raises(ValueError, match="\\[B, K, d\\] candidates"):
        scorer.score_candidates(queries, items)


def test_margin_loss_eq8_and_regularisers_eq9():
    pos, neg = np.array([1.0, 3.0], np.float32), np.array([[1.5, 4.0], [2.0, 3.1]], np.float32)
    # [0.5 + 1 - 1.5]+ = 0, [0.5 + 1 - 4]+ = 0, [0.5 + 3 - 2]+ = 1.5, [0.5 + 3 - 3.1]+ = 0.4
    np.testing.assert_allclose(margin_loss(pos, neg, 0.5).numpy(), 1.9, rtol=1e-6)
    np.testing.assert_allclose(margin_loss(pos, neg[:, 0], 0.5).numpy(), 1.5, rtol=1e-6)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        margin_loss(pos, neg, -1.0)
    proxy = np.array([[3.0, 4.0], [1.0, 0.0]], np.float32)
    normal = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    reg_dist, reg_orthog = regularisers(proxy, normal, pos)
    np.testing.assert_allclose(reg_dist.numpy(), 4.0)
    np.testing.assert_allclose(reg_orthog.numpy(), 4.0 / 5.0 + 1.0, rtol=1e-6)


def test_annealing_schedule_endpoints_and_resume():
    taus = [annealed_temperature(e) for e in range(15)]
    assert taus[0] == 3.0 and taus[10] == 0.01 and set(taus[10:]) == {0.01}
    assert all(a > b for a, b in zip(taus[:10], taus[1:11]))
    np.testing.assert_allclose(taus[5], 3.0 * (0.01 / 3.0) ** 0.5)
    variable = tf.Variable(3.0)
    run = TemperatureAnnealing(variable)
    for epoch in range(4):
        run.on_epoch_begin(epoch)
    assert run.get_state() == {"epoch": 3}
    resumed = TemperatureAnnealing(variable)  # fit(initial_epoch=4) after a restart
    resumed.on_epoch_begin(4)
    np.testing.assert_allclose(variable.numpy(), taus[4], rtol=1e-6)
    restored = TemperatureAnnealing(variable)  # restored state, epochs counted from 0
    restored.set_state(run.get_state())
    restored.on_epoch_begin(0)
    np.testing.assert_allclose(variable.numpy(), taus[4], rtol=1e-6)
    with pytest.raises(ValueError, match="no temperature variable"):
        TemperatureAnnealing(object()).on_epoch_begin(0)


def test_annealing_in_fit_finds_the_selection_and_continues():
    encoder = ProxySessionEncoder(vocab_size=10, dim=4, num_proxies=3, max_len=3)
    history = tf.keras.Input([3], dtype=tf.int32)
    score = tf.keras.layers.Dense(1)(tf.keras.layers.Flatten()(encoder(history)))
    model = tf.keras.Model(history, score)
    model.compile("sgd", "mse")
    data = (np.array([[0, 1, 2], [3, 4, 5]]), np.zeros([2, 1], np.float32))
    annealing = TemperatureAnnealing()
    model.fit(*data, epochs=2, verbose=0, callbacks=[annealing])
    np.testing.assert_allclose(encoder.temperature.numpy(), annealed_temperature(1),
                               rtol=1e-6)
    model.fit(*data, epochs=3, initial_epoch=2, verbose=0, callbacks=[annealing])
    np.testing.assert_allclose(encoder.temperature.numpy(), annealed_temperature(2),
                               rtol=1e-6)


def test_encoder_layout_user_bias_and_errors():
    encoder = ProxySessionEncoder(vocab_size=20, dim=6, num_proxies=4, max_len=5,
                                  num_users=2)
    encoder.user_bias.set_users([7, 9])
    history = tf.constant([[0, 0, 3, 4, 5], [0, 6, 7, 8, 9]])
    queries = encoder(history).numpy()
    assert queries.shape == (2, 2, 6)
    parts = {k: t.numpy() for k, t in encoder.components(history).items()}
    np.testing.assert_allclose(queries, pack_query(parts["proxy"], parts["short_term"],
                                                   parts["normal"]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(queries[:, 1], axis=-1), 1.0, rtol=1e-5)
    # Padding invariance: the same session with fewer padding columns.
    np.testing.assert_allclose(encoder(history[:1, 2:]).numpy(), queries[:1], rtol=1e-5,
                               atol=1e-6)
    # Eq. 10: user 9's bias; unknown user 5 gets the anonymous logits.
    bias = np.array([[0.0] * 4, [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0]], np.float32)
    encoder.user_bias.embedding.embeddings.assign(bias)
    users = tf.constant([5, 9])
    biased = encoder.components(history, users)["weights"].numpy()
    np.testing.assert_allclose(biased[0], parts["weights"][0], rtol=1e-6)
    logits = np.log(parts["weights"][1]) * 3.0  # alpha up to a constant (tau = 3)
    np.testing.assert_allclose(biased[1], _softmax((logits + bias[2]) / 3.0), rtol=1e-5)
    with pytest.raises(ValueError, match="no user bias"):
        ProxySessionEncoder(vocab_size=20, dim=6, num_proxies=4, max_len=5)(history, users)
    with pytest.raises(ValueError, match="num_users must be an integer >= 1"):
        ProxySessionEncoder(vocab_size=20, dim=6, num_proxies=4, max_len=5, num_users=0)


def test_probes_then_exact_rerank_recover_the_top_10():
    batch, num_items, d, probe_k, k = 20, 400, 8, 50, 10
    items = _normal(num_items, d)
    items *= RNG.uniform(0, 1, (num_items, 1)) / np.linalg.norm(items, axis=-1, keepdims=True)
    queries = pack_query(_normal(batch, d) * 0.4, _normal(batch, d) * 0.4, _unit(batch, d))
    scorer = ProxyDistanceScorer()
    probes = scorer.probe_vectors(queries).numpy()
    assert probes.shape == (batch, 1, d)
    candidates = np.argsort(-(probes[:, 0] @ items.T), axis=1)[:, :probe_k]
    rescored = scorer.score_candidates(queries, items[candidates]).numpy()
    found = np.take_along_axis(candidates, np.argsort(-rescored, axis=1)[:, :k], 1)
    exact = np.argsort(-scorer.score_matrix(queries, items).numpy(), axis=1)[:, :k]
    recall = np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact)])
    print(f"probe top-{probe_k} + exact re-rank: recall@{k} = {recall:.3f}")
    assert recall >= 0.9


@pytest.mark.parametrize("make_layer, inputs", [
    (lambda: ProxySelection(3, 4), (tf.random.normal([2, 4, 6]),
                                    tf.constant([[False, True, True, True]] * 2))),
    (lambda: ShortTermEncoder(4), (tf.random.normal([2, 4, 6]),)),
    (lambda: ProxySessionEncoder(12, 6, 3, 4, num_users=2),
     (tf.constant([[0, 1, 2, 3], [4, 5, 6, 7]]), tf.constant([1, 2]))),
    (lambda: ProxySessionEncoder(12, 6, 3, 4, item_encoder=ItemTower(12, (6,))),
     (tf.constant([[0, 1, 2, 3], [4, 5, 6, 7]]),)),
    (lambda: ProxyDistanceScorer(), (pack_query(_normal(2, 6), _normal(2, 6), _unit(2, 6)),
                                     tf.random.normal([5, 6]))),
])
def test_round_trip_and_saved_model(make_layer, inputs, tmp_path):
    assert_round_trip(make_layer(), *inputs)
    assert_runs_in_saved_model(make_layer(), inputs, tmp_path, atol=1e-5)

"""Loss weightings: frequency balance (eq. 5) and IDW's Algorithm 1 (sleep/wake,
stopping rule, calibration, saved state), pinned by hand and run end to end."""

import dataclasses

import numpy as np
import pytest

from tfrec_proxy._tf import tf
from tfrec_proxy.config import IDWConfig, ModelConfig
from tfrec_proxy.models import BuildContext, build_two_tower
from tfrec_proxy.registry import MODEL_KINDS, WEIGHTINGS
from tfrec_proxy.weighting.baselines import frequency_weights
from tfrec_proxy.weighting.density import update_weights
from tfrec_proxy.weighting.idw import (DensityWeighting, IDWState, check_idw_config,
                                       example_weights, idw_schedule)

from conftest import tiny_config


def test_frequency_weights_by_hand():
    counts = np.array([0, 0, 1, 3, 0, 4], np.float64)  # padding, OOV, 3 trained, 1 unseen
    weights = frequency_weights(counts)
    # N = 8 examples over 3 trained items: 8 / (3 n_y).
    np.testing.assert_allclose(weights, [0, 0, 8 / 3, 8 / 9, 0, 8 / 12], rtol=1e-6)
    assert np.isclose((counts * weights).sum() / counts.sum(), 1.0)  # mean 1 per example
    with pytest.raises(ValueError, match="all zero"):
        frequency_weights(np.zeros(4))


def test_example_weights_by_hand():
    counts = np.array([0, 0, 1, 3, 4], np.float64)
    # w = the normalised frequency gives the unweighted loss: every example 1.
    np.testing.assert_allclose(example_weights(counts / counts.sum(), counts), [0, 0, 1, 1, 1],
                               rtol=1e-6)
    # A uniform w over the trained items is frequency balance (eq. 5).
    uniform = np.array([0, 0, 1, 1, 1]) / 3
    np.testing.assert_allclose(example_weights(uniform, counts), frequency_weights(counts),
                               rtol=1e-6)
    # By hand: w = (.5, .25, .25) on counts (1, 3, 4), N = 8: w_y * N / n_y.
    w = np.array([0, 0, 0.5, 0.25, 0.25])
    np.testing.assert_allclose(example_weights(w, counts), [0, 0, 4.0, 2 / 3, 0.5], rtol=1e-6)


class _FakeModel:
    """Item tower outputs fixed per call; records the loss weights it is given."""

    def __init__(self, embeddings):
        self.embeddings = list(embeddings)
        self.loss_weights = []
        self.stop_training = False

    def item_embeddings(self):
        return self.embeddings.pop(0) if len(self.embeddings) > 1 else self.embeddings[0]

    def set_item_loss_weights(self, weights):
        self.loss_weights.append(weights)


def test_sleep_wake_loop_follows_algorithm_1():
    rng = np.random.default_rng(0)
    counts = np.array([0, 0, 5, 1, 1, 2, 8, 3], np.float64)
    embeddings = rng.normal(size=(8, 2)).astype(np.float32)
    model = _FakeModel([embeddings])
    idw = DensityWeighting(counts, momentum=0.9, eta=1e-12, max_iterations=3)
    w0 = np.where(np.arange(8) >= 2, counts, 0) / counts.sum()
    assert idw.begin(model) is True  # first sleep -> w(1), wake 1 may start
    w1 = update_weights(w0, embeddings, 0.9, active=np.arange(8) >= 2)
    np.testing.assert_allclose(idw.state.weights, w1, rtol=1e-12)
    np.testing.assert_allclose(model.loss_weights[-1], example_weights(w1, counts), rtol=1e-6)
    assert idw.state.changes == [pytest.approx(np.linalg.norm(w1 - w0))]
    idw.set_model(model)
    idw.on_epoch_end(0)  # wake 1 done -> sleep -> w(2)
    assert idw.state.iteration == 1 and not model.stop_training and len(idw.state.changes) == 2
    idw.on_epoch_end(1)
    idw.on_epoch_end(2)  # the third wake ends the loop: max_iterations
    assert idw.state.iteration == 3 and model.stop_training and not idw.state.converged
    summary = idw.summary()["idw"]
    assert summary["iterations"] == 3 and len(summary["changes"]) == 3


def test_stopping_rule_ends_before_a_wake():
    counts = np.array([0, 0, 1, 1, 1, 1], np.float64)
    embeddings = np.random.default_rng(1).normal(size=(6, 2))
    w0 = np.array([0, 0, 0.25, 0.25, 0.25, 0.25])
    change = np.linalg.norm(update_weights(w0, embeddings, 0.9, active=np.arange(6) >= 2) - w0)
    # eta just above the first change: converged at the first sleep, nothing to wake.
    model = _FakeModel([embeddings])
    idw = DensityWeighting(counts, momentum=0.9, eta=change * 1.0001)
    assert idw.begin(model) is False and idw.state.converged
    np.testing.assert_allclose(idw.state.weights, w0)  # w(t+1) is not used (Alg. 1)
    assert model.loss_weights == []
    # eta just below it: a wake with w(1).
    idw = DensityWeighting(counts, momentum=0.9, eta=change * 0.9999)
    assert idw.begin(_FakeModel([embeddings])) is True and not idw.state.converged


def test_state_round_trip_and_resume():
    counts = np.array([0, 0, 5, 1, 1, 2], np.float64)
    embeddings = np.random.default_rng(2).normal(size=(6, 3))
    idw = DensityWeighting(counts, eta=1e-12, max_iterations=5)
    idw.begin(_FakeModel([embeddings]))
    idw.set_model(_FakeModel([embeddings]))
    idw.on_epoch_end(0)
    arrays = idw.run_state()["idw.npz"]
    restored = IDWState.from_arrays(arrays)
    assert restored.iteration == 1 and restored.phase == "idw"
    np.testing.assert_array_equal(restored.weights, idw.state.weights)
    # A callback continued from the restored state takes the same next step.
    again = DensityWeighting(counts, eta=1e-12, max_iterations=5, state=restored)
    again.begin(_FakeModel([embeddings]))
    idw_next = update_weights(idw.state.weights, embeddings, 0.9, active=np.arange(6) >= 2)
    np.testing.assert_allclose(again.state.weights, idw_next, rtol=1e-12)


@pytest.mark.parametrize("field, value, message", [
    ("momentum", 1.0, r"idw.momentum \(m\) must be in \[0, 1\), got 1.0"),
    ("momentum", -0.1, r"idw.momentum \(m\) must be in \[0, 1\), got -0.1"),
    ("eta", 0.0, "idw.eta must be > 0, got 0.0"),
    ("eta", -1e-4, "idw.eta must be > 0"),
    ("max_iterations", 0, "idw.max_iterations must be a positive integer, got 0"),
    ("bandwidth", 0.0, "idw.bandwidth must be > 0"),
])
def test_bad_idw_settings_fail_before_training(field, value, message, monkeypatch):
    from tfrec_proxy import training

    config = tiny_config(weighting="idw")
    setattr(config.train.idw, field, value)
    monkeypatch.setattr(training, "prepare_data", lambda *a, **k: pytest.fail("data read"))
    with pytest.raises(ValueError, match=message):
        training.train(config, export=False, verbose=0)


def test_unknown_weighting_and_phases_with_a_weighting():
    from tfrec_proxy.training import Phase, train

    with pytest.raises(ValueError, match="Unknown weighting 'balanced'; expected one of"):
        train(tiny_config(weighting="balanced"), export=False)
    with pytest.raises(ValueError, match="pass one or the other"):
        train(tiny_config(weighting="idw"), export=False, phases=[Phase()])


@MODEL_KINDS.register("test_frozen_items")
def _frozen_items(config: ModelConfig, options: None, context: BuildContext):
    model = build_two_tower(config, options, context)
    model.candidate_tower.trainable = False
    return model


def test_idw_with_a_frozen_item_tower_fails_before_training():
    from tfrec_proxy.training import train

    config = tiny_config(weighting="idw")
    config.model.kind = "test_frozen_items"
    started = []

    class Spy(tf.keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            started.append(True)

    with pytest.raises(ValueError, match="needs a trainable item tower"):
        train(config, export=False, verbose=0, callbacks=[Spy()])
    assert not started


def test_schedule_phases():
    config = tiny_config(weighting="idw")
    config.train.idw = IDWConfig(max_iterations=4, wake_epochs=2, calibration_epochs=3)

    @dataclasses.dataclass
    class Data:
        item_counts = np.array([0, 0, 3, 1], np.float64)
        item_clusters = None
        vocab = type("V", (), {"size": 4})()

    phases = idw_schedule(config, Data())
    assert [p.name for p in phases] == ["pretrain", "idw", "calibrate"]
    assert phases[1].epochs == 8 and not phases[1].early_stopping
    assert phases[1].needs_trainable == ("candidate_tower",)
    assert phases[2].frozen == ("candidate_tower",) and phases[2].epochs == 3
    np.testing.assert_array_equal(phases[2].item_loss_weights, np.ones(4))
    config.train.idw.calibrate = False
    phases = idw_schedule(config, Data())
    assert [p.name for p in phases] == ["pretrain", "idw"]
    phases[1].callbacks[0].on_train_end()
    assert phases[1].callbacks[0].state.phase == "done"  # no calibration to come
    assert set(WEIGHTINGS.names()) >= {"none", "frequency", "idw"}
    with pytest.raises(ValueError, match="momentum"):
        check_idw_config(IDWConfig(momentum=2.0))


@pytest.fixture(scope="module")
def idw_run(tmp_path_factory):
    """A tiny MUR-IDW run: pretrain, sleep/wake, calibration, exported."""
    from tfrec_proxy.training import train

    config = tiny_config(weighting="idw", epochs=1)
    config.model.extraction, config.model.num_interests = "mur", 2
    config.train.idw = IDWConfig(max_iterations=2, eta=1e-12)
    result = train(config, output_dir=tmp_path_factory.mktemp("idw"), run_name="idw",
                   verbose=0)
    return result


def test_tiny_idw_run_goes_through_every_phase(idw_run):
    assert [p["name"] for p in idw_run.phases] == ["pretrain", "idw", "calibrate"]
    assert [p["epochs"] for p in idw_run.phases] == [1, 2, 1]
    trace = idw_run.phases[1]["idw"]
    assert trace["iterations"] == 2 and len(trace["changes"]) == 2
    assert len(trace["silhouettes"]) == 2  # synthetic data: clusters known
    # Calibration trained with unit weights; the item tower was frozen in it.
    np.testing.assert_array_equal(idw_run.model.item_loss_weights.numpy(), 1.0)
    assert "items/silhouette" in idw_run.metrics


def test_idw_run_exports_state_and_reloads_identically(idw_run):
    import json

    from tfrec_proxy.serving import load_run
    from tfrec_proxy.training import restore_model

    run_dir = idw_run.run_dir
    state = IDWState.from_run(run_dir)
    assert state.phase == "done" and state.iteration == 2
    np.testing.assert_allclose(state.weights.sum(), 1.0, rtol=1e-6)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == {"encoder": "self-attention", "item_tower": "id",
                                 "extraction": "mur", "num_interests": 2,
                                 "scorer": "mur", "loss": "softmax", "item_norm": "none",
                                 "weighting": "idw"}
    assert metrics["phases"][1]["idw"]["iterations"] == 2
    run = load_run(run_dir)
    assert run.manifest["num_interests"] == 2 and run.manifest["scorer"] == "mur"
    assert "state/idw.npz" in run.manifest["files"]
    histories = idw_run.data.split.test.history[:16]
    expected = idw_run.model.query_embeddings(histories)
    raw = np.concatenate([[-1, -1], idw_run.data.vocab.ids])[histories]
    np.testing.assert_allclose(run.embed_padded(raw), expected, atol=1e-5)
    model, _, _ = restore_model(run_dir)
    np.testing.assert_allclose(model.query_embeddings(histories), expected, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="not trained with IDW"):
        IDWState.from_run(run_dir / "missing")


def test_frequency_weighting_trains_with_eq5_weights():
    from tfrec_proxy.training import train

    result = train(tiny_config(weighting="frequency", epochs=1), export=False, verbose=0)
    np.testing.assert_allclose(result.model.item_loss_weights.numpy(),
                               frequency_weights(result.data.item_counts), rtol=1e-6)


def test_baseline_losses_and_item_norm_export_and_reload(tmp_path):
    """Qmargin + post-hoc item norm train, export and reload: served item vectors are
    unit-norm, the margins are checkpointed, retrieval equals the in-memory model."""
    from tfrec_proxy.serving import load_run
    from tfrec_proxy.training import restore_model

    config = tiny_config(epochs=1)
    config.model.loss, config.model.item_norm = "qmargin", "posthoc"
    result = train_tiny(config, tmp_path)
    run = load_run(result.run_dir)
    np.testing.assert_allclose(np.linalg.norm(run.candidate_embeddings, axis=1), 1.0,
                               rtol=1e-5)
    model, _, _ = restore_model(result.run_dir)
    np.testing.assert_allclose(model.item_margins.numpy(),
                               result.model.item_margins.numpy(), rtol=1e-6)
    np.testing.assert_allclose(model.item_embeddings(), result.model.item_embeddings(),
                               atol=1e-6)
    history = [int(i) for i in run.candidate_ids[:3]]
    ids, _ = run.recommend([history], k=5, index="brute_force")
    scores = result.model.item_embeddings()[2:] @ run.embed([history])[0]
    np.testing.assert_array_equal(ids[0], run.candidate_ids[np.argsort(-scores)[:5]])


def train_tiny(config, folder):
    from tfrec_proxy.training import train

    return train(config, output_dir=folder, run_name="run", verbose=0)

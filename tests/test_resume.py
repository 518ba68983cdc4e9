"""Crash and resume (`tfrec_proxy.backup`, `--backup-dir`): a training process is
SIGKILLed mid-run, the same command is started again, and the run resumes from its
last backup and ends as the uninterrupted run ends: same epochs, same history, same
test metrics, same IDW state. Covered: IDW on MUR with early stopping and dropout
(three phases; killed in two of them), ProxySR (temperature schedule) and FELRec
(cache, online validation)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import felrec_config, felrec_frame, tiny_config
from tfrec_proxy.backup import PROGRESS_FILE, TrainingBackup, _join_states, _split_states

ROOT = Path(__file__).resolve().parents[1]


def _command(folder, backup, extra):
    return [sys.executable, "-m", "tfrec_proxy.cli", "train", "--config",
            str(folder / "config.json"), "--output", str(folder / "runs"), "--run-name",
            "run", "--backup-dir", str(backup), *extra]


def _env():
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
               PYTHONPATH=str(ROOT))
    return env


def _progress(backup):
    try:
        return json.loads((backup / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _run_killed(command, backup, kill_after, timeout=240):
    """Starts `command`, SIGKILLs it once the backup's counter reaches `kill_after`;
    returns the progress it had then."""
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            progress = _progress(backup)
            if progress is not None and progress["counter"] >= kill_after:
                process.send_signal(signal.SIGKILL)
                process.wait()
                assert process.returncode == -signal.SIGKILL
                return _progress(backup)
            if process.poll() is not None:
                pytest.fail(f"the run ended before it was killed:\n{process.stderr.read()}")
            time.sleep(0.01)
        pytest.fail("the run made no backup in time")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _run(command):
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _results(folder):
    metrics = json.loads((folder / "runs" / "run" / "metrics.json").read_text())
    return metrics


def _assert_same_run(resumed, reference):
    assert resumed["epochs"] == reference["epochs"]
    assert ([(p["name"], p["epochs"]) for p in resumed["phases"]]
            == [(p["name"], p["epochs"]) for p in reference["phases"]])
    assert set(resumed["history"]) == set(reference["history"])
    for key, values in reference["history"].items():
        np.testing.assert_allclose(resumed["history"][key], values, rtol=1e-5, atol=1e-7,
                                   err_msg=key)
    assert set(resumed["test"]) == set(reference["test"])
    for key, value in reference["test"].items():
        np.testing.assert_allclose(resumed["test"][key], value, rtol=1e-5, atol=1e-7,
                                   err_msg=key)


def _scenario(tmp_path, name, config, extra, kills):
    """The uninterrupted run, then the same command killed after each backup count
    in `kills` and rerun to the end; returns both runs' metrics and the kill points."""
    reference_dir, resumed_dir = tmp_path / f"{name}_ref", tmp_path / f"{name}_resumed"
    points = []
    for folder in (reference_dir, resumed_dir):
        folder.mkdir()
        config.to_json(folder / "config.json")
    # The uninterrupted run goes beside the killed ones (CI has two cores).
    reference = subprocess.Popen(_command(reference_dir, reference_dir / "backup", extra),
                                 env=_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        backup = resumed_dir / "backup"
        for count in kills:
            points.append(_run_killed(_command(resumed_dir, backup, extra), backup, count))
        out = _run(_command(resumed_dir, backup, extra))
        _, stderr = reference.communicate(timeout=300)
        assert reference.returncode == 0, stderr[-3000:]
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    assert "Resuming from the backup" in out
    assert not backup.exists() and not (reference_dir / "backup").exists()
    return _results(reference_dir), _results(resumed_dir), points


@pytest.mark.multiprocess
def test_idw_mur_resumes_across_phases(tmp_path):
    config = tiny_config(epochs=4, weighting="idw", early_stopping_patience=1)
    config.train.idw.max_iterations, config.train.idw.pretrain_epochs = 2, 3
    config.train.idw.calibration_epochs = 2
    config.model.extraction, config.model.num_interests = "mur", 2
    config.model.dropout = 0.2
    reference, resumed, points = _scenario(tmp_path, "idw", config, [], kills=[2, 4])
    where = [(p["phase"], p["epoch"]) for p in points]
    assert where[0] < where[1] and where[0][0] == 0 and where[1][0] >= 1, where
    _assert_same_run(resumed, reference)
    assert (resumed["resumed"]["phase"], resumed["resumed"]["epoch"]) == where[1]
    ref_state = np.load(tmp_path / "idw_ref" / "runs" / "run" / "state" / "idw.npz")
    new_state = np.load(tmp_path / "idw_resumed" / "runs" / "run" / "state" / "idw.npz")
    for key in ("weights", "iteration", "converged", "changes"):
        np.testing.assert_allclose(new_state[key], ref_state[key], rtol=1e-6, err_msg=key)
    assert str(new_state["phase"]) == str(ref_state["phase"]) == "done"


@pytest.mark.multiprocess
def test_proxysr_resumes_its_temperature_schedule(tmp_path):
    config = tiny_config(epochs=4)
    reference, resumed, points = _scenario(
        tmp_path, "proxysr", config, ["--encoder", "proxysr", "--num-proxies", "4",
                                      "--item-tower", "shared"], kills=[2])
    assert points[0]["epoch"] >= 2
    _assert_same_run(resumed, reference)


@pytest.mark.multiprocess
def test_felrec_resumes_cache_and_validation(tmp_path):
    config = felrec_config(epochs=4)
    config.model.felrec.dropout = 0.1
    (tmp_path / "felrec.csv").write_text(felrec_frame().to_csv(index=False))
    extra = ["--data-path", str(tmp_path / "felrec.csv")]
    reference, resumed, points = _scenario(tmp_path, "felrec", config, extra, kills=[2])
    assert points[0]["epoch"] == 2
    _assert_same_run(resumed, reference)


def test_backup_of_another_config_is_refused(tmp_path):
    config = tiny_config()
    backup = TrainingBackup(tmp_path, config.to_dict())
    (tmp_path / PROGRESS_FILE).write_text(json.dumps(
        {"format": 1, "config": config.to_dict(), "counter": 1, "phase": 0, "epoch": 1,
         "train_seconds": 1.0}))
    assert TrainingBackup(tmp_path, config.to_dict()).resuming  # the same config
    config.train.learning_rate = 0.5
    with pytest.raises(ValueError, match="another config"):
        TrainingBackup(tmp_path, config.to_dict())
    assert not backup.resuming


def test_backup_written_before_a_new_config_field_still_resumes(tmp_path):
    """A field added to the config after a backup was written (with a default) must
    not make the same settings look like another config: the stored config is read
    as the current code reads it. A field the code no longer knows still refuses."""
    config = tiny_config()
    stored = config.to_dict()
    del stored["train"]["learning_rate"]  # as if written before the field existed
    (tmp_path / PROGRESS_FILE).write_text(json.dumps(
        {"format": 1, "config": stored, "counter": 1, "phase": 0, "epoch": 1,
         "train_seconds": 1.0}))
    assert TrainingBackup(tmp_path, config.to_dict()).resuming  # default learning rate
    config.train.learning_rate = 0.5  # not the default the old backup implies
    with pytest.raises(ValueError, match="another config"):
        TrainingBackup(tmp_path, config.to_dict())
    stored = tiny_config().to_dict()
    stored["train"]["no_such_field"] = 1
    (tmp_path / PROGRESS_FILE).write_text(json.dumps(
        {"format": 1, "config": stored, "counter": 1, "phase": 0, "epoch": 1,
         "train_seconds": 1.0}))
    with pytest.raises(ValueError, match="another config"):
        TrainingBackup(tmp_path, tiny_config().to_dict())


def test_callback_states_round_trip_through_json_and_arrays():
    states = {"fit/1:EarlyStopping": {"wait": 2, "best": float("-inf"),
                                      "best_weights": [np.ones(3), np.zeros((2, 2))]},
              "phase1/0:DensityWeighting": {"weights": np.arange(4.0), "phase": np.asarray("idw")}}
    plain, arrays = _split_states(states)
    back = _join_states(json.loads(json.dumps(plain)), arrays)
    assert back["fit/1:EarlyStopping"]["wait"] == 2
    assert back["fit/1:EarlyStopping"]["best"] == float("-inf")
    np.testing.assert_array_equal(back["fit/1:EarlyStopping"]["best_weights"][1],
                                  np.zeros((2, 2)))
    np.testing.assert_array_equal(back["phase1/0:DensityWeighting"]["weights"], np.arange(4.0))
    assert str(back["phase1/0:DensityWeighting"]["phase"]) == "idw"


def test_a_run_killed_while_exporting_resumes_at_the_export(tmp_path, monkeypatch):
    import tfrec_proxy.training as training

    config = tiny_config(epochs=2)
    config.train.backup_dir = str(tmp_path / "backup")
    reference = training.train(config, output_dir=tmp_path / "ref", run_name="run",
                               verbose=0)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while exporting")

    with monkeypatch.context() as patch:
        patch.setattr(training, "export_run", crash)
        with pytest.raises(KeyboardInterrupt):
            training.train(config, output_dir=tmp_path / "runs", run_name="run", verbose=0)
    progress = json.loads((tmp_path / "backup" / PROGRESS_FILE).read_text())
    assert progress["phase"] == 1 and not (tmp_path / "runs" / "run").exists()
    resumed = training.train(config, output_dir=tmp_path / "runs", run_name="run",
                             verbose=0)
    assert resumed.phases[0]["epochs"] == reference.phases[0]["epochs"] == 2
    assert resumed.metrics == pytest.approx(reference.metrics, rel=1e-6)
    assert not (tmp_path / "backup").exists()
    saved = json.loads((tmp_path / "runs" / "run" / "metrics.json").read_text())
    assert saved["resumed"] == {"phase": 1, "epoch": 0,
                                "earlier_seconds": pytest.approx(progress["train_seconds"],
                                                                 abs=0.01)}


def test_random_generators_are_found_and_restored():
    from tfrec_proxy._tf import tf
    from tfrec_proxy.backup import checkpointable_random, random_generators

    with checkpointable_random():
        layer = tf.keras.layers.Dropout(0.5)
    assert not tf.keras.backend.experimental.is_tf_random_generator_enabled()
    model = tf.keras.Sequential([tf.keras.Input([4]), layer])
    generators = random_generators(model)
    assert len(generators) == 1
    state = generators[0].state.numpy()
    first = model(tf.ones([2, 4]), training=True).numpy()
    generators[0].reset(state)
    np.testing.assert_array_equal(model(tf.ones([2, 4]), training=True).numpy(), first)
    assert random_generators(tf.keras.Sequential([tf.keras.Input([4]),
                                                  tf.keras.layers.Dropout(0.5)])) == []

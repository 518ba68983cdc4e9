"""Multi-worker training (`MultiWorkerMirroredStrategy` from `TF_CONFIG`): two worker
processes on 127.0.0.1 train a tiny MUR-IDW model with cross-replica negatives
through all three IDW phases; both end with identical weights, IDW item weights and
logQ table, only the chief writes the run folder, and the result matches one worker
trained on the same global batches.

The comparison with one worker uses SGD (`TrainConfig.optimizer = "sgd"`): the two
runs sum the same gradients in a different order, and Adam turns that rounding on
parameters whose gradient is ~0 (e.g. the item tower's output bias, to which the
batch softmax is invariant) into steps of the learning rate's size (measured:
1e-2 on weights with Adam, 1e-5 with SGD; BENCHMARKS.md)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

PER_WORKER_BATCH = 32

WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config
    from tfrec_proxy._tf import tf
    from tfrec_proxy.training import train

    class RecordItemWeights(tf.keras.callbacks.Callback):
        seen = []

        def on_train_begin(self, logs=None):  # once per phase
            if not self.seen:
                np.savez(out + "_init.npz", *self.model.get_weights())
            self.seen.append(self.model.item_loss_weights.numpy())

    out, batch, strategy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    config = tiny_config(epochs=1, batch_size=batch, strategy=strategy,
                         cross_replica_negatives=True, weighting="idw")
    config.train.idw.max_iterations = 1
    config.train.idw.pretrain_epochs = 1
    config.train.idw.calibration_epochs = 1
    config.model.extraction, config.model.num_interests = "mur", 2
    config.model.dropout = 0.0
    config.model.history_oov_rate = 0.0
    config.train.optimizer = "sgd"
    result = train(config, output_dir=out + "_runs", run_name="run", verbose=0,
                   callbacks=[RecordItemWeights()])
    model = result.model
    np.savez(out + ".npz", *model.get_weights(),
             idw_weights=RecordItemWeights.seen[1],
             sampling_probability=model.sampling_probability.numpy())
    print(json.dumps({{"epochs": [p["epochs"] for p in result.phases],
                      "phases": [p["name"] for p in result.phases],
                      "metrics": result.metrics}}))
""")


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(tf_config=None):
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="2",
               TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _load(path):
    with np.load(path) as stored:
        return {name: stored[name] for name in stored.files}


def _train(folder, name, workers, batch):
    """Starts `workers` processes (a `MultiWorkerMirroredStrategy` cluster of that
    size) with `batch` targets per worker; returns their JSON outputs."""
    script = folder / "worker.py"
    if not script.exists():
        script.write_text(WORKER.format(tests=os.path.dirname(os.path.abspath(__file__))))
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(workers)]
    processes = []
    for index in range(workers):
        tf_config = {"cluster": {"worker": addresses},
                     "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            [sys.executable, str(script), str(folder / f"{name}{index}"), str(batch),
             "multi_worker"],
            env=_env(tf_config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr[-4000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outputs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi_worker")
    return folder, _train(folder, "worker", 2, PER_WORKER_BATCH)


@pytest.mark.multiprocess
def test_both_workers_end_with_identical_weights_idw_weights_and_logq(trained):
    folder, outputs = trained
    assert outputs[0] == outputs[1]
    assert outputs[0]["phases"] == ["pretrain", "idw", "calibrate"]
    first, second = _load(folder / "worker0.npz"), _load(folder / "worker1.npz")
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    # The IDW phase's item weights (from the sleep phase over the item tower's
    # outputs) differ between items, so their equality is not vacuous.
    assert np.std(first["idw_weights"][2:]) > 0
    # Only the chief (worker 0) wrote the run folder.
    assert (folder / "worker0_runs" / "run" / "manifest.json").exists()
    assert not (folder / "worker1_runs" / "run").exists()



@pytest.mark.multiprocess
def test_two_workers_match_one_worker_on_the_same_global_batches(trained):
    folder, outputs = trained
    # One worker with twice the batch: the same global batches (each epoch's order is
    # a function of the seed; Keras splits each global batch between the workers),
    # the same initial weights (set under the same seed) and, with cross-replica
    # negatives, the same negatives and summed loss.
    (single,) = _train(folder, "single", 1, 2 * PER_WORKER_BATCH)
    assert single["epochs"] == outputs[0]["epochs"]
    two, one = _load(folder / "worker0.npz"), _load(folder / "single0.npz")
    for name in two:
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=5e-5, err_msg=name)
    with np.load(folder / "single0_init.npz") as initial:
        moved = max(np.abs(one[f"arr_{i}"] - initial[f"arr_{i}"]).max()
                    for i in range(len(initial.files)))
    assert moved > 0.1  # training moved the weights far beyond the tolerance
    assert single["metrics"] == pytest.approx(outputs[0]["metrics"], abs=1e-6)

"""Multi-worker training (`MultiWorkerMirroredStrategy` from `TF_CONFIG`): two worker
processes on 127.0.0.1 train a tiny MUR-IDW model with cross-replica negatives
through all three IDW phases; both end with identical weights, IDW item weights and
logQ table, and only the chief writes the run folder.

Not yet pinned: equality with one worker on the same global batches (a one-worker
run differs already in its initial weights and batch order; see BENCHMARKS.md)."""

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
            self.seen.append(self.model.item_loss_weights.numpy())

    out, batch, strategy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    config = tiny_config(epochs=1, batch_size=batch, strategy=strategy,
                         cross_replica_negatives=True, weighting="idw")
    config.train.idw.max_iterations = 1
    config.train.idw.pretrain_epochs = 1
    config.train.idw.calibration_epochs = 1
    config.model.extraction, config.model.num_interests = "mur", 2
    config.model.dropout = 0.0
    result = train(config, output_dir=out + "_runs", run_name="run", verbose=0,
                   callbacks=[RecordItemWeights()])
    model = result.model
    np.savez(out + ".npz", *model.get_weights(),
             idw_weights=RecordItemWeights.seen[1],
             sampling_probability=model.sampling_probability.numpy())
    print(json.dumps({{"epochs": [p["epochs"] for p in result.phases],
                      "phases": [p["name"] for p in result.phases]}}))
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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi_worker")
    script = folder / "worker.py"
    script.write_text(WORKER.format(tests=os.path.dirname(os.path.abspath(__file__))))
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            [sys.executable, str(script), str(folder / f"worker{index}"),
             str(PER_WORKER_BATCH), "multi_worker"],
            env=_env(tf_config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr[-4000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    return folder, outputs


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


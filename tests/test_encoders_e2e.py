"""SASRec and RAM encoders end to end: train (loss falls) -> evaluate -> export ->
reload with identical outputs -> a fresh process recommends; from Python and the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tfrec_proxy.cli import main

from conftest import tiny_config


def _fresh(run_dir, histories, users=None):
    code = f"""
import json, sys
from tfrec_proxy.serving import load_run
run = load_run({str(run_dir)!r})
context = None if {users!r} is None else {{"user_id": {users!r}}}
ids, _ = run.recommend({histories!r}, k=5, context=context)
json.dump({{"embed": run.embed({histories!r}, context=context).tolist(),
           "ids": ids.tolist()}}, sys.stdout)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_sasrec_trains_and_records_the_method(sasrec_run):
    metrics = json.loads((sasrec_run / "metrics.json").read_text())
    losses = metrics["history"]["loss"]
    assert losses[-1] < losses[0], losses
    assert metrics["method"]["encoder"] == "sasrec"
    assert metrics["method"]["item_tower"] == "shared" and metrics["method"]["loss"] == "bce"
    # Tied embeddings: the candidate table is the encoder's, counted once.
    manifest = json.loads((sasrec_run / "manifest.json").read_text())
    parameters = manifest["parameters"]
    assert parameters["total"] == parameters["query_tower"]


def test_sasrec_reloads_identically_in_a_fresh_process(sasrec_run, capsys):
    from tfrec_proxy.training import restore_model

    model, vocab, _ = restore_model(sasrec_run)
    candidates = np.load(sasrec_run / "candidates.npz")
    np.testing.assert_allclose(model.item_embeddings()[2:], candidates["embeddings"],
                               atol=1e-5)
    histories = [[int(i) for i in candidates["ids"][j:j + 5]] for j in range(0, 30, 5)]
    served = _fresh(sasrec_run, histories)
    keras = model.query_embeddings(np.stack([vocab.lookup(h) for h in histories]))
    np.testing.assert_allclose(np.asarray(served["embed"]), keras, atol=1e-5)
    assert main(["evaluate", "--run", str(sasrec_run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    trained = json.loads((sasrec_run / "metrics.json").read_text())["test"]
    assert evaluated["full/ndcg@20"] == pytest.approx(trained["full/ndcg@20"], abs=1e-6)


def test_ram_user_embedding_is_served(ram_result, capsys):
    from tfrec_proxy.training import restore_model

    # It learns (the tiny full-softmax loss per epoch is too noisy to compare).
    assert ram_result.history["val_ndcg@20"][-1] > ram_result.history["val_ndcg@20"][0]
    run_dir = ram_result.run_dir
    model, vocab, _ = restore_model(run_dir)
    users = json.loads((run_dir / "users.json").read_text())["ids"]
    assert len(users) == 150
    histories = [[3, 4, 5], [6, 7]]
    known, unknown = [users[0], users[1]], [-5, -6]
    served = _fresh(run_dir, histories, known)
    padded = np.stack([np.pad(vocab.lookup(h), (3 - len(h), 0)) for h in histories])
    keras = model.query_embeddings(padded, context={"user_id": np.array(known)})
    np.testing.assert_allclose(np.asarray(served["embed"]), keras, atol=1e-5)
    assert np.asarray(served["embed"]).shape == (2, 2, 8)  # MUR on top of RAM
    # Unknown users get u = 0: the RAM-u representation.
    u = model.query_tower.user_embedding(np.array(known + unknown, np.int64)).numpy()
    assert np.abs(u[:2]).sum() > 0 and not u[2:].any()
    capsys.readouterr()
    assert main(["recommend", "--run", str(run_dir), "--history", "3,4,5", "-k", "3",
                 "--user", str(users[0])]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 3
    assert main(["recommend", "--run", str(run_dir), "--history", "3,4,5", "-k", "3"]) == 0


def test_ram_u_without_user_embedding_through_the_cli(tmp_path, capsys):
    """`--encoder ram-u` (the issue-15 grid's RAM-u): trains, exports no user table,
    reloads in a fresh process with identical outputs and recommends from the CLI."""
    from tfrec_proxy.training import restore_model

    tiny_config(epochs=2).to_json(tmp_path / "config.json")
    assert main(["train", "--config", str(tmp_path / "config.json"), "--output",
                 str(tmp_path), "--run-name", "ramu", "--encoder", "ram-u",
                 "--item-tower", "shared", "--split", "per-user", "--loss", "full-softmax",
                 "--num-blocks", "2"]) == 0
    run_dir = tmp_path / "ramu"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"]["encoder"] == "ram-u"
    assert metrics["history"]["val_ndcg@20"][-1] > 0
    assert not (run_dir / "users.json").exists()
    model, vocab, _ = restore_model(run_dir)
    ids = np.load(run_dir / "candidates.npz")["ids"]
    histories = [[int(i) for i in ids[j:j + 4]] for j in range(0, 12, 4)]
    served = _fresh(run_dir, histories)
    keras = model.query_embeddings(np.stack([vocab.lookup(h) for h in histories]))
    np.testing.assert_allclose(np.asarray(served["embed"]), keras, atol=1e-5)
    capsys.readouterr()
    assert main(["recommend", "--run", str(run_dir), "--history",
                 ",".join(map(str, histories[0])), "-k", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 3


def test_proxysr_trains_anneals_and_serves_through_ann(proxysr_run):
    """ProxySR via the CLI: eq. 7 scorer picked by `--scorer auto`, the temperature
    annealed per epoch, export with identical reloaded outputs, and ScaNN candidates
    from the probe vectors re-ranked exactly agree with brute force."""
    from tfrec_proxy.serving import load_run
    from tfrec_proxy.training import restore_model

    run_dir = proxysr_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["history"]["loss"][-1] < metrics["history"]["loss"][0]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["scorer"] == "proxysr" and manifest["query_shape"] == [2, 8]
    model, vocab, _ = restore_model(run_dir)
    # Epochs 0, 1, 2 of the schedule 3 * (0.01 / 3) ** (e / 10); the checkpoint keeps tau.
    tau = float(model.query_tower.encoder.temperature.numpy())
    assert tau == pytest.approx(3 * (0.01 / 3) ** 0.2, rel=1e-5)
    candidates = np.load(run_dir / "candidates.npz")
    ids = candidates["ids"]
    # The shared item table stays in the unit ball (eq. 7 and the ANN probe assume it).
    assert np.linalg.norm(candidates["embeddings"], axis=1).max() <= 1 + 1e-5
    histories = [[int(i) for i in ids[j:j + 3]] for j in range(0, 60, 3)]
    served = _fresh(run_dir, histories)
    keras = model.query_embeddings(np.stack([vocab.lookup(h) for h in histories]))
    np.testing.assert_allclose(np.asarray(served["embed"]), keras, atol=1e-5)
    run = load_run(run_dir)
    scann, _ = run.recommend(histories, k=5, index="scann")
    exact, _ = run.recommend(histories, k=5, index="brute_force")
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(scann, exact)])
    assert recall >= 0.9, recall


def test_session_task_with_proxysr_from_a_session_log(tmp_path, capsys):
    """`--data sessions`: a Diginetica-format log, split by session start; ProxySR
    trains on it with its margin loss and eq. 9 regularisers, and its run serves."""
    rng = np.random.default_rng(0)
    lines = ["session_id;user_id;item_id;timeframe;eventdate"]
    for session in range(1, 121):
        start = 10 + (session % 3) * 5  # three groups of five related items
        items = rng.choice(np.arange(start, start + 5), size=4, replace=True)
        day = 1 + session // 10
        lines += [f"{session};NA;{item};{1000 * t};2016-01-{day:02d}"
                  for t, item in enumerate(items)]
    log = tmp_path / "views.csv"
    log.write_text("\n".join(lines) + "\n")
    config = tiny_config(epochs=2)
    config.data.max_len = 5
    config.to_json(tmp_path / "config.json")
    assert main(["train", "--config", str(tmp_path / "config.json"), "--output",
                 str(tmp_path), "--run-name", "sessions", "--data", "sessions",
                 "--data-path", str(log), "--min-item-count", "2", "--encoder", "proxysr",
                 "--num-proxies", "3", "--item-tower", "shared", "--max-k", "10",
                 "--loss", "margin", "--sampled-negatives", "3", "--lambda-dist", "0.01",
                 "--lambda-orthog", "0.1"]) == 0
    metrics = json.loads((tmp_path / "sessions" / "metrics.json").read_text())
    assert metrics["method"]["loss"] == "margin"
    # The orthogonality regulariser enters through the layer losses.
    assert metrics["history"]["regularization_loss"][0] > 0
    data = metrics["data"]
    assert data["train_examples"] > data["test_examples"] > 0
    assert 0 <= metrics["test"]["full/hr@5"] <= 1 and "full/mrr" in metrics["test"]
    # Next-unseen-item targets: a subset of the test examples.
    assert 0 < metrics["test"]["unseen/full/count"] <= metrics["test"]["full/count"]
    capsys.readouterr()
    assert main(["recommend", "--run", str(tmp_path / "sessions"), "--history", "10,11",
                 "-k", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 3


def test_proxysr_user_bias_on_synthetic_sessions(tmp_path, capsys):
    """`--data synthetic-sessions --encoder proxysr-user`: users' clicks cut into
    sessions; eq. 10's bias is learned for the training sessions' users, exported
    (users.json), read back with identical outputs in a fresh process, and zero (the
    anonymous logits) for an unknown user."""
    from tfrec_proxy.training import restore_model

    config = tiny_config(epochs=3)
    config.data.synthetic.seq_len = 18
    config.data.max_len = 6
    config.to_json(tmp_path / "config.json")
    assert main(["train", "--config", str(tmp_path / "config.json"), "--output",
                 str(tmp_path), "--run-name", "su", "--data", "synthetic-sessions",
                 "--session-length", "6", "--min-item-count", "2",
                 "--encoder", "proxysr-user", "--num-proxies", "4",
                 "--item-tower", "shared"]) == 0
    run_dir = tmp_path / "su"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["history"]["loss"][-1] < metrics["history"]["loss"][0]
    users = json.loads((run_dir / "users.json").read_text())["ids"]
    assert 100 <= len(users) <= 150 and min(users) >= 1  # the synthetic users, no -1
    model, vocab, _ = restore_model(run_dir)
    bias = model.query_tower.user_embedding(np.array([users[0], users[1], 10**9])).numpy()
    assert np.abs(bias[:2]).sum() > 0 and not bias[2].any()
    ids = np.load(run_dir / "candidates.npz")["ids"]
    histories = [[int(i) for i in ids[j:j + 3]] for j in range(0, 9, 3)]
    histories.append(histories[-1])
    known = [users[0], users[1], 10**9, -1]
    served = _fresh(run_dir, histories, known)
    keras = model.query_embeddings(np.stack([vocab.lookup(h) for h in histories]),
                                   context={"user_id": np.array(known, np.int64)})
    np.testing.assert_allclose(np.asarray(served["embed"]), keras, atol=1e-5)
    # An unknown user and an anonymous one share the anonymous query.
    np.testing.assert_allclose(keras[2], keras[3], atol=1e-6)
    capsys.readouterr()
    assert main(["recommend", "--run", str(run_dir), "--history",
                 ",".join(map(str, histories[0])), "-k", "3", "--user", str(users[0])]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 3

"""`tfrec-proxy` verbs end to end on a tiny run, and their error messages."""

import json

import pytest

from tfrec_proxy.cli import main, parse_history

from conftest import tiny_config


def test_recommend_prints_k_items(trained_run, capsys):
    _, run_dir = trained_run
    assert main(["recommend", "--run", str(run_dir), "--history", "3,17,42", "-k", "7"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["history"] == [3, 17, 42] and len(answer["items"]) == 7
    assert answer["scores"] == sorted(answer["scores"], reverse=True)


def test_evaluate_matches_training_metrics(trained_run, capsys):
    result, run_dir = trained_run
    assert main(["evaluate", "--run", str(run_dir)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("sampled/hr@20", "sampled/ndcg@20", "full/hr@20", "full/tail/hr@20"):
        assert metrics[key] == pytest.approx(result.metrics[key], abs=1e-6), key


def test_export_rebuilds_an_equivalent_run(trained_run, tmp_path, capsys):
    _, run_dir = trained_run
    target = tmp_path / "again"
    assert main(["export", "--run", str(run_dir), "--output", str(target), "--max-k", "5"]) == 0
    capsys.readouterr()
    assert main(["recommend", "--run", str(run_dir), "--history", "3,4", "-k", "5",
                 "--index", "brute_force"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["recommend", "--run", str(target), "--history", "3,4", "-k", "5",
                 "--index", "brute_force"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["items"] == second["items"]
    assert json.loads((target / "manifest.json").read_text())["max_k"] == 5


def test_train_verb_writes_a_run(tmp_path, capsys):
    config = tiny_config(epochs=1)
    config.to_json(tmp_path / "config.json")
    code = main(["train", "--config", str(tmp_path / "config.json"), "--output",
                 str(tmp_path), "--run-name", "cli"])
    assert code == 0
    assert "exported run" in capsys.readouterr().out
    assert (tmp_path / "cli" / "manifest.json").exists()


@pytest.mark.parametrize("text, message", [
    ("", "history is empty"),
    ("3,x,4", "history item 'x' is not an integer"),
    ("3,,4", "history item '' is not an integer"),
])
def test_bad_history_text(text, message):
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_history(text)


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["recommend", "--run", str(tmp_path), "--history", "1"]) == 2
    assert "is not a tfrec_proxy run: missing ['manifest.json']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["recommend", "--run", str(tmp_path), "--history", "1,y"])
    assert "history item 'y' is not an integer" in capsys.readouterr().err


def test_export_repairs_an_incomplete_run(trained_run, tmp_path, capsys):
    import shutil

    _, run_dir = trained_run
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    shutil.rmtree(broken / "retrieval")
    (broken / "manifest.json").unlink()
    assert main(["recommend", "--run", str(broken), "--history", "3"]) == 2
    assert main(["export", "--run", str(broken)]) == 0
    assert main(["recommend", "--run", str(broken), "--history", "3", "-k", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["items"]) == 3
    shutil.rmtree(broken / "weights")
    assert main(["export", "--run", str(broken)]) == 2
    assert "missing ['weights/checkpoint']" in capsys.readouterr().err


def test_export_never_overwrites_another_folder(trained_run, tmp_path, capsys):
    _, run_dir = trained_run
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "file.txt").write_text("data")
    assert main(["export", "--run", str(run_dir), "--output", str(keep)]) == 2
    assert "exists; choose a new folder" in capsys.readouterr().err
    assert (keep / "file.txt").read_text() == "data"


def test_train_refuses_an_existing_run_name_before_training(trained_run, capsys):
    _, run_dir = trained_run
    code = main(["train", "--output", str(run_dir.parent), "--run-name", run_dir.name])
    assert code == 2
    assert "exists; choose another run name" in capsys.readouterr().err

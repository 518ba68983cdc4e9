"""`tfrec-proxy`: flags and config overrides, history input, verbs end to end, errors."""

import argparse
import io
import json
import os
import re
import subprocess
import sys

import pytest

from tfrec_proxy.cli import build_parser, config_from_args, main, parse_history, read_histories
from tfrec_proxy.cli import flags as cli_flags
from tfrec_proxy.cli import parser as cli_parser
from tfrec_proxy.config import RunConfig
from tfrec_proxy.version import __version__

from conftest import tiny_config


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ, timeout=300)


def _config(*flags: str) -> RunConfig:
    return config_from_args(build_parser().parse_args(["train", *flags]))


# --- Parsing (no TensorFlow, no run) ----------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["recommend", "--help"],
                                  ["--version"], ["config", "--epochs", "3"]])
def test_help_version_and_config_do_not_import_tensorflow(argv):
    out = _python("import sys\nfrom tfrec_proxy.cli import main\n"
                  f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
                  "print('TF LOADED' if 'tensorflow' in sys.modules else 'NO TF')")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "NO TF"
    assert out.stderr == ""


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"tfrec-proxy {__version__}"


def test_every_flag_has_help_and_defaults_are_shown():
    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(verbs.choices) == {"train", "config", "evaluate", "export", "add-items",
                                  "recommend", "report", "serve"}
    for name, sub in [("tfrec-proxy", parser), *verbs.choices.items()]:
        for action in sub._actions:
            if action.option_strings:
                assert action.help and action.help.strip(), (name, action.option_strings)
    text = " ".join(verbs.choices["train"].format_help().split())
    assert "(config train.epochs; default: 20)" in text
    assert "parent folder of runs (default: saved_models)" in text
    assert "(default: 10)" in verbs.choices["recommend"].format_help()


def test_seed_sets_only_the_training_seed():
    config = _config("--seed", "5")
    assert config.train.seed == 5
    assert config.data.synthetic.seed == RunConfig().data.synthetic.seed == 0
    config = _config("--data-seed", "7")
    assert (config.data.synthetic.seed, config.train.seed) == (7, 0)


@pytest.mark.parametrize("flags, field, expected", [
    (["--patience", "0"], "train.early_stopping_patience", 0),
    (["--monitor", "val_hr@5"], "train.monitor", "val_hr@5"),
    (["--num-negatives", "49"], "train.num_negatives", 49),
    (["--eval-chunks", "last"], "train.eval_chunks", "last"),
    (["--full-ranking-history", "removed"], "train.full_ranking_history", "removed"),
    (["--num-layers", "3"], "model.num_layers", 3),
    (["--num-heads", "1"], "model.num_heads", 1),
    (["--dropout", "0.25"], "model.dropout", 0.25),
    (["--per-prefix"], "model.all_positions", False),
    (["--num-clusters", "7"], "data.synthetic.num_clusters", 7),
    (["--data-format", "csv"], "data.file_format", "csv"),
    (["--user-column", "uid"], "data.user_column", "uid"),
    (["--item-column", "iid"], "data.item_column", "iid"),
    (["--time-column", "ts"], "data.time_column", "ts"),
    (["--time-column", ""], "data.time_column", None),
    (["--data-path", "x.csv"], "data.source", "file"),
    (["--mixed-precision"], "train.mixed_precision", True),
    (["--max-k", "7"], "export.max_k", 7),
])
def test_flags_override_their_config_field(flags, field, expected):
    value = _config(*flags)
    for name in field.split("."):
        value = getattr(value, name)
    assert value == expected


def test_embedding_dim_also_sets_the_item_towers_last_layer():
    config = _config("--embedding-dim", "12")
    assert config.model.embedding_dim == 12 and config.model.item_hidden_units[-1] == 12


def test_config_verb_prints_defaults_and_resolves_overrides(tmp_path, capsys):
    assert main(["config"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(RunConfig().to_dict()))
    base = tiny_config()
    base.to_json(tmp_path / "base.json")
    assert main(["config", "--config", str(tmp_path / "base.json"), "--epochs", "4"]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "resolved.json").write_text(printed)
    resolved = RunConfig.from_json(tmp_path / "resolved.json")
    base.train.epochs = 4
    assert resolved == base


def test_bad_config_keys_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({"train": {"epoch": 3}}))
    assert main(["config", "--config", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key(s) ['epoch']" in err


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
    (["train", "--dropout", "1.5"], "expected a number in [0, 1), got '1.5'"),
    (["train", "--eval-chunks", "first"], "invalid choice: 'first'"),
    (["recommend", "--run", "r"], "one of the arguments --history --histories is required"),
    (["recommend", "--run", "r", "--history", "1", "--histories", "f"], "not allowed with"),
    (["recommend", "--run", "r", "--history", "1,99999999999999999999"],
     "item id 99999999999999999999 is outside the int64 range"),
    (["recommend", "--run", "r", "--history=-1,-1"], "history has only padding (-1)"),
])
def test_usage_errors_are_one_line_with_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_choices_agree_with_the_library():
    from tfrec_proxy.data.loaders import FILE_FORMATS
    from tfrec_proxy.data.prepare import DATA_SOURCES
    from tfrec_proxy.training import EVAL_CHUNKS, OPTIMIZERS, STRATEGIES

    assert cli_flags.STRATEGIES == STRATEGIES and cli_flags.EVAL_CHUNKS == EVAL_CHUNKS
    from tfrec_proxy.evaluation import FULL_RANKING_HISTORY
    assert cli_flags.FULL_RANKING_HISTORY == FULL_RANKING_HISTORY
    assert cli_flags.OPTIMIZERS == OPTIMIZERS
    # "dataframe" needs a pandas frame handed over in Python: not a CLI source.
    assert set(cli_flags.DATA_SOURCES) == set(DATA_SOURCES) - {"dataframe"}
    assert cli_flags.FILE_FORMATS == FILE_FORMATS
    from tfrec_proxy.layers.item_norm import ITEM_NORM_MODES
    from tfrec_proxy.registry import EXTRACTIONS, ITEM_TOWERS, SCORERS, WEIGHTINGS
    from tfrec_proxy.tasks import LOSSES

    from tfrec_proxy.objectives import OBJECTIVES, SAMPLERS

    from tfrec_proxy.felrec_losses import FELREC_LOSSES

    assert cli_flags.LOSSES == LOSSES + OBJECTIVES + FELREC_LOSSES
    assert cli_flags.SAMPLERS == SAMPLERS
    assert cli_flags.ITEM_NORMS == ITEM_NORM_MODES
    # The CLI offers the built-in names (tests may register more).
    assert set(cli_flags.EXTRACTIONS) <= set(EXTRACTIONS.names())
    assert {"last", "mean", "mur"} == set(cli_flags.EXTRACTIONS)
    assert set(cli_flags.SCORERS) - {"auto"} <= set(SCORERS.names())
    assert set(cli_flags.WEIGHTINGS) == {"none", "frequency", "idw"} <= set(WEIGHTINGS.names())
    assert set(cli_flags.ITEM_TOWERS) == {"id", "pir", "shared"} <= set(ITEM_TOWERS.names())
    from tfrec_proxy.registry import ENCODERS
    assert set(cli_flags.ENCODERS) == {"self-attention", "sasrec", "ram", "ram-u",
                                        "proxysr", "proxysr-user",
                                        "felrec"} <= set(ENCODERS.names())
    from tfrec_proxy.data.prepare import SPLITS
    assert cli_flags.SPLITS == SPLITS
    from tfrec_proxy.data.felrec_data import TIME_ORDERS
    from tfrec_proxy.data.synthetic_timeline import TIMELINES
    from tfrec_proxy.felrec_training import LR_SCHEDULES, OPTIMIZERS
    from tfrec_proxy.layers.felrec import NORMALIZATIONS
    assert cli_flags.TIME_ORDERS == TIME_ORDERS and cli_flags.TIMELINES == TIMELINES
    assert cli_flags.FELREC_OPTIMIZERS == OPTIMIZERS
    assert cli_flags.FELREC_SCHEDULES == LR_SCHEDULES
    assert cli_flags.FELREC_NORMALIZATIONS == NORMALIZATIONS


def test_method_flags_set_the_config_fields():
    args = cli_parser.parse_args([
        "config", "--extraction", "mur", "--num-interests", "5", "--weighting", "idw",
        "--loss", "focal", "--focal-gamma", "1.5", "--item-norm", "posthoc",
        "--idw-momentum", "0.8", "--idw-eta", "0.001", "--idw-max-iterations", "4",
        "--idw-wake-epochs", "2", "--no-idw-calibration", "--scorer", "dot"])
    config = cli_parser.config_from_args(args)
    assert (config.model.extraction, config.model.num_interests) == ("mur", 5)
    assert (config.model.loss, config.model.focal_gamma) == ("focal", 1.5)
    assert config.model.item_norm == "posthoc" and config.model.scorer == "dot"
    assert config.train.weighting == "idw"
    idw = config.train.idw
    assert (idw.momentum, idw.eta, idw.max_iterations, idw.wake_epochs, idw.calibrate) == (
        0.8, 0.001, 4, 2, False)


def test_pir_flags_set_the_config_fields():
    args = cli_parser.parse_args([
        "config", "--item-tower", "pir", "--num-proxies", "16", "--frequent-bias-k", "0",
        "--item-features", "items.tsv", "--share-item-encoder", "--attribute-dim", "8",
        "--attribute-noise", "0.25", "--cold-items", "0.1"])
    config = cli_parser.config_from_args(args)
    model = config.model
    assert (model.item_tower, model.num_proxies, model.frequent_bias_k) == ("pir", 16, 0)
    assert model.share_item_encoder and config.data.item_features == "items.tsv"
    assert (config.data.synthetic.attribute_dim, config.data.synthetic.attribute_noise) == (
        8, 0.25)
    assert config.data.cold_items == 0.1


@pytest.mark.parametrize("argv, message", [
    (["--num-interests", "0"], "expected a positive integer, got '0'"),
    (["--idw-momentum", "1"], "expected a number in [0, 1), got '1'"),
    (["--idw-eta", "0"], "expected a positive number, got '0'"),
    (["--extraction", "capsule"], "invalid choice: 'capsule'"),
    (["--item-tower", "bag"], "invalid choice: 'bag'"),
    (["--num-proxies", "0"], "expected a positive integer, got '0'"),
    (["--frequent-bias-k", "-1"], "got '-1'"),
])
def test_bad_method_flags_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_parser.parse_args(["train", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# --- History input ------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("", "history is empty"),
    ("3,x,4", "history item 'x' is not an integer"),
    ("3,,4", "history item '' is not an integer"),
    ("-1", "only padding"),
    ("3,9223372036854775808", "item id 9223372036854775808 is outside the int64 range"),
])
def test_bad_history_text(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_history(text)


def test_read_histories_json_and_comma_lines(tmp_path):
    path = tmp_path / "h.txt"
    path.write_text("3,17,42\n\n[5, 6]\n  [7]  \n-1, 8\n")
    assert read_histories(str(path)) == [(1, [3, 17, 42]), (3, [5, 6]), (4, [7]),
                                         (5, [-1, 8])]


@pytest.mark.parametrize("text, message", [
    ("1,2\n\n[3, true]\n", "line 3: history item True is not an integer"),
    ("1,2\n[3, 4\n", "line 2: not a valid JSON list"),
    ("[]\n", "line 1: history [] is empty or not a list"),
    ("1\n[99999999999999999999]\n", "line 2: item id 99999999999999999999 is outside"),
    ("[-1]\n", "line 1: history has only padding"),
    ("\n  \n", "has no history (every line is blank)"),
])
def test_read_histories_names_the_bad_line(tmp_path, text, message):
    path = tmp_path / "h.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        read_histories(str(path))


def test_read_histories_from_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("[1, 2]\n3\n"))
    assert read_histories("-") == [(1, [1, 2]), (2, [3])]


# --- Verbs on a trained run --------------------------------------------------------------

def _lines(text: str) -> list:
    return [json.loads(line) for line in text.strip().splitlines()]


def test_recommend_prints_k_items(trained_run, capsys):
    _, run_dir = trained_run
    assert main(["recommend", "--run", str(run_dir), "--history", "3,17,42", "-k", "7"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["history"] == [3, 17, 42] and len(answer["items"]) == 7
    assert answer["scores"] == sorted(answer["scores"], reverse=True)
    assert answer["unknown_ids"] == [] and answer["all_unknown"] is False


def test_recommend_histories_file_in_batches(trained_run, tmp_path, capsys, monkeypatch):
    from tfrec_proxy import serving

    _, run_dir = trained_run
    histories = [[3, 17, 42], [5], [8, 9], [10, 11, 12], [4]]
    lines = [",".join(map(str, histories[0])), "", json.dumps(histories[1])] + [
        json.dumps(h) for h in histories[2:]]
    (tmp_path / "h.txt").write_text("\n".join(lines) + "\n")
    calls = []
    original = serving.Run.recommend

    def counting(self, batch, *args, **kwargs):
        calls.append(len(batch))
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(serving.Run, "recommend", counting)
    assert main(["recommend", "--run", str(run_dir), "--histories", str(tmp_path / "h.txt"),
                 "-k", "4", "--index", "brute_force", "--batch-size", "2"]) == 0
    answers = _lines(capsys.readouterr().out)
    assert calls == [2, 2, 1]
    assert [a["history"] for a in answers] == histories
    assert [a["line"] for a in answers] == [1, 3, 4, 5, 6]
    for history, answer in zip(histories, answers):
        assert main(["recommend", "--run", str(run_dir), "--history",
                     ",".join(map(str, history)), "-k", "4", "--index", "brute_force"]) == 0
        assert json.loads(capsys.readouterr().out)["items"] == answer["items"]


def test_recommend_reads_stdin(trained_run, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("3,4\n[5]\n"))
    assert main(["recommend", "--run", str(trained_run[1]), "--histories", "-", "-k", "2"]) == 0
    assert [a["history"] for a in _lines(capsys.readouterr().out)] == [[3, 4], [5]]


def test_recommend_reports_unknown_ids(trained_run, tmp_path, capsys):
    result, run_dir = trained_run
    known = int(result.data.vocab.ids[0])
    unknown = int(result.data.vocab.ids.max()) + 1000
    (tmp_path / "h.txt").write_text(f"{known},{unknown}\n{unknown},{unknown + 1}\n{known}\n")
    assert main(["recommend", "--run", str(run_dir), "--histories",
                 str(tmp_path / "h.txt"), "-k", "3"]) == 0
    captured = capsys.readouterr()
    answers = _lines(captured.out)
    assert [a["unknown_ids"] for a in answers] == [[unknown], [unknown, unknown + 1], []]
    assert [a["all_unknown"] for a in answers] == [False, True, False]
    warnings_ = captured.err.strip().splitlines()
    assert len(warnings_) == 2 and all(w.startswith("tfrec-proxy recommend: warning: ")
                                       for w in warnings_)
    assert "lines 1, 2 are not in the run's vocabulary" in warnings_[0]
    assert "line 2: no item id is known to the run" in warnings_[1]

    assert main(["recommend", "--run", str(run_dir), "--histories", str(tmp_path / "h.txt"),
                 "--strict"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert f"line 1: item id(s) [{unknown}] are not in the run's vocabulary" in captured.err


def test_recommend_exclude_seen(trained_run, capsys):
    _, run_dir = trained_run
    assert main(["recommend", "--run", str(run_dir), "--history", "3,4", "-k", "20",
                 "--index", "brute_force"]) == 0
    plain = json.loads(capsys.readouterr().out)["items"]
    history = plain[:3]
    assert main(["recommend", "--run", str(run_dir), "--history", ",".join(map(str, history)),
                 "-k", "5", "--index", "brute_force", "--exclude-seen"]) == 0
    items = json.loads(capsys.readouterr().out)["items"]
    assert len(items) == 5 and not set(items) & set(history)
    assert main(["recommend", "--run", str(run_dir), "--history", "3,4", "-k", "19",
                 "--exclude-seen"]) == 2
    assert "re-export with a larger --max-k" in capsys.readouterr().err


def test_recommend_bad_ids_in_a_file_name_the_line(trained_run, tmp_path, capsys):
    (tmp_path / "h.txt").write_text("3\n\n[4, 99999999999999999999]\n")
    assert main(["recommend", "--run", str(trained_run[1]), "--histories",
                 str(tmp_path / "h.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "h.txt line 3: item id 99999999999999999999 is outside the int64 range" in err


def test_export_and_recommend_keep_stderr_quiet(trained_run, tmp_path):
    # No TF_CPP_MIN_LOG_LEVEL: no CUDA probing, TensorFlow or ScaNN (absl) lines.
    target = str(tmp_path / "again")
    out = _python("import sys\nfrom tfrec_proxy.cli import main\n"
                  f"assert main(['export', '--run', {str(trained_run[1])!r}, '--output', "
                  f"{target!r}]) == 0\n"
                  f"sys.exit(main(['recommend', '--run', {target!r}, '--history', '3,17', "
                  "'-k', '3']))")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr == ""
    assert len(json.loads(out.stdout.strip().splitlines()[-1])["items"]) == 3


@pytest.mark.parametrize("preset, quiet", [(None, True), ("3", True), ("2", True),
                                           ("1", False), ("0", False)])
@pytest.mark.parametrize("tf_loaded", [False, True])
def test_a_users_log_level_decides_whether_tensorflow_is_silenced(preset, quiet, tf_loaded,
                                                                   monkeypatch):
    import tfrec_proxy
    from tfrec_proxy.cli import commands

    monkeypatch.setattr(tfrec_proxy, "_PRESET_TF_CPP_MIN_LOG_LEVEL", preset)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2" if preset is None else preset)
    if tf_loaded:
        monkeypatch.setitem(sys.modules, "tensorflow", sys.modules.get("tensorflow", os))
    else:
        monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    assert commands._quiet_tensorflow() is quiet
    # Unset by the user: 3 before TensorFlow loads (afterwards it cannot change).
    expected = preset if preset is not None else ("2" if tf_loaded else "3")
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == expected


def test_evaluate_matches_training_metrics(trained_run, capsys):
    result, run_dir = trained_run
    assert main(["evaluate", "--run", str(run_dir)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("sampled/hr@20", "sampled/ndcg@20", "full/hr@20", "full/tail/hr@20"):
        assert metrics[key] == pytest.approx(result.metrics[key], abs=1e-6), key


def test_evaluate_eval_chunks_defaults_to_the_runs_config(trained_run, capsys, monkeypatch):
    from tfrec_proxy import evaluation

    seen = []
    monkeypatch.setattr(evaluation, "evaluate_run",
                        lambda *args, **kwargs: seen.append(kwargs) or {"ok": 1.0})
    _, run_dir = trained_run
    assert main(["evaluate", "--run", str(run_dir), "--no-full"]) == 0
    assert main(["evaluate", "--run", str(run_dir), "--eval-chunks", "last",
                 "--full-ranking-history", "removed"]) == 0
    capsys.readouterr()
    config = RunConfig.from_json(run_dir / "config.json").train
    assert seen[0]["chunks"] == config.eval_chunks and seen[1]["chunks"] == "last"
    assert seen[0]["history"] == config.full_ranking_history == "kept"
    assert seen[1]["history"] == "removed"
    assert seen[0]["num_negatives"] == config.num_negatives and seen[0]["full"] is False


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
    import numpy as np  # items.npz (counts, clusters for reports) survives the re-export

    with np.load(run_dir / "items.npz") as old, np.load(target / "items.npz") as new:
        assert sorted(old.files) == sorted(new.files)
        for name in old.files:
            np.testing.assert_array_equal(old[name], new[name])


def test_report_prints_the_png_paths(trained_run, tmp_path, capsys):
    assert main(["report", "--run", str(trained_run[1]), "--output", str(tmp_path)]) == 0
    paths = capsys.readouterr().out.strip().splitlines()
    assert paths and all(p.endswith(".png") and os.path.isfile(p) for p in paths)
    assert all(os.path.dirname(p) == str(tmp_path) for p in paths)


def test_train_verb_writes_a_run(tmp_path, capsys):
    config = tiny_config(epochs=1)
    config.to_json(tmp_path / "config.json")
    code = main(["train", "--config", str(tmp_path / "config.json"), "--output",
                 str(tmp_path), "--run-name", "cli", "--seed", "3"])
    assert code == 0
    assert "exported run" in capsys.readouterr().out
    written = RunConfig.from_json(tmp_path / "cli" / "config.json")
    assert written.train.seed == 3 and written.data.synthetic.seed == config.data.synthetic.seed


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["recommend", "--run", str(tmp_path), "--history", "1"]) == 2
    assert "is not a tfrec_proxy run: missing ['manifest.json']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["recommend", "--run", str(tmp_path), "--history", "1,y"])
    assert "history item 'y' is not an integer" in capsys.readouterr().err
    assert main(["recommend", "--run", str(tmp_path), "--histories", str(tmp_path / "no")]) == 2
    assert "cannot read history file" in capsys.readouterr().err


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


def test_serve_verb_shares_the_server_flags_and_reports_a_bad_run(tmp_path, capsys):
    from tfrec_proxy.cli.parser import build_parser

    args = build_parser().parse_args(["serve", "--run", str(tmp_path), "--port", "0",
                                      "--no-batching", "--max-batch-size", "8"])
    assert (args.command, args.port, args.batching, args.max_batch_size) == \
        ("serve", 0, False, 8)
    assert args.host == "127.0.0.1"  # loopback unless told otherwise
    assert main(["serve", "--run", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "error" in capsys.readouterr().err

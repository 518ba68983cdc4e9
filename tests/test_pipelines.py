"""Pipelines: configs parse, benchmark scripts run on tiny settings."""

import contextlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tfrec_proxy.config import RunConfig

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


@contextlib.contextmanager
def _pipelines_importable():
    """`pipelines/` on `sys.path` for the imports inside the block only."""
    sys.path.insert(0, str(PIPELINES))
    try:
        yield
    finally:
        sys.path.remove(str(PIPELINES))


def _smoke_jobs(tmp):
    """The smoke runs of this module, in test order: name -> the commands (script and
    arguments) of one test, run one after another."""
    from conftest import tiny_config

    tiny_config(epochs=1).to_json(tmp / "tiny.json")
    idw_synthetic = ("--quick", "--num-users", "100", "--skews", "1", "--seeds", "0",
                     "--methods", "mur", "mur_idw", "--results", tmp / "synthetic.jsonl")
    table1 = ("--quick", "--methods", "sur", "mur_idw", "--seeds", "0", "--results",
              tmp / "table1.jsonl")
    return {
        "full_ranking": [("bench_full_ranking.py", "--items", "1000", "--chunk-sizes", "100",
                          "--speed-items", "500", "--queries", "20", "--repeats", "1")],
        "exclusions": [("bench_exclusions.py", "--users", "50", "--items", "1000",
                        "--repeats", "1")],
        "train_speed": [("bench_train_speed.py", "--quick", "--tiny")],
        "sweep": [("sweep_baseline.py", "--config", tmp / "tiny.json", "--set",
                   "train.learning_rate=0.003;model.dropout=0.0")],
        "idw_synthetic": [("repro_idw_synthetic.py", *idw_synthetic),
                          ("repro_idw_synthetic.py", *idw_synthetic),
                          ("repro_idw_synthetic.py", "--summarize", "--results",
                           tmp / "synthetic.jsonl", "--plot", tmp / "plot.png")],
        "table1": [("repro_idw_table1.py", *table1), ("repro_idw_table1.py", *table1),
                   ("repro_idw_table1.py", "--summarize", "--results", tmp / "table1.jsonl")],
        "mur_speed": [("bench_mur_speed.py", "--data", "synthetic", "--steps", "3",
                       "--warmup", "2", "--repeats", "1", "--batch-size", "64",
                       "--min-sequences", "8")],
        "eq4": [("bench_eq4_scorer.py", "--queries", "64", "--interests", "3", "--repeats",
                 "1", "--steps", "1")],
        "idw_density": [("bench_idw_density.py", "--sizes", "3000", "--repeats", "1",
                         "--reference-size", "256", "--exact-check-size", "1500")],
        "pir": [("repro_pir.py", "--quick", "--methods", "id_sur", "pir_sur", "--seeds", "0",
                 "--results", tmp / "pir.jsonl"),
                ("repro_pir.py", "--summarize", "--results", tmp / "pir.jsonl")],
        "add_items": [("bench_add_items.py", "--catalogue", "3000", "--sizes", "100",
                       "--build-repeats", "1", "--repeats", "1", "--results",
                       tmp / "add.jsonl")],
        "sasrec": [("repro_sasrec_ml1m.py", "--quick", "--methods", "sasrec_bce", "ram",
                    "--seeds", "0", "--results", tmp / "sasrec.jsonl"),
                   ("repro_sasrec_ml1m.py", "--summarize", "--results", tmp / "sasrec.jsonl")],
        "sasrec_speed": [("bench_sasrec_speed.py", "--data", "synthetic", "--warmup", "1",
                          "--steps", "2", "--repeats", "1", "--batch-size", "256",
                          "--results", tmp / "speed.jsonl")],
        "ram_blocks": [("bench_ram_blocks.py", "--data", "synthetic", "--steps", "1",
                        "--warmup", "1", "--repeats", "1", "--blocks", "2", "--max-len",
                        "20", "--batch-size", "500", "--dim", "8", "--heads", "2")],
        "epoch_time": [("bench_epoch_time.py", "--quick", "--settings", "500:8:8")],
        "recbole_accuracy": [("bench_recbole_accuracy.py", "--data", "synthetic",
                              "--minutes", "0.05", "--results", tmp / "accuracy.jsonl"),
                             ("bench_recbole_accuracy.py", "--summarize", "--results",
                              tmp / "accuracy.jsonl")],
        "felrec": [("repro_felrec.py", "--quick", "--methods", "felrec_q", "two_tower",
                    "--seeds", "0", "--results", tmp / "felrec.jsonl"),
                   ("repro_felrec.py", "--summarize", "--results", tmp / "felrec.jsonl")],
    }


def _chain(commands):
    """Runs one test's commands in order (each a fresh process with one TensorFlow
    thread, two at a time); stops at the first failure."""
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    done = []
    for script, *args in commands:
        done.append(subprocess.run([sys.executable, str(PIPELINES / script),
                                    *map(str, args)], capture_output=True, text=True,
                                   timeout=600, env=env))
        if done[-1].returncode != 0:
            break
    return done


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`(folder, name -> future of the runs)`: every smoke run of this module started
    at once, two at a time (CI has two cores, and most of a run is Python start-up),
    in test order; each test waits for its own."""
    tmp = tmp_path_factory.mktemp("smoke")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_chain, commands)
                   for name, commands in _smoke_jobs(tmp).items()}
        yield tmp, futures
        for future in futures.values():
            future.cancel()


def _result(smoke, name, count=1):
    """The runs of smoke job `name`, asserting that all `count` of them succeeded."""
    runs = smoke[1][name].result()
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    assert len(runs) == count
    return runs


def test_configs_parse_and_build():
    from tfrec_proxy.models import build_model

    paths = sorted((PIPELINES / "configs").glob("*.json"))
    assert [p.name for p in paths] == [
        "felrec_synthetic.json", "felrec_synthetic_dense.json", "ml1m_d64.json",
        "ml1m_idw.json", "ml1m_sasrec.json", "ml1m_sur.json", "pir_ml1m.json",
        "pir_synthetic.json", "proxysr_diginetica.json", "proxysr_synthetic.json",
        "synthetic_default.json"]
    for path in paths:
        config = RunConfig.from_json(path)
        if config.model.encoder == "felrec":  # its own model (FELRecModel), no item tower
            assert (config.data.split, config.model.loss) == ("chronological", "infonce")
            continue
        build_model(config.model, vocab_size=10, max_len=config.data.max_len)
        config.model.item_tower = "pir"  # every config also builds with the PIR tower
        build_model(config.model, vocab_size=10, max_len=config.data.max_len)


def test_readme_time_to_quality_command_is_the_measured_recipe(capsys):
    """The README's 10-minute SASRec command resolves to the config of the grid
    variant whose figures BENCHMARKS.md reports for it."""
    import shlex

    from tfrec_proxy.cli import main

    with _pipelines_importable():
        from methods import with_overrides
        from repro_sasrec_ml1m import VARIANTS

    readme = (PIPELINES.parent / "README.md").read_text()
    line, = [row for row in readme.splitlines() if "# SASRec+CE, 10 minutes" in row]
    words = shlex.split(line.split("#")[0])
    assert words[:2] == ["tfrec-proxy", "train"]
    capsys.readouterr()
    assert main(["config", *words[2:]]) == 0
    documented = json.loads(capsys.readouterr().out)
    base = RunConfig.from_json(PIPELINES / "configs" / "ml1m_sasrec.json")
    measured = json.loads(json.dumps(
        with_overrides(base, VARIANTS["sasrec_ce_small_batch_lr3e-3_10min"]).to_dict()))
    # `--embedding-dim` also resizes the id item tower's last layer, which the shared
    # item tower never reads.
    assert documented["model"]["item_tower"] == measured["model"]["item_tower"] == "shared"
    for config in (documented, measured):
        del config["model"]["item_hidden_units"]
    assert documented == measured


def test_ml1m_idw_config():
    config = RunConfig.from_json(PIPELINES / "configs" / "ml1m_idw.json")
    assert (config.data.source, config.data.path) == ("file", None)
    assert (config.model.embedding_dim, config.model.extraction, config.model.scorer) == (
        16, "mur", "auto")
    assert (config.train.epochs, config.train.early_stopping_patience,
            config.train.monitor) == (30, 3, "val_ndcg@20")


def test_bench_full_ranking_smoke(smoke):
    (out,) = _result(smoke, "full_ranking")
    assert "ratio chunked/dense" in out.stdout and "peak RSS growth" in out.stdout


def test_bench_run_retrieval_smoke(trained_run):
    _, run_dir = trained_run
    out = subprocess.run(
        [sys.executable, str(PIPELINES / "bench_run_retrieval.py"), "--run", str(run_dir),
         "--queries", "20", "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "recall@10 of ScaNN against brute force over 20 test histories" in out.stdout


def test_bench_exclusions_smoke(smoke):
    (out,) = _result(smoke, "exclusions")
    assert "ratio per-row lists / shared sets" in out.stdout


def test_bench_train_speed_smoke(smoke):
    (out,) = _result(smoke, "train_speed")
    ratio = out.stdout.strip().splitlines()[-1]
    assert ratio.startswith("speed ratio vs plain TFRS: ")
    assert float(ratio.rsplit(" ", 1)[1]) > 0


def test_sweep_baseline_smoke(smoke):
    (out,) = _result(smoke, "sweep")
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("[train.learning_rate=0.003;model.dropout=0.0]") and "1 epochs" in line


def test_methods_presets():
    with _pipelines_importable():
        import methods
    assert list(methods.METHODS) == ["sur", "mur", "frequency", "focal", "qmargin",
                                     "item_norm", "posthoc", "sur_idw", "mur_idw"]
    base = RunConfig()
    base.train.weighting = "idw"
    sur = methods.apply_method(base, "sur")
    assert (sur.model.extraction, sur.model.num_interests, sur.train.weighting) == (
        "mur", 1, "none")
    assert base.train.weighting == "idw"  # a copy
    mur_idw = methods.apply_method(RunConfig(), "mur_idw")
    assert (mur_idw.model.num_interests, mur_idw.train.weighting) == (5, "idw")
    assert methods.apply_method(RunConfig(), "posthoc").model.item_norm == "posthoc"
    try:
        methods.apply_method(base, "nope")
    except ValueError as error:
        assert "mur_idw" in str(error)
    else:
        raise AssertionError("unknown method accepted")
    nested = methods.with_overrides(RunConfig(), {"model.felrec.optimizer": "adam",
                                                  "train.epochs": 3}, seed=4)
    assert (nested.model.felrec.optimizer, nested.train.epochs, nested.train.seed) == (
        "adam", 3, 4)
    for bad in ("epochs", "model.nope.x"):
        try:
            methods.with_overrides(RunConfig(), {bad: 1})
        except ValueError as error:
            assert repr(bad) in str(error)
        else:
            raise AssertionError(f"override {bad!r} accepted")
    assert methods.mean_std([0.5, 0.7], 100) == "60.00 ± 14.14"
    assert methods.mean_std([0.5], 100) == "50.00" and methods.mean_std([]) == "-"


def test_grid_backs_each_run_up_and_counts_a_resumed_runs_earlier_time(tmp_path,
                                                                        monkeypatch):
    """`run_variant_grid(backup_root=...)` gives each run its own backup folder (so a
    killed grid resumes mid-run: `tests/test_resume.py` pins that `train` does) and
    records the training time that earlier processes spent on a resumed run."""
    from types import SimpleNamespace

    from conftest import tiny_config
    import tfrec_proxy.export
    import tfrec_proxy.training

    with _pipelines_importable():
        import methods
    folders = []

    def fake_train(config, **kwargs):
        folders.append(config.train.backup_dir)
        return SimpleNamespace(phases=[{"name": "train", "epochs": 3, "seconds": 1.0}],
                               model=None, metrics={"full/hr@10": 0.5}, history={})

    monkeypatch.setattr(tfrec_proxy.training, "train", fake_train)
    monkeypatch.setattr(tfrec_proxy.export, "parameter_report", lambda model: {})
    root = tmp_path / "grid.backups"
    (root / "a-seed1").mkdir(parents=True)  # what a run killed after 2 epochs leaves
    (root / "a-seed1" / "progress.json").write_text(json.dumps(
        {"phase": 0, "epoch": 2, "train_seconds": 500.0}))
    results = tmp_path / "grid.jsonl"
    base = tiny_config()
    methods.run_variant_grid(results, base, {"a": {}}, [("a", 0), ("a", 1)],
                             backup_root=root)
    assert folders == [str(root / "a-seed0"), str(root / "a-seed1")]
    fresh, resumed = [json.loads(line) for line in results.read_text().splitlines()]
    assert "resumed" not in fresh and fresh["seconds"] < 500
    assert resumed["resumed"] == {"phase": 0, "epoch": 2, "earlier_seconds": 500.0}
    assert resumed["seconds"] >= 500
    # The backup folder is not part of a run's fingerprint.
    assert fresh["config_hash"] == methods.config_hash(methods.with_overrides(base, {}, 0))
    methods.run_variant_grid(results, base, {"a": {}}, [("a", 2)], backup_root=None)
    assert folders[-1] is None  # --no-backup
    # Default backup roots: under saved_models/ for the default results file (the
    # weights are data-derived: never under results/), else beside the file given.
    args = SimpleNamespace(results=None, quick=False, backup_root=None, no_backup=False)
    methods.default_results(args, "grid")
    assert args.backup_root == methods.BACKUP_ROOT / "grid"
    assert args.backup_root.parent.parent.name == "saved_models"
    args = SimpleNamespace(results=results, quick=False, backup_root=None, no_backup=False)
    methods.default_results(args, "grid")
    assert args.backup_root == tmp_path / "grid.backups"
    args = SimpleNamespace(results=results, quick=False, backup_root=None, no_backup=True)
    methods.default_results(args, "grid")
    assert args.backup_root is None


def test_repro_idw_synthetic_smoke(smoke):
    tmp = smoke[0]
    out, again, summary = _result(smoke, "idw_synthetic", 3)
    lines = (tmp / "synthetic.jsonl").read_text().splitlines()
    assert len(lines) == 2  # and the second run (resumed) added nothing
    record = json.loads(lines[1])
    assert (record["method"], record["skew"], record["seed"]) == ("mur_idw", 1.0, 0)
    assert record["idw_iterations"] == 1 and record["head_clusters"] == [0]
    assert 0 <= record["tail/hr@20"] <= 1 and -1 <= record["silhouette"] <= 1
    assert "| MUR-IDW | 1 | 1 |" in summary.stdout
    assert (tmp / "plot.png").stat().st_size > 0


def test_repro_idw_table1_smoke(smoke):
    results = smoke[0] / "table1.jsonl"
    out, again, summary = _result(smoke, "table1", 3)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["method"], r["seed"]) for r in records] == [("sur", 0), ("mur_idw", 0)]
    assert [p["name"] for p in records[1]["phases"]] == ["pretrain", "idw", "calibrate"]
    assert records[1]["idw"]["iterations"] == 1
    assert "full/tail/ndcg@20" in records[0]["metrics"]
    assert "0 of 2 to run" in again.stdout
    assert "| MUR-IDW | 5 | 1 |" in summary.stdout and "MUR-IDW vs SUR" in summary.stdout
    assert "IDW overhead" in summary.stdout


def test_repro_idw_table1_work_order():
    with _pipelines_importable():
        from methods import METHODS
        from repro_idw_table1 import work_order

    order = work_order(list(METHODS), [0, 1, 2], [0])
    assert order[:4] == [("sur", 0), ("mur_idw", 0), ("mur", 0), ("sur_idw", 0)]
    assert [m for m, _ in order[4:9]] == ["frequency", "focal", "qmargin", "item_norm",
                                          "posthoc"]
    assert order[9:] == [(m, s) for s in (1, 2) for m in ("sur", "mur_idw", "mur",
                                                          "sur_idw")]


def test_bench_mur_speed_smoke(smoke):
    (out,) = _result(smoke, "mur_speed")
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("MUR/SUR step time ratio: ") and last.endswith("(min)")


def test_bench_eq4_scorer_smoke(smoke):
    (out,) = _result(smoke, "eq4")
    lines = [line for line in out.stdout.splitlines() if " ms" in line]
    assert len(lines) == 4 and lines[-1].startswith("library")
    # Every eq. 4 form computes the same loss.
    losses = {line.rsplit("loss ", 1)[1] for line in lines[1:]}
    assert len(losses) == 1, lines


def test_bench_idw_density_smoke(smoke):
    (out,) = _result(smoke, "idw_density")
    assert "sleep phase, 3000 items" in out.stdout and "Pearson correlation" in out.stdout


def test_repro_pir_smoke(smoke):
    results = smoke[0] / "pir.jsonl"
    out, summary = _result(smoke, "pir", 2)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["method"] for r in records] == ["id_sur", "pir_sur"]
    # No per-item table: fewer parameters than the id tower even on 200 items.
    assert records[1]["parameters"]["candidate_tower"] < records[0]["parameters"][
        "candidate_tower"]
    assert "cold/full/hr@10" in records[1]["metrics"]
    assert "full/freq9/ndcg@10" in records[1]["metrics"]
    assert "| PIR + SUR | 1 |" in summary.stdout


def test_bench_add_items_smoke(smoke):
    _result(smoke, "add_items")
    assert len((smoke[0] / "add.jsonl").read_text().splitlines()) >= 1


def test_repro_sasrec_ml1m_smoke(smoke):
    results = smoke[0] / "sasrec.jsonl"
    out, summary = _result(smoke, "sasrec", 2)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["method"] for r in records] == ["sasrec_bce", "ram"]
    metrics = records[1]["metrics"]
    assert "full/ndcg@10" in metrics
    # The history-removed ranking: overall figures only, and never worse than kept
    # (removing other items can only lift the target).
    removed = [key for key in metrics if key.startswith("removed/")]
    assert "removed/full/hr@10" in removed and "removed/full/tail/hr@10" in removed
    assert not [key for key in removed if "/pop" in key or "/freq" in key]
    assert metrics["removed/full/hr@10"] >= metrics["full/hr@10"]
    curve = records[1]["curves"]["val_ndcg@10"]  # one value per epoch trained
    assert len(curve) == records[1]["epochs"] and 0.0 < curve[0] <= 1.0
    assert "| ram | 1 |" in summary.stdout and "0.2930 / 0.1612" in summary.stdout


def test_bench_sasrec_speed_smoke(smoke):
    (out,) = _result(smoke, "sasrec_speed")
    assert "ours / plain TFRS:" in out.stdout and "quoted, not measured" in out.stdout
    assert len((smoke[0] / "speed.jsonl").read_text().splitlines()) == 1


def test_bench_ram_blocks_smoke(smoke):
    (out,) = _result(smoke, "ram_blocks")
    assert "n_b=2:" in out.stdout and "d=8," in out.stdout
    assert "RAM/SASRec step time ratio" in out.stdout.strip().splitlines()[-1]


def test_bench_epoch_time_smoke(smoke):
    (out,) = _result(smoke, "epoch_time")
    assert "targets 500, min sequences 8, d=8:" in out.stdout
    assert "s for the epoch (" in out.stdout


def test_bench_recbole_accuracy_smoke(smoke):
    """Ours only (CI has no RecBole): trained for the budget, tested by full ranking
    with the user's other items removed (RecBole's full sort)."""
    out, summary = _result(smoke, "recbole_accuracy", 2)
    (record,) = [json.loads(line) for line in (smoke[0] / "accuracy.jsonl").read_text()
                 .splitlines()]
    assert record["recbole"] is None and record["minutes"] == 0.05
    ours = record["ours"]
    assert ours["config"]["train"]["full_ranking_history"] == "removed"
    assert ours["config"]["train"]["time_budget_minutes"] == 0.05
    assert ours["config"]["data"]["max_len"] == 50 and ours["epochs"] >= 1
    assert 0.0 <= ours["test"]["ndcg@10"] <= ours["test"]["recall@10"] <= 1.0
    assert "| ours | 0.05 |" in summary.stdout


def test_repro_felrec_smoke(smoke):
    out, summary = _result(smoke, "felrec", 2)
    records = [json.loads(line) for line in (smoke[0] / "felrec.jsonl").read_text()
               .splitlines()]
    assert [r["method"] for r in records] == ["felrec_q", "two_tower"]
    assert records[0]["split"] == records[1]["split"]  # one split for every method
    for record in records:
        assert "resumed" not in record
        for part in ("observed", "new_users", "new_items", "total"):
            assert 0.0 <= record["metrics"][f"{part}/normalized_rank"] <= 1.0
    # Each run was backed up beside the results file, and its backup removed once done.
    assert list((smoke[0] / "felrec.backups").iterdir()) == []
    assert "Goal checks (issue 17):" in summary.stdout
    assert "| FELRec-Q | 1 |" in summary.stdout


def test_felrec_reference_export_writes_the_split(tmp_path):
    """The reference-code diagnostic gets exactly our chronological split."""
    import importlib.util

    import pandas as pd

    from tfrec_proxy.data.felrec_data import prepare_chronological

    spec = importlib.util.spec_from_file_location("felrec_reference",
                                                  PIPELINES / "felrec_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = RunConfig.from_json(PIPELINES / "configs" / "felrec_synthetic.json")
    config.data.synthetic.num_users, config.data.synthetic.num_items = 200, 100
    config.to_json(tmp_path / "small.json")
    module.export(str(tmp_path / "split.tsv"), str(tmp_path / "small.json"))
    frame = pd.read_csv(tmp_path / "split.tsv", sep="\t")
    split = prepare_chronological(config.data, history_len=8).split
    assert list(frame.columns) == ["user", "item", "split", "partition"]
    assert (frame["user"].to_numpy() == split.user).all()
    assert (frame["item"].to_numpy() == split.item).all()
    assert (frame["split"] == "train").sum() == split.num_train
    test = frame[frame["split"] == "test"]
    assert (test["partition"] == "new_items").sum() == split.test.mask("new_items").sum()

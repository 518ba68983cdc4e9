"""`tfrec_proxy.report`: PNG plots of a fake run folder, degradation, errors, PCA."""

import json
import math
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tfrec_proxy import report
from tfrec_proxy.report import ReportWarning, pca_2d, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ["training_curves.png", "metrics_by_popularity.png", "item_embeddings.png"]
# (width, height) in pixels: figure inches x 100 dpi.
CURVES_SIZE, POPULARITY_SIZE = (1200, 450), (1200, 500)
ONE_PANEL, TWO_PANELS = (650, 550), (1300, 550)


def _test_metrics():
    test = {}
    for p, protocol in enumerate(("sampled", "full")):
        for k in (5, 20):
            test[f"{protocol}/hr@{k}"] = 0.5 - 0.2 * p + k / 100
            test[f"{protocol}/ndcg@{k}"] = 0.3 - 0.1 * p + k / 200
        test[f"{protocol}/count"] = 500.0
        for g, group in enumerate(["head", "tail"] + [f"pop{i}" for i in range(1, 6)]):
            for k in (5, 20):
                test[f"{protocol}/{group}/hr@{k}"] = 0.8 / (g + 1) - 0.1 * p
                test[f"{protocol}/{group}/ndcg@{k}"] = 0.5 / (g + 1) - 0.05 * p
            test[f"{protocol}/{group}/count"] = 100.0
    test["full/pop5/hr@20"] = math.nan  # an empty group: no bar, no crash
    return test


def make_run(folder: Path, history=True, phases=True, items=True, clusters=True,
             num_items=300, dim=8) -> Path:
    """A fake run folder written with numpy/json only."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    metrics = {"test": _test_metrics(), "epochs": 5}
    if history:
        metrics["history"] = {
            "loss": [5.0, 4.0, 3.5, 3.4, 3.3],
            "val_loss": [5.2, 4.4, 4.0, 3.9, 3.9],
            "val_hr@20": [0.2, 0.3, 0.35, math.nan, 0.4],  # NaN: a phase that did not log
            "val_ndcg@20": [0.1, 0.15, 0.2, math.nan, 0.22],
        }
    if phases:
        metrics["phases"] = [{"name": "pretrain", "epochs": 3},
                             {"name": "calibrate", "epochs": 2}]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "manifest.json").write_text(json.dumps(
        {"model_kind": "two_tower", "embedding_dim": dim, "num_interests": 1}))
    ids = np.arange(10, 10 + num_items, dtype=np.int64)
    cluster = rng.integers(0, 5, num_items)
    centres = rng.normal(size=(5, dim)) * 3
    embeddings = (centres[cluster] + rng.normal(size=(num_items, dim))).astype(np.float32)
    np.savez(folder / "candidates.npz", ids=ids, embeddings=embeddings)
    if items:
        stats = {"ids": ids, "counts": rng.zipf(1.5, num_items).astype(np.float64)}
        if clusters:
            stats["clusters"] = cluster
        np.savez(folder / "items.npz", **stats)
    return folder


def png_size(path: Path):
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_writes_three_pngs_of_expected_size(tmp_path):
    run = make_run(tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReportWarning)  # a complete run warns about nothing
        paths = write_report(run)
    assert paths == [run / "report" / name for name in NAMES]
    sizes = [png_size(path) for path in paths]
    assert sizes == [CURVES_SIZE, POPULARITY_SIZE, TWO_PANELS]
    assert not list((run / "report").glob(".*"))  # no temporary files left behind
    from matplotlib.image import imread
    pixels = imread(paths[2])
    assert pixels.shape[:2] == (TWO_PANELS[1], TWO_PANELS[0])
    assert pixels[..., :3].std() > 0.05  # something was drawn, not a blank canvas


def test_output_dir(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "elsewhere" / "plots"
    assert write_report(str(run), output_dir=str(out)) == [out / name for name in NAMES]
    assert not (run / "report").exists()


def test_missing_history_skips_training_curves(tmp_path):
    run = make_run(tmp_path / "run", history=False, phases=False)
    with pytest.warns(ReportWarning, match="history"):
        paths = write_report(run)
    assert [path.name for path in paths] == NAMES[1:]
    assert not (run / "report" / "training_curves.png").exists()


def test_missing_phases_still_draws_curves(tmp_path):
    run = make_run(tmp_path / "run", phases=False)
    with pytest.warns(ReportWarning, match="phases"):
        paths = write_report(run)
    assert [path.name for path in paths] == NAMES
    assert png_size(paths[0]) == CURVES_SIZE


def test_phase_boundaries():
    two = [{"name": "pretrain", "epochs": 3}, {"name": "calibrate", "epochs": 2}]
    assert report._phase_boundaries(two, 5) == ([0, 3, 5], ["pretrain", "calibrate"])
    assert report._phase_boundaries([{"name": "fit", "epochs": 5}], 5) == ([], [])
    for bad in ([{"name": "pretrain", "epochs": 2}], [{"name": "x"}], "fit", []):
        with pytest.warns(ReportWarning, match="does not split the 5 history epochs"):
            assert report._phase_boundaries(bad, 5) == ([], [])


def test_missing_items_gives_one_uncoloured_panel(tmp_path):
    run = make_run(tmp_path / "run", items=False)
    with pytest.warns(ReportWarning, match="items.npz"):
        paths = write_report(run)
    assert png_size(paths[-1]) == ONE_PANEL


def test_items_without_clusters_gives_popularity_panel_only(tmp_path):
    run = make_run(tmp_path / "run", clusters=False)
    assert png_size(write_report(run)[-1]) == ONE_PANEL


def test_items_with_other_ids_or_bad_arrays_are_ignored(tmp_path):
    run = make_run(tmp_path / "run")
    ids = np.load(run / "candidates.npz")["ids"]
    counts = np.arange(len(ids), dtype=np.float64)
    np.savez(run / "items.npz", ids=ids, counts=counts, clusters=np.zeros(3))
    with pytest.warns(ReportWarning, match=r"items.npz\['clusters'\].*shape \(3,\)"):
        items = report._read_items(run / "items.npz", ids)
    assert list(items) == ["counts"]
    np.testing.assert_array_equal(items["counts"], counts)
    np.savez(run / "items.npz", ids=ids[::-1], counts=counts)
    with pytest.warns(ReportWarning, match="'ids' differ"):
        assert report._read_items(run / "items.npz", ids) is None


def test_bad_folder_errors(tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(ValueError, match="no_such_run.*does not exist"):
        write_report(missing)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty_run.*\['metrics.json', 'candidates.npz'\]"):
        write_report(empty)
    (empty / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"lacks \['candidates.npz'\]"):
        write_report(empty)
    np.savez(empty / "candidates.npz", ids=np.arange(3), embeddings=np.zeros((3, 2, 4)))
    with pytest.raises(ValueError, match=r"\(3, 2, 4\).*expected \[N\] and \[N, d\]"):
        write_report(empty)
    (empty / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json.*not readable JSON"):
        write_report(empty)


def test_metric_groups_choose_largest_k_and_groups():
    test = _test_metrics()
    assert report._metric_groups(test) == (20, ["sampled", "full"],
                                           ["pop1", "pop2", "pop3", "pop4", "pop5"])
    no_pop = {key: value for key, value in test.items() if "/pop" not in key}
    assert report._metric_groups(no_pop) == (20, ["sampled", "full"], ["head", "tail"])
    # pop10 sorts after pop2 (numeric order); k=50 only for one protocol is not used.
    odd = {"full/hr@5": 0.1, "full/pop10/hr@5": 0.1, "full/pop2/hr@5": 0.2,
           "sampled/hr@5": 0.3, "sampled/hr@50": 0.5}
    assert report._metric_groups(odd) == (5, ["sampled", "full"], ["pop2", "pop10"])
    assert report._metric_groups({"full/mrr": 0.1}) == (0, [], [])


def test_test_metrics_without_groups_skip_the_plot(tmp_path):
    run = make_run(tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test"] = {"sampled/hr@20": 0.4, "sampled/ndcg@20": 0.2}
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.warns(ReportWarning, match="per-group"):
        paths = write_report(run)
    assert [path.name for path in paths] == [NAMES[0], NAMES[2]]


def test_subsample_is_deterministic_and_bounded():
    rows = report._subsample(1000, limit=50)
    assert rows.shape == (50,) and len(np.unique(rows)) == 50
    assert np.all(np.diff(rows) > 0) and rows.max() < 1000
    np.testing.assert_array_equal(rows, report._subsample(1000, limit=50))
    np.testing.assert_array_equal(report._subsample(7, limit=50), np.arange(7))


def test_pca_points_on_a_line():
    t = np.array([-2.0, -1.0, 0.5, 3.0, 4.5])
    direction = np.array([1.0, 2.0, 2.0]) / 3.0  # unit length
    points = np.array([1.0, -1.0, 2.0]) + t[:, None] * direction
    projected = pca_2d(points)
    assert projected.shape == (5, 2)
    np.testing.assert_allclose(projected[:, 1], 0.0, atol=1e-12)
    # Signed distance along the line from the centroid, up to one global sign.
    distance = t - t.mean()
    sign = np.sign(projected[0, 0] * distance[0])
    np.testing.assert_allclose(projected[:, 0], sign * distance, atol=1e-12)


def test_pca_variance_ordering_and_sign_convention():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2000, 3)) * np.array([0.5, 5.0, 2.0])  # big axis: 1, then 2
    projected = pca_2d(base)
    variance = projected.var(axis=0)
    assert variance[0] > variance[1] > 0
    assert variance[0] == pytest.approx(25.0, rel=0.1)
    assert variance[1] == pytest.approx(4.0, rel=0.1)
    np.testing.assert_allclose(projected.mean(axis=0), 0.0, atol=1e-9)
    # Coordinate 0 follows input axis 1 with a positive sign (largest loading > 0).
    assert np.corrcoef(projected[:, 0], base[:, 1])[0, 1] > 0.99
    # The components do not depend on the data's sign, so negating it negates the result.
    np.testing.assert_allclose(pca_2d(-base), -projected, atol=1e-9)


def test_pca_degenerate_and_bad_inputs():
    np.testing.assert_allclose(pca_2d(np.array([[1.0], [3.0]])), [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(pca_2d(np.ones((1, 4))), [[0.0, 0.0]])
    with pytest.raises(ValueError, match=r"\[N, d\].*shape \(3,\)"):
        pca_2d(np.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(0, 2\)"):
        pca_2d(np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"embeddings\[1\] holds a non-finite"):
        pca_2d(np.array([[0.0, 1.0], [np.nan, 2.0]]))


def test_module_imports_neither_tensorflow_nor_pyplot(tmp_path):
    """Loads report.py by path (not through the package) and draws a report."""
    run = make_run(tmp_path / "run")
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('report', {str(report.__file__)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'\n"
        f"assert len(module.write_report({str(run)!r})) == 3\n"
        "bad = [m for m in ('tensorflow', 'matplotlib.pyplot', 'tfrec_proxy')\n"
        "       if m in sys.modules]\n"
        "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr

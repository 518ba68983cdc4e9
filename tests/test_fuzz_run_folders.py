"""Damaged run folders, tried systematically: every file of an exported run truncated,
every file the serving path reads overwritten with same-size garbage, a manifest of
an unknown model kind, and runs of the other kind handed to the wrong entry point.
Each gives a `RunFormatError` (or, for the wrong kind, a `ValueError`) naming the
file or kind at load time, except the files serving never reads, whose damage is
caught by their size only (documented rule: same-size damage to `items.npz`,
`metrics.json`, `weights/` or a SavedModel's `fingerprint.pb` does not change what
the run serves)."""

import json
import shutil

import numpy as np
import pytest

from tfrec_proxy.run_format import RunFormatError
from tfrec_proxy.serving import load_run

HISTORY = [[3, 4, 5]]
# What `Run` reads to serve; the others are for reports, re-export and resuming.
NOT_SERVED = ("items.npz", "metrics.json", "weights/")


@pytest.fixture(scope="module")
def copied(trained_run, tmp_path_factory):
    """A private copy of the tiny run, its manifest, and the intact run's answers."""
    _, run_dir = trained_run
    folder = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(run_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    run = load_run(folder)
    answers = {index: run.recommend(HISTORY, k=5, index=index)[0] for index in run.indexes}
    return folder, manifest, answers


def _damaged(folder, name, content):
    """Context: `name` holds `content` inside the block, then its bytes again."""
    class Damage:
        def __enter__(self):
            self.path = folder / name
            self.original = self.path.read_bytes()
            self.path.write_bytes(content(self.original))

        def __exit__(self, *exc):
            self.path.write_bytes(self.original)

    return Damage()


def _served(folder, indexes):
    run = load_run(folder)
    return {index: run.recommend(HISTORY, k=5, index=index)[0] for index in indexes}


def test_every_truncated_file_is_named_at_load(copied):
    folder, manifest, _ = copied
    sizes = manifest["file_sizes"]
    assert set(sizes) == set(manifest["files"]) - {"manifest.json"}
    assert any(name.startswith("retrieval/scann/variables/") for name in sizes)
    for name, size in sizes.items():
        for keep in (0, size // 2, size - 1):
            with _damaged(folder, name, lambda data, n=keep: data[:n]):
                with pytest.raises(RunFormatError, match="changed since export") as error:
                    load_run(folder)
                assert f"{name} ({keep} bytes; the export wrote {size})" in str(error.value)
    with _damaged(folder, "retrieval/scann/variables/variables.data-00000-of-00001",
                  lambda data: data + b"\0"):
        with pytest.raises(RunFormatError, match="export wrote"):
            load_run(folder)
    with _damaged(folder, "manifest.json", lambda data: data[: len(data) // 2]):
        with pytest.raises(RunFormatError, match="manifest.json' is not valid JSON"):
            load_run(folder)


def _garbage(data):
    return np.random.default_rng(len(data)).integers(0, 256, len(data), np.uint8).tobytes()


def _flipped(data):
    flipped = bytearray(data)
    middle = len(flipped) // 2
    for i in range(middle, min(len(flipped), middle + 8)):
        flipped[i] ^= 0xFF
    return bytes(flipped)


def _where(folder, name):
    """The file, or the SavedModel folder, an error about `name` must name."""
    parts = name.split("/")
    return str(folder.joinpath(*parts[:2 if parts[0] == "retrieval" else 1]))


def test_same_size_damage_is_named_or_harmless(copied):
    folder, manifest, answers = copied
    served = [name for name in manifest["files"]
              if not name.startswith(NOT_SERVED) and not name.endswith("fingerprint.pb")]
    # Garbage in every file serving reads; 8 flipped bytes (a same-size edit the
    # formats' own checksums must catch) in the catalogue and the ScaNN index.
    cases = [(name, _garbage) for name in served] + [
        (name, _flipped) for name in served
        if name == "candidates.npz" or name.startswith("retrieval/scann/variables/")]
    for name, damage in cases:
        with _damaged(folder, name, damage):
            with pytest.raises(RunFormatError) as error:
                _served(folder, answers)
            assert _where(folder, name) in str(error.value), (name, str(error.value))
    assert len(cases) >= 14
    # The rest, damaged all at once, does not change what the run serves.
    others = [name for name in manifest["files"] if name not in served]
    assert len(others) >= 6
    originals = {name: (folder / name).read_bytes() for name in others}
    try:
        for name in others:
            (folder / name).write_bytes(_garbage(originals[name]))
        for index, ids in _served(folder, answers).items():
            np.testing.assert_array_equal(ids, answers[index], err_msg=index)
    finally:
        for name, data in originals.items():
            (folder / name).write_bytes(data)


def test_an_unknown_model_kind_is_refused_at_load(copied):
    folder, _, _ = copied

    def other_kind(data):
        manifest = json.loads(data)
        manifest["model_kind"] = "graph_tower"
        return json.dumps(manifest).encode()

    with _damaged(folder, "manifest.json", other_kind):
        with pytest.raises(RunFormatError, match=r"model kind 'graph_tower', which this "
                                                 r"process does not know \(known: \["):
            load_run(folder)


def test_runs_of_the_other_kind_are_refused_by_name(trained_run, felrec_run, capsys):
    from tfrec_proxy.cli import main
    from tfrec_proxy.server.models import ServedModel

    _, two_tower = trained_run
    felrec, _ = felrec_run
    with pytest.raises(RunFormatError, match=r"no history \(model kind 'felrec'\); the "
                                             "server serves history-based runs only"):
        ServedModel.load(felrec)
    assert main(["recommend", "--run", str(two_tower), "--user", "7"]) == 2
    assert "--user 7 alone needs a FELRec run" in capsys.readouterr().err
    with pytest.raises(ValueError, match="recommend_users"):
        load_run(felrec).recommend(HISTORY, k=5)

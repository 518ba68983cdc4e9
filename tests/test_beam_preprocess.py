"""The Apache Beam preprocessing pipeline (`tfrec_proxy.data.beam_preprocess`) with the
DirectRunner: on the same interaction file it writes exactly the vocabulary, item
frequencies, examples, training sequences and exclusion sets of the in-memory path,
and a run trained on its shards equals one trained on the file."""

import dataclasses

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from conftest import tiny_config  # noqa: E402
from tfrec_proxy.config import DataConfig  # noqa: E402
from tfrec_proxy.data import prepare_data  # noqa: E402
from tfrec_proxy.data.beam_preprocess import run_pipeline  # noqa: E402
from tfrec_proxy.data.shards import load_prepared, read_split  # noqa: E402
from tfrec_proxy.data.synthetic import generate_long_tail  # noqa: E402

DIRECT = ["--runner=DirectRunner", "--direct_num_workers=1"]


def _frame():
    data = generate_long_tail(num_users=40, num_items=60, num_clusters=3, seq_len=14, seed=2)
    frame = data.interactions.copy()
    frame["timestamp"] = frame["timestamp"] // 3  # ties, broken by file order
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


def _assert_same_examples(beam, memory):
    for name in ("history", "target", "user", "owner", "last_chunk"):
        np.testing.assert_array_equal(getattr(beam, name), getattr(memory, name), err_msg=name)
        assert getattr(beam, name).dtype == getattr(memory, name).dtype, name


def _assert_same_data(beam, memory):
    np.testing.assert_array_equal(beam.vocab.ids, memory.vocab.ids)
    np.testing.assert_array_equal(beam.item_counts, memory.item_counts)
    np.testing.assert_array_equal(beam.sampling_probability, memory.sampling_probability)
    np.testing.assert_array_equal(beam.head_items, memory.head_items)
    for name in ("train", "validation", "test"):
        _assert_same_examples(getattr(beam.split, name), getattr(memory.split, name))
    for name in ("history", "targets", "user"):
        np.testing.assert_array_equal(getattr(beam.split.train_sequences, name),
                                      getattr(memory.split.train_sequences, name))
    assert list(beam.split.user_items) == sorted(memory.split.user_items)
    for user, items in memory.split.user_items.items():
        np.testing.assert_array_equal(beam.split.user_items[user], items)
    assert beam.dropped_interactions == memory.dropped_interactions
    assert beam.summary() == memory.summary()


@pytest.mark.parametrize("split, max_len, file_format", [("chunked", 6, "csv"),
                                                         ("per-user", 5, "sasrec")])
def test_beam_pipeline_equals_the_in_memory_path(tmp_path, split, max_len, file_format):
    frame = _frame()
    if file_format == "csv":
        path = tmp_path / "log.csv"
        frame[["user_id", "item_id", "timestamp"]].to_csv(path, index=False)
    else:  # SASRec lines: the line order is the time order; a blank line is skipped
        path = tmp_path / "log.txt"
        lines = [f"{u} {i}" for u, i in zip(frame["user_id"], frame["item_id"])]
        path.write_text("\n".join(lines[:50] + [""] + lines[50:]) + "\n")
    config = DataConfig(source="file", path=str(path), split=split, max_len=max_len,
                        min_len=4)
    run_pipeline(config, [str(path)], str(tmp_path / "shards"), beam_args=DIRECT)
    memory = prepare_data(config)
    assert memory.dropped_interactions > 0 or split == "per-user"
    beam = load_prepared(tmp_path / "shards", max_len=max_len)
    _assert_same_data(beam, memory)
    batch = next(iter(read_split(tmp_path / "shards", "train", batch_size=7)))
    assert batch["history"].shape == (7, max_len) and batch["target"].shape == (7,)


def test_training_on_the_shards_equals_training_on_the_file(tmp_path):
    from tfrec_proxy.training import train

    path = tmp_path / "log.csv"
    _frame()[["user_id", "item_id", "timestamp"]].to_csv(path, index=False)
    config = tiny_config(epochs=1)
    config.data = dataclasses.replace(config.data, source="file", path=str(path),
                                      max_len=8, min_len=4)
    run_pipeline(config.data, [str(path)], str(tmp_path / "shards"), beam_args=DIRECT)
    on_file = train(config, export=False, verbose=0)
    config.data = dataclasses.replace(config.data, source="shards",
                                      path=str(tmp_path / "shards"))
    on_shards = train(config, export=False, verbose=0)
    assert on_shards.metrics == pytest.approx(on_file.metrics, rel=1e-6, abs=1e-9)


def test_bad_lines_and_settings_are_named(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("1 2\n1 3\n1 x\n")
    config = DataConfig(source="file", path=str(path))
    with pytest.raises(Exception, match=r"bad.txt, line 3: malformed line '1 x'"):
        run_pipeline(config, [str(path)], str(tmp_path / "out"), beam_args=DIRECT)
    path.write_text("1 2\n-4 3\n")
    with pytest.raises(Exception, match=r"line 2: user_id -4 is negative"):
        run_pipeline(config, [str(path)], str(tmp_path / "out2"), beam_args=DIRECT)
    with pytest.raises(ValueError, match="does not hold out cold items"):
        run_pipeline(dataclasses.replace(config, cold_items=0.1), [str(path)],
                     str(tmp_path / "out3"), beam_args=DIRECT)
    with pytest.raises(ValueError, match="No interaction file matches"):
        run_pipeline(config, [str(tmp_path / "none-*.csv")], str(tmp_path / "o"),
                     beam_args=DIRECT)
    with pytest.raises(FileNotFoundError, match="beam_preprocess.py"):
        load_prepared(tmp_path)

"""Shared fixtures: one tiny synthetic run trained once per test session."""

import contextlib
import io
import os

import numpy as np
import pytest

import tfrec_proxy  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from tfrec_proxy.config import RunConfig

# Property tests (tests/test_fuzz_*.py) try `examples x TFREC_FUZZ_SCALE` inputs each:
# 1 in CI; e.g. `TFREC_FUZZ_SCALE=20 pytest tests/test_fuzz_*.py` for a long search.
FUZZ_SCALE = int(os.environ.get("TFREC_FUZZ_SCALE", "1"))


def fuzz_settings(examples: int):
    """Hypothesis settings of a property test: `examples x FUZZ_SCALE` inputs, no
    deadline (the first example pays for imports), fixtures allowed."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=examples * FUZZ_SCALE, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def tiny_config(**train_overrides) -> RunConfig:
    """A run small enough to train in seconds on 2 CPU cores."""
    config = RunConfig()
    config.data.synthetic.num_users = 150
    config.data.synthetic.num_items = 200
    config.data.synthetic.num_clusters = 5
    config.data.synthetic.seq_len = 12
    config.data.max_len = 10
    config.model.embedding_dim = 8
    config.model.item_hidden_units = (8, 8)
    config.model.num_heads = 2
    config.train.epochs = 2
    config.train.batch_size = 64
    config.train.min_sequences_per_batch = 8  # tiny data: 150 sequences
    config.train.early_stopping_patience = 0
    config.export.max_k = 20
    for name, value in train_overrides.items():
        setattr(config.train, name, value)
    return config


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(TrainResult, run folder) of a tiny exported run."""
    from tfrec_proxy.training import train

    output = tmp_path_factory.mktemp("runs")
    result = train(tiny_config(), output_dir=output, run_name="tiny", verbose=0)
    return result, result.run_dir


PIR_FLAGS = ["--item-tower", "pir", "--num-proxies", "8", "--frequent-bias-k", "20",
             "--attribute-dim", "8", "--attribute-noise", "0.1", "--share-item-encoder"]


@pytest.fixture(scope="session")
def pir_run(tmp_path_factory):
    """A tiny run trained through the CLI with a PIR item tower shared with the history
    encoder, MUR (2 interests) and IDW (one iteration): every method composed."""
    from tfrec_proxy.cli import main

    folder = tmp_path_factory.mktemp("cli_pir")
    tiny_config(epochs=1).to_json(folder / "config.json")
    code = main(["train", "--config", str(folder / "config.json"), "--output", str(folder),
                 "--run-name", "pir", *PIR_FLAGS, "--extraction", "mur", "--num-interests",
                 "2", "--weighting", "idw", "--idw-max-iterations", "1", "--max-k", "20"])
    assert code == 0
    return folder / "pir"


@pytest.fixture(scope="session")
def sasrec_run(tmp_path_factory):
    """SASRec with tied item embeddings, the per-user split and the BCE objective,
    through the CLI."""
    from tfrec_proxy.cli import main

    folder = tmp_path_factory.mktemp("cli_sasrec")
    tiny_config(epochs=3).to_json(folder / "config.json")
    code = main(["train", "--config", str(folder / "config.json"), "--output", str(folder),
                 "--run-name", "sasrec", "--encoder", "sasrec", "--item-tower", "shared",
                 "--split", "per-user", "--loss", "bce", "--num-blocks", "2"])
    assert code == 0
    return folder / "sasrec"


@pytest.fixture(scope="session")
def ram_result(tmp_path_factory):
    """RAM (user embedding) from Python, full softmax, MUR extraction on top."""
    from tfrec_proxy.training import train

    config = tiny_config(epochs=3)
    config.model.encoder, config.model.num_layers = "ram", 2
    config.model.loss = "full-softmax"
    config.model.extraction, config.model.num_interests = "mur", 2
    return train(config, output_dir=tmp_path_factory.mktemp("ram"), run_name="ram",
                 verbose=0)


@pytest.fixture(scope="session")
def proxysr_run(tmp_path_factory):
    """ProxySR (4 proxies, tied item table) through the CLI, 3 epochs of annealing."""
    from tfrec_proxy.cli import main

    folder = tmp_path_factory.mktemp("cli_proxysr")
    tiny_config(epochs=3).to_json(folder / "config.json")
    assert main(["train", "--config", str(folder / "config.json"), "--output",
                 str(folder), "--run-name", "proxysr", "--encoder", "proxysr",
                 "--num-proxies", "4", "--item-tower", "shared"]) == 0
    return folder / "proxysr"


def felrec_frame(seed=0):
    """A tiny synthetic log on one interleaved time line, with late users and items."""
    from tfrec_proxy.data.synthetic import generate_long_tail
    from tfrec_proxy.data.synthetic_timeline import interleave_timeline

    data = generate_long_tail(num_users=50, num_items=30, num_clusters=3, seq_len=10,
                              seed=seed)
    return interleave_timeline(data, late_users=0.15, late_items=0.15, seed=seed).interactions


def felrec_config(loss="infonce", epochs=3):
    """A FELRec config small enough for the tests (d = 8, one layer, Adam)."""
    config = RunConfig()
    config.data.source, config.data.split = "dataframe", "chronological"
    config.model.encoder, config.model.loss = "felrec", loss
    felrec = config.model.felrec
    felrec.dim, felrec.num_layers, felrec.num_heads, felrec.ff_dim = 8, 1, 2, 16
    felrec.dropout, felrec.queue_size, felrec.history_len = 0.0, 32, 6
    felrec.optimizer, felrec.lr_schedule, felrec.eval_reset = "adam", "constant", True
    config.train.epochs, config.train.batch_size, config.train.learning_rate = epochs, 32, 5e-3
    config.train.early_stopping_patience = 0
    config.export.max_k = 40
    return config


@pytest.fixture(scope="session")
def felrec_run(tmp_path_factory):
    """The shared tiny FELRec-Q run, trained through the CLI on a CSV of `_frame()`:
    `(run folder, train stdout)`."""
    from tfrec_proxy.cli import main

    folder = tmp_path_factory.mktemp("felrec")
    felrec_frame().to_csv(folder / "interactions.csv", index=False)
    felrec_config().to_json(folder / "config.json")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", "--config", str(folder / "config.json"), "--encoder",
                     "felrec", "--loss", "infonce", "--split", "chronological",
                     "--data-path", str(folder / "interactions.csv"), "--output",
                     str(folder), "--run-name", "q"])
    assert code == 0, out.getvalue()
    return folder / "q", out.getvalue()


def assert_round_trip(layer, *inputs):
    """Serialises and rebuilds `layer`, copies weights, compares outputs."""
    from tfrec_proxy._tf import tf

    expected = layer(*inputs)
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    clone(*inputs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(*inputs).numpy(), expected.numpy(), rtol=1e-6)


def assert_runs_in_saved_model(layer, inputs, folder, atol=1e-6):
    """Saves `layer` inside a SavedModel under `folder`, reloads it, compares outputs."""
    from tfrec_proxy._tf import tf

    expected = layer(*inputs)
    module = tf.Module()
    module.layer = layer
    module.call = tf.function(lambda *args: layer(*args))
    module.call.get_concrete_function(*inputs)
    tf.saved_model.save(module, str(folder / "model"))
    loaded = tf.saved_model.load(str(folder / "model"))
    np.testing.assert_allclose(loaded.call(*inputs).numpy(), expected.numpy(), rtol=1e-5,
                               atol=atol)

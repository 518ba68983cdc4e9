"""`import tfrec_proxy` sets up Keras 2 whatever the caller imported first."""

import os
import subprocess
import sys

import pytest


def _run(code: str, legacy: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    if legacy:
        env["TF_USE_LEGACY_KERAS"] = legacy
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("code", [
    "import tfrec_proxy, tensorflow as tf; print(tf.keras.layers.Dense.__module__)",
    # TensorFlow imported first, tf.keras not touched yet: still fine.
    "import tensorflow as tf; import tfrec_proxy; print(tf.keras.layers.Dense.__module__)",
])
def test_import_order_gives_tf_keras(code):
    out = _run(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("tf_keras")


@pytest.mark.parametrize("legacy", ["TRUE", "0"])
def test_any_preset_value_still_gives_tf_keras(legacy):
    out = _run("import tfrec_proxy, tensorflow as tf; print(tf.keras.layers.Dense.__module__)",
               legacy)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("tf_keras")


def test_keras3_already_loaded_gives_clear_import_error():
    out = _run("import tensorflow as tf; tf.keras.layers.Dense; import tfrec_proxy")
    assert out.returncode != 0
    assert "ImportError" in out.stderr and "TF_USE_LEGACY_KERAS=1" in out.stderr

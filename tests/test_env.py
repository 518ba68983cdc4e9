"""`import tfrec_proxy`: Keras 2 whatever the import order, and no TensorFlow until needed."""

import os
import subprocess
import sys

import pytest

import tfrec_proxy


def _run(code: str, legacy: str = "", log_level: str = "3") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL")}
    if legacy:
        env["TF_USE_LEGACY_KERAS"] = legacy
    if log_level:
        env["TF_CPP_MIN_LOG_LEVEL"] = log_level
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)


def _last_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("code", [
    "import tfrec_proxy, tensorflow as tf; print(tf.keras.layers.Dense.__module__)",
    # TensorFlow imported first, tf.keras not touched yet: still fine.
    "import tensorflow as tf; import tfrec_proxy; print(tf.keras.layers.Dense.__module__)",
    # A TensorFlow-using module of the library (imports TensorFlow itself).
    "import tfrec_proxy.models, tensorflow as tf; print(tf.keras.layers.Dense.__module__)",
])
def test_import_order_gives_tf_keras(code):
    assert _last_line(_run(code)).startswith("tf_keras")


@pytest.mark.parametrize("legacy", ["TRUE", "0"])
def test_any_preset_value_still_gives_tf_keras(legacy):
    out = _run("import tfrec_proxy, tensorflow as tf; print(tf.keras.layers.Dense.__module__)",
               legacy)
    assert _last_line(out).startswith("tf_keras")


@pytest.mark.parametrize("code", [
    "import tensorflow as tf; tf.keras.layers.Dense; import tfrec_proxy.models",
    "import tensorflow as tf; tf.keras.layers.Dense; import tfrec_proxy; "
    "tfrec_proxy.RetrievalModel",
])
def test_keras3_already_loaded_gives_clear_import_error(code):
    out = _run(code)
    assert out.returncode != 0
    assert "ImportError" in out.stderr and "TF_USE_LEGACY_KERAS=1" in out.stderr


def test_import_is_lazy():
    out = _run("import sys, tfrec_proxy\n"
               "config = tfrec_proxy.RunConfig(); version = tfrec_proxy.__version__\n"
               "print(sorted(m for m in ('tensorflow', 'numpy', 'pandas') if m in sys.modules))\n"
               "tfrec_proxy.RetrievalModel\n"
               "print('tensorflow' in sys.modules)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "True"]


@pytest.mark.parametrize("preset, expected", [("", "2"), ("0", "0"), ("3", "3")])
def test_log_level_default_respects_the_callers_setting(preset, expected):
    out = _run("import os, tfrec_proxy; print(os.environ['TF_CPP_MIN_LOG_LEVEL'], "
               "os.environ['TF_USE_LEGACY_KERAS'])", log_level=preset)
    assert _last_line(out) == f"{expected} 1"


def test_every_public_name_resolves():
    for name in tfrec_proxy.__all__:
        assert getattr(tfrec_proxy, name) is not None, name
    assert set(tfrec_proxy.__all__) <= set(dir(tfrec_proxy))
    from tfrec_proxy.config import RunConfig
    from tfrec_proxy.models import RetrievalModel
    assert tfrec_proxy.RunConfig is RunConfig and tfrec_proxy.RetrievalModel is RetrievalModel
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        tfrec_proxy.not_a_name  # noqa: B018

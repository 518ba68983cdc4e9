"""Imports TensorFlow with the Keras 2 (`tf_keras`) front end that TFRS 0.7.7 needs.

TensorFlow 2.16+ resolves `tf.keras` lazily: to Keras 3 by default, to `tf_keras`
when `TF_USE_LEGACY_KERAS=1` is set before `tf.keras` is first touched. This module
sets the variable, imports TensorFlow and checks what `tf.keras` resolved to, so that
`import tfrec_proxy` works whether or not the caller imported TensorFlow first.
"""

import os

# TFRS 0.7.7 works only with Keras 2, so the variable is set whatever its old value.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) is noise on CPU
# machines; respect a caller's own setting.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402  (must follow the environment set-up)

_KERAS_MODULE = tf.keras.layers.Layer.__module__
if not _KERAS_MODULE.startswith("tf_keras"):
    raise ImportError(
        "tfrec_proxy needs TensorFlow's Keras 2 front end (tf_keras), but tf.keras "
        f"already resolved to Keras 3 ({_KERAS_MODULE!r}) because TensorFlow's Keras "
        "was used before TF_USE_LEGACY_KERAS=1 was set. Fix: set the environment "
        "variable TF_USE_LEGACY_KERAS=1 before starting Python, or import tfrec_proxy "
        "before touching tf.keras (e.g. `import tfrec_proxy` as your first import).")

import tensorflow_recommenders as tfrs  # noqa: E402

__all__ = ["tf", "tfrs"]

"""The defaults every fastiou front end reads: loss options, Keras' epsilon and backend.

The Keras classes and functional forms (`fastiou.losses`), `fastiou.jax` and
the reference (`fastiou.reference`) take their option defaults from here, and
read epsilon (the empty-denominator threshold and the clamp of `log_loss`)
through `epsilon()`, so that equal inputs and options give equal losses on
every backend. Nothing here imports Keras, TensorFlow or JAX.
"""

import json
import os
import sys

SMOOTH = 1.0  # s, added to the numerator and the denominator of every index
ALPHA = 0.5  # Tversky: weight of the false positives
BETA = 0.5  # Tversky: weight of the false negatives
GAMMA = 1.0  # Tversky: the focal exponent (1: plain Tversky)
MODE = "auto"
REDUCTION = "sum_over_batch_size"  # the Keras classes' reduction, as in Keras

KERAS_EPSILON = 1e-7  # Keras' own default for keras.config.epsilon()
KERAS_BACKEND = "tensorflow"  # Keras' own default backend


def keras_config_file():
    """The keras.json Keras reads at import: $KERAS_HOME/keras.json, else
    ~/.keras/keras.json (/tmp/.keras/keras.json where the home directory is
    not writable)."""
    if "KERAS_HOME" in os.environ:
        directory = os.environ["KERAS_HOME"]
    else:
        base = os.path.expanduser("~")
        if not os.access(base, os.W_OK):
            base = "/tmp"
        directory = os.path.join(base, ".keras")
    return os.path.expanduser(os.path.join(directory, "keras.json"))


def _keras_settings():
    try:
        with open(keras_config_file()) as f:
            settings = json.load(f)
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def keras_backend():
    """The Keras backend this process uses, read as Keras reads it
    (KERAS_BACKEND, then keras.json) without importing Keras."""
    return os.environ.get("KERAS_BACKEND") or _keras_settings().get("backend", KERAS_BACKEND)


def epsilon():
    """Keras' epsilon as `keras.config.epsilon()` returns it now.

    Where Keras is imported this is `keras.config.epsilon()`, which follows
    `keras.config.set_epsilon`. Where it is not (fastiou.jax without Keras, or
    before Keras is first imported) it is the value Keras would start from:
    keras.json's "epsilon", else Keras' default 1e-7. Keras is never imported
    here: importing it would import its backend, possibly TensorFlow.
    """
    config = getattr(sys.modules.get("keras"), "config", None)
    if config is not None and hasattr(config, "epsilon"):
        return float(config.epsilon())
    value = _keras_settings().get("epsilon", KERAS_EPSILON)
    return float(value) if isinstance(value, (int, float)) else KERAS_EPSILON

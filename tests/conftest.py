import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def make_inputs(rng, shape, pred_dtype="float32", true_dtype="float32", from_logits=True,
                fg=0.3):
    """Random logits (or probabilities) and a mask with about `fg` foreground."""
    z = rng.normal(scale=2.0, size=shape)
    pred = z if from_logits else 1.0 / (1.0 + np.exp(-z))
    mask = rng.random(shape) < fg
    import tensorflow as tf

    y_pred = tf.cast(tf.constant(pred), pred_dtype)
    y_true = tf.cast(tf.constant(mask), true_dtype)
    return y_true, y_pred

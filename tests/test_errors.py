"""Bad input gets an error that names the problem, never a crash."""

import numpy as np
import pytest
import tensorflow as tf

import fastiou
from fastiou import _ops


def test_mismatched_shapes():
    with pytest.raises(ValueError, match=r"y_true shape .* does not match y_pred shape"):
        fastiou.jaccard_loss(tf.zeros((2, 4, 4, 1)), tf.zeros((2, 4, 5, 1)))


def test_rank_below_two():
    with pytest.raises(ValueError, match="rank >= 2"):
        fastiou.dice_loss(tf.zeros((5,)), tf.zeros((5,)))


def test_unsupported_pred_dtype():
    with pytest.raises(TypeError, match="y_pred must be float16, bfloat16, float32 or float64, got int32"):
        fastiou.jaccard_loss(tf.zeros((2, 3), tf.int32), tf.zeros((2, 3), tf.int32))


def test_unsupported_true_dtype():
    with pytest.raises(TypeError, match="y_true must be .* got complex64"):
        fastiou.jaccard_loss(tf.zeros((2, 3), tf.complex64), tf.zeros((2, 3)))


def test_bad_weights_shape():
    with pytest.raises(ValueError, match="weights shape"):
        fastiou.jaccard_loss(tf.zeros((2, 4, 4, 3)), tf.zeros((2, 4, 4, 3)), weights=tf.ones((2, 4, 3)))


def test_bad_options():
    with pytest.raises(ValueError, match="smooth"):
        fastiou.losses.JaccardLoss(smooth=-1.0)
    with pytest.raises(ValueError, match="log_loss and gamma"):
        fastiou.losses.TverskyLoss(gamma=2.0, log_loss=True)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        fastiou.tversky_loss(tf.zeros((1, 2)), tf.zeros((1, 2)), gamma=0.0)
    with pytest.raises(ValueError, match="class_weights has 2 entries but y_pred has 3 channels"):
        fastiou.jaccard_loss(tf.zeros((1, 3)), tf.zeros((1, 3)), class_weights=[1.0, 2.0],
                             mode="multilabel")


def test_shapes_known_only_at_run_time_are_checked_by_the_op():
    # With unknown static shapes the Python checks cannot see the problem; the
    # kernel reports it as InvalidArgumentError.
    spec = tf.TensorSpec(None, tf.float32)

    @tf.function(input_signature=[spec, spec])
    def loss(t, p):
        return fastiou.jaccard_loss(t, p, mode="binary")  # "auto" cannot tell without shapes

    with pytest.raises(tf.errors.InvalidArgumentError, match="does not match y_pred shape"):
        loss(tf.zeros((2, 4, 4, 1)), tf.zeros((2, 4, 5, 1)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="rank >= 2"):
        loss(tf.zeros((7,)), tf.zeros((7,)))
    assert np.isfinite(loss(tf.zeros((2, 4, 4, 1)), tf.zeros((2, 4, 4, 1))).numpy())


def test_raw_ops_validate_their_inputs():
    lib = _ops._lib
    t = tf.zeros((2, 3, 1))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Tacc must be float"):
        lib.fastiou_overlap_stats(t, t, tf.zeros([0]), Tacc=tf.float64)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="weights shape|rank"):
        lib.fastiou_overlap_stats(t, t, tf.zeros((2, 2, 1)), Tacc=tf.float32, has_weights=True)
    g = tf.zeros((5, 1))
    with pytest.raises(tf.errors.InvalidArgumentError, match="grad_intersection shape"):
        lib.fastiou_overlap_grad(t, t, tf.zeros([0]), g, g, g)
    g = tf.zeros((2, 1), tf.float64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Tacc must be float"):
        lib.fastiou_overlap_grad(t, t, tf.zeros([0]), g, g, g)

"""Empty masks, full masks, single pixels, empty batches: finite and as documented."""

import numpy as np
import pytest
import tensorflow as tf

import fastiou
from cases import LOSSES, loss_functions


def value_and_grads(fn, y_true, y_pred, **kwargs):
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        loss = tf.reduce_sum(fn(y_true, y_pred, **kwargs))
    return loss, tape.gradient(loss, y_pred)


def assert_finite(*tensors):
    for t in tensors:
        assert np.all(np.isfinite(np.asarray(t))), t


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("smooth", [0.0, 1.0])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("from_logits", [False, True])
def test_empty_and_full_masks_are_finite(name, smooth, per_image, from_logits):
    fused, reference, extra = loss_functions(name)
    shape = (2, 8, 8, 1)
    logits = tf.constant(np.linspace(-30, 30, 128).reshape(shape), tf.float32)
    cases = {
        "empty target": (tf.zeros(shape), logits if from_logits else tf.sigmoid(logits)),
        "empty both": (tf.zeros(shape), tf.fill(shape, -200.0) if from_logits else tf.zeros(shape)),
        "full both": (tf.ones(shape), tf.fill(shape, 200.0) if from_logits else tf.ones(shape)),
        "full target": (tf.ones(shape), logits if from_logits else tf.sigmoid(logits)),
    }
    for case, (y_true, y_pred) in cases.items():
        kwargs = dict(extra, smooth=smooth, per_image=per_image, from_logits=from_logits)
        loss, grad = value_and_grads(fused, y_true, y_pred, **kwargs)
        assert_finite(loss, grad)
        want, _ = value_and_grads(reference, y_true, y_pred, **kwargs)
        np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6, err_msg=case)


def test_empty_target_and_prediction_is_a_perfect_match():
    zeros = tf.zeros((2, 4, 4, 1))
    for fn in (fastiou.jaccard_loss, fastiou.dice_loss, fastiou.tversky_loss):
        loss, grad = value_and_grads(fn, zeros, zeros, smooth=0.0, per_image=True)
        assert float(loss) == 0.0
        assert np.all(grad.numpy() == 0.0)
    # With smooth=0, an empty target makes any non-empty prediction score 0.
    pred = tf.fill((1, 4, 4, 1), 0.25)
    assert float(fastiou.jaccard_loss(tf.zeros((1, 4, 4, 1)), pred, smooth=0.0)) == 1.0
    # With smooth > 0 the loss shrinks as the prediction empties, so it is learnable.
    small = fastiou.jaccard_loss(tf.zeros((1, 4, 4, 1)), pred * 0.1)
    large = fastiou.jaccard_loss(tf.zeros((1, 4, 4, 1)), pred)
    assert float(small) < float(large)


def test_perfect_prediction_focal_tversky_gradient_is_finite():
    y = tf.constant(np.eye(4)[None, ..., None], tf.float32)
    for gamma in (0.5, 0.75, 2.0):
        loss, grad = value_and_grads(fastiou.tversky_loss, y, y, gamma=gamma, smooth=0.0)
        assert float(loss) == 0.0
        assert_finite(grad)


@pytest.mark.parametrize("shape", [(1, 1), (1, 1, 1, 1), (1, 1, 1, 1, 1)])
def test_single_pixel(shape):
    y_true = tf.ones(shape)
    y_pred = tf.fill(shape, 0.3)
    for name in LOSSES:
        fused, reference, extra = loss_functions(name)
        loss, grad = value_and_grads(fused, y_true, y_pred, **extra)
        want, want_grad = value_and_grads(reference, y_true, y_pred, **extra)
        np.testing.assert_allclose(loss, want, rtol=1e-6)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-5)
    # I = P = 0.3, T = 1, smooth 1: J = 1.3 / 2.0
    np.testing.assert_allclose(fastiou.jaccard_loss(y_true, y_pred), 1 - 1.3 / 2.0, rtol=1e-6)


def test_empty_batch():
    y_true = tf.zeros((0, 8, 8, 2))
    y_pred = tf.zeros((0, 8, 8, 2))
    inter, psum, tsum = fastiou.overlap_stats(y_true, y_pred, per_image=True)
    assert inter.shape == (0, 2)
    inter, psum, tsum = fastiou.overlap_stats(y_true, y_pred, per_image=False)
    np.testing.assert_array_equal(inter.numpy(), [0.0, 0.0])
    for fn in (fastiou.jaccard_loss, fastiou.dice_loss, fastiou.tversky_loss):
        loss, grad = value_and_grads(fn, y_true, y_pred, from_logits=True, mode="multilabel")
        assert float(loss) == 0.0  # nothing there, nothing predicted
        assert grad.shape == (0, 8, 8, 2)
        per_image, _ = value_and_grads(fn, y_true, y_pred, per_image=True, mode="multilabel")
        assert float(per_image) == 0.0


def test_extreme_logits_are_finite():
    y_true = tf.constant([[[1.0], [0.0], [1.0], [0.0]]])
    y_pred = tf.constant([[[1e4], [-1e4], [-1e4], [1e4]]])
    for name in LOSSES:
        fused, _, extra = loss_functions(name)
        for kwargs in ({}, {"log_loss": True} if not extra.get("gamma") else {}):
            loss, grad = value_and_grads(fused, y_true, y_pred, from_logits=True, smooth=0.0,
                                         **extra, **kwargs)
            assert_finite(loss, grad)

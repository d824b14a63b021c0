"""Gradients of the fused losses: autodiff of the reference, and numerical."""

import numpy as np
import pytest
import tensorflow as tf

import fastiou
from cases import LOSSES, loss_functions, make_inputs


def gradients(fn, y_true, y_pred, **kwargs):
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(y_pred)
        if y_true.dtype.is_floating:
            tape.watch(y_true)
        loss = tf.reduce_sum(fn(y_true, y_pred, **kwargs))
    g_true = tape.gradient(loss, y_true) if y_true.dtype.is_floating else None
    return tape.gradient(loss, y_pred), g_true


def compare(name, y_true, y_pred, rtol, atol, **options):
    fused, reference, extra = loss_functions(name)
    if y_pred.shape[-1] > 1:  # dense targets of several channels: mode="auto" would ask which
        options.setdefault("mode", "multilabel")
    got_pred, got_true = gradients(fused, y_true, y_pred, **extra, **options)
    want_pred, want_true = gradients(reference, y_true, y_pred, **extra, **options)
    assert got_pred.dtype == y_pred.dtype and got_pred.shape == y_pred.shape
    np.testing.assert_allclose(
        tf.cast(got_pred, tf.float64), tf.cast(want_pred, tf.float64), rtol=rtol, atol=atol)
    if want_true is not None:
        assert got_true.dtype == y_true.dtype
        np.testing.assert_allclose(got_true, want_true, rtol=rtol, atol=atol)


SHAPES = [(3, 4), (2, 9, 7, 1), (2, 6, 5, 3), (2, 3, 4, 5, 2)]
OPTIONS = [
    {},
    {"per_image": True},
    {"smooth": 0.0, "per_image": True},
    {"class_weights": [1.0, 3.0, 0.5]},
    {"log_loss": True, "per_image": True},
]


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dtype,rtol,atol", [("float32", 2e-4, 1e-6), ("float64", 1e-10, 1e-13)])
def test_matches_reference_autodiff(rng, name, shape, from_logits, dtype, rtol, atol):
    y_true, y_pred = make_inputs(rng, shape, dtype, dtype, from_logits=from_logits)
    for options in OPTIONS:
        if "class_weights" in options:
            options = {"class_weights": [1.0 + c for c in range(shape[-1])]}
        if options.get("log_loss") and name == "focal_tversky":
            continue
        compare(name, y_true, y_pred, rtol, atol, from_logits=from_logits, **options)


@pytest.mark.parametrize("pred_dtype,tol", [("float16", 2e-3), ("bfloat16", 1.6e-2)])
@pytest.mark.parametrize("true_dtype", ["uint8", "bool", "float32"])
def test_low_precision_gradients(rng, pred_dtype, tol, true_dtype):
    # The gradient is computed in float32 and rounded once to y_pred's dtype.
    y_true, y_pred = make_inputs(rng, (2, 8, 9, 2), pred_dtype, true_dtype)
    compare("jaccard", y_true, y_pred, tol, 1e-7, from_logits=True, per_image=True)


def test_weights_gradient(rng):
    y_true, y_pred = make_inputs(rng, (2, 6, 7, 3), "float64", "float64")
    for shape in [(2, 6, 7, 3), (2, 6, 7, 1)]:
        weights = tf.constant(rng.uniform(0.0, 2.0, size=shape))
        compare("dice", y_true, y_pred, 1e-10, 1e-13, from_logits=True, weights=weights)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("per_image", [False, True])
def test_numerical_gradient(rng, name, from_logits, per_image):
    y_true, y_pred = make_inputs(rng, (2, 3, 4, 2), "float64", "float64", from_logits=from_logits)
    if not from_logits:  # keep central differences inside (0, 1)
        y_pred = tf.clip_by_value(y_pred, 0.05, 0.95)
    fused, _, extra = loss_functions(name)

    def loss_pred(p):
        return fused(y_true, p, from_logits=from_logits, per_image=per_image, mode="multilabel",
                     **extra)

    def loss_true(t):
        return fused(t, y_pred, from_logits=from_logits, per_image=per_image, mode="multilabel",
                     **extra)

    # Soft targets for the derivative in y_true: central differences around
    # 0 or 1 would step outside [0, 1], which the range guards refuse.
    soft_true = tf.clip_by_value(y_true, 0.05, 0.95)
    for fn, x in [(loss_pred, y_pred), (loss_true, soft_true)]:
        theoretical, numerical = tf.test.compute_gradient(fn, [x], delta=1e-6)
        np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-8)


def test_integer_and_float_targets_give_the_same_gradient(rng):
    y_true, y_pred = make_inputs(rng, (2, 5, 5, 1), "float32", "uint8")
    got, _ = gradients(fastiou.jaccard_loss, y_true, y_pred, from_logits=True)
    want, _ = gradients(fastiou.jaccard_loss, tf.cast(y_true, tf.float32), y_pred, from_logits=True)
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_gradient_through_tf_function_and_unused_outputs(rng):
    # Only I and T reach the loss here: P's gradient is absent and must count as zero.
    y_true, y_pred = make_inputs(rng, (2, 5, 6, 1), "float64", "float64", from_logits=False)

    @tf.function
    def grad(p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            inter, _, tsum = fastiou.overlap_stats(y_true, p)
            loss = tf.reduce_sum(inter / tsum)
        return tape.gradient(loss, p)

    want = (y_true / tf.reduce_sum(y_true, axis=(1, 2), keepdims=True)).numpy()
    np.testing.assert_allclose(grad(y_pred).numpy(), want, rtol=1e-12)

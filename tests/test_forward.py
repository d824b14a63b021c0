"""Fused losses equal the pure-Keras reference for every loss, option and dtype."""

import numpy as np
import pytest
import tensorflow as tf

import fastiou
from cases import LOSSES, loss_functions, make_inputs
from overlap_oracle import sums as oracle_sums

SHAPES = [(1, 1), (3, 4), (2, 9, 7, 1), (4, 16, 16, 3), (2, 5, 6, 7, 2), (1, 33, 1)]
TOL = {"float16": 2e-3, "bfloat16": 2e-3, "float32": 2e-6, "float64": 1e-12}


def check(name, y_true, y_pred, tol, **options):
    fused, reference, extra = loss_functions(name)
    if y_pred.shape[-1] > 1:  # dense targets of several channels: mode="auto" would ask which
        options.setdefault("mode", "multilabel")
    got = fused(y_true, y_pred, **extra, **options).numpy()
    want = reference(y_true, y_pred, **extra, **options).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("from_logits", [False, True])
def test_matches_reference(rng, name, shape, per_image, from_logits):
    y_true, y_pred = make_inputs(rng, shape, from_logits=from_logits)
    check(name, y_true, y_pred, TOL["float32"], per_image=per_image, from_logits=from_logits)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("pred_dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("true_dtype", ["bool", "uint8", "int32", "int64", "float16", "float32", "float64"])
def test_dtypes(rng, name, pred_dtype, true_dtype):
    # The reference reads the same low-precision values, so only the summation
    # order differs.
    y_true, y_pred = make_inputs(rng, (2, 12, 10, 2), pred_dtype, true_dtype)
    check(name, y_true, y_pred, TOL[pred_dtype], per_image=True, from_logits=True)


def test_float64_accumulates_in_float64(rng):
    y_true, y_pred = make_inputs(rng, (2, 8, 8, 1), "float64")
    loss = fastiou.jaccard_loss(y_true, y_pred, from_logits=True)
    assert loss.dtype == tf.float64
    inter, psum, tsum = fastiou.overlap_stats(y_true, y_pred, from_logits=True)
    assert inter.dtype == psum.dtype == tsum.dtype == tf.float64


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("per_image", [False, True])
def test_options(rng, name, per_image):
    y_true, y_pred = make_inputs(rng, (3, 10, 11, 4))
    for options in [
        {"smooth": 0.0},
        {"smooth": 25.0},
        {"class_weights": [0.1, 2.0, 0.0, 1.0]},
        {"log_loss": True} if name != "focal_tversky" else {"smooth": 1e-3},
    ]:
        check(name, y_true, y_pred, 1e-5, per_image=per_image, from_logits=True, **options)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("per_pixel", [False, True])
def test_element_weights(rng, name, per_pixel):
    y_true, y_pred = make_inputs(rng, (2, 7, 9, 3))
    wshape = (2, 7, 9, 1) if per_pixel else (2, 7, 9, 3)
    weights = tf.constant(rng.uniform(0.0, 3.0, size=wshape), tf.float32)
    check(name, y_true, y_pred, 1e-5, per_image=True, from_logits=True, weights=weights)
    # Weights without the channel axis are one weight per pixel too.
    if per_pixel:
        check(name, y_true, y_pred, 1e-5, from_logits=True, weights=weights[..., 0])


def test_stats_are_the_soft_sums(rng):
    y_true, y_pred = make_inputs(rng, (3, 5, 6, 2), "float64", from_logits=False)
    inter, psum, tsum = fastiou.overlap_stats(y_true, y_pred, per_image=True)
    t, p = y_true.numpy(), y_pred.numpy()
    want_i, want_p, want_t = oracle_sums(t, p, per_image=True)
    np.testing.assert_allclose(inter, want_i, rtol=1e-13)
    np.testing.assert_allclose(psum, want_p, rtol=1e-13)
    np.testing.assert_allclose(tsum, want_t, rtol=1e-13)
    inter, psum, tsum = fastiou.overlap_stats(y_true, y_pred, per_image=False)
    np.testing.assert_allclose(inter, oracle_sums(t, p, per_image=False)[0], rtol=1e-13)


def test_hand_computed_case():
    # One image, 4 pixels: t = [1, 1, 0, 0], p = [1, 0.5, 0.5, 0]
    # I = 1.5, P = 2, T = 2, smooth 0: J = 1.5 / 2.5, D = 3 / 4,
    # Tversky(a=0.2, b=0.8) = 1.5 / (1.5 + 0.2*0.5 + 0.8*0.5) = 0.75.
    t = tf.constant([[1.0, 1.0, 0.0, 0.0]])[..., None]
    p = tf.constant([[1.0, 0.5, 0.5, 0.0]])[..., None]
    np.testing.assert_allclose(fastiou.jaccard_loss(t, p, smooth=0.0), 1 - 0.6, rtol=1e-6)
    np.testing.assert_allclose(fastiou.dice_loss(t, p, smooth=0.0), 1 - 0.75, rtol=1e-6)
    np.testing.assert_allclose(
        fastiou.tversky_loss(t, p, alpha=0.2, beta=0.8, smooth=0.0), 0.25, rtol=1e-6)
    np.testing.assert_allclose(
        fastiou.tversky_loss(t, p, alpha=0.2, beta=0.8, gamma=2.0, smooth=0.0), 0.0625, rtol=1e-6)
    np.testing.assert_allclose(
        fastiou.jaccard_loss(t, p, smooth=0.0, log_loss=True), -np.log(0.6), rtol=1e-6)


def test_large_single_channel_tensor_matches_float64(rng):
    # Several chunks per image and every reduction lane in use.
    shape = (2, 300, 301, 1)
    y_true, y_pred = make_inputs(rng, shape, "float32", "uint8")
    got = fastiou.overlap_stats(y_true, y_pred, from_logits=True, per_image=True)
    want = oracle_sums(y_true.numpy(), y_pred.numpy(), from_logits=True, per_image=True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-6)


def test_channel_count_above_chunk_size(rng):
    # More channels than elements per chunk: one pixel per chunk.
    y_true, y_pred = make_inputs(rng, (2, 3, 40000), "float32", "uint8")
    check("jaccard", y_true, y_pred, 1e-5, per_image=True, from_logits=True)

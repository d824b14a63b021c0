"""The range guards: a target outside [0, 1] (masks stored as 0/255) and, with
from_logits=False, a prediction outside [0, 1] (logits passed as
probabilities) are errors that name the value, the image, the pixel (and the
channel), and say what to do, on every door: ValueError in fastiou.kernels,
InvalidArgumentError from the TensorFlow op eagerly, in graphs and under XLA,
an error from fastiou.jax. The first such value in element order is named
(over the pixels that count: ignored pixels are not read). NaN is not out of
range: it gives NaN sums (tests/test_nonfinite.py). The oracle of "first" is
NumPy's argmax over the flat arrays.
"""

import numpy as np
import pytest

import fastiou.kernels as fk

# Two images of 192 x 200 pixels span several of the kernels' chunks, so the
# first bad value is found in a chunk other than the first.
SHAPE = (2, 192, 200)
TARGET_HINT = r"outside \[0, 1\].*divided by 255 or cast to bool"
PRED_HINT = r"outside \[0, 1\], with from_logits=False.*pass from_logits=True"


def first_bad(bad_mask):
    """(image, pixel, channel) of the first True of a (B, H, W, C) mask, in
    element order."""
    b, h, w, c = np.unravel_index(np.argmax(bad_mask.reshape(-1)), bad_mask.shape)
    return b, h * bad_mask.shape[2] + w, c


def where(b, p, c=None):
    channel = "" if c is None else f", channel {c}"
    return rf"at batch index {b}, pixel {p} \(flat index over the spatial axes\){channel}, "


def png_mask(rng):
    """A mask stored as 0/255, empty in image 0 and in the first rows of
    image 1."""
    t = np.where(rng.random(SHAPE + (1,)) < 0.2, 255, 0).astype(np.uint8)
    t[0] = 0
    t[1, :150] = 0
    return t


def test_masks_stored_as_0_255_are_refused_naming_the_first_255(rng):
    t = png_mask(rng)
    z = rng.normal(size=t.shape).astype(np.float32)
    b, p, _ = first_bad(t > 1)
    assert (b, p // SHAPE[2]) >= (1, 150)
    for from_logits in (True, False):
        pred = z if from_logits else 1 / (1 + np.exp(-z))
        with pytest.raises(ValueError, match="y_true holds 255 " + where(b, p) + TARGET_HINT):
            fk.overlap_stats(t, pred, from_logits=from_logits)
    # What the message says to do works, and gives the oracle's sums.
    for fixed in ((t // 255).astype(np.uint8), t.astype(bool), t.astype(np.float32) / 255):
        got = fk.overlap_stats(fixed, z, from_logits=True, per_image=False)
        p_ = 1 / (1 + np.exp(-z.astype(np.float64)))
        tt = fixed.astype(np.float64)
        np.testing.assert_allclose(got[0], [np.sum(tt * p_)], rtol=1e-5)
        np.testing.assert_allclose(got[2], [np.sum(tt)], rtol=1e-6)


def test_logits_passed_as_probabilities_are_refused(rng):
    t = (rng.random(SHAPE + (1,)) < 0.3).astype(np.uint8)
    z = rng.random(t.shape).astype(np.float32)
    z[1, 100, 7, 0] = 2.5
    z[1, 150, 0, 0] = -0.25
    with pytest.raises(ValueError, match="y_pred holds 2.5 " + where(1, 100 * SHAPE[2] + 7) + PRED_HINT):
        fk.overlap_stats(t, z)
    z[1, 100, 7, 0] = 0.5
    with pytest.raises(ValueError, match="y_pred holds -0.25 " + where(1, 150 * SHAPE[2]) + PRED_HINT):
        fk.overlap_stats(t, z)
    # Logits may be anything: with from_logits=True the same values are fine.
    fk.overlap_stats(t, z, from_logits=True)


def test_in_range_edges_and_soft_targets_pass(rng):
    # Exact 0 and 1, -0.0, smoothed labels: all in range.
    t = rng.choice(np.array([0.0, 1.0, 0.05, 0.95, -0.0], np.float32), size=(2, 8, 8, 2))
    z = rng.choice(np.array([0.0, 1.0, -0.0, 0.5], np.float32), size=t.shape)
    i, p, tt = fk.overlap_stats(t, z, per_image=False)
    np.testing.assert_allclose(i, np.sum(t.astype(np.float64) * z, axis=(0, 1, 2)), rtol=1e-6)


def test_several_channels_name_the_channel(rng):
    # The channel path: multi-label targets and probabilities.
    t = (rng.random(SHAPE + (3,)) < 0.5).astype(np.float32)
    z = rng.random(t.shape).astype(np.float32)
    t[1, 20, 30, 2] = 2.0
    with pytest.raises(ValueError, match="y_true holds 2 " + where(1, 20 * SHAPE[2] + 30, 2) + TARGET_HINT):
        fk.overlap_stats(t, z)
    t[1, 20, 30, 2] = 1.0
    z[0, 5, 6, 1] = 1.0009765625
    with pytest.raises(ValueError, match="y_pred holds 1.00097656 " + where(0, 5 * SHAPE[2] + 6, 1)):
        fk.overlap_stats(t, z)
    # A one-hot target from a softmax of logits: only the targets are checked.
    onehot = np.eye(3, dtype=np.float32)[rng.integers(0, 3, SHAPE)]
    onehot[0, 0, 1] = [0, 0, 3]
    with pytest.raises(ValueError, match="y_true holds 3 " + where(0, 1, 2)):
        fk.overlap_stats(onehot, rng.normal(size=onehot.shape).astype(np.float32), from_logits=True, softmax=True)


@pytest.mark.parametrize("weights", [False, True], ids=["unit", "per-element"])
def test_sparse_labels_with_probabilities(rng, weights):
    # The tile path (unit weights) and the channel path (per-element weights)
    # with class indices: predictions are checked on the pixels that count.
    labels = rng.integers(0, 4, SHAPE).astype(np.uint8)
    z = rng.dirichlet(np.ones(4), SHAPE).astype(np.float32)
    w = np.ones(z.shape, np.float32) if weights else None
    z[1, 9, 9, 3] = 1.25
    labels[1, 9, 9] = 255  # ignored: its prediction is not read
    fk.overlap_stats(labels, z, w, sparse=True, ignore_index=255)
    z[1, 10, 0, 3] = 7.0
    with pytest.raises(ValueError, match="y_pred holds 7 " + where(1, 10 * SHAPE[2], 3) + PRED_HINT):
        fk.overlap_stats(labels, z, w, sparse=True, ignore_index=255)
    # A bad label in an earlier chunk is reported first.
    labels[0, 0, 5] = 9
    with pytest.raises(ValueError, match=r"label 9 at batch index 0, pixel 5 "):
        fk.overlap_stats(labels, z, w, sparse=True, ignore_index=255)


def test_nan_is_not_out_of_range(rng):
    t = (rng.random((2, 8, 8, 1)) < 0.5).astype(np.float32)
    z = rng.random(t.shape).astype(np.float32)
    z[0, 1, 1, 0] = np.nan
    t[1, 2, 2, 0] = np.nan
    i, p, tt = fk.overlap_stats(t, z)
    assert np.isnan(i).all() and np.isnan(p[0]) and np.isnan(tt[1])


def test_every_tensorflow_door_raises_invalid_argument(rng):  # not under the sanitizers (Makefile)
    tf = pytest.importorskip("tensorflow")
    import fastiou

    t = png_mask(rng)
    b, p, _ = first_bad(t > 1)
    z = tf.constant(rng.normal(size=t.shape).astype(np.float32))
    message = "y_true holds 255 " + where(b, p) + TARGET_HINT

    def loss(a, c):
        return fastiou.jaccard_loss(a, c, from_logits=True)

    for how, fn in (("eager", loss), ("graph", tf.function(loss)), ("XLA", tf.function(loss, jit_compile=True))):
        with tf.device("/CPU:0"), pytest.raises(tf.errors.InvalidArgumentError, match=message):
            fn(tf.constant(t), z)
    probabilities = tf.constant(np.full((2, 4, 4, 3), 3.0, np.float32))
    with tf.device("/CPU:0"), pytest.raises(tf.errors.InvalidArgumentError, match="y_pred holds 3 " + where(0, 0, 0)):
        tf.function(lambda a, c: fastiou.dice_loss(a, c, mode="multilabel"), jit_compile=True)(
            tf.zeros((2, 4, 4, 3), tf.uint8), probabilities)


def test_jax_raises(rng):
    jax = pytest.importorskip("jax")
    import fastiou.jax as fj

    t = png_mask(rng)
    b, p, _ = first_bad(t > 1)
    z = rng.normal(size=t.shape).astype(np.float32)
    with pytest.raises(Exception, match="y_true holds 255 " + where(b, p)):
        jax.block_until_ready(jax.jit(lambda a, c: fj.jaccard_loss(a, c, from_logits=True))(t, z))
    with pytest.raises(Exception, match="y_pred holds 2 " + where(0, 0)):
        jax.block_until_ready(fj.dice_loss(np.zeros((1, 4, 4, 1), np.uint8), np.full((1, 4, 4, 1), 2.0, np.float32)))

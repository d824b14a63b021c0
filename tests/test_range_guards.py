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


# --- check_range=False: the opt-out -------------------------------------------

def sigmoid64(z):
    return 1 / (1 + np.exp(-z.astype(np.float64)))


def oracle_sums(t, p, labels_channels=None):
    """I, P, T per channel over the batch, in float64, of the values as
    stored (p: probabilities); labels_channels: t holds class indices."""
    p = p.astype(np.float64)
    t = np.eye(labels_channels)[t] if labels_channels else t.astype(np.float64)
    axes = tuple(range(p.ndim - 1))
    return np.sum(t * p, axis=axes), np.sum(p, axis=axes), np.sum(t, axis=axes)


def unchecked_cases(rng):
    """(name, y_true, y_pred, options, oracle sums) with values outside
    [0, 1] on each of the kernels' paths: the single-channel loop, the channel
    path (several channels) and the tile path (sparse labels)."""
    t255 = png_mask(rng)
    z = rng.normal(size=t255.shape).astype(np.float32)
    wide = (rng.random(SHAPE + (1,)) * 3 - 1).astype(np.float32)  # in [-1, 2)
    t3 = (rng.random(SHAPE + (3,)) * 4 - 1).astype(np.float32)
    z3 = (rng.random(t3.shape) * 3 - 1).astype(np.float32)
    labels = rng.integers(0, 4, SHAPE).astype(np.uint8)
    z4 = (rng.random(SHAPE + (4,)) * 5 - 2).astype(np.float32)
    return [
        ("0/255 mask, logits", t255, z, dict(from_logits=True), oracle_sums(t255, sigmoid64(z))),
        ("0/255 mask, probabilities out of range", t255, wide, {}, oracle_sums(t255, wide)),
        ("channel path", t3, z3, {}, oracle_sums(t3, z3)),
        ("tile path", labels, z4, dict(sparse=True), oracle_sums(labels, z4, 4)),
    ]


def test_check_range_false_sums_the_values_as_they_are(rng):
    for name, t, p, options, want in unchecked_cases(rng):
        with pytest.raises(ValueError, match="outside"):
            fk.overlap_stats(t, p, per_image=False, **options)
        got = fk.overlap_stats(t, p, per_image=False, check_range=False, **options)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=2e-5, err_msg=name)


def test_check_range_false_still_refuses_sparse_labels_out_of_range(rng):
    labels = rng.integers(0, 4, SHAPE).astype(np.uint8)
    labels[1, 3, 4] = 4
    z = (rng.random(SHAPE + (4,)) * 3).astype(np.float32)
    for options in ({}, dict(from_logits=True, softmax=True)):
        with pytest.raises(ValueError, match=r"label 4 at batch index 1, pixel 604 "):
            fk.overlap_stats(labels, z, sparse=True, check_range=False, **options)


def test_check_range_false_on_the_tensorflow_doors(rng):  # not under the sanitizers (Makefile)
    tf = pytest.importorskip("tensorflow")
    import fastiou
    from fastiou import reference

    t = png_mask(rng)
    z = rng.normal(size=t.shape).astype(np.float32)
    # The reference checks no range: it sums the 255s as they are.
    want = float(reference.jaccard_loss(t.astype(np.float32), z, from_logits=True))

    def loss(a, c):
        return fastiou.jaccard_loss(a, c, from_logits=True, check_range=False)

    for how, fn in (("eager", loss), ("graph", tf.function(loss)), ("XLA", tf.function(loss, jit_compile=True))):
        with tf.device("/CPU:0"):
            assert float(fn(tf.constant(t), tf.constant(z))) == pytest.approx(want, rel=1e-5), how
    # The Keras class keeps the option through its config.
    cls = fastiou.losses.DiceLoss(from_logits=True, check_range=False)
    again = fastiou.losses.DiceLoss.from_config(cls.get_config())
    assert cls.get_config()["check_range"] is False and again.check_range is False
    with tf.device("/CPU:0"):
        got = float(tf.function(again, jit_compile=True)(tf.constant(t), tf.constant(z)))
        assert got == pytest.approx(float(reference.dice_loss(t.astype(np.float32), z, from_logits=True)), rel=1e-5)
        with pytest.raises(tf.errors.InvalidArgumentError, match="y_true holds 255"):
            fastiou.losses.DiceLoss(from_logits=True)(tf.constant(t), tf.constant(z))
    # And its gradient is the reference's.
    zt = tf.constant(z)
    with tf.device("/CPU:0"), tf.GradientTape(persistent=True) as tape:
        tape.watch(zt)
        ours = fastiou.tversky_loss(tf.constant(t), zt, from_logits=True, alpha=0.3, beta=0.7, check_range=False)
        theirs = reference.tversky_loss(tf.constant(t, tf.float32), zt, from_logits=True, alpha=0.3, beta=0.7)
    np.testing.assert_allclose(tape.gradient(ours, zt), tape.gradient(theirs, zt), rtol=1e-4, atol=1e-9)


def test_check_range_false_in_jax(rng):
    jax = pytest.importorskip("jax")
    import fastiou.jax as fj

    for name, t, p, options, want in unchecked_cases(rng):
        with pytest.raises(Exception, match="outside"):
            jax.block_until_ready(fj.overlap_stats(t, p, per_image=False, **options))
        got = jax.jit(lambda a, c: fj.overlap_stats(a, c, per_image=False, check_range=False, **options))(t, p)
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), w, rtol=2e-5, err_msg=name)


def test_check_range_false_gives_the_same_bits_on_inputs_in_range(rng):
    # The opt-out removes the check and nothing else: on every path the sums
    # of values in [0, 1] are bitwise those of the guarded loops.
    t = (rng.random(SHAPE + (1,)) < 0.2).astype(np.float32)
    t3 = rng.random(SHAPE + (3,)).astype(np.float32)
    labels = rng.integers(0, 5, SHAPE).astype(np.uint8)
    z1 = rng.random(t.shape).astype(np.float32)
    z3 = rng.random(t3.shape).astype(np.float32)
    z5 = rng.dirichlet(np.ones(5), SHAPE).astype(np.float32)
    for y, z, options in ((t, z1, {}), (t, z1 * 8 - 4, dict(from_logits=True)), (t3, z3, {}),
                          (labels, z5, dict(sparse=True)), (labels, z5, dict(sparse=True, ignore_index=4))):
        checked = fk.overlap_stats(y, z, **options)
        unchecked = fk.overlap_stats(y, z, check_range=False, **options)
        for a, b in zip(checked, unchecked):
            np.testing.assert_array_equal(a, b)

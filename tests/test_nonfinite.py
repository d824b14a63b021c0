"""Non-finite predictions: what a NaN or an infinity in y_pred gives, on every door.

The promise (README, Guarantees): the sums, the loss and the gradient are
those of the float64 formula. So a NaN in y_pred makes the loss NaN; an
infinite probability (from_logits=False) is out of range, the range guards'
error on every door (tests/test_range_guards.py); an infinite logit is a
saturated probability under a sigmoid (+inf: 1, -inf: 0) and a finite loss,
while under a softmax +inf makes its pixel NaN and -inf is a probability of 0.
With per_image, only the image holding the value gets a NaN loss. No door
crashes or hangs.
"""

import numpy as np
import pytest

import fastiou.kernels as fk
from cases import LOSS_MODES, mode_case, mode_ids
from overlap_oracle import grad as oracle_grad
from overlap_oracle import loss_from_sums
from overlap_oracle import sums as oracle_sums

VALUES = [np.nan, np.inf, -np.inf]
# The float64 formula meets inf - inf and 0 * inf here, by design.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def case(mode, value, true_at_value):
    """(t, z): a case of `mode` with one special value in image 0, pixel 3,
    channel 0, where the target is 1 (true_at_value) or 0."""
    t, z = mode_case(np.random.default_rng(7), mode, (2, 8), pred_dtype="float64")
    z[0, 3, 0] = value
    label = 0 if true_at_value else 1 % mode.channels
    if mode.sparse:
        t[0, 3] = label  # counted: never ignore_index
    elif mode.kind == "one-hot":
        t[0, 3] = np.eye(mode.channels, dtype=t.dtype)[label]
    else:
        t[0, 3, 0] = int(true_at_value)
    return t, z.astype(np.float32)


def refused(mode, value):
    """Whether the range guards refuse the value: an infinite probability."""
    return not mode.from_logits and np.isinf(value)


def expected_loss(t, z, mode, per_image):
    from fastiou._defaults import epsilon

    sums = oracle_sums(t, z, per_image=per_image, **mode.kernel_options())
    return loss_from_sums("jaccard", *sums, eps=epsilon())


def same(got, want, what):
    """Equal NaN and infinity patterns, the finite values within float32 rounding."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"NaNs of {what}")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=what)


def test_the_expected_pattern_is_what_the_docstring_says():
    # The oracle itself, on the cases the promise names.
    for mode in LOSS_MODES:
        for value in VALUES:
            t, z = case(mode, value, true_at_value=True)
            per_image = expected_loss(t, z, mode, per_image=True)
            assert np.isfinite(per_image[1]), (mode, value)  # the other image is untouched
            saturated = not mode.softmax and mode.from_logits and not np.isnan(value)
            zero_probability = mode.softmax and mode.from_logits and value == -np.inf
            assert np.isfinite(per_image[0]) == (saturated or zero_probability), (mode, value)


@pytest.mark.parametrize("mode", LOSS_MODES, ids=mode_ids(LOSS_MODES))
@pytest.mark.parametrize("value", VALUES, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("true_at_value", [False, True])
def test_module_sums_and_gradient(mode, value, true_at_value):
    t, z = case(mode, value, true_at_value)
    opts = mode.kernel_options()
    for per_image in (False, True):
        if refused(mode, value):
            with pytest.raises(ValueError, match=r"y_pred holds -?inf at batch index 0, pixel 3 "):
                fk.overlap_stats(t, z, per_image=per_image, **opts)
            continue
        got = fk.overlap_stats(t, z, per_image=per_image, **opts)
        for g, w, label in zip(got, oracle_sums(t, z, per_image=per_image, **opts), "IPT"):
            same(g, w, f"{label} of {mode.name} with {value}, per_image={per_image}")
    ones = np.ones((2, z.shape[-1]), np.float32)
    grad = fk.overlap_grad(t, z, None, ones, ones, ones, per_image=True, **opts)
    # dL/dz with unit cotangents: NaN exactly where the float64 formula is.
    want = oracle_grad(t, z, None, ones, ones, ones, per_image=True, **opts)
    same(grad, want, f"gradient of {mode.name} with {value}")


@pytest.mark.parametrize("mode", LOSS_MODES, ids=mode_ids(LOSS_MODES))
@pytest.mark.parametrize("value", VALUES, ids=["nan", "inf", "-inf"])
def test_losses_on_every_door(mode, value):
    tf = pytest.importorskip("tensorflow")
    import jax

    import fastiou
    import fastiou.jax as fj

    t, z = case(mode, value, true_at_value=False)
    kwargs = mode.loss_options()
    compiled = tf.function(lambda a, b, p: fastiou.jaccard_loss(a, b, per_image=p, **kwargs), jit_compile=True)
    for per_image in (False, True):
        want = expected_loss(t, z, mode, per_image)
        what = f"{mode.name} with {value}, per_image={per_image}"
        tt, zz = tf.constant(t), tf.constant(z)
        if refused(mode, value):
            bad = r"y_pred holds -?inf at batch index 0, pixel 3 "
            for fn in (lambda: fastiou.jaccard_loss(tt, zz, per_image=per_image, **kwargs),
                       lambda: compiled(tt, zz, per_image)):
                with pytest.raises(tf.errors.InvalidArgumentError, match=bad):
                    fn()
            with pytest.raises(Exception, match=bad):
                jax.block_until_ready(fj.jaccard_loss(t, z, per_image=per_image, **kwargs))
            continue
        same(fastiou.jaccard_loss(tt, zz, per_image=per_image, **kwargs), want, f"TensorFlow loss of {what}")
        same(compiled(tt, zz, per_image), want, f"XLA loss of {what}")
        same(jax.jit(lambda a, b: fj.jaccard_loss(a, b, per_image=per_image, **kwargs))(t, z), want,
             f"JAX loss of {what}")
        # A NaN loss has NaN gradients; a finite one, finite gradients.
        var = tf.Variable(z)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(fastiou.jaccard_loss(tt, var, per_image=per_image, **kwargs))
        grad = tape.gradient(loss, var).numpy()
        assert np.isfinite(loss.numpy()) == np.isfinite(grad).all(), what

"""Non-finite predictions: what a NaN or an infinity in y_pred gives, on every door.

The promise (README, Guarantees): the sums, the loss and the gradient are
those of the float64 formula. So a NaN in y_pred makes the loss NaN; an
infinite probability (from_logits=False) does too; an infinite logit is a
saturated probability under a sigmoid (+inf: 1, -inf: 0) and a finite loss,
while under a softmax +inf makes its pixel NaN and -inf is a probability of 0.
With per_image, only the image holding the value gets a NaN loss. No door
crashes or hangs.
"""

import numpy as np
import pytest

import fastiou.kernels as fk
from overlap_oracle import grad as oracle_grad
from overlap_oracle import loss_from_sums
from overlap_oracle import sums as oracle_sums

# (name, channels, kind, from_logits): the ways predictions meet targets.
MODES = [
    ("binary-logits", 1, "sigmoid", True),
    ("multilabel-logits", 3, "sigmoid", True),
    ("binary-probabilities", 1, "sigmoid", False),
    ("multiclass-logits", 4, "softmax", True),
    ("multiclass-probabilities", 4, "softmax", False),
    ("sparse-logits", 5, "sparse", True),
    ("sparse-probabilities", 5, "sparse", False),
]
VALUES = [np.nan, np.inf, -np.inf]
# The float64 formula meets inf - inf and 0 * inf here, by design.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def case(mode, value, true_at_value):
    """(t, z, options, mode for the losses): one special value in image 0, pixel 3, channel 0."""
    _, channels, kind, from_logits = mode
    rng = np.random.default_rng(7)
    z = rng.normal(size=(2, 8, channels))
    if not from_logits:
        z = 1.0 / (1.0 + np.exp(-z))
    z[0, 3, 0] = value
    label = 0 if true_at_value else 1 % channels
    if kind == "sparse":
        t = rng.integers(0, channels, size=(2, 8)).astype(np.uint8)
        t[0, 3] = label
    elif kind == "softmax":
        t = np.eye(channels, dtype=np.uint8)[rng.integers(0, channels, size=(2, 8))]
        t[0, 3] = np.eye(channels, dtype=np.uint8)[label]
    else:
        t = (rng.random((2, 8, channels)) < 0.4).astype(np.uint8)
        t[0, 3, 0] = int(true_at_value)
    opts = dict(from_logits=from_logits, softmax=kind != "sigmoid", sparse=kind == "sparse")
    loss_mode = {"sparse": "auto", "softmax": "multiclass"}.get(kind, "binary" if channels == 1 else "multilabel")
    return t, z.astype(np.float32), opts, loss_mode


def expected_loss(t, z, opts, per_image):
    from fastiou._defaults import epsilon

    return loss_from_sums("jaccard", *oracle_sums(t, z, per_image=per_image, **opts), eps=epsilon())


def same(got, want, what):
    """Equal NaN and infinity patterns, the finite values within float32 rounding."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"NaNs of {what}")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=what)


def test_the_expected_pattern_is_what_the_docstring_says():
    # The oracle itself, on the cases the promise names.
    for mode in MODES:
        for value in VALUES:
            t, z, opts, _ = case(mode, value, true_at_value=True)
            per_image = expected_loss(t, z, opts, per_image=True)
            assert np.isfinite(per_image[1]), (mode, value)  # the other image is untouched
            saturated = mode[2] == "sigmoid" and mode[3] and not np.isnan(value)
            zero_probability = mode[2] != "sigmoid" and mode[3] and value == -np.inf
            assert np.isfinite(per_image[0]) == (saturated or zero_probability), (mode, value)


@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
@pytest.mark.parametrize("value", VALUES, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("true_at_value", [False, True])
def test_module_sums_and_gradient(mode, value, true_at_value):
    t, z, opts, _ = case(mode, value, true_at_value)
    for per_image in (False, True):
        got = fk.overlap_stats(t, z, per_image=per_image, **opts)
        for g, w, label in zip(got, oracle_sums(t, z, per_image=per_image, **opts), "IPT"):
            same(g, w, f"{label} of {mode[0]} with {value}, per_image={per_image}")
    ones = np.ones((2, z.shape[-1]), np.float32)
    grad = fk.overlap_grad(t, z, None, ones, ones, ones, per_image=True, **opts)
    # dL/dz with unit cotangents: NaN exactly where the float64 formula is.
    want = oracle_grad(t, z, None, ones, ones, ones, per_image=True, **opts)
    same(grad, want, f"gradient of {mode[0]} with {value}")


@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
@pytest.mark.parametrize("value", VALUES, ids=["nan", "inf", "-inf"])
def test_losses_on_every_door(mode, value):
    tf = pytest.importorskip("tensorflow")
    import jax

    import fastiou
    import fastiou.jax as fj

    t, z, opts, loss_mode = case(mode, value, true_at_value=False)
    kwargs = dict(from_logits=opts["from_logits"], mode=loss_mode)
    compiled = tf.function(lambda a, b, p: fastiou.jaccard_loss(a, b, per_image=p, **kwargs), jit_compile=True)
    for per_image in (False, True):
        want = expected_loss(t, z, opts, per_image)
        what = f"{mode[0]} with {value}, per_image={per_image}"
        tt, zz = tf.constant(t), tf.constant(z)
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

"""The one loss front end: shapes resolved and checked alike for every front end,
and equal losses from the TensorFlow ops, the JAX functions and the reference
for equal inputs and options, epsilon included."""

import importlib.util

import keras
import numpy as np
import pytest

import fastiou
from fastiou import _shapes
from fastiou._shapes import Inputs, check_inputs, is_sparse

HAVE_JAX_FFI = importlib.util.find_spec("jax") is not None and bool(fastiou.kernels.ffi_handlers())
HAVE_TF = hasattr(fastiou, "losses") and keras.backend.backend() == "tensorflow"


# --- shape resolution, on hand-written shapes --------------------------------------------

@pytest.mark.parametrize("true_shape,pred_shape,want", [
    ((2, 8, 8), (2, 8, 8, 3), True),          # class indices without the channel axis
    ((2, 8, 8, 1), (2, 8, 8, 3), True),       # class indices with a channel axis of 1
    ((2, 8, 8, 3), (2, 8, 8, 3), False),      # dense: masks or one-hot
    ((2, 8, 8), (2, 8, 8, 1), False),         # one channel: a binary mask without its axis
    ((2, 8, 8, 1), (2, 8, 8, 1), False),      # one channel: a binary mask
    ((4,), (4, 5), True),                     # (B, C) with one label per image
    ((4, 1), (4, 5), True),
    ((4, 5), (4, 5), False),
    ((2, 4, 8, 8), (2, 4, 8, 8, 6), True),    # volumes
    ((None, 8, 8), (None, 8, 8, None), True),  # sizes unknown while tracing
    ((None, 8, 8, None), (None, 8, 8, 3), False),
    (None, (2, 8, 8, 3), False),              # unknown ranks
    ((2, 8, 8), None, False),
])
def test_is_sparse_on_hand_written_shapes(true_shape, pred_shape, want):
    assert is_sparse(true_shape, pred_shape) is want


def test_check_inputs_says_how_to_read_the_inputs():
    assert check_inputs((2, 8, 8), "uint8", (2, 8, 8, 3), "float32") == Inputs(True, None, False, False)
    assert check_inputs((2, 8, 8), "int16", (2, 8, 8, 3), "float16") == Inputs(True, "int32", False, False)
    assert check_inputs((2, 8, 8), "bool", (2, 8, 8, 1), "bfloat16") == Inputs(False, None, True, False)
    assert check_inputs((2, 8, 8, 3), "float32", (2, 8, 8, 3), "float32", (2, 8, 8), "float64") == \
        Inputs(False, None, False, True)
    assert check_inputs((2, 8, 8, 3), "uint8", (2, 8, 8, 3), "float32", (2, 8, 8, 1), "uint8") == \
        Inputs(False, None, False, False)
    # An explicit sparse wins over the shapes; unknown sizes and ranks pass.
    assert check_inputs((2, 8, 8, 1), "int32", (2, 8, 8, 1), "float32", sparse=True).sparse
    assert check_inputs((None, 8, 8), "int64", (None, None, None, 3), "float32").sparse
    assert check_inputs(None, "float32", None, "float32") == Inputs(False, None, False, False)


@pytest.mark.parametrize("args,kwargs,error,match", [
    (((2, 3), "float32", (2, 3), "int32"), {}, TypeError,
     "y_pred must be float16, bfloat16, float32 or float64, got int32"),
    (((5,), "float32", (5,), "float32"), {}, ValueError, r"rank >= 2 .* got shape \(5,\)"),
    (((2, 4, 4), "float32", (2, 4, 4, 3), "float32"), {}, TypeError,
     "sparse labels .* must be uint8, int32 or int64, got float32"),
    (((2, 4, 5), "uint8", (2, 4, 4, 3), "float32"), {}, ValueError,
     r"sparse y_true shape \(2, 4, 5\) must be \(2, 4, 4\) or \(2, 4, 4, 1\)"),
    (((2, 3), "complex64", (2, 3), "float32"), {}, TypeError, "y_true must be .* got complex64"),
    (((2, 4, 5, 3), "float32", (2, 4, 4, 3), "float32"), {}, ValueError,
     r"y_true shape \(2, 4, 5, 3\) does not match y_pred shape \(2, 4, 4, 3\)"),
    (((2, 4, 4), "float32", (2, 4, 4, 1), "float32", (2, 4, 5), "float32"), {}, ValueError,
     r"weights shape \(2, 4, 5, 1\) must equal y_pred shape \(2, 4, 4, 1\) or \(2, 4, 4, 1\)"),
    (((2, 3), "float32", (2, 3), "float32", (2, 3), "string"), {}, TypeError,
     "weights must be numeric, got string"),
    (((2, 3), "float32", (2, 3), "float32"), {"ignore_index": 255}, ValueError,
     "ignore_index needs sparse labels"),
])
def test_check_inputs_refuses(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        check_inputs(*args, **kwargs)


def test_shapes_print_as_tensorflow_prints_them():
    assert _shapes.show((2, None, 3)) == "(2, None, 3)"
    assert _shapes.show((5,)) == "(5,)"
    assert _shapes.show(None) == "<unknown>"
    if HAVE_TF:
        import tensorflow as tf

        for shape in ((2, None, 3), (5,), (), (1, 2)):
            assert _shapes.show(shape) == str(tf.TensorShape(shape))


def test_kernels_module_resolves_shapes_alike():
    import fastiou.kernels as fk

    assert fk.is_sparse_shape(np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4, 3), np.float32))
    assert not fk.is_sparse_shape(np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4, 1), np.float32))
    # A binary mask without its channel axis gets one, as in every front end.
    I, P, T = fk.overlap_stats(np.ones((2, 4, 4), np.uint8), np.full((2, 4, 4, 1), 0.5, np.float32))
    np.testing.assert_allclose(np.asarray(T), [[16.0], [16.0]])


# --- equal losses on every backend --------------------------------------------------------

needs_both = pytest.mark.skipif(not (HAVE_TF and HAVE_JAX_FFI),
                                reason="needs fastiou's TensorFlow ops and its XLA FFI handlers for JAX")


def _case(rng, kind):
    """(y_true, logits, mode) as NumPy arrays for a target of `kind`."""
    if kind == "binary":
        return (rng.random((3, 6, 5, 1)) < 0.3).astype(np.uint8), rng.normal(size=(3, 6, 5, 1)), "auto"
    if kind == "binary-no-channel":
        return (rng.random((3, 6, 5)) < 0.3), rng.normal(size=(3, 6, 5, 1)), "binary"
    if kind == "multilabel":
        return (rng.random((3, 6, 5, 4)) < 0.3).astype(np.float32), rng.normal(size=(3, 6, 5, 4)), \
            "multilabel"
    if kind == "one-hot":
        labels = rng.integers(0, 4, size=(3, 6, 5))
        return np.eye(4, dtype=np.float32)[labels], rng.normal(size=(3, 6, 5, 4)), "multiclass"
    if kind == "sparse":
        return rng.integers(0, 4, size=(3, 6, 5)).astype(np.uint8), rng.normal(size=(3, 6, 5, 4)), "auto"
    if kind == "sparse-int16":
        return rng.integers(0, 4, size=(3, 6, 5, 1)).astype(np.int16), rng.normal(size=(3, 6, 5, 4)), \
            "multiclass"
    labels = rng.integers(0, 4, size=(3, 6, 5)).astype(np.int32)  # sparse with an ignore label
    labels[0, :2] = 255
    return labels, rng.normal(size=(3, 6, 5, 4)), "auto"


KINDS = ["binary", "binary-no-channel", "multilabel", "one-hot", "sparse", "sparse-int16",
         "sparse-ignore"]

OPTIONS = [
    dict(),
    dict(per_image=True),
    dict(smooth=0.0, log_loss=True, per_image=True),
    dict(smooth=0.5, class_weights=[1.0, 2.0, 0.5, 3.0]),
    dict(classes=[1, 3], per_image=True),
    dict(weights="per-pixel"),
]
LOSS_OPTIONS = [(loss, options) for loss in ("jaccard", "dice", "tversky") for options in OPTIONS] + [
    ("tversky", dict(alpha=0.3, beta=0.7)),
    ("tversky", dict(alpha=0.7, beta=0.3, gamma=0.75, per_image=True)),
]


def _losses(loss, t, z, options):
    """The loss from fastiou's TensorFlow ops, fastiou.jax and the reference."""
    import fastiou.jax as fj

    return (np.asarray(getattr(fastiou, f"{loss}_loss")(t, z, **options)),
            np.asarray(getattr(fj, f"{loss}_loss")(t, z, **options)),
            np.asarray(fastiou.reference.LOSSES[loss](t, z, **options)))


def _options(rng, kind, z, options):
    options = dict(options)
    channels = z.shape[-1]
    if "class_weights" in options:
        options["class_weights"] = options["class_weights"][:channels] if channels > 1 else [2.0]
    if "classes" in options and channels == 1:
        options["classes"] = [0]
    if options.get("weights") == "per-pixel":
        options["weights"] = rng.random(z.shape[:-1] + (1,)).astype(np.float32)
    if kind == "sparse-ignore":
        options["ignore_index"] = 255
    return options


@needs_both
@pytest.mark.parametrize("loss,options", LOSS_OPTIONS,
                         ids=[f"{loss}-{','.join(sorted(o)) or 'defaults'}" for loss, o in LOSS_OPTIONS])
@pytest.mark.parametrize("kind", KINDS)
def test_tensorflow_jax_and_reference_give_equal_losses(rng, kind, loss, options):
    t, z, mode = _case(rng, kind)
    z = z.astype(np.float32)
    options = _options(rng, kind, z, options)
    got_tf, got_jax, got_ref = _losses(loss, t, z, dict(options, from_logits=True, mode=mode))
    assert got_tf.shape == got_jax.shape == got_ref.shape
    np.testing.assert_allclose(got_jax, got_tf, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(got_ref, got_tf, rtol=2e-5, atol=1e-6)


@needs_both
@pytest.mark.parametrize("loss", ["jaccard", "dice", "tversky"])
def test_equal_losses_after_set_epsilon(rng, loss):
    # Half the images are empty in target and prediction: with smooth=0 their
    # denominators lie below a large epsilon (perfect matches), and log_loss
    # clamps the others' index at epsilon.
    t = (rng.random((4, 6, 6, 1)) < 0.3).astype(np.float32)
    p = rng.random((4, 6, 6, 1)).astype(np.float32) * 0.2
    t[:2] = 0.0
    p[:2] = 0.0
    p[2] = np.where(t[2] > 0, 0.0, p[2])  # disjoint from its target: index 0
    extra = dict(alpha=0.3, beta=0.7) if loss == "tversky" else {}
    options = dict(smooth=0.0, log_loss=True, per_image=True, **extra)
    default = keras.config.epsilon()
    before = _losses(loss, t, p, options)
    keras.config.set_epsilon(0.05)
    try:
        after = _losses(loss, t, p, options)
    finally:
        keras.config.set_epsilon(default)
    for got in after[1:]:
        np.testing.assert_allclose(got, after[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(after[0][2], -np.log(0.05), rtol=1e-6)
    np.testing.assert_allclose(after[0][:2], 0.0, atol=1e-7)
    assert abs(before[0][2] - after[0][2]) > 1.0  # epsilon was read: -log(1e-7) before
    # Back to Keras' default on every backend.
    for got, want in zip(_losses(loss, t, p, options), before):
        np.testing.assert_allclose(got, want, rtol=1e-6)


@needs_both
@pytest.mark.parametrize("call,match", [
    (dict(y_true=np.zeros((2, 4, 5, 3), np.float32)), "does not match y_pred shape"),
    (dict(y_true=np.zeros((2, 4, 4), np.float32)), "sparse labels .* must be uint8, int32 or int64"),
    (dict(y_true=np.zeros((2, 4, 4, 3), np.float32), mode="auto"), "mode='auto' cannot tell"),
    (dict(y_true=np.zeros((2, 4, 4), np.uint8), mode="binary"), "need mode='multiclass'"),
    (dict(weights=np.ones((2, 4, 5), np.float32)), "weights shape"),
    (dict(ignore_index=255), "ignore_index needs sparse labels"),
    (dict(smooth=-1.0), "smooth must be >= 0"),
    (dict(classes=[0, 3]), r"classes \[0, 3\] must lie in \[0, 3\)"),
    (dict(class_weights=[1.0, 2.0]), "class_weights has 2 entries but y_pred has 3 channels"),
])
def test_every_front_end_refuses_alike(call, match):
    import fastiou.jax as fj

    z = np.zeros((2, 4, 4, 3), np.float32)
    call = dict(call)
    t = call.pop("y_true", np.zeros((2, 4, 4, 3), np.float32))
    call.setdefault("mode", "multilabel")
    for fn in (fastiou.jaccard_loss, fj.jaccard_loss, fastiou.reference.jaccard_loss):
        with pytest.raises((TypeError, ValueError), match=match):
            fn(t, z, **call)

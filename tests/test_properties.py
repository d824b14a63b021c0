"""Property-based differential tests (hypothesis): random shapes, dtypes,
options and values through every door, against the float64 oracle and
against each other.

A case draws: rank 2 to 5, dimensions of 0 to 5 (zero-size ones included),
C from 1 to 300; y_pred float16, bfloat16, float32 or float64; targets as
bool, uint8, int32, int64 or float masks, one-hot rows, or sparse
uint8/int32/int64 labels with or without ignore_index; sigmoid or softmax,
from logits (scales from subnormal to +-1e4, exact +-1e4 and 0 mixed in) or
probabilities (exact 0 and 1 and subnormals mixed in); per-image or batch
sums; no weights, per-element or per-pixel weights.

Doors: the NumPy module (fastiou.kernels), the TensorFlow op (eager, in a
graph, under XLA) and fastiou.jax (jit). Sums and gradients equal the float64
oracle within the accumulation's rounding, and every door gives the module's
bits: one kernel behind all of them. The loss of each door equals the
oracle's loss of the oracle's sums. (TensorFlow flushes subnormal results to
zero; the comparison between doors reads subnormals as zero.)

Profiles (FASTIOU_HYPOTHESIS_PROFILE): "ci" (the default, in `make test`: a
fixed set of examples, under two minutes) and "long" (many random examples,
for a change to the kernels). tests/test_cpu_levels.py runs the module door
at every SIMD level this CPU runs.
"""

import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastiou.kernels as fk
from cases import Mode
from overlap_oracle import grad as oracle_grad
from overlap_oracle import loss_from_sums
from overlap_oracle import sums as oracle_sums

PROFILE = os.environ.get("FASTIOU_HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"FASTIOU_HYPOTHESIS_PROFILE must be ci or long, got {PROFILE!r}")
settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(PROFILE)


def examples(ci, long):
    """The test's number of examples in the profile; FASTIOU_HYPOTHESIS_EXAMPLES overrides it."""
    n = os.environ.get("FASTIOU_HYPOTHESIS_EXAMPLES")
    return settings(max_examples=int(n) if n else (ci if PROFILE == "ci" else long))


MAX_ELEMENTS = 4000
PRED_DTYPES = ["float16", "bfloat16", "float32", "float64"]
DENSE_TRUE_DTYPES = ["bool", "uint8", "int32", "int64", "float16", "float32", "float64"]
SPARSE_TRUE_DTYPES = ["uint8", "int32", "int64"]
# Relative rounding of the sums: float32 accumulation, or float64.
SUM_RTOL = {"float16": 2e-5, "bfloat16": 2e-5, "float32": 2e-5, "float64": 1e-12}
# The gradient is returned in y_pred's dtype.
GRAD_RTOL = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 2e-5, "float64": 1e-11}


def np_dtype(name):
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


class Case:
    """One drawn case: NumPy inputs, options, the cotangents of the sums."""

    def __init__(self, t, z, w, opts, grads):
        self.t, self.z, self.w, self.opts, self.grads = t, z, w, opts, grads

    def __repr__(self):
        w = None if self.w is None else self.w.shape
        return (f"Case(y_true {self.t.dtype}{self.t.shape}, y_pred {self.z.dtype}{self.z.shape}, "
                f"weights {w}, {self.opts})")

    @property
    def acc(self):
        return np.float64 if self.z.dtype == np.float64 else np.float32

    def oracle_inputs(self):
        w = None if self.w is None else self.w.astype(np.float64)
        return self.t, self.z.astype(np.float64), w


def _values(draw, rng, shape, from_logits):
    if from_logits:
        scale = draw(st.sampled_from([1e-30, 1.0, 8.0, 1e4]))
        z = rng.normal(scale=scale, size=shape)
        special = rng.random(shape)
        z = np.where(special < 0.05, 1e4, np.where(special < 0.1, -1e4, np.where(special < 0.15, 0.0, z)))
    else:
        z = rng.random(shape)
        special = rng.random(shape)
        z = np.where(special < 0.1, 0.0, np.where(special < 0.2, 1.0, np.where(special < 0.25, 1e-40, z)))
    return z


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(["sigmoid", "softmax", "sparse"]))
    rank = draw(st.integers(2, 5))
    dims = [draw(st.integers(0, 3))] + [draw(st.integers(0, 5)) for _ in range(rank - 2)]
    pixels = int(np.prod(dims))
    channels = draw(st.one_of(st.integers(1, 8), st.integers(9, 300)))
    channels = max(1, min(channels, MAX_ELEMENTS // max(pixels, 1)))
    shape = tuple(dims) + (channels,)
    pred_dtype = draw(st.sampled_from(PRED_DTYPES))
    from_logits = draw(st.booleans())
    softmax = kind == "softmax" or (kind == "sparse" and draw(st.booleans()))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    z = _values(draw, rng, shape, from_logits).astype(np_dtype(pred_dtype))

    ignore_index = None
    if kind == "sparse":
        true_dtype = draw(st.sampled_from(SPARSE_TRUE_DTYPES))
        t = rng.integers(0, channels, size=shape[:-1])
        ignore_index = draw(st.sampled_from([None, 255] if true_dtype == "uint8" else [None, -1, 255]))
        if ignore_index is not None:
            t = np.where(rng.random(t.shape) < 0.2, ignore_index, t)
        t = t.astype(true_dtype)
    else:
        true_dtype = draw(st.sampled_from(DENSE_TRUE_DTYPES))
        if kind == "softmax":
            t = np.eye(channels)[rng.integers(0, channels, size=shape[:-1])]
        elif np.dtype(true_dtype).kind == "f":
            t = np.where(rng.random(shape) < 0.3, rng.integers(0, 2, size=shape), rng.random(shape))
        else:
            t = rng.integers(0, 2, size=shape)
        t = t.astype(true_dtype)

    weights = draw(st.sampled_from([None, "element", "pixel"]))
    w = None
    if weights is not None:
        wshape = shape if weights == "element" else shape[:-1] + (1,)
        w = np.where(rng.random(wshape) < 0.2, 0.0, 2.0 * rng.random(wshape)).astype(np_dtype(pred_dtype))

    per_image = draw(st.booleans())
    opts = dict(from_logits=from_logits, per_image=per_image, softmax=softmax, sparse=kind == "sparse",
                ignore_index=ignore_index)
    acc = np.float64 if pred_dtype == "float64" else np.float32
    stats_shape = (dims[0], channels) if per_image else (channels,)
    grads = tuple(rng.normal(size=stats_shape).astype(acc) for _ in range(3))
    return Case(t, z, w, opts, grads)


# --- The doors.

def _module_array(x):
    """The module takes DLPack arrays; NumPy has no DLPack bfloat16, JAX has."""
    if x is not None and x.dtype == ml_dtypes.bfloat16:
        import jax.numpy as jnp
        return jnp.asarray(x)
    return x


def module_door(case):
    t, z, w = case.t, _module_array(case.z), _module_array(case.w)
    stats = fk.overlap_stats(t, z, w, **case.opts)
    grad = fk.overlap_grad(t, z, w, *case.grads, **case.opts)
    return [np.asarray(s) for s in stats], np.asarray(grad)


def _tf_function(compiled):
    import tensorflow as tf

    import fastiou

    def run(t, z, w, gi, gp, gt, opts):
        with tf.GradientTape() as tape:
            tape.watch(z)
            stats = fastiou.overlap_stats(t, z, w, **opts)
            total = tf.reduce_sum(stats[0] * gi) + tf.reduce_sum(stats[1] * gp) + tf.reduce_sum(stats[2] * gt)
        return stats, tape.gradient(total, z)

    if compiled is None:
        return run
    return tf.function(run, jit_compile=compiled, reduce_retracing=False)


def tf_door(case, compiled):
    import tensorflow as tf

    w = None if case.w is None else tf.constant(case.w)
    run = _tf_function(compiled)
    stats, grad = run(tf.constant(case.t), tf.constant(case.z), w, *(tf.constant(g) for g in case.grads),
                      case.opts)
    return [s.numpy() for s in stats], grad.numpy()


def jax_door(case):
    import jax
    import jax.numpy as jnp

    import fastiou.jax as fj

    opts = case.opts

    def stats(t, z, w):
        return fj.overlap_stats(t, z, w, **opts)

    with jax.enable_x64(True):
        t, z = jnp.asarray(case.t), jnp.asarray(case.z)
        w = None if case.w is None else jnp.asarray(case.w)
        out, vjp = jax.vjp(lambda zz: jax.jit(stats)(t, zz, w), z)
        (grad,) = vjp(tuple(jnp.asarray(g) for g in case.grads))
        return [np.asarray(s) for s in out], np.asarray(grad)


DOORS = {
    "tf-eager": lambda case: tf_door(case, None),
    "tf-graph": lambda case: tf_door(case, False),
    "tf-xla": lambda case: tf_door(case, True),
    "jax": jax_door,
}


# --- The checks.

def flush(x):
    """x in float64 with its subnormals as zero. TensorFlow runs kernels with
    subnormals flushed to zero (its threads set the CPU's FTZ/DAZ modes), so
    a subnormal the module returns reads 0 through TensorFlow's doors."""
    x = np.asarray(x)
    tiny = float(ml_dtypes.finfo(x.dtype).tiny)
    x = x.astype(np.float64)
    return np.where(np.abs(x) < tiny, 0.0, x)


def check_against_oracle(case, stats, grad):
    t, z, w = case.oracle_inputs()
    name = case.z.dtype.name
    want = oracle_sums(t, z, w, **case.opts)
    for got, ref, label in zip(stats, want, "IPT"):
        assert got.dtype == case.acc and got.shape == ref.shape, (label, got.dtype, got.shape, ref.shape)
        # Every term is non-negative: the rounding is relative to the sum itself.
        np.testing.assert_allclose(got, ref, rtol=SUM_RTOL[name], atol=1e-30, err_msg=f"{label} of {case}")
    ref = oracle_grad(t, z, w, *(g.astype(np.float64) for g in case.grads), **case.opts)
    got = grad.astype(np.float64)
    assert grad.dtype == case.z.dtype and grad.shape == case.z.shape
    # Cancellation (softmax: p (dp - sum p dp)) leaves an absolute error of
    # the order of the largest term.
    scale = np.abs(ref).max(initial=0.0) + (np.abs(case.grads[0]).max(initial=0) if ref.size else 0)
    np.testing.assert_allclose(got, ref, rtol=GRAD_RTOL[name], atol=GRAD_RTOL[name] * scale * 1e-2 + 1e-30,
                               err_msg=f"gradient of {case}")


def loss_options(case):
    """The losses' arguments for the case (cases.Mode's), or None where no loss takes it."""
    o = case.opts
    kind = "labels" if o["sparse"] else "one-hot" if o["softmax"] else "mask"
    return Mode("drawn", case.z.shape[-1], kind, o["from_logits"], o["softmax"],
                o["ignore_index"]).loss_options()


def check_losses(case):
    """fastiou.jaccard_loss (TensorFlow) and fastiou.jax.jaccard_loss against
    the oracle's loss of the oracle's sums."""
    import jax
    import tensorflow as tf

    import fastiou
    import fastiou.jax as fj
    from fastiou._defaults import epsilon

    kwargs = loss_options(case)
    if kwargs is None:
        return
    o = case.opts
    kwargs["per_image"] = o["per_image"]
    t, z, w = case.oracle_inputs()
    want = loss_from_sums("jaccard", *oracle_sums(t, z, w, **o), eps=epsilon())
    tol = 1e-10 if case.z.dtype == np.float64 else 2e-4
    tf_w = None if case.w is None else tf.constant(case.w)
    got = fastiou.jaccard_loss(tf.constant(case.t), tf.constant(case.z), weights=tf_w, **kwargs).numpy()
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=f"TensorFlow loss of {case}")
    with jax.enable_x64(True):
        got = np.asarray(fj.jaccard_loss(case.t, case.z, weights=case.w, **kwargs))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=f"JAX loss of {case}")


@examples(ci=200, long=20000)
@given(cases())
def test_module_against_the_oracle(case):
    stats, grad = module_door(case)
    check_against_oracle(case, stats, grad)


@pytest.mark.slow
@examples(ci=60, long=2000)
@given(cases())
def test_every_door_gives_the_module_bits(case):
    pytest.importorskip("tensorflow")
    if not fk.ffi_handlers():
        pytest.skip("built without XLA FFI handlers")
    stats, grad = module_door(case)
    check_against_oracle(case, stats, grad)
    for door, run in DOORS.items():
        got_stats, got_grad = run(case)
        for got, want, label in zip(got_stats, stats, "IPT"):
            np.testing.assert_array_equal(flush(got), flush(want), err_msg=f"{door}: {label} of {case}")
        np.testing.assert_array_equal(flush(got_grad), flush(grad), err_msg=f"{door}: gradient of {case}")
    check_losses(case)

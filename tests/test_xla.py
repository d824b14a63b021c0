"""fastiou under XLA: the ops lower to custom calls of the same kernels.

Under tf.function(jit_compile=True), for every op, mode and input dtype: loss
and gradient equal graph mode and the reference; the optimized HLO holds the
fastiou custom calls and no other mask-sized work; bad input fails with a
clear error. The same Host handlers are also driven from JAX through jax.ffi.
"""

import numpy as np
import pytest
import tensorflow as tf

import fastiou
from cases import LOSS_MODES, mask_sized_work, mode_ids, tf_case
from fastiou import _ops

pytestmark = pytest.mark.skipif(not _ops.HAS_XLA_KERNELS, reason="built without XLA kernels")

def step(fn, **kwargs):
    def run(t, z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = tf.reduce_sum(fn(t, z, **kwargs))
        return loss, tape.gradient(loss, z)
    return run


TOL = {"float16": 2e-3, "bfloat16": 2e-2, "float32": 2e-5, "float64": 1e-10}
TIGHT = {"float16": 1e-6, "bfloat16": 1e-6, "float32": 1e-6, "float64": 1e-13}


@pytest.mark.parametrize("mode", LOSS_MODES, ids=mode_ids(LOSS_MODES))
@pytest.mark.parametrize("pred_dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("loss", ["jaccard", "dice", "tversky"])
def test_xla_equals_graph_mode_and_reference(rng, mode, pred_dtype, per_image, loss):
    t, z = tf_case(rng, (3, 9, 7, mode.channels), mode.kind, mode.from_logits, "uint8", pred_dtype,
                   mode.ignore_index)
    opts = mode.loss_options()
    extra = dict(alpha=0.3, beta=0.7, gamma=1.5) if loss == "tversky" else {}
    fused = getattr(fastiou, f"{loss}_loss")
    kwargs = dict(opts, per_image=per_image, **extra)
    xla = tf.function(step(fused, **kwargs), jit_compile=True)(t, z)
    graph = tf.function(step(fused, **kwargs))(t, z)
    # The kernels, with the same partition: bitwise the same sums.
    sums = dict(from_logits=mode.from_logits, per_image=per_image, softmax=mode.softmax,
                ignore_index=mode.ignore_index)
    stats_xla = tf.function(lambda t, z: fastiou.overlap_stats(t, z, **sums), jit_compile=True)(t, z)
    stats_graph = tf.function(lambda t, z: fastiou.overlap_stats(t, z, **sums))(t, z)
    for a, b in zip(stats_xla, stats_graph):
        assert a.numpy().tobytes() == b.numpy().tobytes()
    # The loss algebra on those sums is compiled by XLA: equal to rounding.
    assert xla[1].dtype == z.dtype
    np.testing.assert_allclose(float(xla[0]), float(graph[0]), rtol=TIGHT[pred_dtype])
    out = {"float16": 1e-3, "bfloat16": 8e-3}.get(pred_dtype, TIGHT[pred_dtype])
    a, b = (tf.cast(g, tf.float64).numpy() for g in (xla[1], graph[1]))
    np.testing.assert_allclose(a, b, rtol=out, atol=out * np.abs(b).max())
    ref = step(getattr(fastiou.reference, f"{loss}_loss"), **kwargs)(t, tf.cast(z, tf.float64))
    tol = TOL[pred_dtype]
    np.testing.assert_allclose(float(xla[0]), float(ref[0]), rtol=tol, atol=tol)
    got = tf.cast(xla[1], tf.float64).numpy()
    np.testing.assert_allclose(got, ref[1].numpy(), rtol=10 * tol, atol=tol * np.abs(ref[1]).max())


@pytest.mark.parametrize("true_dtype", ["bool", "uint8", "int32", "int64", "float16", "float32"])
def test_xla_target_dtypes_and_weights(rng, true_dtype):
    t, z = tf_case(rng, (2, 11, 5, 2), "mask", True, true_dtype, "float32")
    w = tf.constant(rng.random((2, 11, 5, 1)).astype("float32"))
    kwargs = dict(from_logits=True, weights=w, mode="multilabel")
    xla = tf.function(step(fastiou.jaccard_loss, **kwargs), jit_compile=True)(t, z)
    graph = tf.function(step(fastiou.jaccard_loss, **kwargs))(t, z)
    np.testing.assert_allclose(float(xla[0]), float(graph[0]), rtol=1e-6)
    np.testing.assert_allclose(xla[1].numpy(), graph[1].numpy(), rtol=1e-6, atol=1e-9)


def test_xla_gradient_with_respect_to_float_targets(rng):
    t, z = tf_case(rng, (2, 6, 6, 1), "mask", True, "float32", "float32")

    def both(t, z):
        with tf.GradientTape() as tape:
            tape.watch([t, z])
            loss = fastiou.dice_loss(t, z, from_logits=True)
        return tape.gradient(loss, [t, z])

    xla = tf.function(both, jit_compile=True)(t, z)
    graph = tf.function(both)(t, z)
    for a, b in zip(xla, graph):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-9)


# --- The optimized HLO: fastiou's custom calls and nothing else mask-sized.

@pytest.mark.parametrize("mode", LOSS_MODES, ids=mode_ids(LOSS_MODES))
@pytest.mark.parametrize("pred_dtype,true_dtype", [("float32", "uint8"), ("bfloat16", "bool"),
                                                   ("float16", "uint8"), ("float32", "float32")])
def test_optimized_hlo_holds_only_the_custom_calls(rng, mode, pred_dtype, true_dtype):
    shape = (2, 32, 32, mode.channels)
    t, z = tf_case(rng, shape, mode.kind, mode.from_logits, true_dtype, pred_dtype, mode.ignore_index)
    fn = tf.function(step(fastiou.jaccard_loss, **mode.loss_options()), jit_compile=True)
    hlo = fn.experimental_get_compiler_ir(t, z)(stage="optimized_hlo")
    assert 'custom_call_target="fastiou_overlap_stats"' in hlo
    assert 'custom_call_target="fastiou_overlap_grad"' in hlo
    # Pixels of a multi-class case: its one-hot or softmax would be mask-sized too.
    mask_elements = int(np.prod(shape[:-1]))
    assert mask_sized_work(hlo, mask_elements) == []


def test_custom_calls_carry_every_option_booleans_as_booleans(rng):
    # The handlers' attributes (csrc/xla/overlap_ffi.h): every option in each
    # call, the flags and settings as MLIR booleans, ignore_index as i64.
    labels = tf.constant(rng.integers(0, 3, size=(2, 8, 8)).astype(np.uint8))
    z = tf.constant(rng.normal(size=(2, 8, 8, 3)).astype(np.float32))
    w = tf.ones((2, 8, 8, 1))
    fn = tf.function(step(lambda t, z: tf.add_n([tf.reduce_sum(s) for s in fastiou.overlap_stats(
        t, z, w, from_logits=True, per_image=False, softmax=True, ignore_index=255)])), jit_compile=True)
    hlo = fn.experimental_get_compiler_ir(labels, z)(stage="hlo")
    options = ("from_logits = true, per_image = false, has_weights = true, softmax = true, sparse = true, "
               "has_ignore = true, ignore_index = 255 : i64, check_range = true")
    assert "backend_config={" + options + "}" in hlo
    assert "backend_config={" + options + ", wrt_true = false}" in hlo


def test_hlo_check_catches_plain_formulas(rng):
    # The check itself: the pure formula under XLA does mask-sized work.
    t, z = tf_case(rng, (2, 32, 32, 1), "mask", True, "uint8", "float32")
    fn = tf.function(step(fastiou.reference.jaccard_loss, from_logits=True), jit_compile=True)
    hlo = fn.experimental_get_compiler_ir(t, z)(stage="optimized_hlo")
    assert "fastiou_overlap" not in hlo
    assert len(mask_sized_work(hlo, 2 * 32 * 32)) > 0


# --- Bad input under XLA.

def test_shape_problems_fail_at_compile_time():
    spec = tf.TensorSpec(None, tf.float32)

    @tf.function(jit_compile=True, input_signature=[spec, spec])
    def loss(t, z):
        return fastiou.jaccard_loss(t, z, mode="binary")  # "auto" cannot tell without shapes

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"y_true shape \[2,4,4,1\] does not match"):
        loss(tf.zeros((2, 4, 4, 1)), tf.zeros((2, 4, 5, 1)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="rank >= 2"):
        loss(tf.zeros((7,)), tf.zeros((7,)))
    labels = tf.TensorSpec(None, tf.uint8)

    @tf.function(jit_compile=True, input_signature=[labels, spec])
    def sparse(t, z):
        return fastiou.overlap_stats(t, z, sparse=True, softmax=True, from_logits=True)

    with pytest.raises(tf.errors.InvalidArgumentError, match="sparse y_true shape"):
        sparse(tf.zeros((2, 4, 5), tf.uint8), tf.zeros((2, 4, 4, 3)))


def test_label_out_of_range_fails_at_run_time_naming_it():
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[1, 2, 3] = 9
    fn = tf.function(lambda t, z: fastiou.jaccard_loss(t, z, from_logits=True, ignore_index=255),
                     jit_compile=True)
    # The Host handler checks the labels; the CUDA one turns a bad one into NaN.
    with tf.device("/CPU:0"), pytest.raises(
            tf.errors.InvalidArgumentError,
            match=r"label 9 at batch index 1, pixel 11 .* outside \[0, 3\) and is not ignore_index 255"):
        fn(tf.constant(labels), tf.zeros((2, 4, 4, 3)))
    labels[1, 2, 3] = 255
    with tf.device("/CPU:0"):
        assert np.isfinite(float(fn(tf.constant(labels), tf.zeros((2, 4, 4, 3)))))


# --- The Host handlers through JAX's FFI.

def test_host_handlers_through_jax_ffi(rng):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    import fastiou.kernels as fk

    handlers = fk.ffi_handlers()
    for target, platforms in handlers.items():
        jax.ffi.register_ffi_target(target, platforms["cpu"], platform="cpu")
    z = rng.normal(size=(3, 10, 7, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=(3, 10, 7)).astype(np.uint8)
    attrs = dict(from_logits=np.bool_(True), per_image=np.bool_(True), has_weights=np.bool_(False),
                 softmax=np.bool_(True), sparse=np.bool_(True), has_ignore=np.bool_(False), ignore_index=np.int64(0),
                 check_range=np.bool_(True))
    sums = jax.ShapeDtypeStruct((3, 4), jnp.float32)
    no_weights = jnp.zeros((0,), jnp.float32)
    stats = jax.jit(lambda t, z: jax.ffi.ffi_call("fastiou_overlap_stats", (sums, sums, sums))(
        t, z, no_weights, **attrs))
    cpu = jax.devices("cpu")[0]
    got = stats(jax.device_put(labels, cpu), jax.device_put(z, cpu))
    want = fk.overlap_stats(labels, z, from_logits=True, softmax=True, sparse=True)
    for g, w in zip(got, want):
        assert np.asarray(g).tobytes() == w.tobytes()
    g_i, g_p, g_t = (np.full((3, 4), v, np.float32) for v in (0.5, -0.25, 0.0))
    grad = jax.jit(lambda t, z, a, b, c: jax.ffi.ffi_call(
        "fastiou_overlap_grad", jax.ShapeDtypeStruct(z.shape, z.dtype))(
        t, z, no_weights, a, b, c, wrt_true=np.bool_(False), **attrs))(labels, z, g_i, g_p, g_t)
    want = fk.overlap_grad(labels, z, None, g_i, g_p, g_t, from_logits=True, softmax=True, sparse=True)
    assert np.asarray(grad).tobytes() == want.tobytes()


@pytest.mark.parametrize("mode", LOSS_MODES, ids=mode_ids(LOSS_MODES))
def test_fallback_without_xla_kernels_equals_the_reference(rng, mode, monkeypatch):
    # The fallback's plain sums, in every mode (sparse labels with
    # ignore_index, softmax, probabilities), per image: the reference's values
    # and gradients, and no fused op in the compiled program.
    monkeypatch.setattr(_ops, "HAS_XLA_KERNELS", False)
    monkeypatch.setattr(_ops, "_warned_fallback", True)
    t, z = tf_case(rng, (2, 6, 5, mode.channels), mode.kind, mode.from_logits, "uint8", "float32",
                   mode.ignore_index)
    kwargs = dict(mode.loss_options(), per_image=True)
    fn = tf.function(step(fastiou.dice_loss, **kwargs), jit_compile=True)
    got = fn(t, z)
    assert "fastiou_overlap" not in fn.experimental_get_compiler_ir(t, z)(stage="optimized_hlo")
    ref = step(fastiou.reference.dice_loss, **kwargs)(t, tf.cast(z, tf.float64))
    np.testing.assert_allclose(float(got[0]), float(ref[0]), rtol=1e-5)
    np.testing.assert_allclose(got[1].numpy(), ref[1].numpy(), rtol=1e-4, atol=1e-7)


def test_build_without_xla_kernels_falls_back_with_one_warning(rng, monkeypatch):
    # What a build without XLA support does under XLA: plain TF ops, one warning.
    monkeypatch.setattr(_ops, "HAS_XLA_KERNELS", False)
    monkeypatch.setattr(_ops, "_warned_fallback", False)
    t, z = tf_case(rng, (2, 8, 8, 1), "mask", True, "uint8", "float32")
    fn = tf.function(step(fastiou.jaccard_loss, from_logits=True), jit_compile=True)
    with pytest.warns(UserWarning, match="built without XLA kernels"):
        got = fn(t, z)
    hlo = fn.experimental_get_compiler_ir(t, z)(stage="optimized_hlo")
    assert "fastiou_overlap" not in hlo
    ref = step(fastiou.reference.jaccard_loss, from_logits=True)(t, z)
    np.testing.assert_allclose(float(got[0]), float(ref[0]), rtol=1e-6)
    np.testing.assert_allclose(got[1].numpy(), ref[1].numpy(), rtol=1e-5, atol=1e-8)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tf.function(step(fastiou.dice_loss, from_logits=True), jit_compile=True)(t, z)  # no second warning

"""The framework-neutral module (fastiou.kernels) on NumPy arrays: the C++
kernels against the float64 oracle, bitwise against the TensorFlow op, and its
input checks; plus what the build says about CUDA."""

import os
import re
import shutil
import sys

import numpy as np
import pytest

import fastiou
import fastiou.kernels as fk
from cases import MODES, make_case, mode_case, mode_ids
from overlap_oracle import grad as oracle_grad
from overlap_oracle import jaccard_group_grads
from overlap_oracle import sums as oracle_sums

# TensorFlow and fastiou's ops for it (absent from TensorFlow-free builds).
HAVE_TF = fastiou._HAVE_TF_OPS

def tolerance(pred_dtype):
    return {"float16": 2e-3, "float32": 2e-5, "float64": 1e-12}[pred_dtype]


@pytest.mark.parametrize("mode", MODES, ids=mode_ids(MODES))
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("pred_dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("weighted", [False, True])
def test_stats_and_grad_match_float64_oracle(rng, mode, per_image, pred_dtype, weighted):
    shape = (3, 9, 7, mode.channels)
    opts = mode.kernel_options()
    t, z = mode_case(rng, mode, shape[:-1], pred_dtype=pred_dtype)
    w = rng.random(shape[:-1] + (1,)).astype(pred_dtype) if weighted else None
    got = fk.overlap_stats(t, z, w, per_image=per_image, **opts)
    want = oracle_sums(t, z, w, per_image=per_image, **opts)
    rtol = tolerance(pred_dtype)
    for g, e in zip(got, want):
        assert g.dtype == (np.float64 if pred_dtype == "float64" else np.float32)
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol)
    acc = got[0].dtype
    g_i, g_p, g_t = (g.astype(acc) for g in jaccard_group_grads(*got))
    dz = fk.overlap_grad(t, z, w, g_i, g_p, g_t, per_image=per_image, **opts)
    assert dz.dtype == z.dtype and dz.shape == z.shape
    want_dz = oracle_grad(t, z, w, g_i, g_p, g_t, per_image=per_image, **opts)
    scale = np.abs(want_dz).max()
    if opts.get("softmax") and opts["from_logits"]:
        # The softmax Jacobian p (dL/dp - dot) cancels terms of the size of
        # dL/dp (exactly, for one channel): rounding is relative to them.
        dp_opts = dict(opts, from_logits=False)
        scale = max(scale, np.abs(oracle_grad(t, z, w, g_i, g_p, g_t, per_image=per_image, **dp_opts)).max())
    np.testing.assert_allclose(dz.astype(np.float64), want_dz, rtol=rtol * 10, atol=rtol * scale)
    if not mode.sparse:
        dt = fk.overlap_grad(t.astype(pred_dtype), z, w, g_i, g_p, g_t, per_image=per_image,
                             wrt_true=True, **opts)
        want_dt = oracle_grad(t, z, w, g_i, g_p, g_t, per_image=per_image, wrt_true=True, **opts)
        np.testing.assert_allclose(dt.astype(np.float64), want_dt, rtol=rtol * 10,
                                   atol=rtol * np.abs(want_dt).max())


def float32_ulps(got, want):
    """|got - want| in units of float32's spacing at want (float64)."""
    spacing = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / spacing


def test_float32_probabilities_from_logits_within_a_few_ulp(rng):
    """The float32 kernels compute their own exponential (no libm): each
    sigmoid and softmax probability, read back as the sum P of a one-pixel
    image, against float64 NumPy. The softmax's exponent z - max is rounded
    to float32 as the kernels round it (that rounding, up to about 20 ulp
    of the result for exponents near -30, is float32's, not the
    exponential's); the rest is the exponential, the sum of 21 terms and
    the scaling."""
    z = np.concatenate([rng.uniform(-80, 80, 20000), rng.uniform(-8, 8, 20000), [0.0]]).astype(np.float32)
    p = fk.overlap_stats(np.zeros((z.size, 1, 1), np.float32), z.reshape(-1, 1, 1), from_logits=True,
                         per_image=True)[1][:, 0]
    assert p[-1] == 0.5
    assert float32_ulps(p, 1 / (1 + np.exp(-z.astype(np.float64)))).max() <= 4
    zc = rng.normal(scale=4.0, size=(5000, 1, 21)).astype(np.float32)
    p = fk.overlap_stats(np.zeros((5000, 1), np.uint8), zc, from_logits=True, softmax=True, per_image=True)[1]
    exponent = (zc[:, 0] - zc[:, 0].max(-1, keepdims=True)).astype(np.float64)
    e = np.exp(exponent)
    assert float32_ulps(p, e / e.sum(-1, keepdims=True)).max() <= 12


STREAM_CASES = [
    # (channels, sparse, from_logits, wrt_true): the single-channel path, and
    # the tile path of sparse labels (probabilities: whole tiles of two values
    # per channel; logits: the transposed tiles)
    (1, False, False, False), (1, False, True, False), (1, False, False, True), (1, False, True, True),
    (21, True, False, False), (21, True, True, False), (3, True, True, False),
]


@pytest.mark.parametrize("channels,sparse,from_logits,wrt_true", STREAM_CASES)
@pytest.mark.parametrize("pred_dtype", ["float16", "float32", "float64"])
def test_large_gradients_streamed_out_equal_small_ones(rng, channels, sparse, from_logits, wrt_true, pred_dtype):
    # Gradients of at least 16 MiB leave by streaming stores (cpu::store_values),
    # smaller ones by plain stores. Three images of an odd pixel count put the
    # chunks' starts at every alignment; with per_image, each image's gradient
    # is the one of that image alone, below the threshold: the same bits. And
    # the float64 oracle's values.
    pixels = (16 << 20) // np.dtype(pred_dtype).itemsize // channels // 3 + 4099
    shape = (3, pixels, channels)
    if sparse:
        t = rng.integers(0, channels, size=shape[:-1]).astype(np.uint8)
        t[:, 5:40] = 255  # ignored pixels: tiles with and without them
        opts = dict(sparse=True, softmax=from_logits, ignore_index=255)
        z = rng.normal(size=shape) if from_logits else rng.dirichlet(np.ones(channels), size=shape[:-1])
    else:
        t = (rng.random(shape) < 0.3).astype(pred_dtype)
        opts = dict(wrt_true=wrt_true)
        z = rng.normal(size=shape) if from_logits else rng.random(shape)
    z = z.astype(pred_dtype)
    acc = np.float64 if pred_dtype == "float64" else np.float32
    g_i, g_p, g_t = (rng.normal(size=(3, channels)).astype(acc) for _ in range(3))
    opts.update(from_logits=from_logits, per_image=True)
    whole = fk.overlap_grad(t, z, None, g_i, g_p, g_t, **opts)
    assert whole.nbytes >= 16 << 20 and whole.dtype == z.dtype
    for b in range(3):
        one = fk.overlap_grad(t[b:b + 1], z[b:b + 1], None, g_i[b:b + 1], g_p[b:b + 1], g_t[b:b + 1], **opts)
        assert one.nbytes < 16 << 20
        np.testing.assert_array_equal(whole[b:b + 1].view(np.uint8), one.view(np.uint8))
    want = oracle_grad(t, z, None, g_i, g_p, g_t, **opts)
    rtol = tolerance(pred_dtype)
    scale = np.abs(want).max()
    if sparse and from_logits:
        # The softmax Jacobian cancels terms of the size of dL/dp.
        scale = max(scale, np.abs(oracle_grad(t, z, None, g_i, g_p, g_t, **dict(opts, from_logits=False))).max())
    np.testing.assert_allclose(whole.astype(np.float64), want, rtol=rtol * 10, atol=rtol * scale)


@pytest.mark.parametrize("true_dtype", ["bool", "uint8", "int32", "int64", "float16", "float32",
                                        "float64"])
def test_target_dtypes_read_as_stored(rng, true_dtype):
    t, z = make_case(rng, (2, 33, 1), "mask", True, true_dtype=true_dtype)
    got = fk.overlap_stats(t, z, from_logits=True)
    want = oracle_sums(t.astype(np.float64), z, from_logits=True)
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=2e-5)


def test_sizes_one_and_empty():
    one = fk.overlap_stats(np.ones((1, 1), np.uint8), np.full((1, 1), 0.25, np.float32))
    np.testing.assert_array_equal([a.item() for a in one], [0.25, 0.25, 1.0])
    empty = fk.overlap_stats(np.zeros((0, 4, 1), np.uint8), np.zeros((0, 4, 1), np.float32), per_image=False)
    np.testing.assert_array_equal(np.concatenate(empty), [0.0, 0.0, 0.0])
    no_pixels = fk.overlap_stats(np.zeros((2, 0, 3), np.uint8), np.zeros((2, 0, 3), np.float32))
    assert all(a.shape == (2, 3) and not a.any() for a in no_pixels)


def test_repeated_runs_are_bitwise_equal(rng):
    t, z = make_case(rng, (2, 301, 211, 1), "mask", True)
    first = [a.tobytes() for a in fk.overlap_stats(t, z, from_logits=True, per_image=False)]
    for _ in range(3):
        assert [a.tobytes() for a in fk.overlap_stats(t, z, from_logits=True, per_image=False)] == first


@pytest.mark.skipif(not HAVE_TF, reason="no TensorFlow ops in this build")
@pytest.mark.parametrize("mode", MODES, ids=mode_ids(MODES))
def test_bitwise_equal_to_tensorflow_op(rng, mode):
    import tensorflow as tf

    opts = mode.kernel_options()
    t, z = mode_case(rng, mode, (2, 40, 30))
    # The CPU op: the GPU kernels add in another order (test_tf_gpu.py compares those).
    with tf.device("/CPU:0"):
        for per_image in (True, False):
            ours = fk.overlap_stats(t, z, per_image=per_image, **opts)
            theirs = fastiou.overlap_stats(tf.constant(t), tf.constant(z), per_image=per_image, **opts)
            for a, b in zip(ours, theirs):
                assert a.tobytes() == b.numpy().tobytes()
            gs = jaccard_group_grads(*ours)
            gs = [g.astype(np.float32) for g in gs]
            dz = fk.overlap_grad(t, z, None, *gs, per_image=per_image, **opts)
            y_true, y_pred = tf.constant(t), tf.constant(z)
            with tf.GradientTape() as tape:
                tape.watch(y_pred)
                stats = fastiou.overlap_stats(y_true, y_pred, per_image=per_image, **opts)
                total = sum(tf.reduce_sum(s * tf.constant(g)) for s, g in zip(stats, gs))
            assert dz.tobytes() == tape.gradient(total, y_pred).numpy().tobytes()


def test_bad_inputs_raise_clear_errors(rng):
    z = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match=r"y_true shape \[2,4,4,2\] does not match y_pred shape \[2,4,4,3\]"):
        fk.overlap_stats(np.zeros((2, 4, 4, 2), np.uint8), z)
    with pytest.raises(ValueError, match="rank >= 2"):
        fk.overlap_stats(np.zeros(5, np.uint8), np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="y_pred must be float16, bfloat16, float32 or float64, got int32"):
        fk.overlap_stats(np.zeros((2, 3), np.uint8), np.zeros((2, 3), np.int32))
    with pytest.raises(TypeError, match="sparse labels .* must be uint8, int32 or int64, got float32"):
        fk.overlap_stats(np.zeros((2, 4, 4), np.float32), z, sparse=True)
    with pytest.raises(ValueError, match="weights shape"):
        fk.overlap_stats(np.zeros(z.shape, np.uint8), z, np.ones((2, 4, 3), np.float32))
    with pytest.raises(TypeError, match="weights must have y_pred's dtype float32, got float64"):
        fk.overlap_stats(np.zeros(z.shape, np.uint8), z, np.ones(z.shape))
    with pytest.raises(ValueError, match="must be contiguous"):
        fk.overlap_stats(np.zeros(z.shape, np.uint8), np.zeros((2, 4, 4, 6), np.float32)[..., ::2])
    with pytest.raises(TypeError, match="__dlpack__"):
        fk.overlap_stats([[1, 0]], np.zeros((1, 2), np.float32))
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[1, 2, 3] = 9
    with pytest.raises(ValueError, match=r"label 9 at batch index 1, pixel 11 .* outside \[0, 3\)"):
        fk.overlap_stats(labels, z, from_logits=True, softmax=True)
    g = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"grad_intersection shape \[3\] must be \[2,3\]"):
        fk.overlap_grad(labels, z, None, np.zeros(3, np.float32), g, g, sparse=True)
    with pytest.raises(TypeError, match="grad_pred_sum must be float32"):
        fk.overlap_grad(labels, z, None, g, g.astype(np.float64), g, sparse=True)


OUT_OF_MEMORY_CHILD = """
import resource, sys
import numpy as np
import fastiou.kernels as fk
# this process's address space now, plus 2 GiB: the stats' per-thread scratch
# for 2**23 channels (several GiB) cannot be had, the inputs (128 MiB) can
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**31, resource.RLIM_INFINITY))
z = np.full((4, 2**23), 2.0**-23, np.float32)  # 4 pixels: 4 chunks, on several threads
try:
    fk.overlap_stats(np.zeros((4,), np.uint8), z, sparse=True, softmax=True)
except Exception as e:
    print("RAISED", type(e).__name__, e)
    sys.exit(0)
print("NO ERROR")
"""


def test_scratch_out_of_memory_is_an_error_not_a_crash():
    # a worker thread that cannot allocate its scratch ends the call with an
    # error; an exception leaving a pool thread would end the process
    import subprocess

    r = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY_CHILD], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "RAISED" in r.stdout and "out of memory for the kernel's scratch" in r.stdout, r.stdout


def test_check_labels_false_on_cpu_still_raises_at_once(rng):
    # On CPU arrays the C++ kernels check each label as they read it: no
    # deferred path, whatever check_labels says (as documented).
    z = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 4, 4)).astype(np.uint8)
    opts = dict(from_logits=True, softmax=True)
    stats = fk.overlap_stats(labels, z, check_labels=False, **opts)
    assert isinstance(stats, fk.OverlapStats) and isinstance(stats, tuple) and len(stats) == 3
    for g, e in zip(stats, oracle_sums(labels, z, sparse=True, **opts)):
        np.testing.assert_allclose(g, e, rtol=2e-5)
    assert isinstance(stats.label_check, fk.LabelCheck)
    assert stats.label_check.ready()
    assert stats.label_check.check() is None
    bad = labels.copy()
    bad[1, 2, 3] = 9
    for check_labels in (True, False):
        with pytest.raises(ValueError, match=r"label 9 at batch index 1, pixel 11 .* outside \[0, 3\)"):
            fk.overlap_stats(bad, z, check_labels=check_labels, **opts)


def test_cpu_calls_hold_no_reference_to_their_inputs(rng):
    # The C++ kernels have run when the call returns: every producer reference
    # (the array objects, the DLPack tensors NumPy hands out) is given back,
    # on success and on error alike.
    t, z = make_case(rng, (2, 6, 5, 3), "mask", True)
    w = rng.random((2, 6, 5, 1)).astype(np.float32)
    bad_w = np.ones((2, 6, 4, 1), np.float32)
    grads = [np.full((2, 3), v, np.float32) for v in (0.5, -1.0, 0.25)]
    arrays = [t, z, w, bad_w] + grads
    before = [sys.getrefcount(a) for a in arrays]
    stats = fk.overlap_stats(t, z, w, from_logits=True)
    fk.overlap_grad(t, z, w, *grads, from_logits=True)
    with pytest.raises(ValueError, match="weights shape"):
        fk.overlap_stats(t, z, bad_w)
    with pytest.raises(TypeError, match="grad_pred_sum must be float32"):
        fk.overlap_grad(t, z, w, grads[0], grads[1].astype(np.float64), grads[2], from_logits=True)
    assert [sys.getrefcount(a) for a in arrays] == before
    assert fk._ext.release_finished() == 0
    del stats


def test_cuda_unavailable_reason():
    reason = fk.cuda_unavailable_reason()
    problem = fk._ext.cuda_driver_problem()
    runnable = fk.built_with_cuda() and not problem and fk.cuda_device_count() > 0
    assert (reason is None) == runnable
    if not fk.built_with_cuda():
        assert reason == problem == "fastiou was built without CUDA kernels"
    elif problem:
        assert reason == problem
    elif not runnable:
        assert reason == "no CUDA device visible"
    if not os.path.exists("/dev/nvidiactl"):
        # No NVIDIA driver loaded: no CUDA kernel can run here, and the
        # reason must say why.
        assert isinstance(reason, str) and reason


class FakeCudaArray:
    """Says it lives on CUDA device 0 and must never be imported: fastiou
    refuses CUDA arrays its kernels cannot run before touching them."""

    shape = (2, 4, 3)

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, **kwargs):
        raise AssertionError("fastiou imported a CUDA array it cannot run")


def test_cuda_array_without_runnable_kernels_raises_the_reason():
    reason = fk.cuda_unavailable_reason()
    if reason is None:
        pytest.skip("fastiou's CUDA kernels can run here")
    fake = FakeCudaArray()
    error = RuntimeError if fk.built_with_cuda() else ValueError
    calls = [lambda: fk.overlap_stats(fake, fake),
             lambda: fk.overlap_stats(fake, fake, sparse=True, check_labels=False),
             lambda: fk.overlap_grad(fake, fake, None, fake, fake, fake)]
    for call in calls:
        with pytest.raises(error, match=re.escape(reason)) as info:
            call()
        if fk.built_with_cuda() and fk._ext.cuda_driver_problem():
            assert str(info.value) == "fastiou: " + reason


def test_read_only_and_strided_singleton_inputs(rng):
    t, z = make_case(rng, (2, 5, 1), "mask", True)
    z.flags.writeable = False
    got = fk.overlap_stats(t, z, from_logits=True)
    for g, e in zip(got, oracle_sums(t, z, from_logits=True)):
        np.testing.assert_allclose(g, e, rtol=2e-5)


def test_cuda_built_where_nvcc_is_found():
    # make test compiles the CUDA sources wherever nvcc is on PATH (CI
    # included): a CUDA change that does not compile cannot pass.
    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc on PATH: CPU-only build")
    assert fk.built_with_cuda()


@pytest.mark.skipif(not HAVE_TF, reason="no TensorFlow ops in this build")
def test_gpu_kernels_registered_with_tensorflow():
    from tensorflow.python.framework import kernels

    for op in ("FastiouOverlapStats", "FastiouOverlapGrad"):
        devices = {k.device_type for k in kernels.get_registered_kernels_for_op(op).kernel}
        assert "CPU" in devices
        assert ("GPU" in devices) == fk.built_with_cuda()

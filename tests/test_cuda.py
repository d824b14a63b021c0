"""The CUDA kernels, driven through the framework-neutral module with PyTorch
tensors (no TensorFlow needed): against the C++ kernels, against PyTorch
autodiff of the formula in float64, at awkward sizes, past 2^31 elements, for
every dtype, and bitwise across runs.

Skipped where fastiou's CUDA kernels cannot run (fastiou.kernels.
cuda_unavailable_reason() says why: no CUDA kernels in the build, a driver too
old for them, no GPU) or PyTorch sees no GPU. With FASTIOU_TEST_DEVICE=cpu the
same tests run on CPU tensors (the C++ kernels through DLPack), which checks
the tests themselves on a machine with no GPU.
"""

import os
import sys

import numpy as np
import pytest

import fastiou.kernels as fk
from cases import MODES, mode_case, mode_ids
from overlap_oracle import sums as oracle_sums

# JAX, where a test uses it on the GPU, takes memory as it needs it instead of
# most of the GPU up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

torch = pytest.importorskip("torch")

DEVICE = os.environ.get("FASTIOU_TEST_DEVICE", "cuda")
if DEVICE == "cuda":
    _reason = fk.cuda_unavailable_reason()
    if _reason is not None:
        pytest.skip(_reason, allow_module_level=True)
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no GPU", allow_module_level=True)

pytestmark = pytest.mark.gpu

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}
# Relative tolerance of sums and gradients against the float64 formula.
RTOL = {"float16": 3e-3, "bfloat16": 2e-2, "float32": 3e-5, "float64": 1e-11}


def on_device(x, dtype=None):
    t = torch.from_numpy(np.ascontiguousarray(x)).to(DEVICE)
    return t if dtype is None else t.to(dtype)


def to_numpy(x):
    return x.detach().cpu().numpy()


def acc_dtype(pred_dtype):
    return torch.float64 if pred_dtype == torch.float64 else torch.float32


# --- PyTorch reference: the formula written plainly, differentiated by autograd
# (the float64 sums alone are overlap_oracle's).

def torch_sums(t, z, w, *, from_logits, per_image, softmax=False, sparse=False, ignore_index=None):
    p = z
    if from_logits:
        p = torch.softmax(z, -1) if softmax else torch.sigmoid(z)
    weights = torch.ones_like(p) if w is None else w.to(p.dtype).expand_as(p)
    if sparse:
        labels = t.reshape(p.shape[:-1]).long()
        tt = (labels[..., None] == torch.arange(p.shape[-1], device=p.device)).to(p.dtype)
        if ignore_index is not None:
            weights = weights * (labels != ignore_index)[..., None].to(p.dtype)
    else:
        tt = t.reshape(p.shape).to(p.dtype)
    axes = tuple(range(1 if per_image else 0, p.dim() - 1))
    return (weights * tt * p).sum(axes), (weights * p).sum(axes), (weights * tt).sum(axes)


def jaccard_total(I, P, T, smooth=1.0):
    return (1.0 - (I + smooth) / (T + P - I + smooth)).sum()


def fused_loss_and_grad(t, z, w, opts):
    """Jaccard loss and dL/dz through the fused kernels: stats, autograd on
    the tiny sums, then the gradient kernel."""
    stats = fk.overlap_stats(t, z, w, **opts)
    sums = [s.to(torch.float64).requires_grad_(True) for s in stats]
    loss = jaccard_total(*sums)
    group_grads = torch.autograd.grad(loss, sums)
    acc = acc_dtype(z.dtype)
    dz = fk.overlap_grad(t, z, w, *(g.to(acc) for g in group_grads), **opts)
    return stats, loss.detach(), dz


def reference_loss_and_grad(t, z, w, opts):
    z64 = z.detach().to(torch.float64).requires_grad_(True)
    w64 = None if w is None else w.to(torch.float64)
    loss = jaccard_total(*torch_sums(t, z64, w64, **opts))
    (dz,) = torch.autograd.grad(loss, z64)
    return loss.detach(), dz


def cpu_kernels(t, z, w, opts, group_grads):
    """Stats and gradient of the C++ kernels on the same values. bfloat16 has no
    NumPy type: its values are passed as float32, which they are exactly."""
    def host(x):
        if x is None:
            return None
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()

    ht, hz, hw = host(t), host(z), host(w)
    stats = fk.overlap_stats(ht, hz, hw, **opts)
    grad = fk.overlap_grad(ht, hz, hw, *(host(g) for g in group_grads), **opts)
    return stats, grad


# --- Every op and mode, against the C++ kernels and PyTorch autodiff.

@pytest.mark.parametrize("mode", MODES, ids=mode_ids(MODES))
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("pred_dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_cpu_kernels_and_torch_autodiff(rng, mode, per_image, pred_dtype, weighted):
    shape = (3, 37, 29, mode.channels)
    t_np, z_np = mode_case(rng, mode, shape[:-1], pred_dtype="float64")
    tdt = TORCH_DTYPES[pred_dtype]
    t, z = on_device(t_np), on_device(z_np, tdt)
    w = on_device(rng.random(shape[:-1] + (1,)), tdt) if weighted else None
    opts = dict(mode.kernel_options(), per_image=per_image)

    stats, loss, dz = fused_loss_and_grad(t, z, w, opts)
    assert all(s.device.type == DEVICE and s.dtype == acc_dtype(tdt) for s in stats)
    assert dz.dtype == tdt and dz.shape == z.shape and dz.device.type == DEVICE

    # Against the C++ kernels on the same values: only the order of the sums differs.
    sums = [s.to(torch.float64).requires_grad_(True) for s in stats]
    group_grads = [g.to(acc_dtype(tdt)) for g in torch.autograd.grad(jaccard_total(*sums), sums)]
    cpu_stats, cpu_grad = cpu_kernels(t, z, w, opts, group_grads)
    sum_rtol = 1e-12 if pred_dtype == "float64" else 2e-6
    for g, c in zip(stats, cpu_stats):
        np.testing.assert_allclose(to_numpy(g), c, rtol=sum_rtol, atol=sum_rtol)
    # Same formulas per element; 16-bit outputs may round one unit differently.
    out_rtol = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 1e-5, "float64": 1e-12}[pred_dtype]
    gpu_grad = to_numpy(dz.float() if tdt == torch.bfloat16 else dz).astype(np.float64)
    scale = np.abs(cpu_grad).max() + 1e-30
    np.testing.assert_allclose(gpu_grad, cpu_grad.astype(np.float64), rtol=out_rtol, atol=out_rtol * scale)

    # Against PyTorch autodiff of the formula, in float64 on the same input values.
    ref_loss, ref_dz = reference_loss_and_grad(t, z, w, opts)
    rtol = RTOL[pred_dtype]
    np.testing.assert_allclose(loss.item(), ref_loss.item(), rtol=rtol)
    ref = to_numpy(ref_dz)
    np.testing.assert_allclose(gpu_grad, ref, rtol=rtol * 10, atol=rtol * (np.abs(ref).max() + 1e-30))


@pytest.mark.parametrize("true_dtype", [torch.bool, torch.uint8, torch.int32, torch.int64, torch.float16,
                                        torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [1, 3])
def test_target_dtypes(rng, true_dtype, channels):
    shape = (2, 45, channels)
    t = on_device(rng.random(shape) < 0.4).to(true_dtype)
    z = on_device(rng.normal(size=shape), torch.float32)
    opts = dict(from_logits=True, per_image=True)
    stats = fk.overlap_stats(t, z, **opts)
    for s, r in zip(stats, oracle_sums(to_numpy(t.double()), to_numpy(z.double()), **opts)):
        np.testing.assert_allclose(to_numpy(s), r, rtol=3e-6)
    g = [torch.full_like(s, 0.5) for s in stats]
    dz = fk.overlap_grad(t, z, None, *g, **opts)
    want = fk.overlap_grad(t.cpu().float().numpy(), z.cpu().numpy(), None, *(to_numpy(x) for x in g), **opts)
    np.testing.assert_allclose(to_numpy(dz), want, rtol=1e-6, atol=1e-7)
    if true_dtype.is_floating_point:
        dt = fk.overlap_grad(t, z, None, *g, wrt_true=True, **opts)
        assert dt.dtype == z.dtype
        want = fk.overlap_grad(t.cpu().float().numpy(), z.cpu().numpy(), None, *(to_numpy(x) for x in g),
                               wrt_true=True, **opts)
        np.testing.assert_allclose(to_numpy(dt), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int32, torch.int64])
def test_sparse_label_dtypes(rng, label_dtype):
    shape = (2, 33, 4)
    labels = on_device(rng.integers(0, 4, size=shape[:-1])).to(label_dtype)
    z = on_device(rng.normal(size=shape), torch.float32)
    opts = dict(from_logits=True, softmax=True, sparse=True, per_image=False)
    want = oracle_sums(to_numpy(labels), to_numpy(z.double()), **opts)
    for s, r in zip(fk.overlap_stats(labels, z, **opts), want):
        np.testing.assert_allclose(to_numpy(s), r, rtol=3e-6)


# --- Sizes: one element, odd shapes, vector tails, misaligned views.

@pytest.mark.parametrize("shape,opts", [
    ((1, 1), dict(from_logits=True)),
    ((1, 1, 1, 1), dict(from_logits=False)),
    ((3, 17, 13, 1), dict(from_logits=True)),
    ((1, 2**20 + 3, 1), dict(from_logits=True)),
    ((5, 8193, 1), dict(from_logits=False)),
    ((1, 1, 2), dict(from_logits=True, softmax=True)),
    ((7, 1031, 3), dict(from_logits=True, softmax=True)),
    ((1, 2**20 + 3, 2), dict(from_logits=True, softmax=True)),
    # More than 2048 tiles per group: a level of the reduction tree runs, for
    # several images (per_image) and across image boundaries (whole batch).
    ((2, 2_100_000, 3), dict(from_logits=True, softmax=True)),
    ((3, 700_001, 3), dict(from_logits=True)),
    ((2, 2**24 + 8193, 1), dict(from_logits=True)),
])
@pytest.mark.parametrize("per_image", [True, False])
def test_sizes_match_cpu_kernels(rng, shape, opts, per_image):
    t_np = (rng.random(shape) < 0.3).astype(np.uint8)
    z_np = rng.normal(size=shape).astype(np.float32)
    if not opts["from_logits"]:
        z_np = 1 / (1 + np.exp(-z_np))
    opts = dict(opts, per_image=per_image)
    t, z = on_device(t_np), on_device(z_np)
    stats = fk.overlap_stats(t, z, **opts)
    want = fk.overlap_stats(t_np, z_np, **opts)
    for s, c in zip(stats, want):
        np.testing.assert_allclose(to_numpy(s), c, rtol=2e-6, atol=1e-6)
    g = [to_numpy(torch.rand_like(s)) for s in stats]
    dz = fk.overlap_grad(t, z, None, *(on_device(x) for x in g), **opts)
    np.testing.assert_allclose(to_numpy(dz), fk.overlap_grad(t_np, z_np, None, *g, **opts), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("channels", [1, 3])
def test_misaligned_views_take_the_scalar_path(rng, channels):
    n = 3 * 4099 * channels
    base_t = on_device((rng.random(n + 1) < 0.3).astype(np.uint8))
    base_z = on_device(rng.normal(size=n + 1), torch.float32)
    # Offsets of one element: no 16-byte alignment anywhere.
    t, z = base_t[1:].reshape(3, 4099, channels), base_z[1:].reshape(3, 4099, channels)
    t_al, z_al = t.clone(), z.clone()
    opts = dict(from_logits=True, per_image=True)
    for a, b in zip(fk.overlap_stats(t, z, **opts), fk.overlap_stats(t_al, z_al, **opts)):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=2e-6)
    g = [torch.full((3, channels), 0.25, device=DEVICE)] * 3
    np.testing.assert_array_equal(to_numpy(fk.overlap_grad(t, z, None, *g, **opts)),
                                  to_numpy(fk.overlap_grad(t_al, z_al, None, *g, **opts)))


# --- Past 2^31 elements: int64 indexing, checked against closed forms.

def _free_gpu_bytes():
    if DEVICE != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info()
    return free


def pattern(values, n):
    """uint8 tensor of length n repeating `values`, built without int64 temporaries."""
    period = torch.tensor(values, dtype=torch.uint8, device=DEVICE)
    return period.repeat(-(-n // len(values)))[:n].contiguous()


@pytest.mark.skipif(_free_gpu_bytes() < 24 * 2**30, reason="needs 24 GiB of free GPU memory")
def test_single_channel_past_2_31_elements():
    n = 2**31 + 4099
    z = torch.full((1, n, 1), 0.5, dtype=torch.bfloat16, device=DEVICE)  # probabilities, exact in bf16
    t = pattern([1, 0, 0], n).reshape(1, n, 1)  # t_i = 1 where i % 3 == 0
    ones = (n + 2) // 3
    I, P, T = fk.overlap_stats(t, z)
    # Partials of 0.5s and 1s are exact in float, added exactly in double, and
    # rounded once to the float32 output.
    assert I.item() == np.float32(0.5 * ones)
    assert P.item() == np.float32(0.5 * n)
    assert T.item() == np.float32(ones)
    g = [torch.full((1, 1), v, device=DEVICE) for v in (2.0, -1.0, 0.0)]
    dz = fk.overlap_grad(t, z, None, *g)
    tail = dz[0, -9:, 0].float().cpu().numpy()
    want = np.where(np.arange(n - 9, n) % 3 == 0, 1.0, -1.0)  # w (gI t + gP)
    np.testing.assert_array_equal(tail, want)
    assert dz[0, 2**31 + 1, 0].item() == (1.0 if (2**31 + 1) % 3 == 0 else -1.0)
    del dz, z, t


@pytest.mark.skipif(_free_gpu_bytes() < 24 * 2**30, reason="needs 24 GiB of free GPU memory")
def test_softmax_sparse_past_2_31_elements():
    pixels = 2**30 + 5
    z = torch.zeros((1, pixels, 2), dtype=torch.bfloat16, device=DEVICE)  # softmax: 0.5 each
    labels = pattern([1, 0, 0, 0], pixels).reshape(1, pixels)  # class 1 where i % 4 == 0
    ones = (pixels + 3) // 4
    opts = dict(from_logits=True, softmax=True, sparse=True)
    I, P, T = fk.overlap_stats(labels, z, **opts)
    f32 = np.float32
    np.testing.assert_array_equal(to_numpy(I)[0], f32([0.5 * (pixels - ones), 0.5 * ones]))
    np.testing.assert_array_equal(to_numpy(P)[0], f32([0.5 * pixels, 0.5 * pixels]))
    np.testing.assert_array_equal(to_numpy(T)[0], f32([pixels - ones, ones]))
    g = [torch.tensor([[1.0, 3.0]], device=DEVICE), torch.zeros((1, 2), device=DEVICE),
         torch.zeros((1, 2), device=DEVICE)]
    dz = fk.overlap_grad(labels, z, None, *g, **opts)
    # dp = gI t; dz_k = p_k (dp_k - sum_c p_c dp_c) with p = 1/2.
    last = dz[0, -4:].float().cpu().numpy()
    lab = np.arange(pixels - 4, pixels) % 4 == 0
    dp = np.stack([np.where(lab, 0.0, 1.0), np.where(lab, 3.0, 0.0)], -1)
    np.testing.assert_array_equal(last, 0.5 * (dp - 0.5 * dp.sum(-1, keepdims=True)))


# --- Determinism, labels, streams, other frameworks.

@pytest.mark.parametrize("shape,opts", [
    ((4, 300_001, 1), dict(from_logits=True, per_image=False)),
    ((2, 70_001, 21), dict(from_logits=True, softmax=True, sparse=True, ignore_index=255, per_image=True)),
])
def test_bitwise_equal_across_runs(rng, shape, opts):
    sparse = opts.get("sparse", False)
    if sparse:
        t = on_device(np.where(rng.random(shape[:-1]) < 0.05, 255, rng.integers(0, shape[-1], shape[:-1]))
                      .astype(np.uint8))
    else:
        t = on_device((rng.random(shape) < 0.2).astype(np.uint8))
    z = on_device(rng.normal(size=shape), torch.float32)
    first = [to_numpy(s).tobytes() for s in fk.overlap_stats(t, z, **opts)]
    g = [torch.full_like(s, 0.1) for s in fk.overlap_stats(t, z, **opts)]
    dz0 = to_numpy(fk.overlap_grad(t, z, None, *g, **opts)).tobytes()
    for _ in range(4):
        assert [to_numpy(s).tobytes() for s in fk.overlap_stats(t, z, **opts)] == first
        assert to_numpy(fk.overlap_grad(t, z, None, *g, **opts)).tobytes() == dz0


BAD_LABEL = r"label 9 at batch index 1, pixel 11 .* outside \[0, 3\)"


def bad_label_case():
    z = torch.zeros((2, 4, 4, 3), device=DEVICE)
    labels = torch.zeros((2, 4, 4), dtype=torch.uint8, device=DEVICE)
    labels[1, 2, 3] = 9
    labels[1, 3, 0] = 7
    return labels, z, dict(from_logits=True, softmax=True, sparse=True)


def test_out_of_range_label_raises_or_gives_nan():
    labels, z, opts = bad_label_case()
    with pytest.raises(ValueError, match=BAD_LABEL):
        fk.overlap_stats(labels, z, **opts)
    if DEVICE == "cuda":
        # Deferred: NaN sums now, the same ValueError from the label check.
        stats = fk.overlap_stats(labels, z, check_labels=False, **opts)
        assert all(torch.isnan(s).all() for s in stats)
        for _ in range(2):
            with pytest.raises(ValueError, match=BAD_LABEL):
                stats.label_check.check()
        assert stats.label_check.ready()
    else:
        # CPU tensors: the C++ kernels raise at once, whatever check_labels says.
        with pytest.raises(ValueError, match=BAD_LABEL):
            fk.overlap_stats(labels, z, check_labels=False, **opts)
    labels[1, 2, 3] = 255
    labels[1, 3, 0] = 255
    stats = fk.overlap_stats(labels, z, ignore_index=255, **opts)
    assert all(torch.isfinite(s).all() for s in stats)
    deferred = fk.overlap_stats(labels, z, ignore_index=255, check_labels=False, **opts)
    assert deferred.label_check.check() is None
    for a, b in zip(stats, deferred):
        assert torch.equal(a, b)


# Spin cycles that keep the current stream busy for about half a second or
# more, so that what a call leaves queued can be observed. Everything a test
# needs on the GPU is made before: a copy from host memory could wait for the
# stream.
SLEEP_CYCLES = 10**9


def keep_stream_busy():
    """Queues a spin on the current stream; returns a torch event recorded after it."""
    torch.cuda._sleep(SLEEP_CYCLES)
    busy = torch.cuda.Event()
    busy.record()
    return busy


@pytest.mark.skipif(DEVICE != "cuda", reason="streams are CUDA's")
def test_check_labels_false_does_not_wait_for_the_gpu():
    labels, z, opts = bad_label_case()
    warm = fk.overlap_stats(labels, z, check_labels=False, **opts)  # kernels loaded, host records allocated
    with pytest.raises(ValueError, match=BAD_LABEL):
        warm.label_check.check()
    torch.cuda.synchronize()

    busy = keep_stream_busy()
    stats = fk.overlap_stats(labels, z, check_labels=False, **opts)
    assert not busy.query(), "the call waited for the stream"
    assert not stats.label_check.ready()
    with pytest.raises(ValueError, match=BAD_LABEL):
        stats.label_check.check()
    assert busy.query() and stats.label_check.ready()
    assert all(torch.isnan(s).all() for s in stats)

    # The default pays one synchronization: what was queued before has run
    # when it raises.
    busy = keep_stream_busy()
    with pytest.raises(ValueError, match=BAD_LABEL):
        fk.overlap_stats(labels, z, **opts)
    assert busy.query()


@pytest.mark.skipif(DEVICE != "cuda", reason="deferred label checks are CUDA's")
def test_each_label_check_answers_for_its_own_call():
    # More checks than one block of host records, some dropped while their
    # copy is still queued: records are reused only once their copy landed.
    n = 200
    z = torch.zeros((1, 8, 3), device=DEVICE)
    opts = dict(from_logits=True, softmax=True, sparse=True)
    labels = np.zeros((n, 1, 8), np.uint8)
    for k in range(0, n, 3):
        labels[k, 0, k % 8] = 3 + k
    labels = on_device(labels)
    fk.overlap_stats(labels[1], z, check_labels=False, **opts).label_check.check()  # warm-up
    kept = []
    keep_stream_busy()
    for k in range(n):
        stats = fk.overlap_stats(labels[k], z, check_labels=False, **opts)
        if k % 5 != 4:
            kept.append((k, stats))
        del stats
    for k, stats in kept:
        if k % 3 == 0:
            with pytest.raises(ValueError, match=rf"label {3 + k} at batch index 0, pixel {k % 8} "):
                stats.label_check.check()
            assert all(torch.isnan(s).all() for s in stats)
        else:
            assert stats.label_check.check() is None
            assert all(torch.isfinite(s).all() for s in stats)
    torch.cuda.synchronize()
    assert fk._ext.release_finished() == 0


def _framework_arrays(framework, t_np, z_np):
    if framework == "torch":
        return on_device(t_np), on_device(z_np)
    jax = pytest.importorskip("jax")
    try:
        dev = jax.devices("gpu" if DEVICE == "cuda" else "cpu")[0]
    except RuntimeError:
        pytest.skip(f"JAX has no {DEVICE} device")
    return tuple(jax.device_put(a, dev).block_until_ready() for a in (t_np, z_np))


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_inputs_are_held_until_the_kernels_ran(rng, framework):
    # The module itself (no conversion of the outputs): on the legacy default
    # stream, where PyTorch's default stream queues its spin and where JAX
    # arrays are read.
    t_np = (rng.random((2, 256, 256, 1)) < 0.3).astype(np.uint8)
    z_np = rng.normal(size=(2, 256, 256, 1)).astype(np.float32)
    t, z = _framework_arrays(framework, t_np, z_np)
    t2, z2 = on_device(t_np), on_device(z_np)
    g = [torch.full((2, 1), 0.5, device=DEVICE) for _ in range(3)]
    stream = 0 if DEVICE == "cuda" else None
    opts = dict(from_logits=True, stream=stream)
    fk._ext.overlap_stats(t, z, None, **opts)  # warm-up
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    assert fk._ext.release_finished() == 0
    before = sys.getrefcount(z), sys.getrefcount(g[0])

    if DEVICE == "cuda":
        keep_stream_busy()
    *stats, _ = fk._ext.overlap_stats(t, z, None, **opts)
    fk._ext.overlap_grad(t2, z2, None, *g, **opts)
    if DEVICE == "cuda":
        # Queued behind the spin: fastiou still holds both calls' inputs.
        assert sys.getrefcount(z) > before[0]
        assert sys.getrefcount(g[0]) > before[1]
        assert fk._ext.release_finished() == 2
        torch.cuda.synchronize()
    assert fk._ext.release_finished() == 0
    assert (sys.getrefcount(z), sys.getrefcount(g[0])) == before
    for s, w in zip(stats, fk.overlap_stats(t_np, z_np, from_logits=True)):
        np.testing.assert_allclose(to_numpy(torch.from_dlpack(s)), w, rtol=2e-6)


@pytest.mark.skipif(DEVICE != "cuda", reason="streams are CUDA's")
def test_runs_on_the_current_torch_stream(rng):
    t = on_device((rng.random((4, 512, 512, 1)) < 0.3).astype(np.uint8))
    z = on_device(rng.normal(size=(4, 512, 512, 1)), torch.float32)
    want = [to_numpy(s) for s in fk.overlap_stats(t, z, from_logits=True)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = fk.overlap_stats(t, z, from_logits=True)
        host = [s.to("cpu", non_blocking=False) for s in got]
    torch.cuda.synchronize()
    for a, b in zip(host, want):
        np.testing.assert_array_equal(a.numpy(), b)


def test_cupy_and_jax_arrays_give_the_same_sums(rng):
    t_np = (rng.random((2, 64, 64, 1)) < 0.3).astype(np.uint8)
    z_np = rng.normal(size=(2, 64, 64, 1)).astype(np.float32)
    want = [to_numpy(s) for s in fk.overlap_stats(on_device(t_np), on_device(z_np), from_logits=True)]
    ran = 0
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None and DEVICE == "cuda":
        got = fk.overlap_stats(cupy.asarray(t_np), cupy.asarray(z_np), from_logits=True)
        assert all(isinstance(g, cupy.ndarray) for g in got)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(cupy.asnumpy(g), w)
        ran += 1
    try:
        import jax
    except ImportError:
        jax = None
    if jax is not None:
        platform = "gpu" if DEVICE == "cuda" else "cpu"
        try:
            dev = jax.devices(platform)[0]
        except RuntimeError:
            dev = None
        if dev is not None:
            got = fk.overlap_stats(jax.device_put(t_np, dev), jax.device_put(z_np, dev), from_logits=True)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(np.asarray(g), w)
            ran += 1
    if not ran:
        pytest.skip("neither CuPy nor JAX on this device")

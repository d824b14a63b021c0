"""The CUDA kernels, driven through the framework-neutral module with PyTorch
tensors (no TensorFlow needed): against the C++ kernels, against PyTorch
autodiff of the formula in float64, at awkward sizes, past 2^31 elements, for
every dtype, and bitwise across runs; the metrics' confusion counts against
their float64 oracle. Where they run: cuda_support.py.
"""

import numpy as np
import pytest

import fastiou.kernels as fk
from cases import MODES, mode_case, mode_ids
from cuda_support import DEVICE, RTOL, TORCH_DTYPES, acc_dtype, on_device, to_numpy, torch
from overlap_oracle import grad as oracle_grad
from overlap_oracle import sums as oracle_sums
from confusion_oracle import counts as oracle_counts
from confusion_oracle import make_case as confusion_case

pytestmark = pytest.mark.gpu

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
    scale = np.abs(ref).max() + 1e-30
    if opts.get("softmax") and opts["from_logits"]:
        # The softmax Jacobian p (dL/dp - dot) cancels terms of the size of
        # dL/dp (exactly, for one channel): rounding is relative to them.
        host = [to_numpy(x.double()) if x is not None else None for x in (t, z, w)]
        dp = oracle_grad(*host, *(to_numpy(g) for g in group_grads), **dict(opts, from_logits=False))
        scale = max(scale, np.abs(dp).max())
    np.testing.assert_allclose(gpu_grad, ref, rtol=rtol * 10, atol=rtol * scale)


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


# --- Determinism.

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


# --- The metrics' confusion counts (csrc/cuda/confusion.cu).

CONFUSION_CASES = [
    # true rule, true dtype, pred rule, pred dtype, classes, weights, ignore_class, integer weights
    ("index", "uint8", "argmax", "float32", 21, None, 3, False),
    ("index", "int64", "argmax", "float16", 5, "pixel", None, False),
    ("argmax", "float32", "argmax", "float64", 7, "image", None, False),
    ("index", "bool", "threshold", "float32", 2, None, None, False),
    ("index", "float32", "index", "int32", 3000, None, None, False),  # past the shared-memory histogram
    ("index", "int32", "threshold", "float64", 2, "row", 0, True),
    ("argmax", "uint8", "index", "uint8", 4, "one", None, False),
    ("index", "int32", "index", "int32", 300, "pixel", None, False),  # fractional, past the ordered path
]


@pytest.mark.parametrize("case", CONFUSION_CASES, ids=lambda c: "-".join(str(v) for v in c))
def test_confusion_counts_match_the_oracle(rng, case):
    true_rule, true_dtype, pred_rule, pred_dtype, K, weights, ignore_class, integer_weights = case
    # 3 x 70001 pixels: 52 blocks of 4096, the last one short.
    y_true, y_pred, w = confusion_case(rng, batch=3, pixels=70_001, num_classes=K, true_rule=true_rule,
                                       pred_rule=pred_rule, true_dtype=true_dtype, pred_dtype=pred_dtype,
                                       weights=weights)
    if K == 3000:
        y_pred[:, ::2] = y_true[:, ::2].astype(pred_dtype)  # half the pixels agree
    options = dict(num_classes=K, true_rule=true_rule, pred_rule=pred_rule, threshold=0.4,
                   ignore_class=ignore_class, integer_weights=integer_weights)
    want = oracle_counts(y_true, y_pred, w, **options)
    assert want[0].sum() > 0
    args = (on_device(y_true), on_device(y_pred), None if w is None else on_device(w))
    got = to_numpy(fk.confusion_counts(*args, **options))
    assert got.dtype == np.float64 and got.shape == (3, K)
    exact = w is None or integer_weights  # integer sums
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-12)
    if exact or K <= 256:  # exact, or fractional weights added in a fixed order: the same bits on every run
        for _ in range(3):
            assert to_numpy(fk.confusion_counts(*args, **options)).tobytes() == got.tobytes()


def test_confusion_counts_of_an_empty_batch():
    t = on_device(np.zeros((0, 9, 1), np.int32))
    got = to_numpy(fk.confusion_counts(t, t, num_classes=4))
    np.testing.assert_array_equal(got, np.zeros((3, 4)))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_confusion_argmax_edge_values(dtype):
    """NaN, infinities, the lowest value, signed zeros and subnormals, ties:
    every pixel's argmax class is the oracle's on the device too."""
    from confusion_oracle import classes
    from test_confusion_kernels import edge_rows

    y_pred = edge_rows(dtype)[None]
    y_true = classes(y_pred, "argmax")[..., None].astype(np.int32)
    got = to_numpy(fk.confusion_counts(on_device(y_true), on_device(y_pred), num_classes=3, pred_rule="argmax"))
    assert got[0].sum() == y_pred.shape[1]
    np.testing.assert_array_equal(got, oracle_counts(y_true, y_pred, num_classes=3, pred_rule="argmax"))


@pytest.mark.parametrize("K", [256, 257])
def test_confusion_fractional_weights_at_the_ordered_limit(rng, K):
    """Fractional weights: 256 classes (the fixed-order path at its full 48 KiB
    of shared memory) over 4.3M pixels, so that blocks walk several tiles, are
    the same bits on every run; 257 (atomics) agree to rounding."""
    batch, pixels = 2, 2_150_000
    t = rng.integers(0, K, (batch, pixels, 1)).astype(np.int32)
    p = np.where(rng.random((batch, pixels, 1)) < 0.5, t, rng.integers(0, K, (batch, pixels, 1))).astype(np.int32)
    w = rng.random((batch, pixels)).astype(np.float32)
    want = oracle_counts(t, p, w, num_classes=K)
    args = (on_device(t), on_device(p), on_device(w))
    got = to_numpy(fk.confusion_counts(*args, num_classes=K))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    if K <= 256:
        assert to_numpy(fk.confusion_counts(*args, num_classes=K)).tobytes() == got.tobytes()
    # deterministic=True: the repeatable case runs (the same bits), the other
    # is refused with the message by_pixel gives on the host
    if K <= 256:
        again = to_numpy(fk.confusion_counts(*args, num_classes=K, deterministic=True))
        assert again.tobytes() == got.tobytes()
    else:
        with pytest.raises(NotImplementedError, match=r"over more than 256 classes \(here 257\)"):
            fk.confusion_counts(*args, num_classes=K, deterministic=True)

"""The CUDA kernels' labels and streams, through the framework-neutral module:
a bad sparse label raised at once or later (check_labels=False), calls that
do not wait for the GPU, inputs held until the kernels that read them ran,
PyTorch's current stream, and CuPy and JAX arrays. Where they run:
cuda_support.py.
"""

import sys

import numpy as np
import pytest

import fastiou.kernels as fk
from cuda_support import DEVICE, on_device, to_numpy, torch

pytestmark = pytest.mark.gpu

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


def range_cases():
    """(what, y_true, y_pred, options, message) of values the range guards
    refuse, one per kernel: a 0/255 mask (single channel), a multi-label
    probability of 1.5 (per-pixel path)."""
    mask = torch.zeros((2, 4, 4, 1), dtype=torch.uint8, device=DEVICE)
    mask[1, 2, 3, 0] = 255
    mask[1, 3, 0, 0] = 255
    z1 = torch.zeros((2, 4, 4, 1), device=DEVICE)
    targets = torch.zeros((2, 4, 4, 3), device=DEVICE)
    probabilities = torch.full((2, 4, 4, 3), 0.5, device=DEVICE)
    probabilities[1, 2, 3, 2] = 1.5
    probabilities[1, 3, 0, 0] = -1.0
    where = r"at batch index 1, pixel 11 \(flat index over the spatial axes\)"
    return [("0/255 mask", mask, z1, dict(from_logits=True), "y_true holds 255 " + where + r", outside \[0, 1\]"),
            ("probability 1.5", targets, probabilities, {}, "y_pred holds 1.5 " + where + ", channel 2, outside")]


def test_out_of_range_values_raise_or_give_nan():
    # The CPU raises at once; the GPU gives NaN sums and label_check names
    # the first bad value.
    for what, t, z, opts, message in range_cases():
        if DEVICE != "cuda":
            with pytest.raises(ValueError, match=message):
                fk.overlap_stats(t, z, **opts)
            continue
        stats = fk.overlap_stats(t, z, **opts)
        assert all(torch.isnan(s).all() for s in stats), what
        for _ in range(2):
            with pytest.raises(ValueError, match=message):
                stats.label_check.check()
    # Sparse labels with probabilities: check_labels=True waits and raises.
    labels = torch.zeros((2, 4, 4), dtype=torch.uint8, device=DEVICE)
    z = torch.full((2, 4, 4, 3), 1 / 3, device=DEVICE)
    z[1, 2, 3, 1] = 2.0
    with pytest.raises(ValueError, match=r"y_pred holds 2 at batch index 1, pixel 11 .*, channel 1, outside"):
        fk.overlap_stats(labels, z, sparse=True)
    z[1, 2, 3, 1] = 1 / 3
    assert fk.overlap_stats(labels, z, sparse=True).label_check.check() is None


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

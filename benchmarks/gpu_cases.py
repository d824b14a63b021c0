"""GPU cases of the benchmark, for machines with PyTorch and fastiou's CUDA
kernels (no TensorFlow needed): forward + backward of the Jaccard loss, the
fused kernels through fastiou.kernels against the same formula in PyTorch
eager, timed with CUDA events, with the GPU's copy bandwidth measured in the
same run. bench_losses.py calls run() when a GPU is there.
"""

import subprocess
import time

import numpy as np
import torch

import fastiou.kernels as fk
from bench_losses import fused_bytes

FUSED = "fused-cuda"
BASELINE = "torch-eager"


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(fn, repeats, device, min_seconds=1.0):
    """Median seconds of fn() after two warm-up calls, over at least `repeats`
    calls and about min_seconds."""
    for _ in range(2):
        fn()
    _sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start_all < min_seconds and len(times) < 500):
        if device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def copy_bandwidth(device, nbytes=2**30, repeats=20):
    """Bytes read plus written per second by a device-to-device copy."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), repeats, device, min_seconds=0.5)
    del src, dst
    return 2 * nbytes / seconds


def make_inputs(shape, inputs, mask_dtype, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    z = 2.0 * torch.randn(shape, generator=gen, device=device)
    multiclass = shape[-1] > 1
    if multiclass:
        labels = torch.randint(0, shape[-1], shape[:-1], generator=gen, device=device, dtype=torch.uint8)
        void = torch.rand(shape[:-1], generator=gen, device=device) < 0.05
        y_true = torch.where(void, torch.full_like(labels, 255), labels)
        opts = dict(from_logits=inputs == "logits", softmax=True, sparse=True, ignore_index=255)
        pred = z if inputs == "logits" else torch.softmax(z, -1)
    else:
        y_true = (torch.rand(shape, generator=gen, device=device) < 0.05).to(getattr(torch, mask_dtype))
        opts = dict(from_logits=inputs == "logits")
        pred = z if inputs == "logits" else torch.sigmoid(z)
    return y_true, pred.contiguous(), dict(opts, per_image=False)


def jaccard_from_sums(I, P, T, smooth=1.0):
    return (1.0 - (I + smooth) / (T + P - I + smooth)).mean()


def fused_step(y_true, y_pred, opts):
    """The loss through the fused kernels; autograd runs on the tiny sums only."""
    sums = [s.requires_grad_(True) for s in fk.overlap_stats(y_true, y_pred, **opts)]
    loss = jaccard_from_sums(*sums)
    grads = torch.autograd.grad(loss, sums)
    return loss.detach(), fk.overlap_grad(y_true, y_pred, None, *grads, **opts)


def torch_step(y_true, y_pred, opts):
    """The same formula written plainly in PyTorch: activation, one-hot, sums."""
    z = y_pred.detach().requires_grad_(True)
    p = z
    if opts["from_logits"]:
        p = torch.softmax(z, -1) if opts.get("softmax") else torch.sigmoid(z)
    if opts.get("sparse"):
        labels = y_true.long()
        keep = (labels != opts["ignore_index"]).unsqueeze(-1).to(p.dtype)
        t = torch.nn.functional.one_hot(labels.clamp(max=p.shape[-1] - 1), p.shape[-1]).to(p.dtype) * keep
        w = keep
    else:
        t, w = y_true.to(p.dtype), None
    axes = tuple(range(p.dim() - 1))
    wp = p if w is None else w * p
    loss = jaccard_from_sums((wp * t).sum(axes), wp.sum(axes), t.sum(axes))
    loss.backward()
    return loss.detach(), z.grad


def peak_extra_bytes(step, device):
    """Peak memory above what was live before one step: PyTorch's allocator
    plus the stream-ordered pool fastiou allocates from."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    index = torch.cuda.current_device()
    pool_before = fk.cuda_pool_used(index, reset_high=True)
    out = step()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    extra += fk.cuda_pool_used_high(index) - pool_before
    del out
    return int(extra)


def describe(device):
    if device != "cuda":
        return {"name": f"{device} (PyTorch tensors)"}
    props = torch.cuda.get_device_properties(0)
    driver = None
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count, "driver": driver,
            "torch_cuda": torch.version.cuda, "torch": torch.__version__}


def run(cases, inputs, mask_dtype, repeats, device="cuda"):
    gpu = describe(device)
    bandwidth = copy_bandwidth(device)
    gpu["copy_bytes_per_s"] = bandwidth
    print(f"GPU cases on {gpu['name']}: copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write)")
    header = f"{'case':<18}{'inputs':<14}{'impl':<13}{'time ms':>10}{'speedup':>9}{'of copy bw':>11}{'x mask':>8}"
    print(header)
    print("-" * len(header))
    mask_itemsize = 4 if mask_dtype == "float32" else 1
    rows = []
    for case, shape in cases.items():
        for inp in inputs:
            y_true, y_pred, opts = make_inputs(shape, inp, mask_dtype, device)
            fused_loss = fused_step(y_true, y_pred, opts)[0]
            torch_loss = torch_step(y_true, y_pred, opts)[0]
            if not torch.allclose(fused_loss.double(), torch_loss.double(), rtol=1e-4, atol=1e-6):
                raise RuntimeError(f"{case} {inp}: fused loss {fused_loss.item()} != PyTorch {torch_loss.item()}")
            results = {}
            for impl, step in ((FUSED if device == "cuda" else f"fused-{device}", fused_step),
                               (BASELINE, torch_step)):
                call = lambda step=step: step(y_true, y_pred, opts)
                results[impl] = {"time_s": median_time(call, repeats, device),
                                 "peak_extra_bytes": peak_extra_bytes(call, device)}
            elements = int(np.prod(shape))
            for impl, r in results.items():
                r.update(case=case, shape=list(shape), inputs=inp, impl=impl, elements=elements,
                         device="gpu" if device == "cuda" else f"{device}-torch",
                         mask_dtype="uint8 sparse" if shape[-1] > 1 else mask_dtype, pred_dtype="float32")
                r["speedup_vs_torch"] = results[BASELINE]["time_s"] / r["time_s"]
                r["peak_extra_masks"] = (None if r["peak_extra_bytes"] is None
                                         else r["peak_extra_bytes"] / (4 * elements))
                r["bandwidth_fraction"] = None
                if impl != BASELINE:
                    r["fused_bytes"] = fused_bytes(shape, inp, mask_itemsize)
                    r["bandwidth_fraction"] = r["fused_bytes"] / r["time_s"] / bandwidth
                rows.append(r)
                frac = "" if r["bandwidth_fraction"] is None else f"{r['bandwidth_fraction']:.0%}"
                masks = "n/a" if r["peak_extra_masks"] is None else f"{r['peak_extra_masks']:.2f}"
                print(f"{case:<18}{inp:<14}{impl:<13}{r['time_s'] * 1e3:>10.2f}"
                      f"{r['speedup_vs_torch']:>8.2f}x{frac:>11}{masks:>8}")
            del y_true, y_pred
    return rows, gpu

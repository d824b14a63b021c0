"""GPU cases of the benchmark, for machines with PyTorch and fastiou's CUDA
kernels (no TensorFlow needed): forward + backward of the Jaccard loss, the
fused kernels through fastiou.kernels against the same formula in PyTorch
eager and under torch.compile, with the GPU's copy bandwidth measured in the
same run. bench_losses.py calls run() when a GPU is there.

Two times per row:
- time_s: one whole step, timed with CUDA events around the Python call. On a
  fast GPU the small cases are bound by the host (Python, launches, and for
  fastiou the autograd of the tiny sums and the label check's wait), not by
  the GPU.
- gpu_time_s: the summed time of the step's GPU kernels, read by PyTorch's
  profiler over a few steps. For fused-cuda, kernel_time_s is fastiou's two
  kernels alone: the share of the copy bandwidth is taken from it.
"""

import functools
import subprocess
import time

import numpy as np
import torch

import fastiou.kernels as fk
from bench_losses import fused_bytes

FUSED = "fused-cuda"
BASELINE = "torch-eager"
COMPILED = "torch-compile"
# GPU-only: past 2^31 elements (the kernels' 64-bit indexing), bandwidth-bound.
LARGE_CASES = {"2x1024x1024x1024x1": (2, 1024, 1024, 1024, 1)}
PROFILED_STEPS = 5


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


def plain_loss(z, y_true, from_logits, softmax=False, sparse=False, ignore_index=None, **_):
    """The formula written plainly in PyTorch: activation, one-hot, sums."""
    p = z
    if from_logits:
        p = torch.softmax(z, -1) if softmax else torch.sigmoid(z)
    if sparse:
        labels = y_true.long()
        keep = (labels != ignore_index).unsqueeze(-1).to(p.dtype)
        t = torch.nn.functional.one_hot(labels.clamp(max=p.shape[-1] - 1), p.shape[-1]).to(p.dtype) * keep
        w = keep
    else:
        t, w = y_true.to(p.dtype), None
    axes = tuple(range(p.dim() - 1))
    wp = p if w is None else w * p
    return jaccard_from_sums((wp * t).sum(axes), wp.sum(axes), t.sum(axes))


def torch_step(y_true, y_pred, opts, loss_fn=plain_loss):
    """PyTorch autodiff of the plain formula (eager, or loss_fn compiled)."""
    z = y_pred.detach().requires_grad_(True)
    loss = loss_fn(z, y_true, **opts)
    loss.backward()
    return loss.detach(), z.grad


def compiled_loss():
    """plain_loss under torch.compile, traced afresh for each case (a new
    graph per shape, without counting against the recompile limit)."""
    torch._dynamo.reset()
    return torch.compile(plain_loss)


def back_to_back(fn, calls, device):
    """Seconds per call of fn, `calls` of them queued back to back between two
    CUDA events after a warm-up: the GPU's time where it, not the host, is the
    bound. None off the GPU."""
    if device != "cuda":
        return None
    fn()
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3 / calls


def back_to_back_time(y_true, y_pred, opts, device, calls=10):
    """Seconds per stats + gradient pair of fastiou's kernels, back to back with
    no wait (check_labels=False): a cross-check of the profiler's kernel time
    in the large cases."""
    if device != "cuda":
        return None
    grads = [torch.full_like(x, 0.5) for x in fk.overlap_stats(y_true, y_pred, check_labels=False, **opts)]

    def pair():
        fk.overlap_stats(y_true, y_pred, check_labels=False, **opts)
        fk.overlap_grad(y_true, y_pred, None, *grads, **opts)

    return back_to_back(pair, calls, device)


def profiled_times(step, device):
    """(all kernels, fastiou's kernels) seconds per step, from the profiler."""
    if device != "cuda":
        return None, None
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED_STEPS):
            step()
        torch.cuda.synchronize()
    total = ours = 0.0
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = e.time_range.elapsed_us()
        total += us
        ours += us if "fastiou" in e.name else 0.0
    return total / 1e6 / PROFILED_STEPS, ours / 1e6 / PROFILED_STEPS


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


def run(cases, inputs, mask_dtype, repeats, device="cuda", compiled=True, large=True):
    gpu = describe(device)
    bandwidth = copy_bandwidth(device)
    gpu["copy_bytes_per_s"] = bandwidth
    print(f"GPU cases on {gpu['name']}: copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write)")
    print("time: one whole step (host included); gpu: its kernels' time (profiler); of copy bw: fastiou's "
          "two kernels' bytes over their kernel time")
    header = (f"{'case':<20}{'inputs':<14}{'impl':<15}{'time ms':>9}{'gpu ms':>9}{'speedup':>9}"
              f"{'gpu speedup':>12}{'of copy bw':>11}{'x mask':>8}")
    print(header)
    print("-" * len(header))
    mask_itemsize = 4 if mask_dtype == "float32" else 1
    if large and device == "cuda":
        cases = {**cases, **LARGE_CASES}
    rows = []
    for case, shape in cases.items():
        for inp in inputs:
            y_true, y_pred, opts = make_inputs(shape, inp, mask_dtype, device)
            if opts["from_logits"] != (inp == "logits"):
                raise RuntimeError(f"{case}: asked for {inp}, built from_logits={opts['from_logits']}")
            fused_loss = fused_step(y_true, y_pred, opts)[0]
            steps = [(FUSED if device == "cuda" else f"fused-{device}", fused_step), (BASELINE, torch_step)]
            if compiled:
                steps.append((COMPILED, functools.partial(torch_step, loss_fn=compiled_loss())))
            results = {}
            for impl, step in steps:
                call = functools.partial(step, y_true, y_pred, opts)
                r = results[impl] = {"impl": impl}
                try:
                    began = time.perf_counter()
                    loss = call()[0]
                    _sync(device)
                    r["first_call_s"] = time.perf_counter() - began
                    if not torch.allclose(fused_loss.double(), loss.double(), rtol=1e-4, atol=1e-6):
                        raise RuntimeError(f"{case} {inp}: fused loss {fused_loss.item()} != {impl} {loss.item()}")
                    r["time_s"] = median_time(call, repeats, device, min_seconds=0.3)
                    r["gpu_time_s"], r["kernel_time_s"] = profiled_times(call, device)
                    r["peak_extra_bytes"] = peak_extra_bytes(call, device)
                except torch.cuda.OutOfMemoryError:
                    r.update(time_s=None, gpu_time_s=None, kernel_time_s=None, peak_extra_bytes=None,
                             error="out of memory")
                    torch.cuda.empty_cache()
            fused = results[steps[0][0]]
            if fused.get("time_s"):
                fused["kernels_back_to_back_s"] = back_to_back_time(y_true, y_pred, opts, device)
            elements = int(np.prod(shape))
            base = results[BASELINE]
            in_unit_range = bool(((y_pred >= 0) & (y_pred <= 1)).all())
            for impl, r in results.items():
                r.update(case=case, shape=list(shape), inputs=inp, from_logits=opts["from_logits"],
                         in_unit_range=in_unit_range, elements=elements,
                         device="gpu" if device == "cuda" else f"{device}-torch",
                         mask_dtype="uint8 sparse" if shape[-1] > 1 else mask_dtype, pred_dtype="float32")
                r["speedup_vs_torch"] = ratio(base.get("time_s"), r.get("time_s"))
                r["gpu_speedup_vs_torch"] = ratio(base.get("gpu_time_s"), r.get("gpu_time_s"))
                r["peak_extra_masks"] = (None if r.get("peak_extra_bytes") is None
                                         else r["peak_extra_bytes"] / (4 * elements))
                r["bandwidth_fraction"] = r["kernel_bandwidth_fraction"] = None
                if impl.startswith("fused") and r.get("time_s"):
                    r["fused_bytes"] = fused_bytes(shape, inp, mask_itemsize)
                    r["bandwidth_fraction"] = r["fused_bytes"] / r["time_s"] / bandwidth
                    if r.get("kernel_time_s"):
                        r["kernel_bandwidth_fraction"] = r["fused_bytes"] / r["kernel_time_s"] / bandwidth
                rows.append(r)
                print(f"{case:<20}{inp:<14}{impl:<15}{ms(r.get('time_s')):>9}{ms(r.get('gpu_time_s')):>9}"
                      f"{times(r['speedup_vs_torch']):>9}{times(r['gpu_speedup_vs_torch']):>12}"
                      f"{percent(r['kernel_bandwidth_fraction'] or r['bandwidth_fraction']):>11}"
                      f"{fixed(r['peak_extra_masks']):>8}" + (f"  {r['error']}" if r.get("error") else ""),
                      flush=True)
            del y_true, y_pred
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows, gpu


def ratio(base, this):
    return base / this if base and this else None


def ms(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def times(x):
    return "-" if x is None else f"{x:.2f}x"


def percent(x):
    return "" if x is None else f"{x:.0%}"


def fixed(x):
    return "n/a" if x is None else f"{x:.2f}"

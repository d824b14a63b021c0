"""The memory's speed for the access patterns of fastiou's kernels on a GPU.

PyTorch's streams over float32 arrays of 8 GiB (a read-only sum, a copy, and
an add with two reads and one write), each timed with CUDA events (median of
10), against fastiou's stats kernel (reads y_pred and y_true) and gradient
kernel (from logits: reads both, writes the gradient; from probabilities:
reads y_true, writes the gradient) alone on 2x1024x1024x1024x1 float32 inputs.
The gradient's time includes allocating its output.

    python benchmarks/gpu_streams.py [--device cpu]

(--device cpu: small arrays on the CPU, to try the script without a GPU.)
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastiou.kernels as fk  # noqa: E402
import gpu_cases  # noqa: E402
from gpu_cases import make_inputs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    dev = parser.parse_args().device
    gpu = dev == "cuda"

    def median_time(fn):
        return gpu_cases.median_time(fn, 10, dev, min_seconds=0.0)

    n = 2**31 if gpu else 2**22
    x, y, out = (torch.ones(n, device=dev) for _ in range(3))
    nbytes = 4 * n
    where = torch.cuda.get_device_name() if gpu else "cpu"
    print(f"streams over float32 arrays of {nbytes / 2**30:.2f} GiB on {where}")
    read = nbytes / median_time(lambda: x.sum())
    copy = 2 * nbytes / median_time(lambda: out.copy_(x))
    two_one = 3 * nbytes / median_time(lambda: torch.add(x, y, out=out))
    for label, v in (("read-only (sum)", read), ("copy", copy), ("2 reads, 1 write (add)", two_one)):
        print(f"  {label:<26}{v / 1e9:8.0f} GB/s")
    del x, y, out
    if gpu:
        torch.cuda.empty_cache()

    shape = (2, 1024, 1024, 1024, 1) if gpu else (2, 64, 64, 64, 1)
    for inp in ("logits", "probabilities"):
        t, z, opts = make_inputs(shape, inp, "float32", dev)
        elements = int(np.prod(shape))
        grads = [torch.full_like(s, 0.5) for s in fk.overlap_stats(t, z, check_labels=False, **opts)]
        stats_s = median_time(lambda: fk.overlap_stats(t, z, check_labels=False, **opts))
        grad_s = median_time(lambda: fk.overlap_grad(t, z, None, *grads, **opts))
        stats_bytes = 8 * elements
        grad_bytes = (12 if inp == "logits" else 8) * elements
        grad_ref, grad_name = (two_one, "2 reads, 1 write") if inp == "logits" else (copy, "copy")
        print(f"{inp}: stats {stats_s * 1e3:.3f} ms = {stats_bytes / stats_s / 1e9:.0f} GB/s "
              f"({stats_bytes / stats_s / read:.0%} of read-only); gradient {grad_s * 1e3:.3f} ms = "
              f"{grad_bytes / grad_s / 1e9:.0f} GB/s ({grad_bytes / grad_s / grad_ref:.0%} of {grad_name})")
        del t, z, grads


if __name__ == "__main__":
    main()

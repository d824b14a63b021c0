"""Where a fused step's time goes on a GPU, part by part.

For a few cases, with PyTorch tensors on the GPU: the host time of the whole
fused step (as benchmarks/gpu_cases.py runs it) and of each of its parts (the
stats call with and without check_labels, the gradient call, PyTorch's
autograd of the three sums), each also queued back to back between two CUDA
events (on the GPU); PyTorch eager for comparison; the profiler's table of the step's
kernels; and, with --compile, the formula under torch.compile.

    python benchmarks/gpu_step_parts.py [--compile] [--device cpu]

(--device cpu runs it on CPU tensors, to try the script without a GPU.)
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastiou.kernels as fk  # noqa: E402
from gpu_cases import (back_to_back, compiled_loss, copy_bandwidth, fused_step, jaccard_from_sums,  # noqa: E402
                       make_inputs, ms, torch_step)

CASES = [("16x512x512x1", (16, 512, 512, 1), "probabilities"),
         ("4x512x512x21", (4, 512, 512, 21), "logits"),
         ("8x512x512x512x1", (8, 512, 512, 512, 1), "logits")]  # 2^30 elements


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compile", action="store_true", help="also time the formula under torch.compile")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    dev = args.device

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def host_time(fn, n):
        fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t1 = time.perf_counter()
        sync()
        return (t1 - t0) / n

    print(f"copy bandwidth {copy_bandwidth(dev) / 1e9:.0f} GB/s (read + write)", flush=True)
    for name, shape, inp in CASES:
        if dev == "cpu" and np.prod(shape) > 2**26:
            shape = (1, 64, 64, 64, 1)
        y_true, y_pred, opts = make_inputs(shape, inp, "uint8", dev)
        sums = [s.requires_grad_(True) for s in fk.overlap_stats(y_true, y_pred, **opts)]
        group_grads = torch.autograd.grad(jaccard_from_sums(*sums), sums)

        def autograd_of_sums():
            s = [x.detach().requires_grad_(True) for x in sums]
            return torch.autograd.grad(jaccard_from_sums(*s), s)

        parts = {
            "step": lambda: fused_step(y_true, y_pred, opts),
            "stats": lambda: fk.overlap_stats(y_true, y_pred, **opts),
            "stats, check_labels=False": lambda: fk.overlap_stats(y_true, y_pred, check_labels=False, **opts),
            "gradient": lambda: fk.overlap_grad(y_true, y_pred, None, *group_grads, **opts),
            "autograd of the sums": autograd_of_sums,
            "PyTorch eager step": lambda: torch_step(y_true, y_pred, opts),
        }
        if args.compile:
            loss_fn = compiled_loss()
            began = time.perf_counter()
            torch_step(y_true, y_pred, opts, loss_fn)
            sync()
            print(f"torch.compile: first call {time.perf_counter() - began:.1f} s")
            parts["torch.compile step"] = lambda: torch_step(y_true, y_pred, opts, loss_fn)
        print(f"\n{name} {inp} ({np.prod(shape):.3g} elements): host ms, back to back ms", flush=True)
        for part, fn in parts.items():
            queued = back_to_back(fn, 20, dev)
            print(f"  {part:<28}{host_time(fn, 20) * 1e3:9.3f}{ms(queued):>9}", flush=True)
        if dev == "cuda":
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    fused_step(y_true, y_pred, opts)
                sync()
            print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=8,
                                            max_name_column_width=60))
        del y_true, y_pred, sums, group_grads, parts
        if dev == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

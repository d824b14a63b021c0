#!/usr/bin/env python
"""Forward+backward time and peak extra memory: fused fastiou vs pure Keras.

Each (case, implementation) runs in two fresh processes. The first measures
peak memory: it builds its inputs, warms the step up (tracing and XLA
compilation), resets the kernel's peak-RSS counter, runs one step and reads
the new peak, with malloc told to return big buffers to the OS at once and
oneDNN's buffer pool off, so that resident memory follows the live tensors.
The second, with the defaults, times `--repeats` steps after the warm-up and
keeps the median.

Implementations:
  fused        fastiou's loss, tf.function (the fused custom ops)
  fused-xla    fastiou's loss, tf.function(jit_compile=True): the fused kernels
               as XLA custom calls
  keras        fastiou.reference (keras.ops), tf.function
  keras-xla    fastiou.reference, tf.function(jit_compile=True)
  fused-jax    fastiou.jax (the fused kernels through jax.ffi), jax.jit of value_and_grad
  keras-jax    fastiou.reference on Keras' JAX backend (the plain formula in jnp), jax.jit

The same run measures the machine's copy bandwidth (bytes read plus written
per second by a multi-threaded memory copy, in its own process) and reports
each fused case as a fraction of it: the bytes the fused kernels must move
(forward: y_pred and y_true; backward: y_true, y_pred for logits, and the
gradient written) over the step's time.

Where a GPU, PyTorch and fastiou's CUDA kernels are present, it also times the
GPU cases: the fused CUDA kernels through fastiou.kernels against the same
formula in PyTorch eager, with the GPU's copy bandwidth measured alongside.

It writes JSON and, with matplotlib, two PNG plots beside it: time against
element count on log-log axes (one line per implementation) and peak extra
memory per case.

Usage:
  python benchmarks/bench_losses.py                 # full run
  python benchmarks/bench_losses.py --quick         # smaller cases, a minute or two
  python benchmarks/bench_losses.py --json out.json # plots go to out-time.png, out-memory.png
  python benchmarks/bench_losses.py --no-cpu        # GPU cases only (no TensorFlow needed)
"""

import argparse
import json
import os
import subprocess
import sys
import time

from bench_report import fastiou_cpu_target, machine_description, markdown_table, plot

# Single-channel cases take a mask of y_pred's shape; multi-channel cases are
# multi-class, with sparse uint8 labels (one class index per pixel) and 5% of
# the pixels labelled 255 and ignored.
CASES = {
    "16x256x256x1": (16, 256, 256, 1),
    "16x512x512x1": (16, 512, 512, 1),
    "8x128x128x128x1": (8, 128, 128, 128, 1),
    "8x256x256x21": (8, 256, 256, 21),
    "4x512x512x21": (4, 512, 512, 21),
    "2x96x96x96x8": (2, 96, 96, 96, 8),
    "2x256x256x150": (2, 256, 256, 150),  # ADE20K's 150 classes
}
QUICK_CASES = {
    "16x256x256x1": (16, 256, 256, 1),
    "2x128x128x128x1": (2, 128, 128, 128, 1),
    "4x128x128x21": (4, 128, 128, 21),
}
IMPLEMENTATIONS = ["fused", "keras", "fused-xla", "keras-xla", "fused-jax", "keras-jax"]
BASELINE = "keras"
INPUTS = ("logits", "probabilities")


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_one(shape, impl, inputs, mask_dtype, repeats, measure):
    """Runs in the child process; returns the measurements as a dict."""
    import numpy as np

    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
    rng = np.random.default_rng(0)
    logits = inputs == "logits"
    multiclass = shape[-1] > 1
    z = rng.normal(scale=2.0, size=shape).astype(np.float32)
    if logits:
        pred = z
    elif multiclass:
        pred = np.exp(z - z.max(-1, keepdims=True))
        pred /= pred.sum(-1, keepdims=True)
    else:
        pred = 1.0 / (1.0 + np.exp(-z))
    del z
    options = {"from_logits": logits}
    if multiclass:
        truth = rng.integers(0, shape[-1], size=shape[:-1]).astype(np.uint8)
        truth[rng.random(shape[:-1], dtype=np.float32) < 0.05] = 255
        options["ignore_index"] = 255
    else:
        truth = (rng.random(shape, dtype=np.float32) < 0.05).astype(mask_dtype)

    import fastiou

    if impl.endswith("jax"):
        # Keras on JAX (set by spawn): fastiou.reference is the plain formula in jnp.
        import jax

        fn = fastiou.jax.jaccard_loss if impl.startswith("fused") else fastiou.reference.jaccard_loss
        y_true, y_pred = jax.numpy.asarray(truth), jax.numpy.asarray(pred)
        value_and_grad = jax.jit(jax.value_and_grad(lambda p, t: fn(t, p, **options)))

        def step(t, p):
            return value_and_grad(p, t)

        finish = jax.block_until_ready
    else:
        import tensorflow as tf

        fn = fastiou.jaccard_loss if impl.startswith("fused") else fastiou.reference.jaccard_loss
        y_true, y_pred = tf.constant(truth), tf.constant(pred)

        def tf_step(t, p):
            with tf.GradientTape() as tape:
                tape.watch(p)
                loss = fn(t, p, **options)
            return loss, tape.gradient(loss, p)

        step = tf.function(tf_step, jit_compile=impl.endswith("xla"))

        def finish(out):
            float(out[0])
            return out
    # What this run really computes, for the parent to check against the row.
    config = {"inputs": inputs, "from_logits": bool(options["from_logits"]), "shape": list(shape),
              "pred_dtype": str(pred.dtype), "true_dtype": str(truth.dtype),
              "pred_is_probability": bool(pred.min() >= 0.0 and pred.max() <= 1.0), "impl": impl,
              "cpu_target": fastiou_cpu_target(), "settings": measure_settings()}
    del pred, truth
    for _ in range(2):
        finish(step(y_true, y_pred))
    elements = int(np.prod(shape))
    if measure == "memory":
        base = _rss_kib("VmRSS")
        peak_ok = _reset_peak_rss()
        out = finish(step(y_true, y_pred))
        peak = _rss_kib("VmHWM") if peak_ok else None
        del out
        return {"peak_extra_bytes": None if peak is None else (peak - base) * 1024,
                "elements": elements, "config": config}
    median, times = median_time(lambda: finish(step(y_true, y_pred)), repeats)
    return {"time_s": median, "times_s": times, "elements": elements, "config": config}


def median_time(call, repeats):
    """(median seconds, every time) of `repeats` calls of `call()`, warmed up
    by the caller. Short calls are noisy: they are repeated for at least about
    a second (at most 200 times)."""
    import numpy as np

    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    repeats = int(min(200, max(repeats, 1.0 / max(once, 1e-6))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), times


def copy_bandwidth(nbytes=512 * 2**20, threads=None, repeats=9):
    """Median bytes read plus written per second by a memory copy on `threads`
    threads (all cores by default): the yardstick of memory-bound kernels."""
    import threading

    import numpy as np

    threads = threads or os.cpu_count() or 1
    src = np.ones(nbytes // 4, np.float32)
    dst = np.zeros_like(src)  # touched: no page faults in the timed copies
    bounds = np.linspace(0, src.size, threads + 1).astype(int)

    def part(k):
        np.copyto(dst[bounds[k]:bounds[k + 1]], src[bounds[k]:bounds[k + 1]])

    times = []
    for _ in range(repeats):
        workers = [threading.Thread(target=part, args=(k,)) for k in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        times.append(time.perf_counter() - start)
    return {"copy_bytes_per_s": 2 * nbytes / float(np.median(times)), "copy_threads": threads,
            "copy_buffer_bytes": nbytes}


def fused_bytes(shape, inputs, mask_itemsize):
    """Bytes the fused forward and backward passes must move for float32 y_pred."""
    elements = 1
    for d in shape:
        elements *= d
    pred = 4 * elements
    truth = (elements // shape[-1]) if shape[-1] > 1 else elements * mask_itemsize  # sparse uint8 labels
    forward = pred + truth
    backward = truth + pred + (pred if inputs == "logits" else 0)  # reads t (and z), writes the gradient
    return forward + backward


def child(args):
    if args.measure == "bandwidth":
        result = copy_bandwidth()
    else:
        result = run_one(tuple(args.shape), args.impl, args.input, args.mask_dtype, args.repeats,
                         args.measure)
    print("RESULT " + json.dumps(result))


# The settings of a memory child. A fixed mmap threshold returns big freed
# buffers to the OS at once, so resident memory follows the live tensors.
# oneDNN's ops (on by default where the CPU has AVX-512) keep freed buffers in
# a pool of their own, which hides every allocation from resident memory.
# Neither is fit for timing: with the fixed threshold every mask-sized
# temporary is a fresh mapping whose pages fault in on every call (Keras'
# MeanIoU under XLA takes about twice as long), so time children run with
# glibc's and TensorFlow's defaults, as a user's process does.
MEMORY_PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "TF_ENABLE_ONEDNN_OPTS": "0"}


def child_env(measure, **extra):
    """The environment of a child measuring `measure` ("time", "memory" or
    "bandwidth"): the caller's, quiet, plus `extra`; MEMORY_PROBE_ENV's
    settings for memory, none of them (whatever the caller's shell set)
    otherwise."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)
    for key in MEMORY_PROBE_ENV:
        env.pop(key, None)
    if measure == "memory":
        env.update(MEMORY_PROBE_ENV)
    return env


def measure_settings():
    """What a child reports of MEMORY_PROBE_ENV's settings (None where unset)."""
    return {key: os.environ.get(key) for key in MEMORY_PROBE_ENV}


def check_measure_settings(config, measure, what):
    """Raises unless a child measuring `measure` ran with the settings
    child_env gives it."""
    want = {key: (value if measure == "memory" else None) for key, value in MEMORY_PROBE_ENV.items()}
    got = (config or {}).get("settings")
    if got != want:
        raise RuntimeError(f"benchmark child for {what} measured {measure} with {got}, not {want}")


def spawn(shape, impl, inputs, mask_dtype, repeats, measure):
    extra = dict(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu") if impl.endswith("jax") else {}
    env = child_env(measure, **extra)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--impl", impl, "--input", inputs,
           "--mask-dtype", mask_dtype, "--repeats", str(repeats), "--measure", measure,
           "--shape", *map(str, shape)]
    if measure == "bandwidth":
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--measure", "bandwidth"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            if measure != "bandwidth":
                check_config(result.get("config"), shape, impl, inputs)
                check_measure_settings(result.get("config"), measure, f"{impl} {shape}")
            return result
    raise RuntimeError(f"{impl} {shape} failed:\n{proc.stderr[-3000:]}")


def check_config(config, shape, impl, inputs):
    """Raises unless a child ran the configuration its row will be labelled with."""
    want = {"inputs": inputs, "from_logits": inputs == "logits", "shape": list(shape), "impl": impl,
            "cpu_target": fastiou_cpu_target()}
    got = {k: (config or {}).get(k) for k in want}
    if got != want:
        raise RuntimeError(f"benchmark child ran {got}, the row says {want}")
    if inputs == "probabilities" and not config.get("pred_is_probability"):
        raise RuntimeError(f"benchmark child for {impl} {shape} was given values outside [0, 1] as probabilities")
    if inputs == "logits" and config.get("pred_is_probability"):
        raise RuntimeError(f"benchmark child for {impl} {shape} was given probabilities as logits")


def fmt_mib(b):
    return "n/a" if b is None else f"{b / 2**20:8.1f}"


def run_cpu_cases(cases, inputs, impls, mask_dtype, repeats, bandwidth):
    header = (f"{'case':<18}{'inputs':<14}{'impl':<11}{'time ms':>10}{'speedup':>9}"
              f"{'of copy bw':>11}{'peak extra MiB':>16}{'x mask':>8}")
    print(header)
    print("-" * len(header))
    rows = []
    total = len(cases) * len(inputs) * len(impls)
    done = 0
    mask_itemsize = 4 if mask_dtype == "float32" else 1
    for case, shape in cases.items():
        for inp in inputs:
            results = {}
            for impl in impls:
                done += 1
                if sys.stderr.isatty():
                    print(f"  [{done}/{total}] {case} {inp} {impl}...", end="\r", file=sys.stderr,
                          flush=True)
                results[impl] = spawn(shape, impl, inp, mask_dtype, repeats, "time")
                memory = spawn(shape, impl, inp, mask_dtype, repeats, "memory")
                # The row's config stays the time child's; the memory child's beside it.
                results[impl].update(peak_extra_bytes=memory["peak_extra_bytes"], memory_config=memory["config"])
            base = results.get(BASELINE)
            for impl, r in results.items():
                r.update(case=case, shape=list(shape), inputs=inp, impl=impl, device="cpu",
                         mask_dtype="uint8 sparse" if shape[-1] > 1 else mask_dtype,
                         pred_dtype="float32")
                r["speedup_vs_keras"] = base["time_s"] / r["time_s"] if base else None
                mask_bytes = r["elements"] * 4
                r["peak_extra_masks"] = (None if r["peak_extra_bytes"] is None
                                         else r["peak_extra_bytes"] / mask_bytes)
                r["bandwidth_fraction"] = None
                if impl == "fused":
                    r["fused_bytes"] = fused_bytes(shape, inp, mask_itemsize)
                    r["bandwidth_fraction"] = r["fused_bytes"] / r["time_s"] / bandwidth
                rows.append(r)
                speed = f"{r['speedup_vs_keras']:8.2f}x" if base else "      n/a"
                frac = "" if r["bandwidth_fraction"] is None else f"{r['bandwidth_fraction']:.0%}"
                masks = "n/a" if r["peak_extra_masks"] is None else f"{r['peak_extra_masks']:7.2f}"
                print(f"{case:<18}{inp:<14}{impl:<11}{r['time_s'] * 1e3:>10.1f}{speed:>9}{frac:>11}"
                      f"{fmt_mib(r['peak_extra_bytes']):>16}{masks:>8}")
    if sys.stderr.isatty():
        print(" " * 60, end="\r", file=sys.stderr)
    return rows


def gpu_available():
    """Whether the GPU cases can run: PyTorch with a GPU and fastiou's CUDA kernels."""
    try:
        import torch

        import fastiou.kernels as fk
    except ImportError:
        return False
    return fk.built_with_cuda() and torch.cuda.is_available()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller cases, logits only, 3 repeats")
    parser.add_argument("--suite", choices=["all", "binary", "multiclass"], default="all",
                        help="single-channel cases, multi-class cases, or both")
    parser.add_argument("--cases", nargs="*", help=f"subset of {list(CASES)}")
    parser.add_argument("--inputs", nargs="*", default=None, choices=INPUTS)
    parser.add_argument("--impls", nargs="*", default=IMPLEMENTATIONS, choices=IMPLEMENTATIONS)
    parser.add_argument("--mask-dtype", default="float32", choices=["float32", "uint8"])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--json", default=None, help="write results here (default: benchmarks/results/cpu-latest.json)")
    parser.add_argument("--no-cpu", dest="cpu", action="store_false", help="skip the CPU (TensorFlow) cases")
    parser.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto",
                        help="GPU cases: when a GPU, PyTorch and fastiou's CUDA kernels are there (auto)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="GPU cases: leave out the torch.compile rows (each case compiles afresh)")
    parser.add_argument("--no-plots", dest="plots", action="store_false")
    parser.add_argument("--replot", metavar="JSON", help="draw the plots and the table of an earlier run's JSON")
    # Internal: one measurement in a fresh process.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--input", choices=INPUTS, help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["time", "memory", "bandwidth"], help=argparse.SUPPRESS)
    parser.add_argument("--shape", nargs="*", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--gpu-device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.replot:
        with open(args.replot) as f:
            saved = json.load(f)
        rows, machine = saved["results"], saved["machine"]
        cpu_rows = [r for r in rows if r["device"] == "cpu"]
        if cpu_rows:
            print(markdown_table(cpu_rows, machine, cpu_rows[0]["mask_dtype"]))
        where = machine["cpu"] + (f" + {machine['gpu']['name']}" if "gpu" in machine else "")
        for f in plot(rows, os.path.splitext(args.replot)[0], f"fastiou Jaccard loss, forward + backward, on {where}"):
            print(f"wrote {f}")
        return None

    cases = QUICK_CASES if args.quick else CASES
    if args.cases:
        unknown = set(args.cases) - set(CASES) - set(QUICK_CASES)
        if unknown:
            parser.error(f"unknown cases {sorted(unknown)}")
        cases = {k: {**CASES, **QUICK_CASES}[k] for k in args.cases}
    if args.suite != "all":
        cases = {k: v for k, v in cases.items() if (v[-1] > 1) == (args.suite == "multiclass")}
    inputs = args.inputs or (["logits"] if args.quick else ["logits", "probabilities"])
    repeats = args.repeats or (3 if args.quick else 7)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    machine = machine_description()
    rows = []
    if args.cpu:
        bandwidth = spawn((), "", "", args.mask_dtype, 0, "bandwidth")
        machine.update(bandwidth)
        print(f"fastiou benchmark on {machine['cpu']} ({machine['cores']} cores), "
              f"TensorFlow {machine['tensorflow']}, fastiou CPU kernels {machine.get('fastiou_cpu_target')}, "
              f"y_pred float32, y_true {args.mask_dtype} "
              "(multi-class: sparse uint8 labels)")
        print(f"copy bandwidth: {bandwidth['copy_bytes_per_s'] / 1e9:.1f} GB/s (read + write, "
              f"{bandwidth['copy_threads']} threads)")
        print(f"forward+backward of the Jaccard loss, median of at least {repeats} runs (and of 1 s)\n")
        rows += run_cpu_cases(cases, inputs, args.impls, args.mask_dtype, repeats,
                              bandwidth["copy_bytes_per_s"])
        print("\nspeedup: keras (graph) time / this time. of copy bw: the fused step's bytes per second "
              "over the copy bandwidth. x mask: peak extra memory in float32 mask-sized tensors (the "
              "gradient itself is one).")
        if args.markdown:
            print(markdown_table(rows, machine, args.mask_dtype))
    run_gpu = args.gpu == "yes" or (args.gpu == "auto" and gpu_available())
    if run_gpu:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import gpu_cases

        print()
        gpu_rows, gpu_machine = gpu_cases.run(cases, inputs, args.mask_dtype, repeats, args.gpu_device,
                                              compiled=args.compile, large=not (args.quick or args.cases))
        rows += gpu_rows
        machine["gpu"] = gpu_machine
    elif args.gpu == "auto":
        print("\nno GPU cases: they need a GPU, PyTorch and fastiou built with CUDA")
    out = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                    "cpu-latest.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"machine": machine, "quick": args.quick, "results": rows}, f, indent=1)
    print(f"wrote {out}")
    if args.plots and rows:
        stem = os.path.splitext(out)[0]
        where = machine["cpu"] + (f" + {machine['gpu']['name']}" if "gpu" in machine else "")
        for f in plot(rows, stem, f"fastiou Jaccard loss, forward + backward, on {where}"):
            print(f"wrote {f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""update_state time and peak extra memory: fastiou.metrics vs keras.metrics.

Each case runs in two child processes of its own, as in
benchmarks/bench_losses.py (whose memory probe, settings and copy bandwidth
it reuses); each builds its inputs and warms the traced update up. The first,
with glibc's and TensorFlow's defaults (as a user's process runs), times the
update (median); the second, with bench_losses.MEMORY_PROBE_ENV (freed big
buffers returned to the OS at once, oneDNN's pool off), resets the peak-RSS
counter, runs one more update and reads the new peak. Each child reports the
configuration it ran (metric, shape, dtypes, whether y_pred holds
probabilities, its allocator settings) and the parent checks it against the
row. The share of the memory limit is (bytes of y_true and y_pred, each read
once) / (copy bandwidth measured in the same run) / time, so a row over 100%
means the yardstick is wrong, not that the kernel beats memory.

    python benchmarks/bench_metrics.py [--quick] [--json PATH] [--impls fused keras ...]
"""

import argparse
import json
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_losses import (_reset_peak_rss, _rss_kib, check_measure_settings, child_env,  # noqa: E402
                          copy_bandwidth, fastiou_cpu_target, measure_settings, median_time)

# name: (metric, shape of y_pred, inputs)
CASES = {
    "BinaryIoU 16x512x512x1 probabilities": ("BinaryIoU", (16, 512, 512, 1), "probabilities"),
    "BinaryIoU 16x512x512x1 logits": ("BinaryIoU", (16, 512, 512, 1), "logits"),
    "MeanIoU 4x512x512x21 scores": ("MeanIoU", (4, 512, 512, 21), "logits"),
}
QUICK_CASES = {
    "BinaryIoU 4x128x128x1 probabilities": ("BinaryIoU", (4, 128, 128, 1), "probabilities"),
    "MeanIoU 2x64x64x5 scores": ("MeanIoU", (2, 64, 64, 5), "logits"),
}
IMPLEMENTATIONS = ["fused", "keras", "fused-xla", "keras-xla"]


def make_metric(impl, metric, channels, inputs):
    """The metric of one row. Keras has no from_logits: on logits its
    BinaryIoU gets threshold 0 (the logit of 0.5), the same classes."""
    import keras

    import fastiou.metrics

    module = fastiou.metrics if impl.startswith("fused") else keras.metrics
    if metric == "BinaryIoU":
        if impl.startswith("fused"):
            return module.BinaryIoU(target_class_ids=[0, 1], threshold=0.5, from_logits=inputs == "logits")
        return module.BinaryIoU(target_class_ids=[0, 1], threshold=0.0 if inputs == "logits" else 0.5)
    return module.MeanIoU(channels, sparse_y_pred=False)


def run_one(metric, shape, impl, inputs, repeats, measure):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    z = rng.normal(scale=2.0, size=shape).astype(np.float32)
    if metric == "BinaryIoU":
        pred = z if inputs == "logits" else 1.0 / (1.0 + np.exp(-z))
        truth = (rng.random(shape, dtype=np.float32) < 0.05).astype(np.uint8)
    else:
        pred = z
        truth = rng.integers(0, shape[-1], size=shape[:-1]).astype(np.uint8)
    m = make_metric(impl, metric, shape[-1], inputs)
    config = {"metric": type(m).__module__.split(".")[0] + "." + type(m).__name__, "shape": list(shape),
              "inputs": inputs, "from_logits": bool(getattr(m, "from_logits", False)), "impl": impl,
              "pred_dtype": str(pred.dtype), "true_dtype": str(truth.dtype),
              "pred_is_probability": bool(pred.min() >= 0.0 and pred.max() <= 1.0),
              "settings": measure_settings()}
    y_true, y_pred = tf.constant(truth), tf.constant(pred)
    nbytes = truth.nbytes + pred.nbytes
    del pred, truth, z

    @tf.function(jit_compile=impl.endswith("xla"))
    def update(t, p):
        m.update_state(t, p)
        return m.result()

    if impl.endswith("xla"):  # which counts the compiled program runs
        from fastiou import _ops

        hlo = update.experimental_get_compiler_ir(y_true, y_pred)(stage="hlo")
        config["fastiou_custom_call"] = "fastiou_confusion_counts" in hlo
        config["kernel_lowers_here"] = _ops.confusion_lowers_to_xla()

    for _ in range(2):
        float(update(y_true, y_pred))
    if measure == "memory":
        base = _rss_kib("VmRSS")
        peak_ok = _reset_peak_rss()
        float(update(y_true, y_pred))
        peak = _rss_kib("VmHWM") if peak_ok else None
        return {"peak_extra_bytes": None if peak is None else (peak - base) * 1024, "result": float(m.result()),
                "config": config}
    median, _ = median_time(lambda: float(update(y_true, y_pred)), repeats)
    return {"time_s": median, "input_bytes": nbytes, "result": float(m.result()), "config": config}


def same_result(got, want):
    """Whether two rows' result() agree (Keras counts in float32)."""
    return abs(got - want) <= 1e-5 * max(1.0, abs(want))


def spawn(metric, shape, impl, inputs, repeats, measure):
    env = child_env(measure, KERAS_BACKEND="tensorflow")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--metric", metric, "--impl", impl,
           "--input", inputs, "--repeats", str(repeats), "--measure", measure, "--shape", *map(str, shape)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            check_config(result.get("config"), metric, shape, impl, inputs)
            check_measure_settings(result.get("config"), measure, f"{impl} {metric} {shape}")
            return result
    raise RuntimeError(f"{impl} {metric} {shape} failed:\n{proc.stderr[-3000:]}")


def check_config(config, metric, shape, impl, inputs):
    """Raises unless the child ran the configuration of its row."""
    config = config or {}
    package = "fastiou" if impl.startswith("fused") else "keras"
    want = {"metric": f"{package}.{metric}", "shape": list(shape), "inputs": inputs, "impl": impl}
    got = {k: config.get(k) for k in want}
    if got != want:
        raise RuntimeError(f"benchmark child ran {got}, the row says {want}")
    if config.get("pred_is_probability") != (inputs == "probabilities"):
        raise RuntimeError(f"benchmark child for {impl} {metric} {shape} was not given {inputs}")
    if package == "fastiou" and metric == "BinaryIoU" and config.get("from_logits") != (inputs == "logits"):
        raise RuntimeError(f"benchmark child for {impl} {metric} ran from_logits={config.get('from_logits')}")
    # under XLA fastiou runs its kernel where it lowers (no GPU)
    lowered = package == "fastiou" and bool(config.get("kernel_lowers_here"))
    if impl.endswith("xla") and config.get("fastiou_custom_call") != lowered:
        raise RuntimeError(f"benchmark child for {impl} {metric}: fastiou's custom call compiled in: "
                           f"{config.get('fastiou_custom_call')}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small cases (a smoke test)")
    parser.add_argument("--impls", nargs="+", default=IMPLEMENTATIONS, choices=IMPLEMENTATIONS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the rows and the machine to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--metric", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--shape", nargs="+", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["time", "memory"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_one(args.metric, tuple(args.shape), args.impl, args.input, args.repeats,
                                             args.measure)))
        return 0
    bandwidth = copy_bandwidth()["copy_bytes_per_s"]
    print(f"fastiou metrics benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s, fastiou CPU kernels {fastiou_cpu_target()}")
    print(f"{'case':<38}{'impl':<11}{'update ms':>10}{'vs keras':>9}{'of memory limit':>16}"
          f"{'peak extra MiB':>15}{'result':>9}")
    rows = []
    for name, (metric, shape, inputs) in (QUICK_CASES if args.quick else CASES).items():
        results = {}
        for impl in args.impls:
            r = spawn(metric, shape, impl, inputs, args.repeats, "time")
            memory = spawn(metric, shape, impl, inputs, args.repeats, "memory")
            r.update(peak_extra_bytes=memory["peak_extra_bytes"], memory_config=memory["config"],
                     memory_result=memory["result"])
            results[impl] = r
            r.update(case=name, impl=impl, copy_bytes_per_s=bandwidth,
                     memory_share=r["input_bytes"] / bandwidth / r["time_s"])
            rows.append(r)
        for impl, r in results.items():
            baseline = results.get("keras-xla" if impl.endswith("xla") else "keras")
            r["speedup"] = baseline["time_s"] / r["time_s"] if baseline else None
            peak = "n/a" if r["peak_extra_bytes"] is None else f"{r['peak_extra_bytes'] / 2**20:.1f}"
            speed = "" if r["speedup"] is None else f"{r['speedup']:.1f}x"
            print(f"{name:<38}{impl:<11}{r['time_s'] * 1e3:>10.2f}{speed:>9}{r['memory_share']:>15.0%}"
                  f"{peak:>15}{r['result']:>9.4f}")
        fused = [r for r in results.values() if r["impl"].startswith("fused")]
        keras_rows = [r for r in results.values() if not r["impl"].startswith("fused")]
        for r in results.values():
            if not same_result(r["memory_result"], r["result"]):
                raise RuntimeError(f"{name}: {r['impl']} gave {r['result']} timed, {r['memory_result']} probed")
        for f in fused:
            for k in keras_rows:
                if not same_result(f["result"], k["result"]):
                    raise RuntimeError(f"{name}: {f['impl']} gave {f['result']}, {k['impl']} {k['result']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": {"processor": platform.processor(), "cores": os.cpu_count(),
                                   "copy_bytes_per_s": bandwidth, "cpu_target": fastiou_cpu_target()},
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

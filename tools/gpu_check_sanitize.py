#!/usr/bin/env python3
"""Small cases of every mode through fastiou.kernels, for compute-sanitizer.

The device check runs this under memcheck, racecheck, synccheck and initcheck:

    compute-sanitizer --tool memcheck --error-exitcode 86 python3 tools/gpu_check_sanitize.py

Each case runs the stats and the gradient kernels on PyTorch CUDA tensors and
checks them against the C++ kernels on the host: binary from logits and from
probabilities, multi-label, softmax over one-hot targets, sparse labels with
ignore_index, per-element and per-pixel weights, the gradient with respect to
float targets, bfloat16, a size past one block, and a bad label that must
raise; then the metrics' confusion counts (class indices, argmax, threshold,
weights, more classes than the shared-memory histogram holds) against the
C++ kernel. Inputs are made on the host and copied, so that no other framework's
kernels run under the sanitizer. `--device cpu` runs the same cases on host
arrays (a check of the script itself on a machine without a GPU).
"""

import argparse
import sys

import numpy as np

import fastiou.kernels as fk

# name, shape, options, target kind, weights (None, "pixel", "element"), wrt_true, dtype
CASES = [
    ("binary-logits", (2, 37, 29, 1), dict(from_logits=True), "mask", None, False, "float32"),
    ("binary-probabilities-weights", (2, 37, 29, 1), dict(from_logits=False, per_image=False), "mask",
     "element", False, "float32"),
    ("binary-odd-size", (1, 70001, 1), dict(from_logits=True, per_image=False), "mask", None, False,
     "float32"),
    ("multilabel-logits", (2, 29, 23, 3), dict(from_logits=True), "mask", None, False, "float32"),
    ("multilabel-element-weights", (2, 29, 23, 3), dict(from_logits=True, per_image=False), "mask",
     "element", False, "float16"),
    ("multilabel-wrt-true", (2, 29, 23, 3), dict(from_logits=True), "soft", "pixel", True, "float32"),
    ("softmax-one-hot", (2, 29, 23, 4), dict(from_logits=True, softmax=True), "one-hot", None, False,
     "float32"),
    ("softmax-one-hot-pixel-weights", (2, 29, 23, 4), dict(from_logits=True, softmax=True, per_image=False),
     "one-hot", "pixel", False, "float32"),
    ("softmax-one-hot-wrt-true", (2, 29, 23, 4), dict(from_logits=True, softmax=True), "soft-one-hot",
     None, True, "float32"),
    ("sparse-ignore", (2, 33, 31, 5), dict(from_logits=True, softmax=True, sparse=True, ignore_index=255),
     "labels", None, False, "float32"),
    ("sparse-probabilities-pixel-weights", (2, 33, 31, 5),
     dict(from_logits=False, softmax=True, sparse=True, per_image=False), "labels", "pixel", False,
     "float32"),
    ("sparse-ignore-bfloat16", (2, 33, 31, 21),
     dict(from_logits=True, softmax=True, sparse=True, ignore_index=255), "labels", "pixel", False,
     "bfloat16"),
]
TOL = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 2e-5}


def make_case(rng, shape, opts, kind, weights, dtype):
    z = rng.normal(scale=2.0, size=shape)
    if not opts["from_logits"]:
        e = np.exp(z - z.max(-1, keepdims=True))
        z = e / e.sum(-1, keepdims=True) if opts.get("softmax") else 1 / (1 + np.exp(-z))
    if kind == "mask":
        t = (rng.random(shape) < 0.3).astype(np.uint8)
    elif kind == "soft":
        t = rng.random(shape).astype(np.float32)
    elif kind in ("one-hot", "soft-one-hot"):
        t = np.eye(shape[-1], dtype=np.uint8 if kind == "one-hot" else np.float32)[
            rng.integers(0, shape[-1], size=shape[:-1])]
    else:
        t = rng.integers(0, shape[-1], size=shape[:-1])
        if opts.get("ignore_index") is not None:
            t = np.where(rng.random(shape[:-1]) < 0.1, opts["ignore_index"], t)
        t = t.astype(np.uint8)
    w = None
    if weights:
        w = rng.random(shape if weights == "element" else shape[:-1] + (1,))
    host = "float32" if dtype == "bfloat16" else dtype
    return t, z.astype(host), None if w is None else w.astype(host)


class Device:
    """Arrays on the device under test: PyTorch CUDA tensors, or host arrays."""

    def __init__(self, name):
        self.name = name
        self.torch = None
        if name == "cuda":
            import torch

            if not torch.cuda.is_available():
                sys.exit("sanitize driver: no GPU visible to PyTorch")
            self.torch = torch

    def put(self, x, dtype):
        if x is None or self.torch is None:
            return x
        t = self.torch.from_numpy(np.ascontiguousarray(x))
        if dtype == "bfloat16" and x.dtype == np.float32 and x.ndim and t.is_floating_point():
            t = t.to(self.torch.bfloat16)  # rounded on the host; copied below
        return t.to(self.name)

    def get(self, x):
        if self.torch is None:
            return np.asarray(x).astype(np.float64)
        return x.detach().cpu().float().numpy().astype(np.float64)

    def host_values(self, x, dtype):
        """What the device holds, as host values: bfloat16 rounds y_pred."""
        if x is None or dtype != "bfloat16" or self.torch is None:
            return x
        return self.torch.from_numpy(x).to(self.torch.bfloat16).float().numpy()


def check_case(dev, rng, case):
    name, shape, opts, kind, weights, wrt_true, dtype = case
    t, z, w = make_case(rng, shape, opts, kind, weights, dtype)
    z, w = dev.host_values(z, dtype), dev.host_values(w, dtype)
    dt, dz, dw = dev.put(t, None), dev.put(z, dtype), dev.put(w, dtype)
    got = fk.overlap_stats(dt, dz, dw, **opts)
    want = fk.overlap_stats(t, z, w, **opts)
    for a, b in zip(got, want):
        np.testing.assert_allclose(dev.get(a), b, rtol=2e-5, atol=1e-5, err_msg=f"{name}: stats")
    acc = want[0].dtype
    grads = [rng.normal(size=want[0].shape).astype(acc) for _ in range(3)]
    for respect_to_true in ([False, True] if wrt_true else [False]):
        out = fk.overlap_grad(dt, dz, dw, *(dev.put(g, None) for g in grads), wrt_true=respect_to_true, **opts)
        ref = fk.overlap_grad(t, z, w, *grads, wrt_true=respect_to_true, **opts).astype(np.float64)
        tol = TOL[dtype]
        np.testing.assert_allclose(dev.get(out), ref, rtol=tol, atol=tol * (np.abs(ref).max() + 1e-30),
                                   err_msg=f"{name}: gradient{' wrt y_true' if respect_to_true else ''}")
    return name


def check_bad_label(dev):
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[1, 2, 3] = 9
    z = np.zeros((2, 4, 4, 3), np.float32)
    try:
        fk.overlap_stats(dev.put(labels, None), dev.put(z, None), from_logits=True, softmax=True, sparse=True)
    except ValueError as err:
        assert "label 9 at batch index 1, pixel 11" in str(err), err
        return "bad-label-raises"
    raise AssertionError("a label outside [0, 3) did not raise")


# name, batch, pixels, classes, true rule and dtype, pred rule and dtype, weights, ignore_class
CONFUSION_CASES = [
    ("counts-index-argmax-ignore", 2, 4099, 21, "index", "uint8", "argmax", "float32", None, 3),
    ("counts-argmax-weights", 2, 333, 5, "argmax", "float32", "argmax", "float16", "pixel", None),
    ("counts-threshold-image-weights", 3, 1000, 2, "index", "bool", "threshold", "float64", "image", None),
    ("counts-many-classes", 1, 5000, 3000, "index", "int32", "index", "int64", None, None),
    ("counts-fractional-weights", 2, 9000, 6, "index", "int64", "argmax", "float32", "fractional", 0),
]


def check_confusion_case(dev, rng, case):
    name, batch, pixels, K, true_rule, true_dtype, pred_rule, pred_dtype, weights, ignore_class = case
    t = rng.integers(0, K + 2, (batch, pixels, 1))
    t = (t % 2 if true_dtype == "bool" else t).astype(true_dtype)
    if true_rule == "argmax":
        t = rng.normal(size=(batch, pixels, K)).astype(true_dtype)
    if pred_rule == "argmax":
        p = rng.normal(size=(batch, pixels, K)).astype(pred_dtype)
    elif pred_rule == "threshold":
        p = rng.random((batch, pixels, 1)).astype(pred_dtype)
    else:
        p = rng.integers(0, K + 2, (batch, pixels, 1)).astype(pred_dtype)
    w = None
    if weights == "fractional":  # the fixed-order path: the C++ kernel's sums to rounding
        w = rng.random((batch, pixels)).astype(np.float32)
    elif weights:
        w = rng.integers(0, 4, (batch, pixels) if weights == "pixel" else (batch, 1)).astype(np.float32)
    opts = dict(num_classes=K, true_rule=true_rule, pred_rule=pred_rule, threshold=0.4, ignore_class=ignore_class)
    got = dev.get(fk.confusion_counts(dev.put(t, None), dev.put(p, None), dev.put(w, None), **opts))
    want = fk.confusion_counts(t, p, w, **opts)
    if weights == "fractional":
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"{name}: counts")  # float32 in get()
    else:
        np.testing.assert_array_equal(got, want, err_msg=f"{name}: counts")  # integer weights: exact
    return name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args(argv)
    dev = Device(args.device)
    rng = np.random.default_rng(7)
    done = []
    for case in CASES:
        if case[-1] == "bfloat16" and dev.torch is None:
            continue  # NumPy has no bfloat16
        done.append(check_case(dev, rng, case))
    done.append(check_bad_label(dev))
    for case in CONFUSION_CASES:
        done.append(check_confusion_case(dev, rng, case))
    if dev.torch is not None:
        dev.torch.cuda.synchronize()
    print(f"sanitize driver: done, {len(done)} cases on {args.device} match the host kernels: {', '.join(done)}")


if __name__ == "__main__":
    main()

"""The float64 NumPy oracle of the confusion counts (fastiou.metrics'
kernel, csrc/core/confusion.h) and the raw input cases the kernel tests
share. No TensorFlow.

`np_counts` counts class arrays; `classes` gives a pixel's class from its
stored values by each rule, written from the rules' documentation
(Keras' argmax: the first largest value, NaN never wins, -0.0 below +0.0,
channel 0 when nothing beats the lowest value; a class index truncated
toward zero; a threshold compared in float32; subnormal values read as zeros
of their sign, as on a CPU that flushes them).
"""

import numpy as np

RULES = ("index", "argmax", "threshold")


def np_counts(t, p, num_classes, w=None, ignore_class=None):
    """The oracle: tp, true, pred per class, in float64, from class arrays."""
    shape = np.shape(t)
    t = np.asarray(t, np.int64).ravel()
    p = np.asarray(p, np.int64).ravel()
    w = np.ones(t.shape) if w is None else np.broadcast_to(np.asarray(w, np.float64), shape).ravel()
    keep = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    if ignore_class is not None:
        keep &= t != ignore_class
    t, p, w = t[keep], p[keep], w[keep]
    out = np.zeros((3, num_classes))
    np.add.at(out[0], t[t == p], w[t == p])
    np.add.at(out[1], t, w)
    np.add.at(out[2], p, w)
    return out


def classes(x, rule, threshold=0.5):
    """The class of every pixel of x [batch, pixels, channels] by a rule."""
    x = np.asarray(x)
    if rule == "argmax":
        if x.dtype.kind == "f":
            keys = x.astype(np.float64)
            tiny = np.finfo(np.float32 if x.dtype.itemsize <= 4 else np.float64).tiny
            zero = np.abs(keys) < tiny  # zeros and subnormals
            keys = np.where(zero, np.where(np.signbit(keys), -tiny, 0.0), keys)
            lowest = np.finfo(np.float32 if x.dtype.itemsize <= 4 else np.float64).min
            keys = np.where(np.isnan(keys) | (keys < lowest), lowest, keys)
        else:
            keys = x.astype(np.int64)
        return np.argmax(keys, axis=-1)
    v = x[..., 0]
    if rule == "threshold":
        def flushed(f):
            f = np.asarray(f, np.float32)
            return np.where(np.abs(f) < np.finfo(np.float32).tiny, np.float32(0), f)
        return (flushed(v) >= flushed(threshold)).astype(np.int64)
    if v.dtype.kind == "f":
        wide = v.astype(np.float64)
        ok = ~np.isnan(wide) & (wide > -2.0**31 - 1) & (wide < 2.0**31)
        return np.where(ok, np.trunc(np.where(ok, wide, 0)), -1).astype(np.int64)
    return v.astype(np.int64)


def counts(y_true, y_pred, weights=None, *, num_classes, true_rule="index", pred_rule="index", threshold=0.5,
           ignore_class=None, integer_weights=False):
    """The counts of raw inputs as the kernel sees them: y_true and y_pred
    [batch, pixels, channels], weights [1 or batch, 1 or pixels] or None."""
    t = classes(y_true, true_rule, threshold)
    p = classes(y_pred, pred_rule, threshold)
    w = None
    if weights is not None:
        w = np.broadcast_to(np.asarray(weights, np.float64), t.shape)
        if integer_weights:
            w = np.trunc(w)
    return np_counts(t, p, num_classes, w, ignore_class)


def make_case(rng, *, batch, pixels, num_classes, true_rule, pred_rule, true_dtype, pred_dtype, weights=None,
              weight_dtype="float32", fractional=True, channels=None):
    """Raw inputs for the kernel: class indices a little past num_classes
    (so some pixels count nowhere), one-hot or score channels for argmax,
    probabilities around the threshold; weights None, "image" [batch, 1],
    "pixel" [batch, pixels], "row" [1, pixels] or "one" [1, 1]."""
    channels = channels or num_classes
    def side(rule, dtype, is_true):
        if rule == "index":
            hi = num_classes + 2 if dtype != "bool" else 2
            v = rng.integers(0, hi, (batch, pixels, 1))
            if dtype.startswith("float"):
                v = v + rng.uniform(0, 0.99, v.shape)  # truncated toward zero
            return v.astype(dtype)
        if rule == "threshold":
            return rng.uniform(0, 1, (batch, pixels, 1)).astype(dtype)
        if is_true:
            labels = rng.integers(0, channels, (batch, pixels))
            return np.eye(channels, dtype=dtype)[labels]
        scores = rng.normal(size=(batch, pixels, channels)).astype(dtype)
        scores[..., 1] = scores[..., 0]  # ties: the first channel wins
        return scores
    y_true = side(true_rule, true_dtype, True)
    y_pred = side(pred_rule, pred_dtype, False)
    shape = {None: None, "image": (batch, 1), "pixel": (batch, pixels), "row": (1, pixels), "one": (1, 1)}[weights]
    w = None
    if shape is not None:
        w = rng.uniform(0, 3, shape) if fractional else rng.integers(0, 4, shape).astype(np.float64)
        w = w.astype(weight_dtype)
    return y_true, y_pred, w

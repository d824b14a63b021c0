"""The loss algebra on the overlap sums, written once for every framework.

Each function takes `xp`, a namespace of array functions (asarray(value,
dtype), where, maximum, power, log, ones_like, zeros_like, take(x, indices,
axis), mean(x, axis), sum(x, axis)): jax.numpy as it is, the TensorFlow shim
of fastiou._backends.tensorflow or the keras.ops one of fastiou.reference.
fastiou._front.overlap_loss runs it on a backend's sums. No framework is
imported here.
"""

from fastiou._defaults import ALPHA, BETA, GAMMA, MODE, SMOOTH

MODES = ("auto", "binary", "multilabel", "multiclass")


def overlap_index(xp, kind, I, P, T, smooth, alpha, beta, eps):
    """The overlap index per group: Jaccard, Dice or Tversky."""
    s = xp.asarray(smooth, I.dtype)
    if kind == "jaccard":
        num, den = I + s, T + P - I + s
    elif kind == "dice":
        num, den = 2.0 * I + s, T + P + s
    else:
        num = I + s
        den = I + xp.asarray(alpha, I.dtype) * (P - I) + xp.asarray(beta, I.dtype) * (T - I) + s
    # A zero denominator means nothing predicted and nothing there: a perfect
    # match. The safe denominator keeps the unused branch's gradient finite.
    empty = den <= eps
    return xp.where(empty, xp.ones_like(num), num / xp.where(empty, xp.ones_like(den), den))


def group_loss(xp, index, gamma, log_loss, eps):
    """The loss per group from its index: 1 - index, its power gamma, or -log."""
    eps = xp.asarray(eps, index.dtype)
    if log_loss:
        return -xp.log(xp.maximum(index, eps))
    base = xp.maximum(1.0 - index, 0.0)
    if gamma == 1.0:
        return base
    # d/dx x**gamma is unbounded at x = 0 for gamma < 1: keep that point out.
    positive = base > 0
    safe = xp.where(positive, base, xp.ones_like(base))
    return xp.where(positive, xp.power(safe, xp.asarray(gamma, base.dtype)), xp.zeros_like(base))


def reduce_channels(xp, loss, class_weights, classes=None):
    """The (weighted) mean over the selected channels."""
    channels = loss.shape[-1]
    cw = None
    if class_weights is not None:
        cw = xp.asarray(flat(class_weights), loss.dtype)
        if channels is not None and cw.shape[0] != channels:
            raise ValueError(
                f"fastiou: class_weights has {cw.shape[0]} entries but y_pred has {channels} channels"
            )
    if classes is not None:
        if channels is not None and any(c < 0 or c >= channels for c in classes):
            raise ValueError(f"fastiou: classes {list(classes)} must lie in [0, {channels})")
        indices = xp.asarray([int(c) for c in classes], "int32")
        loss = xp.take(loss, indices, axis=-1)
        if cw is not None:
            cw = xp.take(cw, indices, axis=0)
    if cw is None:
        return xp.mean(loss, axis=-1)
    return xp.sum(loss * cw, axis=-1) / xp.sum(cw, axis=0)


def check_options(kind, smooth=SMOOTH, alpha=ALPHA, beta=BETA, gamma=GAMMA, log_loss=False,
                  class_weights=None, mode=MODE, classes=None, *, per_image=False,
                  sync_replicas=False):
    """Raises ValueError on option values no loss accepts."""
    if sync_replicas and per_image:
        raise ValueError("fastiou: sync_replicas needs per_image=False: per-image sums are "
                         "replica-local by nature (each image lives on one replica)")
    if mode not in MODES:
        raise ValueError(f"fastiou: mode must be one of {MODES}, got {mode!r}")
    if classes is not None and len(classes) == 0:
        raise ValueError("fastiou: classes must name at least one channel")
    if smooth < 0:
        raise ValueError(f"fastiou: smooth must be >= 0, got {smooth}")
    if kind == "tversky":
        if alpha < 0 or beta < 0:
            raise ValueError(f"fastiou: alpha and beta must be >= 0, got {alpha}, {beta}")
        if gamma <= 0:
            raise ValueError(f"fastiou: gamma must be > 0, got {gamma}")
        if log_loss and gamma != 1.0:
            raise ValueError("fastiou: log_loss and gamma != 1 cannot be combined")
    if class_weights is not None and any(w < 0 for w in flat(class_weights)):
        raise ValueError("fastiou: class_weights must be >= 0")


def resolve_mode(mode, sparse, channels, true_shape):
    """Whether the loss is multi-class, from `mode`, whether y_true holds
    class indices and y_pred's channel count (None where unknown); raises on
    combinations that cannot be meant, and where "auto" cannot tell.

    "auto" decides only what the shapes say: class indices are multi-class,
    a single channel is binary. Dense targets of several channels are
    multi-label masks or one-hot classes alike, so they need an explicit mode.
    """
    if mode == "auto":
        if sparse:
            mode = "multiclass"
        elif channels == 1:
            mode = "binary"
        else:
            count = "an unknown number of" if channels is None else channels
            raise ValueError(
                f"fastiou: mode='auto' cannot tell what dense y_true of shape {true_shape} holds for "
                f"y_pred with {count} channels: multi-label masks or one-hot classes. Pass "
                "mode='multilabel' (a sigmoid per channel) or mode='multiclass' (a softmax over the "
                "channels)")
    multiclass = mode == "multiclass"
    if multiclass and channels == 1:
        raise ValueError("fastiou: mode='multiclass' needs y_pred with at least 2 channels")
    if sparse and not multiclass:
        raise ValueError(
            f"fastiou: y_true of shape {true_shape} holds class indices, which need "
            f"mode='multiclass' (got mode={mode!r})")
    return multiclass


def finish(xp, kind, I, P, T, *, smooth, alpha, beta, gamma, log_loss, class_weights, classes, eps):
    """The loss per image (or for the batch) from the sums I, P, T."""
    index = overlap_index(xp, kind, I, P, T, smooth, alpha, beta, eps)
    return reduce_channels(xp, group_loss(xp, index, gamma, log_loss, eps), class_weights, classes)


def flat(values):
    """A scalar or sequence (list, array, tensor) of numbers as a list of floats."""
    if hasattr(values, "numpy"):
        values = values.numpy()
    try:
        return [float(v) for v in values]
    except TypeError:
        return [float(values)]

"""The overlap losses written the plain way, in keras.ops.

This is the pure-Keras formulation users copy into their projects: activate
(sigmoid, or softmax for multi-class), expand sparse labels with one_hot, cast,
multiply and sum over the full mask tensors (`plain_sums`). fastiou uses it
as the oracle of its kernels in its tests (values, and gradients through
autodiff) and as the baseline in its benchmarks. The rest (argument checks,
shapes, modes and the loss algebra on the sums) is fastiou's one front end,
fastiou._front, so that the reference differs from the fused losses only in
how the sums are computed. Same arguments and results as the functional
losses in `fastiou.losses`.
"""

import keras
from keras import ops

from fastiou import _front
from fastiou._defaults import ALPHA, BETA, GAMMA, MODE, SMOOTH
from fastiou._shapes import accumulation_dtype, check_inputs


def plain_sums(xp, y_true, y_pred, weights, *, from_logits, per_image, softmax, sparse, ignore_index):
    """The sums I = sum(w*t*p), P = sum(w*p), T = sum(w*t) written out over
    the full mask tensors, in the array namespace xp (see _Plain.xp): the
    probabilities, the one-hot targets and the products are mask-sized
    temporaries. The reference computes its sums with it (in keras.ops), and
    so does fastiou's TensorFlow backend under XLA when its op library has no
    XLA kernels (in TensorFlow ops). Inputs as prepared by the backend's
    `prepare`; the sums are per (image, channel) with per_image, else per
    channel."""
    dtype = accumulation_dtype(xp.dtype_name(y_pred))
    p = xp.cast(y_pred, dtype)
    if from_logits:
        p = xp.softmax(p) if softmax else xp.sigmoid(p)
    w = None if weights is None else xp.cast(weights, dtype)
    if sparse:
        labels = xp.reshape(y_true, xp.shape(y_pred)[:-1])
        t = xp.one_hot(xp.cast(labels, "int32"), y_pred.shape[-1], dtype)
        if ignore_index is not None:
            keep = xp.expand_dims(xp.cast(xp.not_equal(xp.cast(labels, "int64"), ignore_index), dtype), -1)
            w = keep if w is None else w * keep
    else:
        t = xp.cast(y_true, dtype)
    axes = tuple(range(1 if per_image else 0, len(y_pred.shape) - 1))
    wp = p if w is None else w * p
    wt = t if w is None else w * t
    return xp.sum(wp * t, axes), xp.sum(wp, axes), xp.sum(wt, axes)


class _Plain:
    """The reference as a backend of fastiou's one front end (fastiou._front):
    the sums written out in keras.ops over the full mask tensors."""

    class xp:  # noqa: N801 - the array namespace of the loss algebra and plain_sums, in keras.ops
        asarray = staticmethod(lambda value, dtype: ops.convert_to_tensor(value, dtype=dtype))
        where = staticmethod(ops.where)
        maximum = staticmethod(ops.maximum)
        power = staticmethod(ops.power)
        log = staticmethod(ops.log)
        ones_like = staticmethod(ops.ones_like)
        zeros_like = staticmethod(ops.zeros_like)
        take = staticmethod(lambda x, indices, axis: ops.take(x, indices, axis=axis))
        mean = staticmethod(lambda x, axis: ops.mean(x, axis=axis))
        sum = staticmethod(lambda x, axis: ops.sum(x, axis=axis))
        cast = staticmethod(ops.cast)
        dtype_name = staticmethod(lambda x: _dtype(x))
        sigmoid = staticmethod(ops.sigmoid)
        softmax = staticmethod(lambda x: ops.softmax(x, axis=-1))
        one_hot = staticmethod(lambda labels, depth, dtype: ops.one_hot(labels, depth, dtype=dtype))
        not_equal = staticmethod(ops.not_equal)
        reshape = staticmethod(ops.reshape)
        expand_dims = staticmethod(ops.expand_dims)
        shape = staticmethod(ops.shape)

    @staticmethod
    def prepare(y_true, y_pred, weights=None, *, sparse=None, ignore_index=None):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        if weights is not None:
            weights = ops.convert_to_tensor(weights)
        how = check_inputs(_shape(y_true), _dtype(y_true), _shape(y_pred), _dtype(y_pred),
                           None if weights is None else _shape(weights),
                           None if weights is None else _dtype(weights),
                           sparse=sparse, ignore_index=ignore_index)
        if how.true_channel:
            y_true = ops.expand_dims(y_true, -1)
        if how.weights_channel:
            weights = ops.expand_dims(weights, -1)
        return y_true, y_pred, weights, how.sparse

    @staticmethod
    def stats(y_true, y_pred, weights, check_range=True, **options):
        # The reference checks no range: check_range is not used.
        return plain_sums(_Plain.xp, y_true, y_pred, weights, **options)

    @staticmethod
    def channels(y_pred):
        return y_pred.shape[-1]

    @staticmethod
    def true_shape(y_true):
        return tuple(y_true.shape)


def _shape(x):
    try:
        return tuple(x.shape)
    except (TypeError, ValueError):  # a TensorShape of unknown rank
        return None


def _dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


def jaccard_loss(y_true, y_pred, *, from_logits=False, smooth=SMOOTH, per_image=False,
                 class_weights=None, log_loss=False, weights=None, mode=MODE, ignore_index=None,
                 classes=None):
    """Reference soft Jaccard loss, 1 - (I + s) / (T + P - I + s)."""
    return _front.overlap_loss(_Plain, "jaccard", y_true, y_pred, from_logits=from_logits,
                               smooth=smooth, per_image=per_image, class_weights=class_weights,
                               log_loss=log_loss, weights=weights, mode=mode,
                               ignore_index=ignore_index, classes=classes)


def dice_loss(y_true, y_pred, *, from_logits=False, smooth=SMOOTH, per_image=False,
              class_weights=None, log_loss=False, weights=None, mode=MODE, ignore_index=None,
              classes=None):
    """Reference soft Dice loss, 1 - (2I + s) / (T + P + s)."""
    return _front.overlap_loss(_Plain, "dice", y_true, y_pred, from_logits=from_logits,
                               smooth=smooth, per_image=per_image, class_weights=class_weights,
                               log_loss=log_loss, weights=weights, mode=mode,
                               ignore_index=ignore_index, classes=classes)


def tversky_loss(y_true, y_pred, *, alpha=ALPHA, beta=BETA, gamma=GAMMA, from_logits=False,
                 smooth=SMOOTH, per_image=False, class_weights=None, log_loss=False, weights=None,
                 mode=MODE, ignore_index=None, classes=None):
    """Reference (focal) Tversky loss, (1 - (I + s) / (I + a FP + b FN + s)) ** gamma."""
    return _front.overlap_loss(_Plain, "tversky", y_true, y_pred, from_logits=from_logits,
                               smooth=smooth, per_image=per_image, class_weights=class_weights,
                               log_loss=log_loss, alpha=alpha, beta=beta, gamma=gamma,
                               weights=weights, mode=mode, ignore_index=ignore_index,
                               classes=classes)


LOSSES = {"jaccard": jaccard_loss, "dice": dice_loss, "tversky": tversky_loss}

"""The overlap losses written the plain way, in keras.ops.

This is the pure-Keras formulation users copy into their projects: activate
(sigmoid, or softmax for multi-class), expand sparse labels with one_hot, cast,
multiply and sum over the full mask tensors (`_Plain.stats`). fastiou uses it
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


class _Plain:
    """The reference as a backend of fastiou's one front end (fastiou._front):
    the sums written out in keras.ops over the full mask tensors."""

    class xp:  # noqa: N801 - the array namespace of the loss algebra, in keras.ops
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
    def stats(y_true, y_pred, weights, *, from_logits, per_image, softmax, sparse, ignore_index):
        dtype = accumulation_dtype(_dtype(y_pred))
        p = ops.cast(y_pred, dtype)
        if from_logits:
            p = ops.softmax(p, axis=-1) if softmax else ops.sigmoid(p)
        w = None if weights is None else ops.cast(weights, dtype)
        if sparse:
            labels = ops.reshape(y_true, y_pred.shape[:-1])
            t = ops.one_hot(ops.cast(labels, "int32"), y_pred.shape[-1], dtype=dtype)
            if ignore_index is not None:
                keep = ops.expand_dims(ops.cast(ops.not_equal(labels, ignore_index), dtype), -1)
                w = keep if w is None else w * keep
        else:
            t = ops.cast(y_true, dtype)
        axes = tuple(range(1 if per_image else 0, len(p.shape) - 1))
        if w is None:
            w = ops.ones_like(p)
        return ops.sum(w * t * p, axis=axes), ops.sum(w * p, axis=axes), ops.sum(w * t, axis=axes)

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

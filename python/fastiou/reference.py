"""The overlap losses written the plain way, in keras.ops.

This is the pure-Keras formulation users copy into their projects: activate
(sigmoid, or softmax for multi-class), expand sparse labels with one_hot, cast,
multiply and sum over the full mask tensors. fastiou uses it as the
oracle in its tests (values, and gradients through autodiff) and as the
baseline in its benchmarks. Same arguments and results as the functional
losses in `fastiou.losses`.
"""

import keras
from keras import ops

from fastiou._algebra import resolve_mode
from fastiou._defaults import ALPHA, BETA, GAMMA, MODE, SMOOTH, epsilon


def _inputs(y_true, y_pred, weights, from_logits, mode, ignore_index):
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    dtype = "float64" if keras.backend.standardize_dtype(y_pred.dtype) == "float64" else "float32"
    channels = y_pred.shape[-1]
    sparse = channels != 1 and (
        len(y_true.shape) == len(y_pred.shape) - 1
        or (len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1))
    multiclass = resolve_mode(mode, sparse, channels, tuple(y_true.shape))
    p = ops.cast(y_pred, dtype)
    if from_logits:
        p = ops.softmax(p, axis=-1) if multiclass else ops.sigmoid(p)
    w = None
    if weights is not None:
        w = ops.cast(ops.convert_to_tensor(weights), dtype)
        if len(w.shape) == len(p.shape) - 1:
            w = ops.expand_dims(w, -1)
    if sparse:
        labels = ops.reshape(y_true, y_pred.shape[:-1])
        t = ops.one_hot(ops.cast(labels, "int32"), channels, dtype=dtype)
        if ignore_index is not None:
            keep = ops.expand_dims(ops.cast(ops.not_equal(labels, ignore_index), dtype), -1)
            w = keep if w is None else w * keep
    else:
        t = ops.cast(y_true, dtype)
        if len(t.shape) == len(p.shape) - 1:
            t = ops.expand_dims(t, -1)
    return t, p, w


def _sums(y_true, y_pred, weights, from_logits, per_image, mode=MODE, ignore_index=None):
    t, p, w = _inputs(y_true, y_pred, weights, from_logits, mode, ignore_index)
    axes = tuple(range(1 if per_image else 0, len(p.shape) - 1))
    if w is None:
        w = ops.ones_like(p)
    intersection = ops.sum(w * t * p, axis=axes)
    pred_sum = ops.sum(w * p, axis=axes)
    true_sum = ops.sum(w * t, axis=axes)
    return intersection, pred_sum, true_sum


def _finish(numerator, denominator, gamma, log_loss, per_image, class_weights, classes=None):
    eps = epsilon()
    empty = denominator <= eps
    score = ops.where(empty, 1.0, numerator / ops.where(empty, 1.0, denominator))
    if log_loss:
        loss = -ops.log(ops.maximum(score, eps))
    else:
        loss = ops.maximum(1.0 - score, 0.0)
        if gamma != 1.0:
            positive = loss > 0
            loss = ops.where(positive, ops.power(ops.where(positive, loss, 1.0), gamma), 0.0)
    cw = None if class_weights is None else ops.cast(ops.convert_to_tensor(class_weights), loss.dtype)
    if classes is not None:
        loss = ops.take(loss, classes, axis=-1)
        cw = None if cw is None else ops.take(cw, classes)
    if cw is None:
        return ops.mean(loss, axis=-1)
    return ops.sum(loss * cw, axis=-1) / ops.sum(cw)


def jaccard_loss(y_true, y_pred, *, from_logits=False, smooth=SMOOTH, per_image=False,
                 class_weights=None, log_loss=False, weights=None, mode=MODE, ignore_index=None,
                 classes=None):
    """Reference soft Jaccard loss, 1 - (I + s) / (T + P - I + s)."""
    inter, psum, tsum = _sums(y_true, y_pred, weights, from_logits, per_image, mode, ignore_index)
    union = tsum + psum - inter
    return _finish(inter + smooth, union + smooth, 1.0, log_loss, per_image, class_weights, classes)


def dice_loss(y_true, y_pred, *, from_logits=False, smooth=SMOOTH, per_image=False,
              class_weights=None, log_loss=False, weights=None, mode=MODE, ignore_index=None,
              classes=None):
    """Reference soft Dice loss, 1 - (2I + s) / (T + P + s)."""
    inter, psum, tsum = _sums(y_true, y_pred, weights, from_logits, per_image, mode, ignore_index)
    return _finish(2.0 * inter + smooth, tsum + psum + smooth, 1.0, log_loss, per_image,
                   class_weights, classes)


def tversky_loss(y_true, y_pred, *, alpha=ALPHA, beta=BETA, gamma=GAMMA, from_logits=False,
                 smooth=SMOOTH, per_image=False, class_weights=None, log_loss=False, weights=None,
                 mode=MODE, ignore_index=None, classes=None):
    """Reference (focal) Tversky loss, (1 - (I + s) / (I + a FP + b FN + s)) ** gamma."""
    inter, psum, tsum = _sums(y_true, y_pred, weights, from_logits, per_image, mode, ignore_index)
    false_pos = psum - inter
    false_neg = tsum - inter
    den = inter + alpha * false_pos + beta * false_neg + smooth
    return _finish(inter + smooth, den, gamma, log_loss, per_image, class_weights, classes)


LOSSES = {"jaccard": jaccard_loss, "dice": dice_loss, "tversky": tversky_loss}

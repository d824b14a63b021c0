"""IoU and Dice metrics for Keras, counted in one fused pass over the masks.

    import fastiou
    model.compile(optimizer="adam", loss=fastiou.losses.JaccardLoss(from_logits=True),
                  metrics=[fastiou.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, from_logits=True)])

`BinaryIoU`, `IoU`, `MeanIoU`, `OneHotIoU` and `OneHotMeanIoU` take the
arguments of their `keras.metrics` namesakes, with the same names, defaults
and meaning, and give the same `result()` on the same inputs: replacing
`keras.metrics` by `fastiou.metrics` changes no number. Keras thresholds or
argmaxes the masks, casts and flattens them and scatters a confusion matrix,
several passes with temporaries the size of the predictions; fastiou's kernel
reads each mask once and keeps, per class, the weight of the pixels whose
target and prediction are that class (tp), whose target is (true) and whose
prediction is (pred): on TensorFlow in float64 whatever the metric's dtype,
exact to 2**53 pixels (float32 on Keras' JAX backend for now).

Added to Keras' arguments:
  from_logits (BinaryIoU, BinaryDice): y_pred holds logits. `threshold` keeps
    its meaning as a probability: the kernel compares the logit with
    logit(threshold), so no sigmoid is computed.
  `result_per_class()`: every class's score, NaN for a class absent from
    both the targets and the predictions.
  `BinaryDice` and `MeanDice`: the Dice score 2 tp / (true + pred) with the
    same arguments.
And refused where Keras is silently wrong: a float y_pred with
`sparse_y_pred=True` (Keras truncates the probabilities to class 0) raises a
ValueError that says what to pass instead.

The fused kernel runs as a TensorFlow op in graph and eager mode, as an XLA
custom call of the same kernel under jit_compile (on the CPU, the same
bits), and
through the same XLA FFI handlers on Keras' JAX backend (jax.jit included):
the C++ kernel on the CPU, the CUDA kernel on a GPU where fastiou was built
with CUDA. On the GPU the counts of unit or integer weights are exact and
fractional weights are added in a fixed order up to 256 classes (the same
bits on every run); past 256 classes fractional weights are added by
atomics and can differ in the last bits between runs. A build without CUDA counts with
plain keras.ops where XLA compiles for a GPU (the same rules,
`plain_confusion_counts`).
"""

import math
import os
import shlex

import keras
import numpy as np
from keras import ops

from fastiou._defaults import keras_backend
from fastiou.kernels import CLASS_RULES

# ClassRule of csrc/core/confusion.h, as fastiou.kernels names them
INDEX, ARGMAX, THRESHOLD = (CLASS_RULES[name] for name in ("index", "argmax", "threshold"))

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# The stored dtypes the kernel reads by each rule (confusion_reads in
# csrc/core/confusion.h lists the same); others are cast first.
_KERNEL_DTYPES = {
    ("y_true", INDEX): ("bool", "uint8", "int32", "int64", "float32", "float64"),
    ("y_true", ARGMAX): ("uint8", "float32", "float64"),
    ("y_pred", INDEX): ("bool", "uint8", "int32", "int64"),
    ("y_pred", ARGMAX): _FLOAT_DTYPES,
    ("y_pred", THRESHOLD): _FLOAT_DTYPES,
}


def _dtype_name(x):
    return keras.backend.standardize_dtype(x.dtype)


def _is_float(dtype):
    return dtype in _FLOAT_DTYPES


def _known(shape):
    return shape is not None and all(d is not None for d in shape)


def _prod(dims):
    out = 1
    for d in dims:
        out *= d
    return out


def _split(shape, rule):
    """(batch, pixels, channels) of one input's static shape, None where
    unknown: the channels are the last axis for ARGMAX, else 1."""
    channels = shape[-1] if rule == ARGMAX else 1
    body = shape[:-1] if rule == ARGMAX else shape
    if len(body) == 0:
        return 1, 1, channels
    rest = body[1:]
    return body[0], (_prod(rest) if _known(rest) else None), channels


def _views(true_shape, pred_shape, weight_shape, true_rule, pred_rule):
    """The [batch, pixels, channels] views of y_true and y_pred and the
    [rows, cols] view of the weights that the kernel reads, from the static
    shapes (None where unknown, -1 in a view: inferred by the reshape).

    Weights: a scalar; one per image (shape (batch,) or (batch, 1, ...));
    or one per pixel (as many as the pixels)."""
    bt, pt, ct = _split(true_shape, true_rule)
    bp, pp, cp = _split(pred_shape, pred_rule)
    if None not in (bt, pt, bp, pp) and (bt, pt) != (bp, pp):
        # Keras flattens both and pairs them up: then one image of every pixel.
        if bt * pt != bp * pp:
            raise ValueError(
                f"y_true of shape {tuple(true_shape)} gives {bt * pt} pixels and y_pred of shape "
                f"{tuple(pred_shape)} gives {bp * pp}: they must give one class each for the same pixels")
        bt, pt = 1, bt * pt
    batch = bt if bt is not None else (bp if bp is not None else -1)
    pixels = pt if pt is not None else (pp if pp is not None else -1)
    views = (batch, pixels, ct if ct is not None else -1), (batch, pixels, cp if cp is not None else -1)
    if weight_shape is None:
        return views + ((1, 1),)
    size = _prod(weight_shape) if _known(weight_shape) else None
    if size == 1:
        return views + ((1, 1),)
    if size is not None and batch > 0 and pixels > 0 and size == batch * pixels and pixels > 1:
        return views + ((batch, pixels),)
    if batch < 0 and len(weight_shape) == 1:
        # one weight per image or per pixel, flattened (as Keras gives them),
        # while the batch is unknown: y_true's batch, once known, tells which
        return views + ((-1, -1),)
    per_image = len(weight_shape) >= 1 and all(d == 1 for d in weight_shape[1:]) and \
        (weight_shape[0] is None or batch < 0 or weight_shape[0] == batch)
    if per_image:
        return views + ((batch, 1),)
    if size is None or batch < 0 or pixels < 0 or size == batch * pixels:
        return views + ((batch, pixels),)
    raise ValueError(
        f"sample_weight of shape {tuple(weight_shape)} must be a scalar, one weight per image "
        f"({batch} images) or one per pixel ({batch} x {pixels} pixels)")


def _kernel_dtype(dtype, side, rule):
    """The dtype the kernel reads a `side` input of `dtype` in by `rule`: its
    own, or the nearest one it reads (an exact cast)."""
    if dtype in _KERNEL_DTYPES[(side, rule)]:
        return dtype
    wide = dtype in ("int32", "int64", "uint32", "uint64", "float64")
    if rule == INDEX:
        return "float32" if _is_float(dtype) else ("int64" if wide else "int32")
    return "float64" if wide else "float32"


def _check_inputs(true_dtype, pred_dtype, pred_shape, pred_rule, num_classes):
    if pred_rule == INDEX and _is_float(pred_dtype):
        channels = pred_shape[-1] if pred_shape else None
        hint = ("use BinaryIoU (threshold) for one channel of probabilities"
                if channels == 1 or num_classes == 2 else
                "pass sparse_y_pred=False for one channel of scores per class (the argmax is taken)")
        raise ValueError(
            f"y_pred is {pred_dtype} with sparse_y_pred=True: Keras would read it as class indices and "
            f"truncate probabilities and scores to class 0, so the metric could not move. Either {hint}, "
            "or, if y_pred really holds class indices, cast it to an integer dtype.")
    for name, dtype in (("y_true", true_dtype), ("y_pred", pred_dtype)):
        if not (dtype == "bool" or dtype.startswith(("int", "uint")) or _is_float(dtype)):
            raise ValueError(f"{name} of dtype {dtype} holds no classes or scores")


def plain_confusion_counts(y_true, y_pred, weights, *, num_classes, true_rule, pred_rule, threshold,
                           ignore_class, integer_weights):
    """The counts [tp, true, pred] per class, shape (3, num_classes), written
    with keras.ops on inputs already viewed as the kernel reads them (see
    csrc/core/confusion.h for the rules): the path where XLA compiles for a
    GPU and this build has no CUDA kernels."""
    count_dtype = "float64" if keras_backend() == "tensorflow" else "float32"

    def classes(x, rule):
        if rule == ARGMAX:
            return ops.cast(ops.argmax(x, axis=-1), "int64")
        x = x[..., 0]
        if rule == THRESHOLD:
            return ops.cast(ops.greater_equal(ops.cast(x, "float32"), threshold), "int64")
        if _is_float(_dtype_name(x)):
            # index_class (csrc/core/confusion_math.h): floats outside int32's range are no class
            wide = ops.cast(x, count_dtype)
            x = ops.where(ops.logical_and(wide >= -2.0**31, wide < 2.0**31), x, -1)
        return ops.cast(x, "int64")

    t = ops.reshape(classes(y_true, true_rule), [-1])
    p = ops.reshape(classes(y_pred, pred_rule), [-1])
    keep = ops.logical_and(ops.logical_and(t >= 0, t < num_classes), ops.logical_and(p >= 0, p < num_classes))
    if ignore_class is not None:
        keep = ops.logical_and(keep, ops.not_equal(t, ignore_class))
    if weights is None:
        # integers: exact up to 2**31 pixels a batch
        w = ops.cast(keep, "int32")
    else:
        w = ops.cast(weights, count_dtype)
        if integer_weights:
            w = ops.cast(ops.cast(w, "int64"), count_dtype)
        w = ops.where(keep, ops.reshape(ops.broadcast_to(w, ops.shape(y_true)[:2]), [-1]), 0)
    # one pass: the confusion matrix, then its diagonal and its sums
    cell = ops.where(keep, t * num_classes + p, 0)
    matrix = ops.reshape(ops.segment_sum(w, cell, num_segments=num_classes * num_classes),
                         (num_classes, num_classes))
    matrix = ops.cast(matrix, count_dtype)
    return ops.stack([ops.diagonal(matrix), ops.sum(matrix, axis=1), ops.sum(matrix, axis=0)])


def confusion_counts(y_true, y_pred, sample_weight=None, *, num_classes, true_rule=INDEX, pred_rule=INDEX,
                     threshold=0.5, from_logits=False, ignore_class=None, integer_weights=False):
    """The confusion counts of one batch, shape (3, num_classes), float64
    (float32 on JAX without x64):
    per class the weight of the pixels whose target and predicted class are
    that class, whose target is, and whose prediction is.

    true_rule, pred_rule: INDEX (class indices, one per pixel), ARGMAX (the
    channel of the largest value over the last axis) or, for y_pred,
    THRESHOLD (class 1 where y_pred >= threshold, read as float32; with
    from_logits, where the logit is >= logit(threshold)). Pixels whose classes
    lie outside [0, num_classes), or whose target class is ignore_class,
    count nowhere. sample_weight: a scalar, one weight per image or one per
    pixel; integer_weights truncates them first (Keras' integer metrics).
    """
    y_true = ops.convert_to_tensor(y_true)
    y_pred = ops.convert_to_tensor(y_pred)
    weights = None if sample_weight is None else ops.convert_to_tensor(sample_weight)
    for name, x in (("y_true", y_true), ("y_pred", y_pred), ("sample_weight", weights)):
        if x is not None and getattr(x.shape, "rank", 0) is None:
            raise ValueError(f"fastiou.metrics: {name} has an unknown rank while tracing; give it a shape of known "
                             "rank, such as (None, None, None, 1) in an input_signature (the sizes may stay unknown)")
    true_dtype, pred_dtype = _dtype_name(y_true), _dtype_name(y_pred)
    _check_inputs(true_dtype, pred_dtype, tuple(y_pred.shape), pred_rule, num_classes)
    if pred_rule == THRESHOLD and from_logits:
        threshold = _logit(threshold)
    true_view, pred_view, weight_view = _views(tuple(y_true.shape), tuple(y_pred.shape),
                                               None if weights is None else tuple(weights.shape),
                                               true_rule, pred_rule)
    for name, rule in (("y_true", true_rule), ("y_pred", pred_rule)):
        x = y_true if name == "y_true" else y_pred
        dtype = _kernel_dtype(_dtype_name(x), name, rule)
        if dtype != _dtype_name(x):
            x = ops.cast(x, dtype)
        y_true, y_pred = (x, y_pred) if name == "y_true" else (y_true, x)
    y_true = _reshape(y_true, true_view)
    y_pred = _reshape(y_pred, pred_view)
    if weights is not None:
        w_dtype = "float64" if _dtype_name(weights) in ("float64", "int32", "int64", "uint32") else "float32"
        weights = ops.cast(weights, w_dtype)
        weights = _reshape(weights, weight_view, batch_from=y_true)
    options = dict(num_classes=int(num_classes), true_rule=int(true_rule), pred_rule=int(pred_rule),
                   threshold=float(threshold), ignore_class=ignore_class, integer_weights=bool(integer_weights))
    backend = keras_backend()
    # Under XLA (jit_compile, JAX) the kernel runs as a custom call (Host or CUDA).
    if backend == "tensorflow":
        from fastiou import _ops

        if not _ops.in_xla_context() or _ops.confusion_lowers_to_xla():
            weights, attributes = _kernel_arguments(weights, options)
            return _ops.confusion_counts_op(y_true, y_pred, weights, **attributes)
    elif backend == "jax" and _jax_confusion_counts() is not None:
        options["deterministic"] = _xla_flags_require_determinism()
        weights, attributes = _kernel_arguments(weights, options)
        return _jax_confusion_counts()(y_true, y_pred, weights, **attributes)
    return plain_confusion_counts(y_true, y_pred, weights, **options)


def _kernel_arguments(weights, options):
    """The weights input and the attributes (FASTIOU_CONFUSION_OPTIONS of
    csrc/core/confusion.h, in its order) of the fused kernel, for every door: without
    weights an empty float32 stand-in and has_weights False; ignore_class
    None as has_ignore False. deterministic (the CUDA handler refuses counts it
    cannot repeat bitwise) is False unless options say it: TensorFlow's op and
    its XLA lowering add TensorFlow's op determinism themselves."""
    attributes = dict(num_classes=options["num_classes"], pred_rule=options["pred_rule"],
                      true_rule=options["true_rule"], threshold=options["threshold"],
                      has_weights=weights is not None, integer_weights=options["integer_weights"],
                      has_ignore=options["ignore_class"] is not None,
                      ignore_class=0 if options["ignore_class"] is None else int(options["ignore_class"]),
                      deterministic=bool(options.get("deterministic", False)))
    if weights is None:
        weights = ops.zeros((0, 0), "float32")
    return weights, attributes


# XLA's flags that ask a GPU program for the same bits on every run (the
# first replaced the second in newer XLA releases).
_XLA_DETERMINISM_FLAGS = ("xla_gpu_exclude_nondeterministic_ops", "xla_gpu_deterministic_ops")


def _xla_flags_require_determinism(flags=None):
    """Whether XLA_FLAGS (or `flags`) turns on one of XLA's GPU determinism
    flags, as JAX users ask for repeatable GPU results, read as XLA reads
    them: words split as a shell splits them (quotes removed), flags only
    after "--", "--name" alone or "--name=true" (or 1) on, the last setting of
    each counting."""
    flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
    try:
        words = shlex.split(flags)
    except ValueError:  # an unclosed quote: XLA refuses these flags itself
        words = flags.split()
    setting = {}
    for word in words:
        if not word.startswith("--"):
            continue
        name, _, value = word[2:].partition("=")
        if name in _XLA_DETERMINISM_FLAGS:
            setting[name] = value.lower() in ("", "true", "1")
    return any(setting.values())


def _jax_confusion_counts():
    """fastiou's JAX call of the fused counts (XLA FFI), or None where it
    cannot run: this build has no handler for JAX's default platform (no FFI
    handlers at all, or a GPU and no CUDA kernels)."""
    import jax

    from fastiou import kernels

    platform = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda"}.get(jax.default_backend())
    if platform not in kernels.ffi_handlers().get("fastiou_confusion_counts", {}):
        return None
    from fastiou._backends import jax as jax_backend

    return jax_backend.confusion_counts_call


def _reshape(x, view, batch_from=None):
    """x reshaped to a view of _views, whose sizes unknown while tracing
    (-1) come from x: the batch from its leading axis, the channels from its
    last, the pixels from the rest. A weights view [-1, -1] (batch and pixels
    unknown: x may be flattened, so its leading axis need not be the batch)
    takes the batch from batch_from's leading axis (y_true's)."""
    if keras_backend() == "tensorflow":
        import tensorflow as tf

        dims = list(view)
        if min(dims) < 0:
            shape = tf.shape(x)
            if dims[0] < 0:
                both_unknown = len(dims) == 2 and dims[1] < 0
                dims[0] = (tf.shape(batch_from) if both_unknown and batch_from is not None else shape)[0]
            if len(dims) == 3 and dims[2] < 0:
                dims[2] = shape[-1]
        return tf.reshape(x, dims)
    return ops.reshape(x, view)


def _logit(threshold):
    """logit(threshold) as float32; -inf at 0 and +inf at 1."""
    if threshold <= 0:
        return -math.inf
    if threshold >= 1:
        return math.inf
    return float(np.float32(math.log(threshold) - math.log1p(-threshold)))


# Significand bits (the implicit one included) of the float dtypes: integers
# up to 2**bits are exact in them.
_SIGNIFICAND_BITS = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}


def _keras_rounds_indices(index_dtype, metric_dtype, num_classes):
    """Whether Keras' conversion of class indices of index_dtype to a metric of
    metric_dtype can change a class: Keras converts y_true (and class-index
    y_pred) to the metric's dtype before taking the integer part, so a float
    metric dtype rounds them first (float64 2.9999999999 is 3.0 in float32:
    class 3, where the stored value truncates to class 2). Integer indices
    change only past 2**bits, which matters only if classes reach that far
    (a larger value stays out of [0, num_classes) once rounded); a float
    index dtype no wider than the metric's is exact in it."""
    bits = _SIGNIFICAND_BITS.get(metric_dtype)
    if bits is None:
        return False  # an integer metric dtype: a cast truncates, as the kernel does
    if _is_float(index_dtype):
        return _SIGNIFICAND_BITS[index_dtype] > bits
    return num_classes > 2**bits


class _ConfusionMetric(keras.metrics.Metric):
    """Counts per class in one float64 variable of shape (3, num_classes):
    tp, true, pred (see `confusion_counts`). Subclasses give the score."""

    def __init__(self, num_classes, target_class_ids, *, name, dtype, ignore_class, true_rule, pred_rule,
                 threshold=0.5, from_logits=False, axis=-1):
        super().__init__(name=name, dtype=dtype or "int")
        self._direction = "up"
        if axis != -1:
            raise ValueError(f"fastiou's metrics read the classes on the last axis (axis=-1), got axis={axis}")
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        ids = [int(c) for c in target_class_ids]
        if not ids:
            raise ValueError("target_class_ids must name at least one class")
        if max(ids) >= self.num_classes or min(ids) < -self.num_classes:
            raise ValueError(f"target_class_ids {ids} must lie in [-num_classes, num_classes) with "
                             f"num_classes={self.num_classes} (a negative id counts from the last class)")
        self.target_class_ids = ids
        self.ignore_class = None if ignore_class is None else int(ignore_class)
        self.axis = axis
        self.threshold = float(threshold)
        self.from_logits = bool(from_logits)
        self._true_rule, self._pred_rule = true_rule, pred_rule
        count_dtype = "float64" if keras_backend() == "tensorflow" else "float32"
        self.counts = self.add_variable(name="confusion_counts", shape=(3, self.num_classes),
                                        initializer=keras.initializers.Zeros(), dtype=count_dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds the counts of one batch. y_true and y_pred as for the
        keras.metrics namesake; sample_weight a scalar, one weight per
        image or one per pixel."""
        y_true = self._as_keras_converts(y_true, self._true_rule)
        y_pred = self._as_keras_converts(y_pred, self._pred_rule)
        counts = confusion_counts(
            y_true, y_pred, sample_weight, num_classes=self.num_classes, true_rule=self._true_rule,
            pred_rule=self._pred_rule, threshold=self.threshold, from_logits=self.from_logits,
            ignore_class=self.ignore_class, integer_weights="int" in str(self.dtype))
        self.counts.assign(self.counts + ops.cast(counts, self.counts.dtype))

    def _as_keras_converts(self, x, rule):
        """Class indices x converted to the metric's dtype first where Keras'
        conversion would change a class (_keras_rounds_indices): a cast, so a
        temporary of x's size, for float64 labels with a float32 metric and
        the like; none otherwise."""
        x = ops.convert_to_tensor(x)
        if rule == INDEX and _keras_rounds_indices(_dtype_name(x), keras.backend.standardize_dtype(self.dtype),
                                                   self.num_classes):
            return ops.cast(x, self.dtype)
        return x

    def reset_state(self):
        self.counts.assign(ops.zeros(self.counts.shape, dtype=self.counts.dtype))

    def _scores(self, numerator_scale, subtract_tp):
        tp, tc, pc = self.counts[0], self.counts[1], self.counts[2]
        denominator = tc + pc - tp if subtract_tp else tc + pc
        return ops.cast(numerator_scale * tp, "float32"), ops.cast(denominator, "float32")

    def result_per_class(self):
        """Every class's score (float32), NaN for a class absent from both
        the targets and the predictions seen so far."""
        num, den = self._scores(*self._score_terms)
        return ops.where(ops.greater(den, 0), ops.divide(num, ops.where(den > 0, den, 1.0)), float("nan"))

    def result(self):
        """The mean score over target_class_ids of the classes present in the
        targets or the predictions, as Keras computes it (float32)."""
        num, den = self._scores(*self._score_terms)
        ids = ops.convert_to_tensor([c % self.num_classes for c in self.target_class_ids], dtype="int32")
        num = ops.take(num, ids)
        den = ops.take(den, ids)
        valid = ops.cast(ops.greater(den, 1e-9), "float32")
        eps = keras.backend.epsilon()
        score = ops.where(valid, ops.divide(num, den + eps), 0.0)
        return ops.divide(ops.sum(score, axis=-1), ops.sum(valid) + eps)

    def get_config(self):
        return {"name": self.name, "dtype": self._dtype}


_IOU = (1.0, True)  # tp / (true + pred - tp)
_DICE = (2.0, False)  # 2 tp / (true + pred)


@keras.saving.register_keras_serializable(package="fastiou")
class IoU(_ConfusionMetric):
    """Intersection over union of the target classes, as keras.metrics.IoU:
    per class tp / (tp + fp + fn), averaged over `target_class_ids`.

    Args:
      num_classes: the number of classes.
      target_class_ids: the classes whose IoU is averaged.
      name, dtype: as for every Keras metric; an integer dtype (Keras'
        default) truncates float sample weights, as Keras does.
      ignore_class: pixels whose target class is this count nowhere.
      sparse_y_true: y_true holds class indices; False: the argmax over its
        last axis (one-hot targets).
      sparse_y_pred: y_pred holds class indices (an integer dtype); False: the
        argmax over its last axis (scores, probabilities or logits).
      axis: the class axis; -1 only.
    """

    _score_terms = _IOU

    def __init__(self, num_classes, target_class_ids, name=None, dtype=None, ignore_class=None,
                 sparse_y_true=True, sparse_y_pred=True, axis=-1):
        super().__init__(num_classes, target_class_ids, name=name, dtype=dtype, ignore_class=ignore_class,
                         true_rule=INDEX if sparse_y_true else ARGMAX,
                         pred_rule=INDEX if sparse_y_pred else ARGMAX, axis=axis)
        self.sparse_y_true = bool(sparse_y_true)
        self.sparse_y_pred = bool(sparse_y_pred)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "target_class_ids": self.target_class_ids, "ignore_class": self.ignore_class,
                "sparse_y_true": self.sparse_y_true, "sparse_y_pred": self.sparse_y_pred, "axis": self.axis}


@keras.saving.register_keras_serializable(package="fastiou")
class MeanIoU(IoU):
    """Mean IoU over all classes, as keras.metrics.MeanIoU (arguments as `IoU`,
    no target_class_ids)."""

    def __init__(self, num_classes, name=None, dtype=None, ignore_class=None, sparse_y_true=True,
                 sparse_y_pred=True, axis=-1):
        super().__init__(num_classes, list(range(int(num_classes))), name=name, dtype=dtype,
                         ignore_class=ignore_class, sparse_y_true=sparse_y_true, sparse_y_pred=sparse_y_pred,
                         axis=axis)

    def get_config(self):
        config = super().get_config()
        del config["target_class_ids"]
        return config


@keras.saving.register_keras_serializable(package="fastiou")
class OneHotIoU(IoU):
    """IoU of the target classes with one-hot y_true, as keras.metrics.OneHotIoU."""

    def __init__(self, num_classes, target_class_ids, name=None, dtype=None, ignore_class=None,
                 sparse_y_pred=False, axis=-1):
        super().__init__(num_classes, target_class_ids, name=name, dtype=dtype, ignore_class=ignore_class,
                         sparse_y_true=False, sparse_y_pred=sparse_y_pred, axis=axis)

    def get_config(self):
        config = super().get_config()
        del config["sparse_y_true"]
        return config


@keras.saving.register_keras_serializable(package="fastiou")
class OneHotMeanIoU(MeanIoU):
    """Mean IoU with one-hot y_true, as keras.metrics.OneHotMeanIoU."""

    def __init__(self, num_classes, name=None, dtype=None, ignore_class=None, sparse_y_pred=False, axis=-1):
        super().__init__(num_classes, name=name, dtype=dtype, ignore_class=ignore_class, sparse_y_true=False,
                         sparse_y_pred=sparse_y_pred, axis=axis)

    def get_config(self):
        config = super().get_config()
        del config["sparse_y_true"]
        return config


class _Binary(_ConfusionMetric):
    # Keras' positional order (target_class_ids, threshold, name, dtype);
    # from_logits, fastiou's own, is keyword-only.
    def __init__(self, target_class_ids=(0, 1), threshold=0.5, name=None, dtype=None, *, from_logits=False):
        super().__init__(2, target_class_ids, name=name, dtype=dtype, ignore_class=None, true_rule=INDEX,
                         pred_rule=THRESHOLD, threshold=threshold, from_logits=from_logits)

    def get_config(self):
        return {**super().get_config(), "target_class_ids": self.target_class_ids, "threshold": self.threshold,
                "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="fastiou")
class BinaryIoU(_Binary):
    """IoU of class 0 and/or 1 of thresholded predictions, as
    keras.metrics.BinaryIoU: a pixel is predicted 1 where y_pred >= threshold.

    Args:
      target_class_ids: [0], [1] or [0, 1] (the mean of both).
      threshold: the probability at or above which a pixel is foreground.
      from_logits: y_pred holds logits: compared with logit(threshold), so
        `threshold` keeps its meaning and no sigmoid is computed.
      name, dtype: as for every Keras metric.
    """

    _score_terms = _IOU


@keras.saving.register_keras_serializable(package="fastiou")
class BinaryDice(_Binary):
    """Dice score 2 tp / (2 tp + fp + fn) of class 0 and/or 1 of thresholded
    predictions; arguments as `BinaryIoU`."""

    _score_terms = _DICE


@keras.saving.register_keras_serializable(package="fastiou")
class MeanDice(MeanIoU):
    """Mean Dice score 2 tp / (2 tp + fp + fn) over all classes; arguments as
    `MeanIoU`."""

    _score_terms = _DICE

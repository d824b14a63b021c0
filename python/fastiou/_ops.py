"""Loading of fastiou's TensorFlow op library, input checks and gradients.

`overlap_stats` validates the inputs (fastiou._shapes), runs the fused
statistics op and returns I, P, T; the losses reach the same op through
fastiou._backends.tensorflow. Under XLA the op lowers to a custom call of the
same kernels; a build without XLA kernels computes the same sums with plain
TF ops there instead.
"""

import ctypes
import os
import warnings

import tensorflow as tf
from tensorflow.python.framework import op_def_registry
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import control_flow_util

from fastiou import _shapes
from fastiou._shapes import check_inputs

_LIB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_fastiou_ops.so")
try:
    _lib = tf.load_op_library(_LIB_PATH)
except (tf.errors.NotFoundError, OSError) as err:  # pragma: no cover - install problem
    raise ImportError(
        f"fastiou could not load its op library {_LIB_PATH}: {err}. fastiou is built for "
        f"TensorFlow 2.21 and this is TensorFlow {tf.__version__}; reinstall fastiou "
        "against the TensorFlow you run."
    ) from err

def _has_xla_kernels(path):
    """Whether the op library lowers its ops to XLA custom calls."""
    try:
        return bool(ctypes.CDLL(path).fastiou_has_xla_kernels())
    except (OSError, AttributeError):
        return False


HAS_XLA_KERNELS = _has_xla_kernels(_LIB_PATH)
# The stats op's options as registered (csrc/core/overlap_options.h): its
# attributes but the dtypes. The gradient op takes each of them, and wrt_true.
_STATS_OPTIONS = tuple(attr.name for attr in op_def_registry.get("FastiouOverlapStats").attr
                       if attr.type != "type")
_warned_fallback = False


def accumulation_dtype(pred_dtype):
    """float64 for float64 predictions, float32 for every narrower float."""
    return tf.as_dtype(_shapes.accumulation_dtype(tf.as_dtype(pred_dtype).name))


def in_xla_context():
    """True while building a function compiled by XLA (jit_compile=True)."""
    return control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())


def _shape(x):
    return None if x.shape.rank is None else tuple(x.shape.as_list())


def prepare_inputs(y_true, y_pred, weights=None, *, sparse=None, ignore_index=None):
    """Converts and checks the inputs (fastiou._shapes.check_inputs); returns
    (y_true, y_pred, weights, sparse).

    `sparse` None resolves it from the shapes. A dense y_true or weights
    missing only the trailing channel axis of y_pred (y_true: of a
    single-channel y_pred) gets it back (a free reshape); narrow integer
    labels are read as int32. Weights are cast to y_pred's dtype. Sparse
    y_true (class indices) keeps its shape.
    """
    y_pred = tf.convert_to_tensor(y_pred)
    y_true = tf.convert_to_tensor(y_true)
    if weights is not None:
        weights = tf.convert_to_tensor(weights)
    how = check_inputs(_shape(y_true), y_true.dtype.name, _shape(y_pred), y_pred.dtype.name,
                       None if weights is None else _shape(weights),
                       None if weights is None else weights.dtype.name,
                       sparse=sparse, ignore_index=ignore_index)
    if how.label_dtype is not None:
        y_true = tf.cast(y_true, how.label_dtype)
    if how.true_channel:
        y_true = tf.expand_dims(y_true, -1)
    if weights is not None:
        if weights.dtype != y_pred.dtype:
            weights = tf.cast(weights, y_pred.dtype)
        if how.weights_channel:
            weights = tf.expand_dims(weights, -1)
    return y_true, y_pred, weights, how.sparse


def _plain_stats(y_true, y_pred, weights, check_range=True, **options):
    """The same sums with ordinary TF ops (fastiou.reference.plain_sums), for
    XLA clusters when the op library has no XLA kernels. They check no
    range (check_range is not used)."""
    from fastiou._backends.tensorflow import xp  # imports this module
    from fastiou.reference import plain_sums

    return plain_sums(xp, y_true, y_pred, weights, **options)


def overlap_stats(y_true, y_pred, weights=None, *, from_logits=False, per_image=True,
                  softmax=False, sparse=None, ignore_index=None, check_range=True):
    """Soft overlap sums I = sum(w*t*p), P = sum(w*p), T = sum(w*t).

    Args:
      y_true: targets, bool, integer or float, same shape as y_pred (or that
        shape without a trailing channel axis of 1); or, sparse, one class
        index per pixel (uint8, int32, int64) of y_pred's shape without its
        channel axis or with a channel axis of 1.
      y_pred: probabilities, or logits with `from_logits=True`; channels-last,
        rank >= 2: (B, C), (B, H, W, C), (B, D, H, W, C), ...
      weights: optional per-element weights, shape of y_pred or of y_pred with
        a channel axis of 1 (one weight per pixel).
      from_logits: apply the activation to y_pred inside the kernel.
      per_image: sums per (image, channel), shape (B, C); otherwise per channel
        over the whole batch, shape (C,).
      softmax: with from_logits, a softmax over the channel axis instead of a
        sigmoid per channel.
      sparse: y_true holds class indices; None infers it from the shapes.
      ignore_index: a sparse label whose pixels count in no sum and get zero
        gradient.
      check_range: raise InvalidArgumentError for a dense target or (without
        from_logits) a prediction outside [0, 1]; False sums them as they
        are (see `fastiou.jaccard_loss`).

    Returns:
      (I, P, T) in float32, or float64 for float64 y_pred.
    """
    y_true, y_pred, weights, sparse = prepare_inputs(y_true, y_pred, weights, sparse=sparse,
                                                     ignore_index=ignore_index)
    return fused_stats(y_true, y_pred, weights, from_logits=from_logits, per_image=per_image,
                       softmax=softmax, sparse=sparse, ignore_index=ignore_index, check_range=check_range)


def fused_stats(y_true, y_pred, weights, *, from_logits, per_image, softmax, sparse, ignore_index,
                check_range=True):
    """`overlap_stats` of inputs `prepare_inputs` has checked: the fused op,
    or plain TF ops under XLA without XLA kernels."""
    if in_xla_context() and not HAS_XLA_KERNELS:
        global _warned_fallback
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn("fastiou was built without XLA kernels: under XLA (jit_compile) the losses "
                          "run as plain TensorFlow ops instead of the fused kernels", stacklevel=3)
        return _plain_stats(y_true, y_pred, weights, from_logits=from_logits, per_image=per_image,
                            softmax=softmax, sparse=sparse, ignore_index=ignore_index)
    has_weights = weights is not None
    if not has_weights:
        weights = tf.zeros([0], y_pred.dtype)
    options = _shapes.op_options(from_logits=from_logits, per_image=per_image, softmax=softmax, sparse=sparse,
                                 ignore_index=ignore_index, has_weights=has_weights, check_range=check_range)
    return _lib.fastiou_overlap_stats(y_true, y_pred, weights, Tacc=accumulation_dtype(y_pred.dtype), **options)


@tf.RegisterGradient("FastiouOverlapStats")
def _overlap_stats_grad(op, grad_i, grad_p, grad_t):
    y_true, y_pred, weights = op.inputs
    grads = [
        g if g is not None else tf.zeros_like(op.outputs[k])
        for k, g in enumerate((grad_i, grad_p, grad_t))
    ]
    attrs = {name: op.get_attr(name) for name in _STATS_OPTIONS}
    grad_pred = _lib.fastiou_overlap_grad(y_true, y_pred, weights, *grads, wrt_true=False, **attrs)
    grad_true = None
    if y_true.dtype.is_floating and not attrs["sparse"]:
        # A separate op: graphs that never use it prune it, so integer-free
        # training pays for one gradient pass only.
        grad_true = _lib.fastiou_overlap_grad(y_true, y_pred, weights, *grads, wrt_true=True, **attrs)
        if grad_true.dtype != y_true.dtype:
            grad_true = tf.cast(grad_true, y_true.dtype)
    return [grad_true, grad_pred, None]


def confusion_lowers_to_xla():
    """Whether confusion_counts_op compiles under XLA here: this library has
    its XLA lowering, and either no GPU is visible or it holds the CUDA
    kernel (without it an XLA cluster on a GPU would find no handler)."""
    return HAS_XLA_KERNELS and (not tf.config.list_logical_devices("GPU") or _kernels_built_with_cuda())


def _kernels_built_with_cuda():
    from fastiou import kernels

    return kernels.built_with_cuda()


def confusion_counts_op(y_true, y_pred, weights, **attributes):
    """The fused confusion counts (csrc/core/confusion.h) of y_true and y_pred
    viewed as [batch, pixels, channels] and weights as [rows, cols]: a
    float64 tensor of shape (3, num_classes). attributes: the kernel's
    options, from fastiou.metrics._kernel_arguments."""
    return _lib.fastiou_confusion_counts(y_true, y_pred, weights, **attributes)

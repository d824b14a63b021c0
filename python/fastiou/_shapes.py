"""What the inputs' shapes and dtypes mean, resolved and checked once for every front end.

Pure functions on shapes and dtype names, so that the TensorFlow ops, the
JAX functions, the reference and `fastiou.kernels` read the same inputs the
same way, and the front ends refuse the same ones with the same messages. A
shape is a tuple of sizes (None for a size unknown while tracing), or None
for an unknown rank; a dtype is its name ("float32", "bfloat16", "uint8",
"bool", ...). Nothing here imports a framework.
"""

from typing import NamedTuple, Optional

PRED_DTYPES = ("float16", "bfloat16", "float32", "float64")
LABEL_DTYPES = ("uint8", "int32", "int64")  # sparse labels, read as they are
WIDENED_LABEL_DTYPES = ("int8", "int16", "uint16", "uint32")  # sparse labels, read as int32
TRUE_DTYPES = ("bool", "uint8", "int32", "int64") + PRED_DTYPES


def accumulation_dtype(pred_dtype):
    """The dtype of the sums: float64 for float64 predictions, float32 for
    every narrower float."""
    return "float64" if pred_dtype == "float64" else "float32"


def is_sparse(true_shape, pred_shape):
    """Whether y_true holds class indices: y_pred's shape without its channel
    axis, or with a channel axis of 1, while y_pred has several channels (or
    a number unknown while tracing). False where a rank is unknown."""
    if true_shape is None or pred_shape is None or len(pred_shape) == 0 or pred_shape[-1] == 1:
        return False
    if len(true_shape) == len(pred_shape) - 1:
        return True
    return len(true_shape) == len(pred_shape) and true_shape[-1] == 1


def adds_channel(shape, pred_shape):
    """Whether weights of `shape` lack only y_pred's trailing channel axis (one
    weight per pixel): they then get one of size 1 (a free reshape)."""
    return shape is not None and pred_shape is not None and len(shape) == len(pred_shape) - 1


def true_adds_channel(true_shape, pred_shape, sparse):
    """Whether a dense y_true lacks only the channel axis of a single-channel
    y_pred: it then gets one of size 1, as the kernels read it."""
    return not sparse and adds_channel(true_shape, pred_shape) and pred_shape[-1] == 1


def compatible(shape, other):
    """Whether two shapes can be equal: same rank, and equal sizes where both
    are known (TensorShape.is_compatible_with on tuples)."""
    if shape is None or other is None:
        return True
    return len(shape) == len(other) and all(a is None or b is None or a == b
                                            for a, b in zip(shape, other))


def show(shape):
    """A shape as TensorFlow and NumPy print it: (2, None, 3), (5,), <unknown>."""
    if shape is None:
        return "<unknown>"
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _numeric(dtype):
    return dtype == "bool" or dtype.startswith(("float", "bfloat", "int", "uint"))


class Inputs(NamedTuple):
    """How a front end reads checked inputs: `sparse` (y_true holds class
    indices), `label_dtype` (cast sparse labels to it first; None: as they
    are), `true_channel` and `weights_channel` (add a trailing channel axis
    of 1 to y_true, to the weights)."""

    sparse: bool
    label_dtype: Optional[str]
    true_channel: bool
    weights_channel: bool


def check_inputs(true_shape, true_dtype, pred_shape, pred_dtype, weights_shape=None,
                 weights_dtype=None, *, sparse=None, ignore_index=None):
    """Checks y_true, y_pred and the weights (pass weights_dtype only where
    there are weights) by their shapes and dtype names; returns an `Inputs`.

    Raises TypeError on a dtype and ValueError on a shape no loss reads, with
    the message of every front end; sizes unknown while tracing pass. `sparse`
    None resolves it from the shapes (`is_sparse`).
    """
    if pred_dtype not in PRED_DTYPES:
        raise TypeError(
            f"fastiou: y_pred must be float16, bfloat16, float32 or float64, got {pred_dtype}")
    rank = None if pred_shape is None else len(pred_shape)
    if rank is not None and rank < 2:
        raise ValueError(
            f"fastiou: y_pred must have rank >= 2 (batch, ..., channels), got shape {show(pred_shape)}")
    if sparse is None:
        sparse = is_sparse(true_shape, pred_shape)
    label_dtype, true_channel = None, False
    if sparse:
        if true_dtype in WIDENED_LABEL_DTYPES:
            label_dtype = "int32"
        elif true_dtype not in LABEL_DTYPES:
            raise TypeError(
                f"fastiou: sparse labels (class indices) must be uint8, int32 or int64, got {true_dtype}")
        if rank is not None and true_shape is not None:
            no_channel = tuple(pred_shape[:-1])
            if not (compatible(true_shape, no_channel) or compatible(true_shape, no_channel + (1,))):
                raise ValueError(
                    f"fastiou: sparse y_true shape {show(true_shape)} must be {show(no_channel)} or "
                    f"{show(no_channel + (1,))} for y_pred shape {show(pred_shape)}")
    else:
        if true_dtype not in TRUE_DTYPES:
            raise TypeError(
                f"fastiou: y_true must be bool, uint8, int32, int64 or a float type, got {true_dtype}")
        true_channel = true_adds_channel(true_shape, pred_shape, sparse)
        shape = tuple(true_shape) + (1,) if true_channel else true_shape
        if not compatible(shape, pred_shape):
            raise ValueError(
                f"fastiou: y_true shape {show(shape)} does not match y_pred shape {show(pred_shape)}")
    if ignore_index is not None and not sparse:
        raise ValueError("fastiou: ignore_index needs sparse labels (class indices)")
    weights_channel = False
    if weights_dtype is not None:
        if not _numeric(weights_dtype):
            raise TypeError(f"fastiou: weights must be numeric, got {weights_dtype}")
        weights_channel = adds_channel(weights_shape, pred_shape)
        shape = tuple(weights_shape) + (1,) if weights_channel else weights_shape
        if rank is not None:
            per_pixel = tuple(pred_shape[:-1]) + (1,)
            if not (compatible(shape, pred_shape) or compatible(shape, per_pixel)):
                raise ValueError(
                    f"fastiou: weights shape {show(shape)} must equal y_pred shape {show(pred_shape)} "
                    f"or {show(per_pixel)}")
    return Inputs(bool(sparse), label_dtype, true_channel, weights_channel)


def op_options(*, from_logits, per_image, softmax, sparse, ignore_index, has_weights, check_range):
    """The options of the overlap ops as their attributes (the TensorFlow ops'
    and the XLA FFI handlers', defined in csrc/core/overlap_options.h):
    booleans, and ignore_index as an int. The flags has_weights and
    has_ignore say whether weights and an ignore_index are given."""
    return dict(from_logits=bool(from_logits), per_image=bool(per_image), has_weights=bool(has_weights),
                softmax=bool(softmax), sparse=bool(sparse), has_ignore=ignore_index is not None,
                ignore_index=0 if ignore_index is None else int(ignore_index), check_range=bool(check_range))

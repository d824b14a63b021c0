"""fastiou's kernels on any framework's arrays, through DLPack.

The same C++ and CUDA kernels as the TensorFlow ops, for NumPy arrays (CPU)
and CuPy, PyTorch or JAX arrays (CUDA), with no TensorFlow involved:

    import torch, fastiou.kernels as fk
    I, P, T = fk.overlap_stats(y_true, logits, from_logits=True)      # torch tensors in, out
    dy = fk.overlap_grad(y_true, logits, None, dI, dP, dT, from_logits=True)

On a CUDA array the work is enqueued on the array's framework's current stream
(PyTorch's and CuPy's current stream; for JAX arrays, the legacy default stream
after the inputs are ready) and the call returns without waiting, except that
with sparse labels and `check_labels=True` (the default) it waits to raise on a
label outside [0, C) (or a prediction outside [0, 1] without from_logits);
`check_labels=False` defers that check (see `overlap_stats`). A dense target
or probability outside [0, 1] on a GPU gives NaN sums; on the CPU every such
value raises ValueError at once. Results come back in the framework of y_pred. fastiou holds
on to the input arrays until the kernels reading them have run, so an array
may be dropped (or, with JAX, freed) as soon as the call returns.

`cuda_unavailable_reason()` says why CUDA arrays cannot run here, if they
cannot: no CUDA kernels in the build, a driver too old for them, or no GPU.
"""

import importlib

from fastiou import _fastiou_kernels as _ext
from fastiou import _shapes

__all__ = ["overlap_stats", "overlap_grad", "confusion_counts", "CLASS_RULES", "OverlapStats", "LabelCheck",
           "built_with_cuda",
           "cuda_device_count", "cuda_unavailable_reason", "cuda_pool_used", "cuda_pool_used_high",
           "ffi_handlers", "is_sparse_shape", "cpu_target", "cpu_targets"]

# What overlap_stats(check_labels=False) hands back to check the labels later:
# ready() never waits; check() waits for the stats kernel and raises the
# ValueError that check_labels=True would have raised, or returns None.
LabelCheck = _ext.LabelCheck

_CUDA_DEVICE_TYPES = (2, 13)  # DLPack: kDLCUDA, kDLCUDAManaged

# How a pixel's stored values give its class (ClassRule of
# csrc/core/confusion.h): a class index, the argmax over the channels, or (for
# y_pred) 1 where the value is >= the threshold, else 0.
CLASS_RULES = {"index": 0, "argmax": 1, "threshold": 2}


def built_with_cuda():
    """Whether this build of fastiou holds the CUDA kernels."""
    return _ext.built_with_cuda()


def cpu_target():
    """The SIMD level fastiou's CPU kernels run at in this process, e.g.
    "x86-64-v3" (AVX2 and FMA).

    The wheel and the default build hold one copy of the CPU kernels per
    x86-64 level: "x86-64-v2" (SSE4.2), "x86-64-v3" (AVX2, FMA) and
    "x86-64-v4" (AVX-512). The best one this CPU supports is chosen once per
    process, when a kernel first runs; the environment variable
    FASTIOU_CPU_TARGET, set before that, names a lower one ("x86-64-v2" or
    "v2"). A build for one -march (FASTIOU_CPU_ARCH, e.g. native) reports
    "-march=native". Raises RuntimeError when the kernels cannot run:
    FASTIOU_CPU_TARGET names no level of the build or one this CPU lacks, or
    the CPU is below x86-64-v2. Results are bitwise reproducible per level;
    two levels may differ in the last bits (their vector widths differ).
    The TensorFlow ops and XLA handlers choose the same way."""
    level, _, problem = _ext.cpu_target()
    if problem:
        raise RuntimeError(problem)
    return level


def cpu_targets():
    """The SIMD levels of this build that this CPU runs, lowest first (see
    cpu_target): the values FASTIOU_CPU_TARGET may take here."""
    return list(_ext.cpu_target()[1])


def cuda_device_count():
    """CUDA devices the kernels can see (0 without CUDA kernels or GPU)."""
    return _ext.cuda_device_count()


def cuda_unavailable_reason():
    """None when fastiou's CUDA kernels can run here: built with them, a driver
    new enough for them, and a GPU visible. Otherwise why not, as a message:
    "fastiou was built without CUDA kernels", the driver's problem (naming the
    CUDA version the kernels need and the one the driver supports), or
    "no CUDA device visible". A CUDA array passed to overlap_stats or
    overlap_grad then raises RuntimeError with that reason (ValueError in a
    build without CUDA kernels)."""
    problem = _ext.cuda_driver_problem()  # the first reason in a build without CUDA kernels
    if problem:
        return problem
    if _ext.cuda_device_count() == 0:
        return "no CUDA device visible"
    return None


def cuda_pool_used(device=0, reset_high=False):
    """Bytes in use in fastiou's stream-ordered memory pool on the GPU, where
    its outputs and scratch live; reset_high restarts its high-water mark.
    The pool keeps memory given back to it for later calls (as PyTorch's
    caching allocator does), until the process ends."""
    return _ext.cuda_pool_used(device, reset_high)


def cuda_pool_used_high(device=0):
    """High-water mark of that pool, in bytes (for peak-memory measurements)."""
    return _ext.cuda_pool_used_high(device)


def ffi_handlers():
    """fastiou's XLA FFI handlers as PyCapsules, {target: {platform: capsule}}:
    targets fastiou_overlap_stats, fastiou_overlap_grad and
    fastiou_confusion_counts, platforms "cpu"
    and (built with CUDA) "cuda". Register them with
    jax.ffi.register_ffi_target(target, capsule, platform=...), platform "cpu"
    or, for "cuda", XLA's name "CUDA" (fastiou.jax does this on import)."""
    return _ext.ffi_handlers()


def _framework(x):
    return type(x).__module__.split(".")[0]


def _stream(x, *others):
    """The cudaStream_t (as an int) x's framework is working on, or None on CPU.
    others: the call's other arrays (None allowed), which JAX must finish too."""
    device_type, device_id = x.__dlpack_device__()
    if device_type not in _CUDA_DEVICE_TYPES:
        return None
    framework = _framework(x)
    if framework == "torch":
        import torch

        return torch.cuda.current_stream(x.device).cuda_stream
    if framework == "cupy":
        import cupy

        return cupy.cuda.get_current_stream().ptr
    if framework in ("jax", "jaxlib"):
        # JAX's streams are its own: hand over finished arrays. fastiou holds
        # them until its kernels on the legacy default stream have read them.
        for a in (x, *others):
            if a is not None and hasattr(a, "block_until_ready"):
                a.block_until_ready()
    return 0


def _to_framework(buffer, like):
    """A fastiou Buffer as an array of like's framework."""
    framework = _framework(like)
    if framework == "numpy":
        import numpy as np

        return np.from_dlpack(buffer)
    if framework == "torch":
        import torch

        return torch.from_dlpack(buffer)
    if framework == "cupy":
        import cupy

        return cupy.from_dlpack(buffer)
    if framework in ("jax", "jaxlib"):
        import jax.numpy as jnp

        return jnp.from_dlpack(buffer)
    try:
        return importlib.import_module(framework).from_dlpack(buffer)
    except (ImportError, AttributeError):
        return buffer


def is_sparse_shape(y_true, y_pred):
    """Whether y_true holds class indices: y_pred's shape without its channel
    axis, or with a channel axis of 1, while y_pred has several channels."""
    return _shapes.is_sparse(tuple(y_true.shape), tuple(y_pred.shape))


def _prepare(y_true, y_pred, sparse):
    for name, x in (("y_true", y_true), ("y_pred", y_pred)):
        if not hasattr(x, "__dlpack__"):
            raise TypeError(f"fastiou: {name} must be an array with __dlpack__ (NumPy, CuPy, PyTorch, "
                            f"JAX, ...), got {type(x).__name__}")
    # The shapes are resolved as in every front end (fastiou._shapes); dtypes
    # and shapes are checked by the kernels' module itself, which the raw
    # arrays reach without any front end.
    if sparse is None:
        sparse = is_sparse_shape(y_true, y_pred)
    if _shapes.true_adds_channel(tuple(y_true.shape), tuple(y_pred.shape), sparse):
        y_true = y_true.reshape(tuple(y_true.shape) + (1,))
    return y_true, sparse


class OverlapStats(tuple):
    """What overlap_stats returns: the tuple (I, P, T), which unpacks as a
    plain tuple, plus `label_check`, the call's LabelCheck."""

    def __new__(cls, sums, label_check=None):
        self = super().__new__(cls, sums)
        self.label_check = label_check
        return self


def overlap_stats(y_true, y_pred, weights=None, *, from_logits=False, per_image=True, softmax=False,
                  sparse=None, ignore_index=None, check_range=True, check_labels=True):
    """Soft overlap sums I = sum(w*t*p), P = sum(w*p), T = sum(w*t).

    Same inputs and options as `fastiou.overlap_stats`, as arrays of one
    framework on one device. Returns an OverlapStats: the tuple (I, P, T) of
    shape (B, C), or (C,) without per_image, in float32 (float64 for float64
    y_pred), with the call's LabelCheck as its `label_check` attribute.

    check_labels decides when a sparse label outside [0, C) (and not
    ignore_index) is reported, on CUDA arrays:

    - True (the default): the call raises ValueError naming the first such
      label. The label is found by the GPU, so the call waits for everything
      queued on the stream so far: one host synchronization per call with
      sparse labels, which stops the host from queueing the next steps while
      the GPU works (in a training loop, the GPU then idles while Python
      prepares the next step).
    - False: the call does not wait. A bad label turns every sum of the call
      into NaN (as in fastiou's TensorFlow ops on a GPU), and
      `stats.label_check.check()`, whenever called, waits for this call's
      kernel only and raises the same ValueError (every time it is called);
      `stats.label_check.ready()` says, without waiting, whether check() would
      return at once.

    On CPU arrays the C++ kernels check every label as they run and raise
    ValueError at once, with either setting; label_check then has nothing left
    to check. Without sparse labels there is nothing to check either.

    check_range=False turns off the range guards: dense targets and (without
    from_logits) predictions outside [0, 1] are summed as they are, on the
    CPU and on the GPU. Sparse labels are checked either way.
    """
    y_true, sparse = _prepare(y_true, y_pred, sparse)
    *outs, label_check = _ext.overlap_stats(y_true, y_pred, weights, from_logits=from_logits,
                                            per_image=per_image, softmax=softmax, sparse=sparse,
                                            ignore_index=ignore_index, check_range=check_range,
                                            stream=_stream(y_pred, y_true, weights),
                                            check_labels=check_labels)
    return OverlapStats((_to_framework(o, y_pred) for o in outs), label_check)


def overlap_grad(y_true, y_pred, weights, grad_intersection, grad_pred_sum, grad_true_sum, *,
                 from_logits=False, per_image=True, softmax=False, sparse=None, ignore_index=None,
                 check_range=True, wrt_true=False):
    """dL/dy_pred = w*(dL/dI*t + dL/dP), through the activation's Jacobian
    with from_logits; with wrt_true, dL/dy_true = w*(dL/dI*p + dL/dT).

    grad_*: dL/dI, dL/dP, dL/dT of the stats' shape and dtype. Returns an
    array of y_pred's shape and dtype. check_range is taken for symmetry with
    overlap_stats: the gradient checks no range.
    """
    y_true, sparse = _prepare(y_true, y_pred, sparse)
    out = _ext.overlap_grad(y_true, y_pred, weights, grad_intersection, grad_pred_sum, grad_true_sum,
                            from_logits=from_logits, per_image=per_image, softmax=softmax, sparse=sparse,
                            ignore_index=ignore_index, check_range=check_range, wrt_true=wrt_true,
                            stream=_stream(y_pred, y_true, weights, grad_intersection, grad_pred_sum,
                                           grad_true_sum))
    return _to_framework(out, y_pred)


def _class_rule(rule, name):
    if rule not in CLASS_RULES:
        raise ValueError(f"fastiou: {name} must be one of {sorted(CLASS_RULES)}, got {rule!r}")
    return CLASS_RULES[rule]


def confusion_counts(y_true, y_pred, weights=None, *, num_classes, true_rule="index", pred_rule="index",
                     threshold=0.5, ignore_class=None, integer_weights=False, deterministic=False,
                     by_pixel=False):
    """The confusion counts of fastiou's IoU metrics, in one pass: a float64
    array of shape (3, num_classes) holding per class the weight of the
    pixels whose target and predicted class are that class (tp), whose
    target is (true) and whose prediction is (pred).

    y_true and y_pred: arrays of one framework on one device, viewed as
    [batch, pixels, channels] (one channel for a class index or a threshold);
    weights: None or [1 or batch, 1 or pixels], float32 or float64.
    true_rule and pred_rule name how a pixel's values give its class (see
    CLASS_RULES): "index" (integers, or floats truncated toward zero),
    "argmax" (the first largest channel) or, for y_pred, "threshold" (class 1
    where y_pred >= threshold, compared in float32). Pixels whose classes lie
    outside [0, num_classes), or whose target class is ignore_class, count
    nowhere. integer_weights truncates the weights toward zero first.

    On CUDA arrays the CUDA kernel is enqueued on the framework's current
    stream; counts of unit or integer weights are exact, fractional weights
    are added in a fixed order up to 256 classes, so both are the same on
    every run; past 256 classes fractional weights are added by atomics and
    can differ in the last bits between runs: with deterministic=True those
    raise NotImplementedError instead (on CPU arrays every count is the same
    on every run, so deterministic changes nothing). by_pixel (CPU arrays):
    one pixel at a time, by the steps each CUDA thread takes, on one thread,
    refusing what the CUDA kernel refuses (for tests).
    """
    for name, x in (("y_true", y_true), ("y_pred", y_pred)):
        if not hasattr(x, "__dlpack__"):
            raise TypeError(f"fastiou: {name} must be an array with __dlpack__ (NumPy, CuPy, PyTorch, "
                            f"JAX, ...), got {type(x).__name__}")
    counts = _ext.confusion_counts(y_true, y_pred, weights, num_classes=int(num_classes),
                                   pred_rule=_class_rule(pred_rule, "pred_rule"),
                                   true_rule=_class_rule(true_rule, "true_rule"), threshold=float(threshold),
                                   integer_weights=bool(integer_weights),
                                   ignore_class=None if ignore_class is None else int(ignore_class),
                                   deterministic=bool(deterministic), stream=_stream(y_pred, y_true, weights),
                                   by_pixel=bool(by_pixel))
    return _to_framework(counts, y_pred)

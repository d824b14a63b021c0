"""fastiou's kernels on any framework's arrays, through DLPack.

The same C++ and CUDA kernels as the TensorFlow ops, for NumPy arrays (CPU)
and CuPy, PyTorch or JAX arrays (CUDA), with no TensorFlow involved:

    import torch, fastiou.kernels as fk
    I, P, T = fk.overlap_stats(y_true, logits, from_logits=True)      # torch tensors in, out
    dy = fk.overlap_grad(y_true, logits, None, dI, dP, dT, from_logits=True)

On a CUDA array the work is enqueued on the array's framework's current stream
(PyTorch's and CuPy's current stream; for JAX arrays, the legacy default stream
after the inputs are ready) and the call returns without waiting, except that
with sparse labels and `check_labels=True` it waits to raise on a label outside
[0, C). Results come back in the framework of y_pred.
"""

import importlib

from fastiou import _fastiou_kernels as _ext

__all__ = ["overlap_stats", "overlap_grad", "built_with_cuda", "cuda_device_count", "cuda_pool_used",
           "cuda_pool_used_high", "ffi_handlers", "is_sparse_shape"]

_CUDA_DEVICE_TYPES = (2, 13)  # DLPack: kDLCUDA, kDLCUDAManaged


def built_with_cuda():
    """Whether this build of fastiou holds the CUDA kernels."""
    return _ext.built_with_cuda()


def cuda_device_count():
    """CUDA devices the kernels can see (0 without CUDA kernels or GPU)."""
    return _ext.cuda_device_count()


def cuda_pool_used(device=0, reset_high=False):
    """Bytes in use in the GPU's default stream-ordered memory pool, where
    fastiou's outputs and scratch live; reset_high restarts its high-water mark."""
    return _ext.cuda_pool_used(device, reset_high)


def cuda_pool_used_high(device=0):
    """High-water mark of that pool, in bytes (for peak-memory measurements)."""
    return _ext.cuda_pool_used_high(device)


def ffi_handlers():
    """fastiou's XLA FFI handlers as PyCapsules, {target: {platform: capsule}}:
    targets fastiou_overlap_stats and fastiou_overlap_grad, platforms "cpu"
    and (built with CUDA) "cuda". Register them with
    jax.ffi.register_ffi_target(target, capsule, platform=platform)."""
    return _ext.ffi_handlers()


def _framework(x):
    return type(x).__module__.split(".")[0]


def _stream(x):
    """The cudaStream_t (as an int) x's framework is working on, or None on CPU."""
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
        x.block_until_ready()  # JAX's streams are its own: hand over finished arrays
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


def _ndim(x):
    return len(x.shape)


def is_sparse_shape(y_true, y_pred):
    """Whether y_true holds class indices: y_pred's shape without its channel
    axis, or with a channel axis of 1, while y_pred has several channels."""
    channels = y_pred.shape[-1]
    if channels == 1:
        return False
    if _ndim(y_true) == _ndim(y_pred) - 1:
        return True
    return _ndim(y_true) == _ndim(y_pred) and y_true.shape[-1] == 1


def _prepare(y_true, y_pred, sparse):
    for name, x in (("y_true", y_true), ("y_pred", y_pred)):
        if not hasattr(x, "__dlpack__"):
            raise TypeError(f"fastiou: {name} must be an array with __dlpack__ (NumPy, CuPy, PyTorch, "
                            f"JAX, ...), got {type(x).__name__}")
    if sparse is None:
        sparse = is_sparse_shape(y_true, y_pred)
    if not sparse and _ndim(y_true) == _ndim(y_pred) - 1 and y_pred.shape[-1] == 1:
        y_true = y_true.reshape(tuple(y_true.shape) + (1,))
    return y_true, sparse


def overlap_stats(y_true, y_pred, weights=None, *, from_logits=False, per_image=True, softmax=False,
                  sparse=None, ignore_index=None, check_labels=True):
    """Soft overlap sums I = sum(w*t*p), P = sum(w*p), T = sum(w*t).

    Same inputs and options as `fastiou.overlap_stats`, as arrays of one
    framework on one device. Returns (I, P, T) of shape (B, C), or (C,)
    without per_image, in float32 (float64 for float64 y_pred).
    """
    y_true, sparse = _prepare(y_true, y_pred, sparse)
    outs = _ext.overlap_stats(y_true, y_pred, weights, from_logits=from_logits, per_image=per_image,
                              softmax=softmax, sparse=sparse, ignore_index=ignore_index,
                              stream=_stream(y_pred), check_labels=check_labels)
    return tuple(_to_framework(o, y_pred) for o in outs)


def overlap_grad(y_true, y_pred, weights, grad_intersection, grad_pred_sum, grad_true_sum, *,
                 from_logits=False, per_image=True, softmax=False, sparse=None, ignore_index=None,
                 wrt_true=False):
    """dL/dy_pred = w*(dL/dI*t + dL/dP), through the activation's Jacobian
    with from_logits; with wrt_true, dL/dy_true = w*(dL/dI*p + dL/dT).

    grad_*: dL/dI, dL/dP, dL/dT of the stats' shape and dtype. Returns an
    array of y_pred's shape and dtype.
    """
    y_true, sparse = _prepare(y_true, y_pred, sparse)
    out = _ext.overlap_grad(y_true, y_pred, weights, grad_intersection, grad_pred_sum, grad_true_sum,
                            from_logits=from_logits, per_image=per_image, softmax=softmax, sparse=sparse,
                            ignore_index=ignore_index, wrt_true=wrt_true, stream=_stream(y_pred))
    return _to_framework(out, y_pred)

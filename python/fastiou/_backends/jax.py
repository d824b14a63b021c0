"""The JAX backend of fastiou._front.overlap_loss: fastiou's kernels through XLA FFI.

The statistics I, P, T and their gradient run as XLA custom calls of the same
C++ (CPU) and CUDA (GPU) kernels as the TensorFlow ops, registered with JAX
on import; `jax.custom_vjp` routes `jax.grad` to the fused gradient kernel.
No TensorFlow is imported. The public functions are in fastiou.jax.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fastiou import kernels as _kernels
from fastiou import _shapes
from fastiou._shapes import check_inputs
from fastiou._backends import jax_sharding

xp = jnp  # the array namespace of the shared loss algebra


# The module names its handlers' platforms "cpu" and "cuda"; jaxlib files a
# platform under XLA's name, which it knows for "cpu" and "gpu" but not for
# "cuda": a handler registered as "cuda" waits for a platform that never comes.
XLA_PLATFORMS = {"cpu": "cpu", "cuda": "CUDA"}


def _register():
    handlers = _kernels.ffi_handlers()
    if not handlers:
        raise ImportError("fastiou was built without its XLA FFI handlers; fastiou.jax needs them "
                          "(rebuild with the XLA FFI headers of TensorFlow or JAX available)")
    platforms = {p.platform for p in jax.devices()} | {"cpu"}
    for target, by_platform in handlers.items():
        for platform, capsule in by_platform.items():
            if platform == "cpu" or (platform == "cuda" and "gpu" in platforms):
                jax.ffi.register_ffi_target(target, capsule, platform=XLA_PLATFORMS[platform])


_register()


def _acc_dtype(pred_dtype):
    return jnp.dtype(_shapes.accumulation_dtype(jnp.dtype(pred_dtype).name))


def _ffi_value(value):
    """An attribute for jax.ffi: NumPy scalars keep their type (bool_ the
    handlers' bool, int64 their i64)."""
    return np.bool_(value) if isinstance(value, bool) else np.int64(value)


def _attrs(opts):
    from_logits, per_image, softmax, sparse, ignore_index, has_weights, check_range = opts
    options = _shapes.op_options(from_logits=from_logits, per_image=per_image, softmax=softmax, sparse=sparse,
                                 ignore_index=ignore_index, has_weights=has_weights, check_range=check_range)
    return {name: _ffi_value(value) for name, value in options.items()}


def _stats_shape(y_pred, per_image):
    return (y_pred.shape[0], y_pred.shape[-1]) if per_image else (y_pred.shape[-1],)


def _stats_call(y_true, y_pred, weights, opts):
    sums = jax.ShapeDtypeStruct(_stats_shape(y_pred, opts[1]), _acc_dtype(y_pred.dtype))
    call = jax.ffi.ffi_call("fastiou_overlap_stats", (sums, sums, sums), vmap_method="sequential")
    return call(y_true, y_pred, weights, **_attrs(opts))


def _grad_call(y_true, y_pred, weights, g_i, g_p, g_t, opts, wrt_true):
    out = jax.ShapeDtypeStruct(y_pred.shape, y_pred.dtype)
    call = jax.ffi.ffi_call("fastiou_overlap_grad", out, vmap_method="sequential")
    return call(y_true, y_pred, weights, g_i, g_p, g_t, wrt_true=_ffi_value(bool(wrt_true)), **_attrs(opts))


# The calls as they split over the devices of sharded inputs (jax_sharding).
_sharded_stats, _sharded_grad = jax_sharding.partitioned(_stats_call, _grad_call)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _stats(y_true, y_pred, weights, opts):
    return _sharded_stats(y_true, y_pred, weights, opts)


def _stats_fwd(y_true, y_pred, weights, opts):
    return _sharded_stats(y_true, y_pred, weights, opts), (y_true, y_pred, weights)


def _stats_bwd(opts, residuals, cotangents):
    y_true, y_pred, weights = residuals
    acc = _acc_dtype(y_pred.dtype)
    g_i, g_p, g_t = (jnp.asarray(g, acc) for g in cotangents)
    d_pred = _sharded_grad(y_true, y_pred, weights, g_i, g_p, g_t, opts, False)
    if jnp.issubdtype(y_true.dtype, jnp.floating) and not opts[3]:
        d_true = _sharded_grad(y_true, y_pred, weights, g_i, g_p, g_t, opts, True).astype(y_true.dtype)
    else:
        d_true = np.zeros(y_true.shape, jax.dtypes.float0)  # integer targets have no gradient
    # Weights get no gradient from the kernels; they are data, like the masks.
    d_weights = jnp.zeros_like(weights) if jnp.issubdtype(weights.dtype, jnp.floating) else \
        np.zeros(weights.shape, jax.dtypes.float0)
    return d_true, d_pred, d_weights


_stats.defvjp(_stats_fwd, _stats_bwd)


def prepare(y_true, y_pred, weights=None, *, sparse=None, ignore_index=None):
    """Converts and checks the inputs (fastiou._shapes.check_inputs); returns
    (y_true, y_pred, weights or None, sparse), y_true and weights with a
    channel axis where they lack only y_pred's (y_true: of one channel),
    narrow integer labels as int32 and weights in y_pred's dtype."""
    y_pred = jnp.asarray(y_pred)
    y_true = jnp.asarray(y_true)
    if weights is not None:
        weights = jnp.asarray(weights)
    how = check_inputs(tuple(y_true.shape), y_true.dtype.name, tuple(y_pred.shape), y_pred.dtype.name,
                       None if weights is None else tuple(weights.shape),
                       None if weights is None else weights.dtype.name,
                       sparse=sparse, ignore_index=ignore_index)
    if how.label_dtype is not None:
        y_true = y_true.astype(how.label_dtype)
    if how.true_channel:
        y_true = y_true[..., None]
    if weights is not None:
        weights = weights.astype(y_pred.dtype)
        if how.weights_channel:
            weights = weights[..., None]
    return y_true, y_pred, weights, how.sparse


def stats(y_true, y_pred, weights, *, from_logits, per_image, softmax, sparse, ignore_index, check_range=True):
    """The differentiable sums (I, P, T) of inputs `prepare` has checked."""
    has_weights = weights is not None
    if not has_weights:
        weights = jnp.zeros((0,), y_pred.dtype)
    opts = (bool(from_logits), bool(per_image), bool(softmax), bool(sparse),
            None if ignore_index is None else int(ignore_index), has_weights, bool(check_range))
    return _stats(y_true, y_pred, weights, opts)


def channels(y_pred):
    return y_pred.shape[-1]


def true_shape(y_true):
    return tuple(y_true.shape)


def _confusion_call(y_true, y_pred, weights, **attributes):
    """The fused confusion counts (csrc/core/confusion.h) as a custom call
    (the C++ kernel on the CPU, the CUDA one on a GPU): y_true and y_pred viewed as [batch, pixels, channels], weights as
    [rows, cols]; attributes: the kernel's options, from
    fastiou.metrics._kernel_arguments. Shape (3, num_classes), float64 with
    jax_enable_x64, else float32 (the float64 counts rounded once)."""
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float32 where x64 is off
    call = jax.ffi.ffi_call("fastiou_confusion_counts", jax.ShapeDtypeStruct((3, attributes["num_classes"]), dtype),
                            vmap_method="sequential")
    # The handler decodes bools, 64-bit integers and float32 (the threshold).
    typed = {name: np.bool_(v) if isinstance(v, bool) else np.int64(v) if isinstance(v, int) else np.float32(v)
             for name, v in attributes.items()}
    return call(y_true, y_pred, weights, **typed)


# The call as it splits over the devices of sharded inputs (jax_sharding).
confusion_counts_call = jax_sharding.partitioned_counts(_confusion_call)

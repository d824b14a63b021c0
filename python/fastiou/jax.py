"""fastiou's overlap losses for JAX and Flax: the fused kernels through XLA FFI.

    import fastiou.jax as fj
    loss = fj.jaccard_loss(masks, logits, from_logits=True)         # inside jax.jit, jax.grad, jax.vmap
    grads = jax.grad(lambda z: fj.dice_loss(masks, z, from_logits=True))(logits)

The statistics I, P, T and their gradient run as XLA custom calls of the same
C++ (CPU) and CUDA (GPU) kernels as the TensorFlow ops, registered with JAX on
import; `jax.custom_vjp` routes `jax.grad` to the fused gradient kernel. The
loss algebra on the sums is the same as in `fastiou.losses`. No TensorFlow is
imported.

Epsilon (the empty-denominator threshold and the clamp of `log_loss`) is
`keras.config.epsilon()` where Keras is imported, as on the TensorFlow side,
and otherwise keras.json's or Keras' default 1e-7 (fastiou.jax never imports
Keras itself). It is read when the loss is traced: a function already
compiled by jax.jit keeps the value it was traced with.

Differences from the TensorFlow side: a sparse label outside [0, C) under
JAX on the CPU raises at run time from the kernel; on the GPU it turns the sums
into NaN. Under `jax.vmap` each mapped item is its own batch.
"""

import functools

import numpy as np

try:
    import jax
    import jax.numpy as jnp
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("fastiou.jax needs JAX: pip install 'fastiou[jax]'") from err

from fastiou import _algebra
from fastiou import kernels as _kernels
from fastiou._defaults import ALPHA, BETA, GAMMA, MODE, SMOOTH, epsilon

__all__ = ["overlap_stats", "jaccard_loss", "dice_loss", "tversky_loss"]


def _register():
    handlers = _kernels.ffi_handlers()
    if not handlers:
        raise ImportError("fastiou was built without its XLA FFI handlers; fastiou.jax needs them "
                          "(rebuild with the XLA FFI headers of TensorFlow or JAX available)")
    platforms = {p.platform for p in jax.devices()} | {"cpu"}
    for target, by_platform in handlers.items():
        for platform, capsule in by_platform.items():
            if platform == "cpu" or (platform == "cuda" and "gpu" in platforms):
                jax.ffi.register_ffi_target(target, capsule, platform=platform)


_register()


def _is_sparse(y_true, y_pred):
    channels = y_pred.shape[-1]
    if channels == 1:
        return False
    if y_true.ndim == y_pred.ndim - 1:
        return True
    return y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1


def _acc_dtype(pred_dtype):
    return jnp.float64 if pred_dtype == jnp.float64 else jnp.float32


def _attrs(opts):
    from_logits, per_image, softmax, sparse, ignore_index, has_weights = opts
    return dict(from_logits=np.int64(from_logits), per_image=np.int64(per_image),
                has_weights=np.int64(has_weights), softmax=np.int64(softmax), sparse=np.int64(sparse),
                has_ignore=np.int64(ignore_index is not None),
                ignore_index=np.int64(0 if ignore_index is None else ignore_index))


def _stats_shape(y_pred, per_image):
    return (y_pred.shape[0], y_pred.shape[-1]) if per_image else (y_pred.shape[-1],)


def _stats_call(y_true, y_pred, weights, opts):
    sums = jax.ShapeDtypeStruct(_stats_shape(y_pred, opts[1]), _acc_dtype(y_pred.dtype))
    call = jax.ffi.ffi_call("fastiou_overlap_stats", (sums, sums, sums), vmap_method="sequential")
    return call(y_true, y_pred, weights, **_attrs(opts))


def _grad_call(y_true, y_pred, weights, g_i, g_p, g_t, opts, wrt_true):
    out = jax.ShapeDtypeStruct(y_pred.shape, y_pred.dtype)
    call = jax.ffi.ffi_call("fastiou_overlap_grad", out, vmap_method="sequential")
    return call(y_true, y_pred, weights, g_i, g_p, g_t, wrt_true=np.int64(wrt_true), **_attrs(opts))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _stats(y_true, y_pred, weights, opts):
    return _stats_call(y_true, y_pred, weights, opts)


def _stats_fwd(y_true, y_pred, weights, opts):
    return _stats_call(y_true, y_pred, weights, opts), (y_true, y_pred, weights)


def _stats_bwd(opts, residuals, cotangents):
    y_true, y_pred, weights = residuals
    acc = _acc_dtype(y_pred.dtype)
    g_i, g_p, g_t = (jnp.asarray(g, acc) for g in cotangents)
    d_pred = _grad_call(y_true, y_pred, weights, g_i, g_p, g_t, opts, False)
    if jnp.issubdtype(y_true.dtype, jnp.floating) and not opts[3]:
        d_true = _grad_call(y_true, y_pred, weights, g_i, g_p, g_t, opts, True).astype(y_true.dtype)
    else:
        d_true = np.zeros(y_true.shape, jax.dtypes.float0)  # integer targets have no gradient
    # Weights get no gradient from the kernels; they are data, like the masks.
    d_weights = jnp.zeros_like(weights) if jnp.issubdtype(weights.dtype, jnp.floating) else \
        np.zeros(weights.shape, jax.dtypes.float0)
    return d_true, d_pred, d_weights


_stats.defvjp(_stats_fwd, _stats_bwd)

_PRED_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)
_TRUE_DTYPES = (jnp.bool_, jnp.uint8, jnp.int32, jnp.int64) + _PRED_DTYPES


def overlap_stats(y_true, y_pred, weights=None, *, from_logits=False, per_image=True, softmax=False,
                  sparse=None, ignore_index=None):
    """Soft overlap sums I = sum(w*t*p), P = sum(w*p), T = sum(w*t), differentiable.

    Same arguments as `fastiou.overlap_stats`: channels-last y_pred (rank >=
    2, float16/bfloat16/float32/float64), y_true of its shape (or, sparse,
    class indices without the channel axis), optional weights of y_pred's
    shape or with a channel axis of 1. Returns (I, P, T) of shape (B, C), or
    (C,) without per_image, in float32 (float64 for float64 y_pred).
    """
    y_true, y_pred, weights, sparse = _prepare(y_true, y_pred, weights, sparse, ignore_index)
    return _call_stats(y_true, y_pred, weights, from_logits, per_image, softmax, sparse, ignore_index)


def _prepare(y_true, y_pred, weights, sparse, ignore_index):
    """Converts and checks the inputs; returns (y_true, y_pred, weights or
    None, sparse), y_true and weights with a channel axis where y_pred has
    one channel (or weights one per pixel)."""
    y_pred = jnp.asarray(y_pred)
    y_true = jnp.asarray(y_true)
    if y_pred.dtype not in _PRED_DTYPES:
        raise TypeError(f"fastiou: y_pred must be float16, bfloat16, float32 or float64, got {y_pred.dtype}")
    if y_pred.ndim < 2:
        raise ValueError(f"fastiou: y_pred must have rank >= 2 (batch, ..., channels), got shape {y_pred.shape}")
    if sparse is None:
        sparse = _is_sparse(y_true, y_pred)
    if sparse:
        if y_true.dtype not in (jnp.uint8, jnp.int32, jnp.int64):
            raise TypeError("fastiou: sparse labels (class indices) must be uint8, int32 or int64, got "
                            f"{y_true.dtype}")
    else:
        if y_true.dtype not in _TRUE_DTYPES:
            raise TypeError(f"fastiou: y_true must be bool, uint8, int32, int64 or a float type, got {y_true.dtype}")
        if y_true.ndim == y_pred.ndim - 1 and y_pred.shape[-1] == 1:
            y_true = y_true[..., None]
        if y_true.shape != y_pred.shape:
            raise ValueError(f"fastiou: y_true shape {y_true.shape} does not match y_pred shape {y_pred.shape}")
    if ignore_index is not None and not sparse:
        raise ValueError("fastiou: ignore_index needs sparse labels (class indices)")
    if weights is not None:
        weights = jnp.asarray(weights, y_pred.dtype)
        if weights.ndim == y_pred.ndim - 1:
            weights = weights[..., None]
    return y_true, y_pred, weights, bool(sparse)


def _call_stats(y_true, y_pred, weights, from_logits, per_image, softmax, sparse, ignore_index):
    has_weights = weights is not None
    if not has_weights:
        weights = jnp.zeros((0,), y_pred.dtype)
    opts = (bool(from_logits), bool(per_image), bool(softmax), bool(sparse),
            None if ignore_index is None else int(ignore_index), has_weights)
    return _stats(y_true, y_pred, weights, opts)


def _overlap_loss(kind, y_true, y_pred, *, from_logits=False, mode=MODE, smooth=SMOOTH, per_image=False,
                  class_weights=None, log_loss=False, alpha=ALPHA, beta=BETA, gamma=GAMMA, weights=None,
                  ignore_index=None, classes=None):
    _algebra.check_options(kind, smooth, alpha, beta, gamma, log_loss, class_weights, mode, classes)
    # The inputs' own errors (dtype, rank, shapes) before the mode's.
    y_true, y_pred, weights, sparse = _prepare(y_true, y_pred, weights, None, ignore_index)
    multiclass = _algebra.resolve_mode(mode, sparse, y_pred.shape[-1], y_true.shape)
    I, P, T = _call_stats(y_true, y_pred, weights, from_logits, per_image, multiclass, sparse, ignore_index)
    return _algebra.finish(jnp, kind, I, P, T, smooth=smooth, alpha=alpha, beta=beta, gamma=gamma,
                           log_loss=log_loss, class_weights=class_weights, classes=classes, eps=epsilon())


def jaccard_loss(y_true, y_pred, *, from_logits=False, mode=MODE, smooth=SMOOTH, per_image=False,
                 class_weights=None, log_loss=False, weights=None, ignore_index=None, classes=None):
    """Soft Jaccard (IoU) loss, 1 - (I + s) / (T + P - I + s); arguments as
    `fastiou.jaccard_loss`. Returns a scalar, or one loss per image with per_image."""
    return _overlap_loss("jaccard", y_true, y_pred, from_logits=from_logits, mode=mode, smooth=smooth,
                         per_image=per_image, class_weights=class_weights, log_loss=log_loss,
                         weights=weights, ignore_index=ignore_index, classes=classes)


def dice_loss(y_true, y_pred, *, from_logits=False, mode=MODE, smooth=SMOOTH, per_image=False,
              class_weights=None, log_loss=False, weights=None, ignore_index=None, classes=None):
    """Soft Dice loss, 1 - (2I + s) / (T + P + s); arguments as `fastiou.dice_loss`."""
    return _overlap_loss("dice", y_true, y_pred, from_logits=from_logits, mode=mode, smooth=smooth,
                         per_image=per_image, class_weights=class_weights, log_loss=log_loss,
                         weights=weights, ignore_index=ignore_index, classes=classes)


def tversky_loss(y_true, y_pred, *, alpha=ALPHA, beta=BETA, gamma=GAMMA, from_logits=False, mode=MODE,
                 smooth=SMOOTH, per_image=False, class_weights=None, log_loss=False, weights=None,
                 ignore_index=None, classes=None):
    """(Focal) Tversky loss, (1 - (I + s) / (I + a FP + b FN + s)) ** gamma;
    arguments as `fastiou.tversky_loss`."""
    return _overlap_loss("tversky", y_true, y_pred, alpha=alpha, beta=beta, gamma=gamma,
                         from_logits=from_logits, mode=mode, smooth=smooth, per_image=per_image,
                         class_weights=class_weights, log_loss=log_loss, weights=weights,
                         ignore_index=ignore_index, classes=classes)

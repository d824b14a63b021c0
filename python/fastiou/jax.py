"""fastiou's overlap losses for JAX and Flax: the fused kernels through XLA FFI.

    import fastiou.jax as fj
    loss = fj.jaccard_loss(masks, logits, from_logits=True)         # inside jax.jit, jax.grad, jax.vmap
    grads = jax.grad(lambda z: fj.dice_loss(masks, z, from_logits=True))(logits)

The statistics I, P, T and their gradient run as XLA custom calls of the same
C++ (CPU) and CUDA (GPU) kernels as the TensorFlow ops, registered with JAX on
import (fastiou._backends.jax); `jax.custom_vjp` routes `jax.grad` to the
fused gradient kernel. The losses are those of `fastiou.losses`, through the
same front end (fastiou._front): the same checks, shapes, modes, options and
loss algebra. No TensorFlow is imported.

Epsilon (the empty-denominator threshold and the clamp of `log_loss`) is
`keras.config.epsilon()` where Keras is imported, as on the TensorFlow side,
and otherwise keras.json's or Keras' default 1e-7 (fastiou.jax never imports
Keras itself). It is read when the loss is traced: a function already
compiled by jax.jit keeps the value it was traced with.

Differences from the TensorFlow side: a sparse label outside [0, C) under
JAX on the CPU raises at run time from the kernel; on the GPU it turns the sums
into NaN. Under `jax.vmap` each mapped item is its own batch.
"""

try:
    import jax  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("fastiou.jax needs JAX: pip install 'fastiou[jax]'") from err

from fastiou import _front
from fastiou._backends import jax as _backend
from fastiou._backends.jax import _attrs, _stats_call  # noqa: F401 - the raw custom calls, for tests
from fastiou._defaults import ALPHA, BETA, GAMMA, MODE, SMOOTH

__all__ = ["overlap_stats", "jaccard_loss", "dice_loss", "tversky_loss"]


def overlap_stats(y_true, y_pred, weights=None, *, from_logits=False, per_image=True, softmax=False,
                  sparse=None, ignore_index=None, check_range=True):
    """Soft overlap sums I = sum(w*t*p), P = sum(w*p), T = sum(w*t), differentiable.

    Same arguments as `fastiou.overlap_stats`: channels-last y_pred (rank >=
    2, float16/bfloat16/float32/float64), y_true of its shape (or, sparse,
    class indices without the channel axis), optional weights of y_pred's
    shape or with a channel axis of 1. Returns (I, P, T) of shape (B, C), or
    (C,) without per_image, in float32 (float64 for float64 y_pred).
    """
    y_true, y_pred, weights, sparse = _backend.prepare(y_true, y_pred, weights, sparse=sparse,
                                                       ignore_index=ignore_index)
    return _backend.stats(y_true, y_pred, weights, from_logits=from_logits, per_image=per_image,
                          softmax=softmax, sparse=sparse, ignore_index=ignore_index,
                          check_range=check_range)


def jaccard_loss(y_true, y_pred, *, from_logits=False, mode=MODE, smooth=SMOOTH, per_image=False,
                 class_weights=None, log_loss=False, weights=None, ignore_index=None, classes=None,
                 check_range=True):
    """Soft Jaccard (IoU) loss, 1 - (I + s) / (T + P - I + s); arguments as
    `fastiou.jaccard_loss`. Returns a scalar, or one loss per image with per_image."""
    return _front.overlap_loss(_backend, "jaccard", y_true, y_pred, from_logits=from_logits, mode=mode,
                               smooth=smooth, per_image=per_image, class_weights=class_weights,
                               log_loss=log_loss, weights=weights, ignore_index=ignore_index,
                               classes=classes, check_range=check_range)


def dice_loss(y_true, y_pred, *, from_logits=False, mode=MODE, smooth=SMOOTH, per_image=False,
              class_weights=None, log_loss=False, weights=None, ignore_index=None, classes=None,
              check_range=True):
    """Soft Dice loss, 1 - (2I + s) / (T + P + s); arguments as `fastiou.dice_loss`."""
    return _front.overlap_loss(_backend, "dice", y_true, y_pred, from_logits=from_logits, mode=mode,
                               smooth=smooth, per_image=per_image, class_weights=class_weights,
                               log_loss=log_loss, weights=weights, ignore_index=ignore_index,
                               classes=classes, check_range=check_range)


def tversky_loss(y_true, y_pred, *, alpha=ALPHA, beta=BETA, gamma=GAMMA, from_logits=False, mode=MODE,
                 smooth=SMOOTH, per_image=False, class_weights=None, log_loss=False, weights=None,
                 ignore_index=None, classes=None, check_range=True):
    """(Focal) Tversky loss, (1 - (I + s) / (I + a FP + b FN + s)) ** gamma;
    arguments as `fastiou.tversky_loss`."""
    return _front.overlap_loss(_backend, "tversky", y_true, y_pred, alpha=alpha, beta=beta,
                               gamma=gamma, from_logits=from_logits, mode=mode, smooth=smooth,
                               per_image=per_image, class_weights=class_weights, log_loss=log_loss,
                               weights=weights, ignore_index=ignore_index, classes=classes,
                               check_range=check_range)

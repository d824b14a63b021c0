"""The overlap sums, their gradients and the losses in float64 NumPy,
written from the formulas: the one NumPy oracle of the tests (the other
oracles are autodiff of the formula: fastiou.reference in Keras, and the
plain PyTorch and JAX formulas of test_cuda.py and test_jax.py).

    I = sum w t p,  P = sum w p,  T = sum w t
    dL/dp = w (gI t + gP)  -> sigmoid: dp p (1 - p);  softmax: p (dp - sum_c p_c dp_c)
    dL/dt = w (gI p + gT)
"""

import numpy as np


def probabilities(z, from_logits, softmax):
    z = np.asarray(z, np.float64)
    if not from_logits:
        return z
    if softmax:
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    with np.errstate(over="ignore"):  # exp(1e4) is inf: the probability is 0
        return 1.0 / (1.0 + np.exp(-z))


def targets_and_weights(t, z, w, sparse, ignore_index):
    """Dense float64 targets and weights of z's shape (ignored pixels weigh 0)."""
    shape = np.shape(z)
    weights = np.ones(shape) if w is None else np.broadcast_to(np.asarray(w, np.float64), shape)
    if not sparse:
        return np.asarray(t, np.float64).reshape(shape), weights
    labels = np.asarray(t).reshape(shape[:-1]).astype(np.int64)
    dense = (labels[..., None] == np.arange(shape[-1])).astype(np.float64)
    if ignore_index is not None:
        weights = weights * (labels != ignore_index)[..., None]
    return dense, weights


def _axes(ndim, per_image):
    return tuple(range(1 if per_image else 0, ndim - 1))


def sums(t, z, w=None, *, from_logits=False, per_image=True, softmax=False, sparse=False,
         ignore_index=None):
    p = probabilities(z, from_logits, softmax)
    tt, ww = targets_and_weights(t, z, w, sparse, ignore_index)
    axes = _axes(p.ndim, per_image)
    return (ww * tt * p).sum(axes), (ww * p).sum(axes), (ww * tt).sum(axes)


def _expand(g, ndim, per_image):
    g = np.asarray(g, np.float64)
    return g.reshape(g.shape[:1] + (1,) * (ndim - 2) + g.shape[1:]) if per_image else g


def grad(t, z, w, g_i, g_p, g_t, *, from_logits=False, per_image=True, softmax=False, sparse=False,
         ignore_index=None, wrt_true=False):
    p = probabilities(z, from_logits, softmax)
    tt, ww = targets_and_weights(t, z, w, sparse, ignore_index)
    g_i, g_p, g_t = (_expand(g, p.ndim, per_image) for g in (g_i, g_p, g_t))
    if wrt_true:
        return ww * (g_i * p + g_t)
    dp = ww * (g_i * tt + g_p)
    if not from_logits:
        return dp
    if softmax:
        return p * (dp - (p * dp).sum(-1, keepdims=True))
    return dp * p * (1.0 - p)


def jaccard_group_grads(I, P, T, smooth=1.0):
    """dL/dI, dL/dP, dL/dT of L = sum over groups of 1 - (I + s) / (T + P - I + s)."""
    I, P, T = (np.asarray(a, np.float64) for a in (I, P, T))
    den = T + P - I + smooth
    num = I + smooth
    d_num = -1.0 / den
    d_den = num / den**2
    return d_num - d_den, d_den, d_den


def loss_from_sums(kind, I, P, T, *, eps, smooth=1.0, alpha=0.5, beta=0.5, log_loss=False):
    """The overlap loss from the sums, mean over the last (channel) axis.

    kind: "jaccard", "dice" or "tversky" (alpha weighs false positives). A
    denominator at most eps is a perfect match; the log loss clamps the index
    at eps.
    """
    I, P, T = (np.asarray(a, np.float64) for a in (I, P, T))
    if kind == "jaccard":
        num, den = I + smooth, T + P - I + smooth
    elif kind == "dice":
        num, den = 2 * I + smooth, T + P + smooth
    else:
        num, den = I + smooth, I + alpha * (P - I) + beta * (T - I) + smooth
    index = np.where(den <= eps, 1.0, num / np.where(den <= eps, 1.0, den))
    value = -np.log(np.maximum(index, eps)) if log_loss else np.maximum(1.0 - index, 0.0)
    return value.mean(-1)


def loss(kind, t, p, *, eps, per_image, smooth=1.0, alpha=0.5, beta=0.5, log_loss=False):
    """Binary/multi-label overlap loss on probabilities, mean over channels
    (see loss_from_sums)."""
    return loss_from_sums(kind, *sums(t, p, per_image=per_image), eps=eps, smooth=smooth, alpha=alpha,
                          beta=beta, log_loss=log_loss)

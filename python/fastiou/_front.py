"""The one loss front end: from the inputs and options to the loss value, on any backend.

`overlap_loss` is every public loss of fastiou (the Keras classes and
functional forms of `fastiou.losses`, `fastiou.jax` and `fastiou.reference`):
it checks the options, prepares the inputs, resolves the mode from their
shapes, asks the backend for the sums I, P, T and runs the loss algebra
(fastiou._algebra) on them, with epsilon read at the call (fastiou._defaults).

A backend is any object (a module will do) with

    xp            the array namespace of the loss algebra (see fastiou._algebra)
    prepare(y_true, y_pred, weights, *, sparse, ignore_index)
                  converts the inputs to its arrays, checks them with
                  fastiou._shapes.check_inputs and applies what that says;
                  returns (y_true, y_pred, weights or None, sparse)
    stats(y_true, y_pred, weights, *, from_logits, per_image, softmax, sparse, ignore_index,
          check_range)
                  the differentiable sums (I, P, T) of prepared inputs; with
                  check_range, an error for dense targets or probabilities
                  outside [0, 1] (a backend that checks no range ignores it)
    channels(y_pred), true_shape(y_true)
                  y_pred's channel count (None while unknown) and y_true's shape
    sum_across_replicas(I, P, T)   (optional)
                  the sums over the replicas of a data-parallel step, for
                  sync_replicas; a backend without it ignores sync_replicas

The backends: fastiou._backends.tensorflow (fastiou's TensorFlow ops),
fastiou._backends.jax (the same kernels through XLA FFI) and the plain
keras.ops sums of fastiou.reference.
"""

from fastiou import _algebra
from fastiou._defaults import ALPHA, BETA, GAMMA, MODE, SMOOTH, epsilon


def overlap_loss(backend, kind, y_true, y_pred, *, from_logits=False, smooth=SMOOTH,
                 per_image=False, class_weights=None, log_loss=False, alpha=ALPHA, beta=BETA,
                 gamma=GAMMA, weights=None, mode=MODE, ignore_index=None, classes=None,
                 sync_replicas=False, check_range=True):
    """The loss `kind` (jaccard, dice or tversky) of y_pred for y_true on
    `backend`: one loss per image with per_image, else a scalar. Arguments
    as `fastiou.jaccard_loss`, plus Tversky's alpha, beta and gamma."""
    _algebra.check_options(kind, smooth, alpha, beta, gamma, log_loss, class_weights, mode, classes,
                           per_image=per_image, sync_replicas=sync_replicas)
    # The inputs' own errors (dtype, rank, shapes) before the mode's.
    y_true, y_pred, weights, sparse = backend.prepare(y_true, y_pred, weights, sparse=None,
                                                      ignore_index=ignore_index)
    multiclass = _algebra.resolve_mode(mode, sparse, backend.channels(y_pred),
                                       backend.true_shape(y_true))
    I, P, T = backend.stats(y_true, y_pred, weights, from_logits=from_logits, per_image=per_image,
                            softmax=multiclass, sparse=sparse, ignore_index=ignore_index,
                            check_range=check_range)
    if sync_replicas and hasattr(backend, "sum_across_replicas"):
        I, P, T = backend.sum_across_replicas(I, P, T)
    return _algebra.finish(backend.xp, kind, I, P, T, smooth=smooth, alpha=alpha, beta=beta,
                           gamma=gamma, log_loss=log_loss, class_weights=class_weights,
                           classes=classes, eps=epsilon())

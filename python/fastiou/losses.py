"""Overlap losses for segmentation on fused kernels: Jaccard/IoU, Dice, Tversky.

Every loss is a small function of three soft sums per group (image and
channel, or channel over the whole batch), computed by one fused pass over the
masks:

    I = sum(w * t * p)    P = sum(w * p)    T = sum(w * t)

with p the predicted probability (the sigmoid of the logits with
`from_logits=True`, applied inside the kernel), t the target and w optional
per-element weights. With s = `smooth`, FP = P - I and FN = T - I:

    Jaccard  J  = (I + s) / (T + P - I + s)             loss = 1 - J
    Dice     D  = (2I + s) / (T + P + s)                loss = 1 - D
    Tversky  TI = (I + s) / (I + a FP + b FN + s)       loss = (1 - TI) ** gamma

`log_loss=True` gives -log(index) instead. The per-group losses are averaged
over channels (weighted by `class_weights`), then over images by Keras'
reduction when `per_image=True`.

Empty masks: a group whose denominator is zero (empty target and empty
prediction with smooth=0) counts as a perfect match, index 1 and loss 0, with
zero gradient. With smooth=0, an empty target and a non-empty prediction give
index 0 whatever the prediction's size, so nothing pulls the prediction down:
keep smooth > 0 (default 1) when images without foreground are common.
"""

import keras

from fastiou._algebra import MODES, check_options as _check_options, finish
from fastiou._algebra import flat as _flat
from fastiou._algebra import resolve_mode as _resolve_mode

# The same classes serve Keras' TensorFlow backend (fastiou's TensorFlow ops)
# and its JAX backend (the same kernels through jax.ffi, fastiou.jax).
_BACKEND = keras.backend.backend()
if _BACKEND == "tensorflow":
    import tensorflow as tf

    from fastiou._ops import is_sparse_shape, overlap_stats
elif _BACKEND == "jax":
    from fastiou import jax as _fj
else:  # pragma: no cover - depends on the environment
    raise ImportError(f"fastiou.losses supports Keras' tensorflow and jax backends, not {_BACKEND!r}")

try:  # Keras' own weighting and reduction, so sample_weight behaves as usual.
    from keras.src.losses.loss import reduce_weighted_values as _reduce_weighted_values
except ImportError:  # pragma: no cover - older or reorganized Keras
    _reduce_weighted_values = None


def _scale_for_replicas(loss):
    """loss / num_replicas inside a tf.distribute replica context with several
    replicas, as Keras scales its per-sample losses."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return loss
    return loss * tf.constant(1.0 / ctx.num_replicas_in_sync, loss.dtype)


if _BACKEND == "tensorflow":

    class _TFOps:
        """The array functions the shared loss algebra needs, for TensorFlow."""

        asarray = staticmethod(lambda value, dtype: tf.constant(value, dtype))
        where = staticmethod(tf.where)
        maximum = staticmethod(tf.maximum)
        power = staticmethod(tf.pow)
        log = staticmethod(tf.math.log)
        ones_like = staticmethod(tf.ones_like)
        zeros_like = staticmethod(tf.zeros_like)
        take = staticmethod(lambda x, indices, axis: tf.gather(x, indices, axis=axis))
        mean = staticmethod(lambda x, axis: tf.reduce_mean(x, axis=axis))
        sum = staticmethod(lambda x, axis: tf.reduce_sum(x, axis=axis))


def _sum_across_replicas(I, P, T):
    """I, P, T summed over the replicas of the current tf.distribute replica
    context (one all-reduce of 3C values); unchanged outside one or with a
    single replica. The all-reduce's gradient is an all-reduce of the
    gradients, so each replica's predictions get the gradient of the global
    sums."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return I, P, T
    total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack([I, P, T]))
    return total[0], total[1], total[2]


def overlap_loss(
    kind,
    y_true,
    y_pred,
    *,
    from_logits=False,
    smooth=1.0,
    per_image=False,
    class_weights=None,
    log_loss=False,
    alpha=0.5,
    beta=0.5,
    gamma=1.0,
    weights=None,
    mode="auto",
    ignore_index=None,
    classes=None,
    sync_replicas=False,
):
    """Shared body of the functional losses; `kind` is jaccard, dice or tversky."""
    _check_options(kind, smooth, alpha, beta, gamma, log_loss, class_weights, mode, classes)
    if sync_replicas and per_image:
        raise ValueError("fastiou: sync_replicas needs per_image=False: per-image sums are "
                         "replica-local by nature (each image lives on one replica)")
    if _BACKEND == "jax":  # tf.distribute does not exist there: sync_replicas is a no-op
        return _fj._overlap_loss(kind, y_true, y_pred, from_logits=from_logits, mode=mode, smooth=smooth,
                                 per_image=per_image, class_weights=class_weights, log_loss=log_loss,
                                 alpha=alpha, beta=beta, gamma=gamma, weights=weights,
                                 ignore_index=ignore_index, classes=classes)
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    sparse = is_sparse_shape(y_true, y_pred)
    multiclass = _resolve_mode(mode, sparse, y_pred.shape[-1], y_true.shape)
    I, P, T = overlap_stats(y_true, y_pred, weights, from_logits=from_logits, per_image=per_image,
                            softmax=multiclass, sparse=sparse, ignore_index=ignore_index)
    if sync_replicas:
        I, P, T = _sum_across_replicas(I, P, T)
    return finish(_TFOps, kind, I, P, T, smooth=smooth, alpha=alpha, beta=beta, gamma=gamma,
                  log_loss=log_loss, class_weights=class_weights, classes=classes,
                  eps=keras.config.epsilon())


_ARGS_DOC = """
    Args:
      y_true: targets in [0, 1]: bool, uint8, int32, int64 or float, the
        shape of y_pred (or without a trailing channel axis of 1); or, for
        multi-class, sparse class indices (uint8, int32, int64) of y_pred's
        shape without its channel axis or with a channel axis of 1.
      y_pred: probabilities, or logits with `from_logits=True`; float16,
        bfloat16, float32 or float64; channels-last, rank >= 2.
      from_logits: y_pred holds logits; the activation (sigmoid, or softmax
        over the channels for multi-class) runs inside the kernels.
      mode: "binary"/"multilabel" (a sigmoid per channel, element targets),
        "multiclass" (softmax over the channels; one-hot or sparse targets)
        or "auto" (default): "multiclass" when y_true holds class indices,
        "binary" otherwise. One-hot multi-class targets need
        mode="multiclass", since their shape alone does not say so.
      ignore_index: a sparse label (e.g. 255) whose pixels count in no sum
        and get zero gradient.
      classes: the channels that enter the mean (e.g. all but background);
        None for all.
      smooth: s, added to numerator and denominator.
      per_image: sums per image (the result has one loss per image, shape
        (B,)); otherwise sums over the whole batch (a scalar).
      class_weights: weights of the channels in their mean, one per channel
        of y_pred; None for equal.
      log_loss: -log(index) instead of 1 - index.
      weights: optional per-element weights, the shape of y_pred or with a
        channel axis of 1 (one weight per pixel).
      sync_replicas: under tf.distribute, sum I, P, T over all replicas
        before the loss algebra, so that the loss is the one of the global
        batch (see `JaccardLoss`). Every replica then returns the global
        loss: scale it by 1 / num_replicas like any per-replica loss in a
        custom training loop (the Keras classes do that themselves). Needs
        per_image=False; a no-op outside a strategy or with one replica.

    Returns:
      Loss per image, shape (B,), with `per_image=True`; a scalar otherwise.
      float32, or float64 for float64 y_pred.
"""


def jaccard_loss(y_true, y_pred, *, from_logits=False, mode="auto", smooth=1.0, per_image=False,
                 class_weights=None, log_loss=False, weights=None, ignore_index=None, classes=None,
                 sync_replicas=False):
    return overlap_loss("jaccard", y_true, y_pred, from_logits=from_logits, smooth=smooth,
                        per_image=per_image, class_weights=class_weights, log_loss=log_loss,
                        weights=weights, mode=mode, ignore_index=ignore_index, classes=classes,
                        sync_replicas=sync_replicas)


def dice_loss(y_true, y_pred, *, from_logits=False, mode="auto", smooth=1.0, per_image=False,
              class_weights=None, log_loss=False, weights=None, ignore_index=None, classes=None,
              sync_replicas=False):
    return overlap_loss("dice", y_true, y_pred, from_logits=from_logits, smooth=smooth,
                        per_image=per_image, class_weights=class_weights, log_loss=log_loss,
                        weights=weights, mode=mode, ignore_index=ignore_index, classes=classes,
                        sync_replicas=sync_replicas)


def tversky_loss(y_true, y_pred, *, alpha=0.5, beta=0.5, gamma=1.0, from_logits=False,
                 mode="auto", smooth=1.0, per_image=False, class_weights=None, log_loss=False,
                 weights=None, ignore_index=None, classes=None, sync_replicas=False):
    return overlap_loss("tversky", y_true, y_pred, from_logits=from_logits, smooth=smooth,
                        per_image=per_image, class_weights=class_weights, log_loss=log_loss,
                        alpha=alpha, beta=beta, gamma=gamma, weights=weights, mode=mode,
                        ignore_index=ignore_index, classes=classes, sync_replicas=sync_replicas)


jaccard_loss.__doc__ = "Soft Jaccard (IoU) loss, 1 - (I + s) / (T + P - I + s).\n" + _ARGS_DOC
dice_loss.__doc__ = "Soft Dice loss, 1 - (2I + s) / (T + P + s).\n" + _ARGS_DOC
tversky_loss.__doc__ = (
    "Tversky loss, (1 - (I + s) / (I + alpha FP + beta FN + s)) ** gamma.\n\n"
    "    alpha weighs false positives FP = P - I, beta false negatives FN = T - I;\n"
    "    alpha = beta = 0.5 is Dice, alpha = beta = 1 is Jaccard, and gamma != 1\n"
    "    is the focal Tversky loss (gamma < 1 stresses hard, poorly overlapping\n"
    "    groups).\n" + _ARGS_DOC
)


class _OverlapLoss(keras.losses.Loss):
    """Keras wrapper of a fused overlap loss."""

    _kind = None

    def __init__(self, *, from_logits=False, mode="auto", smooth=1.0, per_image=False,
                 class_weights=None, log_loss=False, ignore_index=None, classes=None,
                 sync_replicas=False, reduction="sum_over_batch_size", name=None, dtype=None,
                 **options):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.sync_replicas = bool(sync_replicas)
        if self.sync_replicas and per_image:
            raise ValueError("fastiou: sync_replicas needs per_image=False: per-image sums are "
                             "replica-local by nature (each image lives on one replica)")
        self.from_logits = bool(from_logits)
        self.mode = mode
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.classes = None if classes is None else [int(c) for c in _flat(classes)]
        self.smooth = float(smooth)
        self.per_image = bool(per_image)
        self.class_weights = None if class_weights is None else _flat(class_weights)
        self.log_loss = bool(log_loss)
        self._options = {k: float(v) for k, v in options.items()}
        _check_options(self._kind, self.smooth, self._options.get("alpha", 0.5),
                       self._options.get("beta", 0.5), self._options.get("gamma", 1.0),
                       self.log_loss, self.class_weights, self.mode, self.classes)

    def call(self, y_true, y_pred):
        return overlap_loss(self._kind, y_true, y_pred, from_logits=self.from_logits,
                            smooth=self.smooth, per_image=self.per_image,
                            class_weights=self.class_weights, log_loss=self.log_loss,
                            mode=self.mode, ignore_index=self.ignore_index, classes=self.classes,
                            sync_replicas=self.sync_replicas, **self._options)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras' Loss.__call__ casts y_true and y_pred to the loss dtype first:
        # a full extra pass and a mask-sized copy for uint8 masks and float16
        # predictions. The kernels read those dtypes directly, so skip it.
        with keras.name_scope(self.name):
            losses = self.call(y_true, y_pred)
            if len(losses.shape) == 0 and sample_weight is None:
                # One loss for the whole batch. Keras scales per-sample losses
                # by 1 / num_replicas under tf.distribute (the optimizer then
                # sums the replicas' gradients) but leaves scalars alone:
                # scale it here the same way.
                return _scale_for_replicas(losses) if _BACKEND == "tensorflow" else losses
            if _reduce_weighted_values is None:  # pragma: no cover
                return keras.ops.mean(losses)
            return _reduce_weighted_values(losses, sample_weight=sample_weight,
                                           reduction=self.reduction, dtype=self.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(from_logits=self.from_logits, mode=self.mode, smooth=self.smooth,
                      per_image=self.per_image, class_weights=self.class_weights,
                      log_loss=self.log_loss, ignore_index=self.ignore_index, classes=self.classes,
                      sync_replicas=self.sync_replicas)
        config.update(self._options)
        return config


@keras.saving.register_keras_serializable(package="fastiou")
class JaccardLoss(_OverlapLoss):
    """Soft Jaccard (IoU) loss on fused kernels: 1 - (I + s) / (T + P - I + s).

    Drop-in Keras loss:

        model.compile(optimizer="adam", loss=fastiou.losses.JaccardLoss(from_logits=True))

    Args:
      from_logits: y_pred holds logits; the sigmoid (or, multi-class, the
        softmax over the channels) runs inside the kernels.
      mode: "auto" (default), "binary", "multilabel" or "multiclass"; see
        `fastiou.jaccard_loss`. Multi-class targets may be sparse class
        indices, read as such and never expanded to one-hot.
      smooth: s, added to numerator and denominator (default 1).
      per_image: one Jaccard per image, averaged by `reduction`; otherwise
        one Jaccard over the whole batch (default).
      class_weights: weights of the channels in their mean.
      log_loss: -log(J) instead of 1 - J.
      ignore_index: sparse label whose pixels are left out (e.g. 255).
      classes: channels that enter the mean (e.g. leave out background).
      sync_replicas: under tf.distribute (MirroredStrategy,
        MultiWorkerMirroredStrategy), sum I, P, T over all replicas before
        the loss algebra: one all-reduce of 3C values per step. Needs
        per_image=False (per-image losses are replica-local by nature, and
        Keras' mean over images already matches one device).
      reduction, name, dtype: as for any Keras loss. `sample_weight` weighs
        images and needs `per_image=True`.

    Under tf.distribute each replica sees a slice of the global batch. Without
    sync_replicas the loss is computed per replica and the replicas' losses
    are averaged, which is not the Jaccard of the global batch (a mean of
    ratios is not a ratio of sums). With sync_replicas every replica computes
    the global sums and so the global loss L; it returns L / N (N replicas),
    as Keras scales every per-replica loss, so that Keras reports L. In the
    backward pass the all-reduce sends each replica the gradient of the
    global sums, summed over the N replicas' copies of L / N: the gradient of
    L itself. Each replica's weight gradient is then its slice's share of
    dL/dw, and the optimizer's sum over replicas gives exactly dL/dw of
    single-device training on the global batch.
    """

    _kind = "jaccard"

    def __init__(self, from_logits=False, mode="auto", smooth=1.0, per_image=False,
                 class_weights=None, log_loss=False, ignore_index=None, classes=None,
                 sync_replicas=False, reduction="sum_over_batch_size", name="jaccard_loss",
                 dtype=None):
        super().__init__(from_logits=from_logits, mode=mode, smooth=smooth, per_image=per_image,
                         class_weights=class_weights, log_loss=log_loss,
                         ignore_index=ignore_index, classes=classes, sync_replicas=sync_replicas,
                         reduction=reduction, name=name, dtype=dtype)


IoULoss = JaccardLoss


@keras.saving.register_keras_serializable(package="fastiou")
class DiceLoss(_OverlapLoss):
    """Soft Dice loss on fused kernels: 1 - (2I + s) / (T + P + s).

    Same arguments as `JaccardLoss`.
    """

    _kind = "dice"

    def __init__(self, from_logits=False, mode="auto", smooth=1.0, per_image=False,
                 class_weights=None, log_loss=False, ignore_index=None, classes=None,
                 sync_replicas=False, reduction="sum_over_batch_size", name="dice_loss",
                 dtype=None):
        super().__init__(from_logits=from_logits, mode=mode, smooth=smooth, per_image=per_image,
                         class_weights=class_weights, log_loss=log_loss,
                         ignore_index=ignore_index, classes=classes, sync_replicas=sync_replicas,
                         reduction=reduction, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="fastiou")
class TverskyLoss(_OverlapLoss):
    """Tversky and focal Tversky loss on fused kernels.

    loss = (1 - TI) ** gamma with TI = (I + s) / (I + alpha FP + beta FN + s),
    FP = P - I, FN = T - I. alpha weighs false positives, beta false
    negatives: beta > alpha favours recall, the usual choice for small
    structures (e.g. alpha=0.3, beta=0.7). gamma != 1 is the focal Tversky
    loss. Other arguments as for `JaccardLoss`.
    """

    _kind = "tversky"

    def __init__(self, alpha=0.5, beta=0.5, gamma=1.0, from_logits=False, mode="auto",
                 smooth=1.0, per_image=False, class_weights=None, log_loss=False,
                 ignore_index=None, classes=None, sync_replicas=False,
                 reduction="sum_over_batch_size", name="tversky_loss", dtype=None):
        super().__init__(from_logits=from_logits, mode=mode, smooth=smooth, per_image=per_image,
                         class_weights=class_weights, log_loss=log_loss,
                         ignore_index=ignore_index, classes=classes, sync_replicas=sync_replicas,
                         reduction=reduction, name=name, dtype=dtype, alpha=alpha, beta=beta,
                         gamma=gamma)

    @property
    def alpha(self):
        return self._options["alpha"]

    @property
    def beta(self):
        return self._options["beta"]

    @property
    def gamma(self):
        return self._options["gamma"]


__all__ = [
    "JaccardLoss",
    "IoULoss",
    "DiceLoss",
    "TverskyLoss",
    "jaccard_loss",
    "dice_loss",
    "tversky_loss",
]

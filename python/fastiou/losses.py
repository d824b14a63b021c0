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

Empty masks: a group whose denominator is zero (at most keras.config.epsilon():
empty target and empty prediction with smooth=0) counts as a perfect match,
index 1 and loss 0, with zero gradient. With smooth=0, an empty target and a
non-empty prediction give index 0 whatever the prediction's size, so nothing
pulls the prediction down: keep smooth > 0 (default 1) when images without
foreground are common.
"""

import keras

from fastiou import _front
from fastiou._algebra import check_options as _check_options
from fastiou._algebra import flat as _flat
from fastiou._defaults import ALPHA, BETA, GAMMA, MODE, REDUCTION, SMOOTH
from fastiou._keras_reduction import check_no_mask, check_sample_weight, reduce_image_losses
from fastiou._keras_reduction import scale_for_replicas as _scale_for_replicas

# The same classes serve Keras' TensorFlow backend (fastiou's TensorFlow ops)
# and its JAX backend (the same kernels through jax.ffi, as in fastiou.jax):
# both run fastiou._front.overlap_loss, on the backend of Keras' framework.
_KERAS_BACKEND = keras.backend.backend()
if _KERAS_BACKEND == "tensorflow":
    from fastiou._backends import tensorflow as _backend
elif _KERAS_BACKEND == "jax":  # tf.distribute does not exist there: sync_replicas is a no-op
    from fastiou._backends import jax as _backend
else:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"fastiou.losses supports Keras' tensorflow and jax backends, not {_KERAS_BACKEND!r}")


def overlap_loss(kind, y_true, y_pred, *, from_logits=False, smooth=SMOOTH, per_image=False,
                 class_weights=None, log_loss=False, alpha=ALPHA, beta=BETA, gamma=GAMMA,
                 weights=None, mode=MODE, ignore_index=None, classes=None, sync_replicas=False,
                 check_range=True):
    """Shared body of the functional losses; `kind` is jaccard, dice or tversky."""
    return _front.overlap_loss(_backend, kind, y_true, y_pred, from_logits=from_logits,
                               smooth=smooth, per_image=per_image, class_weights=class_weights,
                               log_loss=log_loss, alpha=alpha, beta=beta, gamma=gamma,
                               weights=weights, mode=mode, ignore_index=ignore_index,
                               classes=classes, sync_replicas=sync_replicas, check_range=check_range)


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
        "binary" when y_pred has one channel. Dense targets of y_pred's
        shape with several channels may be multi-label masks or one-hot
        classes, so "auto" raises a ValueError for them: pass
        mode="multilabel" or mode="multiclass".
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
      check_range: raise an error for a dense target or (without
        from_logits) a prediction outside [0, 1], naming the value, the image
        and the pixel: masks stored as 0/255, or logits passed without
        from_logits=True (default). False sums such values as they are,
        for users who mean it; it saves the check's cost (a few percent of
        the loss's time on probabilities, nothing from logits). Sparse labels
        outside [0, C) are refused either way.

    Returns:
      Loss per image, shape (B,), with `per_image=True`; a scalar otherwise.
      float32, or float64 for float64 y_pred.
"""


def jaccard_loss(y_true, y_pred, *, from_logits=False, mode=MODE, smooth=SMOOTH, per_image=False,
                 class_weights=None, log_loss=False, weights=None, ignore_index=None, classes=None,
                 sync_replicas=False, check_range=True):
    return overlap_loss("jaccard", y_true, y_pred, from_logits=from_logits, smooth=smooth,
                        per_image=per_image, class_weights=class_weights, log_loss=log_loss,
                        weights=weights, mode=mode, ignore_index=ignore_index, classes=classes,
                        sync_replicas=sync_replicas, check_range=check_range)


def dice_loss(y_true, y_pred, *, from_logits=False, mode=MODE, smooth=SMOOTH, per_image=False,
              class_weights=None, log_loss=False, weights=None, ignore_index=None, classes=None,
              sync_replicas=False, check_range=True):
    return overlap_loss("dice", y_true, y_pred, from_logits=from_logits, smooth=smooth,
                        per_image=per_image, class_weights=class_weights, log_loss=log_loss,
                        weights=weights, mode=mode, ignore_index=ignore_index, classes=classes,
                        sync_replicas=sync_replicas, check_range=check_range)


def tversky_loss(y_true, y_pred, *, alpha=ALPHA, beta=BETA, gamma=GAMMA, from_logits=False,
                 mode=MODE, smooth=SMOOTH, per_image=False, class_weights=None, log_loss=False,
                 weights=None, ignore_index=None, classes=None, sync_replicas=False, check_range=True):
    return overlap_loss("tversky", y_true, y_pred, from_logits=from_logits, smooth=smooth,
                        per_image=per_image, class_weights=class_weights, log_loss=log_loss,
                        alpha=alpha, beta=beta, gamma=gamma, weights=weights, mode=mode,
                        ignore_index=ignore_index, classes=classes, sync_replicas=sync_replicas,
                        check_range=check_range)


jaccard_loss.__doc__ = "Soft Jaccard (IoU) loss, 1 - (I + s) / (T + P - I + s).\n" + _ARGS_DOC
dice_loss.__doc__ = "Soft Dice loss, 1 - (2I + s) / (T + P + s).\n" + _ARGS_DOC
tversky_loss.__doc__ = (
    "Tversky loss, (1 - (I + s) / (I + alpha FP + beta FN + s)) ** gamma.\n\n"
    "    alpha weighs false positives FP = P - I, beta false negatives FN = T - I,\n"
    "    as in Salehi et al. (2017); keras.losses.Tversky swaps them (see\n"
    "    `TverskyLoss`). alpha = beta = 0.5 is Dice, alpha = beta = 1 is Jaccard,\n"
    "    and gamma != 1 is the focal Tversky loss (gamma < 1 stresses hard,\n"
    "    poorly overlapping groups).\n" + _ARGS_DOC
)


class _OverlapLoss(keras.losses.Loss):
    """Keras wrapper of a fused overlap loss: every option a plain attribute,
    echoed by get_config."""

    _kind = None

    def __init__(self, *, from_logits=False, mode=MODE, smooth=SMOOTH, per_image=False,
                 class_weights=None, log_loss=False, ignore_index=None, classes=None,
                 sync_replicas=False, check_range=True, reduction=REDUCTION, name=None, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.sync_replicas = bool(sync_replicas)
        self.check_range = bool(check_range)
        self.from_logits = bool(from_logits)
        self.mode = mode
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.classes = None if classes is None else [int(c) for c in _flat(classes)]
        self.smooth = float(smooth)
        self.per_image = bool(per_image)
        self.class_weights = None if class_weights is None else _flat(class_weights)
        self.log_loss = bool(log_loss)
        _check_options(self._kind, self.smooth, log_loss=self.log_loss,
                       class_weights=self.class_weights, mode=self.mode, classes=self.classes,
                       per_image=self.per_image, sync_replicas=self.sync_replicas,
                       **self._kind_options())

    def _kind_options(self):
        """The options of this kind of loss beyond the shared ones."""
        return {}

    def call(self, y_true, y_pred):
        return overlap_loss(self._kind, y_true, y_pred, from_logits=self.from_logits,
                            smooth=self.smooth, per_image=self.per_image,
                            class_weights=self.class_weights, log_loss=self.log_loss,
                            mode=self.mode, ignore_index=self.ignore_index, classes=self.classes,
                            sync_replicas=self.sync_replicas, check_range=self.check_range,
                            **self._kind_options())

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras' Loss.__call__ casts y_true and y_pred to the loss dtype first:
        # a full extra pass and a mask-sized copy for uint8 masks and float16
        # predictions. The kernels read those dtypes directly, so the checks,
        # the weighting and the reduction are done here (fastiou._keras_reduction).
        check_no_mask(y_pred)
        check_sample_weight(sample_weight, self.per_image)
        with keras.name_scope(self.name):
            losses = self.call(y_true, y_pred)
            if not self.per_image:
                # One loss for the whole batch. Keras scales per-sample losses
                # by 1 / num_replicas under tf.distribute (the optimizer then
                # sums the replicas' gradients) but leaves scalars alone:
                # scale it here the same way.
                return _scale_for_replicas(losses)
            return reduce_image_losses(losses, sample_weight, self.reduction, self.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(from_logits=self.from_logits, mode=self.mode, smooth=self.smooth,
                      per_image=self.per_image, class_weights=self.class_weights,
                      log_loss=self.log_loss, ignore_index=self.ignore_index, classes=self.classes,
                      sync_replicas=self.sync_replicas, check_range=self.check_range,
                      **self._kind_options())
        return config


_CLASS_ARGS_DOC = """from_logits: y_pred holds logits; the sigmoid (or, multi-class, the
        softmax over the channels) runs inside the kernels.
      mode: "auto" (default), "binary", "multilabel" or "multiclass"; see
        `fastiou.jaccard_loss`. "auto" takes class indices as multi-class
        and a single channel as binary, and raises for dense targets of
        several channels. Multi-class targets may be sparse class indices,
        read as such and never expanded to one-hot.
      smooth: s, added to numerator and denominator (default 1).
      per_image: one loss per image, weighted by `sample_weight` and reduced
        by `reduction`; otherwise one loss over the whole batch (default).
      class_weights: weights of the channels in their mean.
      log_loss: -log(index) instead of 1 - index.
      ignore_index: sparse label whose pixels are left out (e.g. 255).
      classes: channels that enter the mean (e.g. leave out background).
      sync_replicas: under tf.distribute (MirroredStrategy,
        MultiWorkerMirroredStrategy), sum I, P, T over all replicas before
        the loss algebra: one all-reduce of 3C values per step. Needs
        per_image=False (per-image losses are replica-local by nature, and
        Keras' mean over images already matches one device).
      check_range: raise an error for a dense target or (without
        from_logits) a prediction outside [0, 1], such as a 0/255 mask
        (default); False sums them as they are (see `fastiou.jaccard_loss`).
      reduction: how the per-image losses (per_image=True) are reduced, as in
        Keras: "sum_over_batch_size" (default) and "mean" divide their
        weighted sum by the number of images, "mean_with_sample_weight" by
        the sum of the sample weights, "sum" returns the sum, "none" or None
        the weighted losses. With per_image=False the loss is one value for
        the batch, whatever the reduction.
      name, dtype: as for any Keras loss.

    Calling the loss: `loss(y_true, y_pred, sample_weight=None)`.
    `sample_weight`, shape (B,) or (B, 1), weighs the images' losses and needs
    per_image=True; with per_image=False there is no per-image loss to weigh,
    and a ValueError says so. A y_pred that carries a Keras mask (from
    Masking or Embedding(mask_zero=True)) raises a ValueError: leave pixels
    out with `ignore_index` or the functional forms' `weights` instead.
"""


@keras.saving.register_keras_serializable(package="fastiou")
class JaccardLoss(_OverlapLoss):
    """Soft Jaccard (IoU) loss on fused kernels: 1 - (I + s) / (T + P - I + s).

    Drop-in Keras loss:

        model.compile(optimizer="adam", loss=fastiou.losses.JaccardLoss(from_logits=True))

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

    Args:
      """

    _kind = "jaccard"

    def __init__(self, from_logits=False, mode=MODE, smooth=SMOOTH, per_image=False,
                 class_weights=None, log_loss=False, ignore_index=None, classes=None,
                 sync_replicas=False, check_range=True, reduction=REDUCTION, name="jaccard_loss",
                 dtype=None):
        super().__init__(from_logits=from_logits, mode=mode, smooth=smooth, per_image=per_image,
                         class_weights=class_weights, log_loss=log_loss,
                         ignore_index=ignore_index, classes=classes, sync_replicas=sync_replicas,
                         check_range=check_range, reduction=reduction, name=name, dtype=dtype)


IoULoss = JaccardLoss


@keras.saving.register_keras_serializable(package="fastiou")
class DiceLoss(_OverlapLoss):
    """Soft Dice loss on fused kernels: 1 - (2I + s) / (T + P + s).

    Args:
      """

    _kind = "dice"

    def __init__(self, from_logits=False, mode=MODE, smooth=SMOOTH, per_image=False,
                 class_weights=None, log_loss=False, ignore_index=None, classes=None,
                 sync_replicas=False, check_range=True, reduction=REDUCTION, name="dice_loss",
                 dtype=None):
        super().__init__(from_logits=from_logits, mode=mode, smooth=smooth, per_image=per_image,
                         class_weights=class_weights, log_loss=log_loss,
                         ignore_index=ignore_index, classes=classes, sync_replicas=sync_replicas,
                         check_range=check_range, reduction=reduction, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="fastiou")
class TverskyLoss(_OverlapLoss):
    """Tversky and focal Tversky loss on fused kernels.

    loss = (1 - TI) ** gamma with TI = (I + s) / (I + alpha FP + beta FN + s),
    FP = P - I, FN = T - I. alpha weighs false positives, beta false
    negatives, as in Salehi et al. (2017): beta > alpha favours recall, the
    usual choice for small structures (e.g. alpha=0.3, beta=0.7). gamma != 1
    is the focal Tversky loss.

    keras.losses.Tversky(alpha, beta) multiplies alpha by the false negatives
    and beta by the false positives, the other way round. On probabilities,
    `TverskyLoss(alpha=a, beta=b, smooth=0, mode="multilabel")` equals
    `keras.losses.Tversky(alpha=b, beta=a, axis=...)` with `axis` the axes
    fastiou sums over: all but the channel axis, e.g. (0, 1, 2) for
    (B, H, W, C) (None too for one channel); with per_image=True the axes
    within an image, (1, 2). They differ only by the epsilon Keras adds to
    its denominator. Keras has no smoothing: with smooth > 0 (the default)
    the values differ.

    Args:
      alpha: weight of the false positives (default 0.5).
      beta: weight of the false negatives (default 0.5).
      gamma: focal exponent (default 1, plain Tversky).
      """

    _kind = "tversky"

    def __init__(self, alpha=ALPHA, beta=BETA, gamma=GAMMA, from_logits=False, mode=MODE,
                 smooth=SMOOTH, per_image=False, class_weights=None, log_loss=False,
                 ignore_index=None, classes=None, sync_replicas=False, check_range=True,
                 reduction=REDUCTION, name="tversky_loss", dtype=None):
        # Set before the base class checks the options.
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.gamma = float(gamma)
        super().__init__(from_logits=from_logits, mode=mode, smooth=smooth, per_image=per_image,
                         class_weights=class_weights, log_loss=log_loss,
                         ignore_index=ignore_index, classes=classes, sync_replicas=sync_replicas,
                         check_range=check_range, reduction=reduction, name=name, dtype=dtype)

    def _kind_options(self):
        return {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma}


for _cls in (JaccardLoss, DiceLoss, TverskyLoss):
    _cls.__doc__ += _CLASS_ARGS_DOC
del _cls

__all__ = [
    "JaccardLoss",
    "IoULoss",
    "DiceLoss",
    "TverskyLoss",
    "jaccard_loss",
    "dice_loss",
    "tversky_loss",
]

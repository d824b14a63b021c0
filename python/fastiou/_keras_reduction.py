"""The Keras loss protocol of fastiou's loss classes: sample weights, masks, reduction.

fastiou's Keras classes reduce their losses here rather than in
`keras.losses.Loss.__call__`, which first casts y_true and y_pred to the loss
dtype: a full pass and a mask-sized copy for uint8 masks or float16
predictions that the kernels read as they are. The reduction of per-image
losses follows Keras' documented semantics, written out with keras.ops:

    losses * sample_weight, then
    "sum_over_batch_size", "mean":  sum / number of images
    "mean_with_sample_weight":      sum / sum(sample_weight) (number of images without weights)
    "sum":                          sum
    "none", None:                   the weighted losses, one per image

and, as in Keras, the means are scaled by 1 / num_replicas inside a
tf.distribute replica context with several replicas.
"""

import keras
from keras import ops

# Keras keeps a tensor's mask as an attribute, or in a side table for tensors
# that take no attributes (JAX tracers under jax.jit), and exports no public
# accessor for it: this import fails loudly if a Keras release moves it.
from keras.src.backend import get_keras_mask


def scale_for_replicas(loss):
    """loss / num_replicas inside a tf.distribute replica context with several
    replicas, as Keras scales its per-sample losses; loss itself elsewhere."""
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return loss
    return loss * tf.constant(1.0 / ctx.num_replicas_in_sync, loss.dtype)


def check_no_mask(y_pred):
    """Raises where y_pred carries a Keras mask, which the overlap losses do
    not apply: dropping it silently would count the masked positions."""
    if get_keras_mask(y_pred) is not None:
        raise ValueError(
            "fastiou: y_pred carries a Keras mask (set by a masking layer such as Masking or "
            "Embedding(mask_zero=True)), and fastiou's overlap losses do not apply Keras masks. "
            "Leave pixels out with sparse labels and ignore_index, or with the per-element "
            "`weights` of the functional forms (e.g. fastiou.jaccard_loss)")


def check_sample_weight(sample_weight, per_image):
    """Raises where sample_weight has no per-image loss to weight."""
    if sample_weight is not None and not per_image:
        raise ValueError(
            "fastiou: sample_weight needs per_image=True. With per_image=False the loss is one "
            "value for the whole batch, whose sums run over all images, so there is no per-image "
            "loss to weight; pass per_image=True to weight the images' losses by sample_weight")


def _image_weights(sample_weight, losses):
    """sample_weight as one weight per image, of losses' shape (B,)."""
    weights = ops.cast(ops.convert_to_tensor(sample_weight), losses.dtype)
    shape = tuple(weights.shape)
    if len(shape) == 2 and shape[-1] == 1:
        weights = ops.squeeze(weights, axis=-1)
    elif len(shape) > 1:
        raise ValueError(
            f"fastiou: sample_weight weighs images: it needs shape (B,) or (B, 1) for a batch of B "
            f"images, got shape {shape}")
    images, given = losses.shape[0], (weights.shape[0] if len(weights.shape) else 1)
    if images is not None and given is not None and given not in (1, images):
        raise ValueError(
            f"fastiou: sample_weight has {given} weights for a batch of {images} images")
    return ops.broadcast_to(weights, ops.shape(losses))


def reduce_image_losses(losses, sample_weight, reduction, dtype):
    """The losses per image, shape (B,), weighted by sample_weight and reduced
    as Keras reduces per-sample losses (see the module's docstring)."""
    losses = ops.cast(losses, dtype)
    weights = None
    if sample_weight is not None:
        weights = _image_weights(sample_weight, losses)
        losses = losses * weights
    if reduction is None or reduction == "none":
        return losses
    total = ops.sum(losses)
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight" and weights is not None:
        divisor = ops.sum(weights)
    else:
        divisor = ops.cast(ops.shape(losses)[0], total.dtype)
    return scale_for_replicas(ops.divide_no_nan(total, divisor))

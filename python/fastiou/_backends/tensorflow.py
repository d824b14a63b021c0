"""The TensorFlow backend of fastiou._front.overlap_loss: fastiou's TensorFlow ops.

The sums come from the fused op (fastiou._ops, with its registered gradient
and its XLA lowering); under tf.distribute, `sum_across_replicas` all-reduces
them for sync_replicas.
"""

import tensorflow as tf

from fastiou._ops import fused_stats as stats  # noqa: F401 - the backend's sums
from fastiou._ops import prepare_inputs as prepare  # noqa: F401 - the backend's input checks


class xp:  # noqa: N801 - an array namespace, like jax.numpy
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
    # and those of fastiou.reference.plain_sums
    cast = staticmethod(tf.cast)
    dtype_name = staticmethod(lambda x: x.dtype.name)
    sigmoid = staticmethod(tf.sigmoid)
    softmax = staticmethod(lambda x: tf.nn.softmax(x, axis=-1))
    one_hot = staticmethod(lambda labels, depth, dtype: tf.one_hot(labels, depth, dtype=dtype))
    not_equal = staticmethod(tf.not_equal)
    reshape = staticmethod(tf.reshape)
    expand_dims = staticmethod(tf.expand_dims)
    shape = staticmethod(tf.shape)


def channels(y_pred):
    return y_pred.shape[-1]


def true_shape(y_true):
    return y_true.shape


def sum_across_replicas(I, P, T):
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

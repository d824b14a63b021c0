"""Multi-class losses: fused softmax, sparse labels, ignore_index, classes."""

import numpy as np
import pytest
import tensorflow as tf
import keras

import fastiou
from cases import LOSSES, loss_functions, tf_case


def make_multiclass(rng, shape, pred_dtype="float32", label_dtype="uint8", from_logits=True,
                    ignore=None, ignore_share=0.1):
    """Logits (or softmax probabilities) of `shape` and sparse labels of shape[:-1]."""
    return tf_case(rng, shape, "labels", from_logits, label_dtype, pred_dtype, ignore,
                   ignore_share=ignore_share)


def value_and_grad(fn, y_true, y_pred, **kwargs):
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        loss = tf.reduce_sum(fn(y_true, y_pred, **kwargs))
    return loss, tape.gradient(loss, y_pred)


def compare(name, y_true, y_pred, rtol, atol, **kwargs):
    fused, reference, extra = loss_functions(name)
    got = value_and_grad(fused, y_true, y_pred, **extra, **kwargs)
    want = value_and_grad(reference, y_true, y_pred, **extra, **kwargs)
    np.testing.assert_allclose(got[0], want[0], rtol=rtol, atol=atol)
    assert got[1].dtype == y_pred.dtype
    np.testing.assert_allclose(tf.cast(got[1], tf.float64), tf.cast(want[1], tf.float64),
                               rtol=rtol, atol=atol)
    return got


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("channels", [2, 21, 256])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dtype,rtol,atol", [("float32", 1e-4, 1e-7), ("float64", 1e-10, 1e-14)])
def test_sparse_matches_reference(rng, name, channels, per_image, from_logits, dtype, rtol, atol):
    label_dtype = "int32" if channels > 200 else "uint8"
    ignore = 255 if channels <= 200 else -1
    y_true, y_pred = make_multiclass(rng, (2, 5, 6, channels), dtype, label_dtype, from_logits,
                                     ignore=ignore)
    compare(name, y_true, y_pred, rtol, atol, from_logits=from_logits, per_image=per_image,
            ignore_index=ignore)


@pytest.mark.parametrize("label_dtype", ["uint8", "int32", "int64"])
@pytest.mark.parametrize("channel_axis", [False, True])
def test_label_dtypes_and_shapes_agree_with_one_hot(rng, label_dtype, channel_axis):
    labels, y_pred = make_multiclass(rng, (3, 7, 5, 4), "float64", label_dtype)
    one_hot = tf.one_hot(tf.cast(labels, tf.int32), 4, dtype=tf.float64)
    sparse = labels[..., None] if channel_axis else labels
    for name in LOSSES:
        fused, _, extra = loss_functions(name)
        got = value_and_grad(fused, sparse, y_pred, from_logits=True, **extra)
        dense = value_and_grad(fused, one_hot, y_pred, from_logits=True, mode="multiclass", **extra)
        np.testing.assert_allclose(got[0], dense[0], rtol=1e-12)
        np.testing.assert_allclose(got[1], dense[1], rtol=1e-10, atol=1e-15)
        compare(name, sparse, y_pred, 1e-10, 1e-14, from_logits=True)


@pytest.mark.parametrize("one_hot_dtype", ["uint8", "bool", "float32"])
def test_one_hot_targets(rng, one_hot_dtype):
    labels, y_pred = make_multiclass(rng, (2, 6, 6, 3))
    one_hot = tf.cast(tf.one_hot(tf.cast(labels, tf.int32), 3), one_hot_dtype)
    compare("jaccard", one_hot, y_pred, 1e-4, 1e-7, from_logits=True, mode="multiclass",
            per_image=True)


def test_float_one_hot_target_gradient(rng):
    labels, y_pred = make_multiclass(rng, (2, 4, 5, 3), "float64")
    t = tf.one_hot(tf.cast(labels, tf.int32), 3, dtype=tf.float64) * 0.8 + 0.05
    grads = []
    for fn in (fastiou.dice_loss, fastiou.reference.dice_loss):
        with tf.GradientTape() as tape:
            tape.watch(t)
            loss = fn(t, y_pred, from_logits=True, mode="multiclass")
        grads.append(tape.gradient(loss, t))
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-10, atol=1e-15)


def test_ignored_pixels(rng):
    labels, y_pred = make_multiclass(rng, (3, 6, 7, 4), "float64", ignore=255, ignore_share=0.3)
    labels = tf.tensor_scatter_nd_update(labels, [[1]], tf.fill((1, 6, 7), tf.constant(255, tf.uint8)))
    for name in LOSSES:
        for smooth in (0.0, 1.0):
            loss, grad = compare(name, labels, y_pred, 1e-10, 1e-14, from_logits=True,
                                 per_image=True, smooth=smooth, ignore_index=255)
            assert np.isfinite(loss.numpy())
            ignored = (labels.numpy() == 255)
            assert np.all(grad.numpy()[ignored] == 0.0)
    # An image with every pixel ignored counts as empty: loss 0 with any smooth.
    per_image = fastiou.jaccard_loss(labels, y_pred, from_logits=True, per_image=True,
                                     ignore_index=255, smooth=0.0)
    assert float(per_image[1]) == 0.0


def test_classes_and_class_weights(rng):
    labels, y_pred = make_multiclass(rng, (2, 8, 8, 5), "float64")
    for kwargs in ({"classes": [1, 2, 3, 4]}, {"class_weights": [0.0, 1.0, 2.0, 3.0, 4.0]},
                   {"classes": [4, 1], "class_weights": [5.0, 1.0, 1.0, 1.0, 0.5]}):
        for name in LOSSES:
            compare(name, labels, y_pred, 1e-10, 1e-14, from_logits=True, per_image=True, **kwargs)
    # Leaving channel 0 out is the mean of the other channels' losses.
    loss_all = [fastiou.jaccard_loss(labels, y_pred, from_logits=True, classes=[c]) for c in range(5)]
    np.testing.assert_allclose(fastiou.jaccard_loss(labels, y_pred, from_logits=True, classes=[1, 2, 3, 4]),
                               np.mean(loss_all[1:]), rtol=1e-12)


@pytest.mark.parametrize("per_image", [False, True])
def test_numerical_gradient(rng, per_image):
    labels, y_pred = make_multiclass(rng, (2, 3, 3, 4), "float64", ignore=9, ignore_share=0.2)
    for name in LOSSES:
        fused, _, extra = loss_functions(name)

        def loss(p):
            return fused(labels, p, from_logits=True, per_image=per_image, ignore_index=9, **extra)
        theoretical, numerical = tf.test.compute_gradient(loss, [y_pred], delta=1e-6)
        np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("pred_dtype,tol", [("float16", 2e-3), ("bfloat16", 1.6e-2)])
def test_low_precision_predictions(rng, pred_dtype, tol):
    labels, y_pred = make_multiclass(rng, (2, 6, 5, 21), pred_dtype)
    compare("jaccard", labels, y_pred, tol, 1e-6, from_logits=True, per_image=True)


def test_extreme_logits_are_finite():
    y_pred = tf.constant([[[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4]]])
    labels = tf.constant([[2, 0]], tf.int32)
    for name in LOSSES:
        fused, _, extra = loss_functions(name)
        loss, grad = value_and_grad(fused, labels, y_pred, from_logits=True, smooth=0.0, **extra)
        assert np.isfinite(loss.numpy()) and np.all(np.isfinite(grad.numpy()))


@pytest.mark.parametrize("bad", [5, 200])
def test_out_of_range_label_raises(rng, bad):
    labels, y_pred = make_multiclass(rng, (2, 4, 4, 5))
    labels = tf.tensor_scatter_nd_update(labels, [[1, 2, 3]], tf.constant([bad], tf.uint8))
    # The CPU kernels check the labels; the GPU's turn a bad one into NaN (test_tf_gpu.py).
    with tf.device("/CPU:0"), pytest.raises(tf.errors.InvalidArgumentError,
                                            match=rf"label {bad} at batch index 1, pixel 11 .* outside \[0, 5\)"):
        fastiou.jaccard_loss(labels, y_pred, from_logits=True)


def test_negative_label_raises_unless_ignored(rng):
    labels, y_pred = make_multiclass(rng, (1, 3, 3, 4), label_dtype="int32")
    labels = tf.tensor_scatter_nd_update(labels, [[0, 0, 1]], tf.constant([-1], tf.int32))
    with tf.device("/CPU:0"), pytest.raises(tf.errors.InvalidArgumentError,
                                            match="label -1 .* is not ignore_index 255"):
        fastiou.dice_loss(labels, y_pred, from_logits=True, ignore_index=255)
    assert np.isfinite(fastiou.dice_loss(labels, y_pred, from_logits=True, ignore_index=-1).numpy())


def test_bad_multiclass_options(rng):
    labels, y_pred = make_multiclass(rng, (1, 3, 3, 4))
    with pytest.raises(ValueError, match="ignore_index needs sparse labels"):
        fastiou.jaccard_loss(tf.one_hot(labels, 4), y_pred, mode="multiclass", ignore_index=0)
    with pytest.raises(TypeError, match="sparse labels .* must be uint8, int32 or int64, got float32"):
        fastiou.jaccard_loss(tf.cast(labels, tf.float32), y_pred, from_logits=True)
    with pytest.raises(ValueError, match="need mode='multiclass'"):
        fastiou.jaccard_loss(labels, y_pred, mode="binary")
    with pytest.raises(ValueError, match="at least 2 channels"):
        fastiou.jaccard_loss(tf.zeros((1, 3, 3, 1)), tf.zeros((1, 3, 3, 1)), mode="multiclass")
    with pytest.raises(ValueError, match="mode must be one of"):
        fastiou.losses.DiceLoss(mode="softmax")
    with pytest.raises(ValueError, match=r"classes \[7\] must lie in \[0, 4\)"):
        fastiou.jaccard_loss(labels, y_pred, from_logits=True, classes=[7])
    with pytest.raises(ValueError, match="sparse y_true shape"):
        fastiou.jaccard_loss(labels[:, :2], y_pred, from_logits=True, mode="multiclass")


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_multiclass_sparse(rng, jit_compile):
    keras.utils.set_random_seed(0)
    x = rng.normal(size=(16, 12, 12, 1)).astype(np.float32)
    y = np.digitize(x[..., 0], [-0.5, 0.5]).astype(np.uint8)  # 3 classes by intensity
    y[:, 0, :] = 255
    inputs = keras.Input((None, None, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(h))
    loss = fastiou.losses.JaccardLoss(from_logits=True, ignore_index=255, per_image=True)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss, jit_compile=jit_compile)
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=6, batch_size=8, verbose=0)
    assert model.evaluate(x, y, verbose=0) < before


def test_xla_multiclass_matches_reference(rng):
    labels, y_pred = make_multiclass(rng, (2, 6, 6, 5), ignore=255)

    def step(fn):
        def f(t, p):
            return value_and_grad(fn, t, p, from_logits=True, ignore_index=255, classes=[1, 2, 3])
        return f

    got = tf.function(step(fastiou.tversky_loss), jit_compile=True)(labels, y_pred)
    want = step(fastiou.reference.tversky_loss)(labels, y_pred)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-8)


def test_serialization_keeps_multiclass_options():
    loss = fastiou.losses.TverskyLoss(alpha=0.3, beta=0.7, mode="multiclass", ignore_index=255,
                                      classes=[1, 2], from_logits=True)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert restored.get_config() == loss.get_config()
    assert restored.ignore_index == 255 and restored.classes == [1, 2] and restored.mode == "multiclass"

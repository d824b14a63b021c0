"""Drop-in Keras use: compile and fit (graph and XLA), serialization, saving."""

import numpy as np
import pytest
import tensorflow as tf
import keras

import fastiou
from fastiou.losses import DiceLoss, IoULoss, JaccardLoss, TverskyLoss
from cases import make_inputs


def tiny_unet_data(rng, n=16, size=16):
    x = rng.normal(size=(n, size, size, 1)).astype(np.float32)
    # Foreground where a smoothed version of the image is high: learnable.
    y = (x > 1.0).astype(np.uint8)
    return x, y


def tiny_model(from_logits=True):
    inputs = keras.Input((None, None, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    out = keras.layers.Conv2D(1, 1, activation=None if from_logits else "sigmoid")(h)
    return keras.Model(inputs, out)


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("loss", [
    JaccardLoss(from_logits=True),
    DiceLoss(from_logits=True, per_image=True),
    TverskyLoss(alpha=0.3, beta=0.7, gamma=0.75, from_logits=True),
])
def test_fit_trains(rng, loss, jit_compile):
    keras.utils.set_random_seed(0)
    x, y = tiny_unet_data(rng)
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss, jit_compile=jit_compile)
    before = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, epochs=8, batch_size=8, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert after < before


def test_xla_matches_reference(rng):
    y_true, y_pred = make_inputs(rng, (2, 12, 12, 2), "float32", "uint8")

    def step(fn):
        def f(t, p):
            with tf.GradientTape() as tape:
                tape.watch(p)
                loss = tf.reduce_sum(fn(t, p, from_logits=True, per_image=True, mode="multilabel"))
            return loss, tape.gradient(loss, p)
        return f

    fused_xla = tf.function(step(fastiou.jaccard_loss), jit_compile=True)(y_true, y_pred)
    fused_graph = tf.function(step(fastiou.jaccard_loss))(y_true, y_pred)
    ref = step(fastiou.reference.jaccard_loss)(y_true, y_pred)
    for got in (fused_xla, fused_graph):
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)
        np.testing.assert_allclose(got[1], ref[1], rtol=1e-5, atol=1e-8)


def test_fused_op_runs_in_graph_mode_and_under_xla():
    # Under XLA the op stays in the graph and lowers to a custom call (test_xla.py).
    t = tf.zeros((1, 4, 4, 1))
    for jit in (False, True):
        fn = tf.function(lambda t: fastiou.jaccard_loss(t, t), jit_compile=jit)
        graph = fn.get_concrete_function(t).graph
        assert any(op.type == "FastiouOverlapStats" for op in graph.get_operations())


def test_loss_class_equals_functional(rng):
    y_true, y_pred = make_inputs(rng, (4, 9, 9, 2), "float32", "uint8")
    loss = TverskyLoss(alpha=0.2, beta=0.8, gamma=1.5, from_logits=True, per_image=True,
                       class_weights=[1.0, 2.0], mode="multilabel")
    want = fastiou.reference.tversky_loss(y_true, y_pred, alpha=0.2, beta=0.8, gamma=1.5,
                                          from_logits=True, per_image=True, class_weights=[1.0, 2.0],
                                          mode="multilabel")
    np.testing.assert_allclose(loss(y_true, y_pred), np.mean(want), rtol=1e-6)
    sw = tf.constant([1.0, 0.0, 2.0, 1.0])
    np.testing.assert_allclose(loss(y_true, y_pred, sample_weight=sw),
                               np.sum(want * sw) / 4, rtol=1e-6)
    none = TverskyLoss(alpha=0.2, beta=0.8, gamma=1.5, from_logits=True, per_image=True,
                       class_weights=[1.0, 2.0], reduction=None, mode="multilabel")
    np.testing.assert_allclose(none(y_true, y_pred), want, rtol=1e-6)


def test_loss_class_keeps_input_dtypes(rng):
    # No cast of uint8 masks or float16 predictions before the kernel.
    y_true, y_pred = make_inputs(rng, (2, 8, 8, 1), "float16", "uint8")
    graph = tf.function(lambda t, p: JaccardLoss(from_logits=True)(t, p)).get_concrete_function(
        y_true, y_pred).graph
    stats = [op for op in graph.get_operations() if op.type == "FastiouOverlapStats"]
    assert stats and stats[0].inputs[0].dtype == tf.uint8 and stats[0].inputs[1].dtype == tf.float16
    assert not any(op.type == "Cast" and op.outputs[0].shape.rank == 4 for op in graph.get_operations())


def test_alias():
    assert IoULoss is JaccardLoss


@pytest.mark.parametrize("loss", [
    JaccardLoss(from_logits=True, smooth=0.5, per_image=True, class_weights=[1.0, 2.0], log_loss=True,
                mode="multilabel"),
    DiceLoss(smooth=2.0, name="my_dice", mode="multilabel"),
    TverskyLoss(alpha=0.1, beta=0.9, gamma=0.5, reduction="sum", mode="multilabel"),
])
def test_serialization_round_trip(rng, loss):
    config = keras.losses.serialize(loss)
    restored = keras.losses.deserialize(config)
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    y_true, y_pred = make_inputs(rng, (2, 5, 5, 2), from_logits=False)
    np.testing.assert_allclose(restored(y_true, y_pred), loss(y_true, y_pred), rtol=1e-7)


def test_saved_model_reloads_with_loss(rng, tmp_path):
    keras.utils.set_random_seed(0)
    x, y = tiny_unet_data(rng, n=8)
    model = tiny_model()
    model.compile(optimizer="adam", loss=TverskyLoss(alpha=0.3, beta=0.7, from_logits=True))
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert isinstance(reloaded.loss, TverskyLoss) and reloaded.loss.beta == 0.7
    np.testing.assert_allclose(reloaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0),
                               rtol=1e-6)
    reloaded.fit(x, y, epochs=1, verbose=0)

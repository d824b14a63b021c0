"""Keras conventions of the loss classes: epsilon, Tversky's alpha and beta,
sample_weight and reduction, masks, mode="auto", plain attributes and config.

The oracle is float64 NumPy written from the formulas (overlap_oracle.loss),
hand-computed values, and keras.losses.Tversky itself.
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastiou
from fastiou.losses import DiceLoss, JaccardLoss, TverskyLoss
from cases import make_inputs
from overlap_oracle import loss as oracle_loss


def epsilon_case():
    """Three single-channel images, probabilities: a prediction disjoint from
    its target (index 0: the log clamp decides), an empty target with a
    prediction summing to 0.03 (denominator 0.03 with smooth=0: a perfect
    match for epsilon 0.05, index 0 for 1e-7), and an ordinary image."""
    rng = np.random.default_rng(5)
    t = np.zeros((3, 4, 5, 1), np.float32)
    p = np.zeros((3, 4, 5, 1), np.float32)
    t[0, :2] = 1.0
    p[0, 2:] = 0.8
    p[1, 0, :3] = 0.01
    t[2] = rng.random((4, 5, 1)) < 0.4
    p[2] = rng.random((4, 5, 1))
    return t, p


HAVE_JAX_FFI = (importlib.util.find_spec("jax") is not None
                and bool(fastiou.kernels.ffi_handlers()))


@pytest.mark.skipif(not HAVE_JAX_FFI, reason="needs JAX and fastiou's XLA FFI handlers")
@pytest.mark.parametrize("kind", ["jaccard", "dice", "tversky"])
def test_epsilon_is_read_alike_by_tensorflow_and_jax(kind):
    import fastiou.jax as fj

    t, p = epsilon_case()
    extra = dict(alpha=0.3, beta=0.7) if kind == "tversky" else {}
    opts = dict(smooth=0.0, log_loss=True, **extra)
    tf_fn, jax_fn = getattr(fastiou, f"{kind}_loss"), getattr(fj, f"{kind}_loss")
    cls = {"jaccard": JaccardLoss, "dice": DiceLoss, "tversky": TverskyLoss}[kind]
    default = keras.config.epsilon()
    keras.config.set_epsilon(0.05)
    try:
        for per_image in (True, False):
            want = oracle_loss(kind, t, p, eps=0.05, per_image=per_image, **opts)
            got_tf = tf_fn(t, p, per_image=per_image, **opts).numpy()
            got_jax = np.asarray(jax_fn(t, p, per_image=per_image, **opts))
            got_ref = fastiou.reference.LOSSES[kind](t, p, per_image=per_image, **opts).numpy()
            for got in (got_tf, got_jax, got_ref):
                np.testing.assert_allclose(got, want, rtol=1e-5)
            got_cls = cls(per_image=per_image, reduction="none", **opts)(t, p).numpy()
            np.testing.assert_allclose(got_cls, want, rtol=1e-5)
        # Image 0 is clamped at -log(0.05), image 1 is a perfect match.
        per_image_losses = np.asarray(jax_fn(t, p, per_image=True, **opts))
        np.testing.assert_allclose(per_image_losses[:2], [-np.log(0.05), 0.0], rtol=1e-5, atol=1e-7)
    finally:
        keras.config.set_epsilon(default)
    # Read at every call: back to Keras' default on both sides.
    want = oracle_loss(kind, t, p, eps=default, per_image=True, **opts)
    np.testing.assert_allclose(np.asarray(jax_fn(t, p, per_image=True, **opts)), want, rtol=1e-5)
    np.testing.assert_allclose(tf_fn(t, p, per_image=True, **opts).numpy(), want, rtol=1e-5)


@pytest.mark.skipif(not HAVE_JAX_FFI, reason="needs JAX and fastiou's XLA FFI handlers")
def test_jax_without_keras_reads_keras_json(tmp_path):
    # Without Keras imported, fastiou.jax takes epsilon from keras.json, the
    # value Keras itself would start from, and imports neither Keras nor
    # TensorFlow to read it.
    (tmp_path / "keras.json").write_text(json.dumps({"epsilon": 0.05}))
    t, p = epsilon_case()
    np.save(tmp_path / "t.npy", t)
    np.save(tmp_path / "p.npy", p)
    code = (
        "import sys, json, numpy as np\n"
        "import fastiou.jax as fj\n"
        f"t, p = np.load({str(tmp_path / 't.npy')!r}), np.load({str(tmp_path / 'p.npy')!r})\n"
        "v = fj.jaccard_loss(t, p, per_image=True, smooth=0.0, log_loss=True)\n"
        "print(json.dumps({'loss': np.asarray(v).tolist(), 'keras': 'keras' in sys.modules,\n"
        "                  'tensorflow': 'tensorflow' in sys.modules}))\n")
    env = dict(os.environ, KERAS_BACKEND="numpy", KERAS_HOME=str(tmp_path), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["keras"] is False and out["tensorflow"] is False
    want = oracle_loss("jaccard", t, p, eps=0.05, per_image=True, smooth=0.0, log_loss=True)
    np.testing.assert_allclose(out["loss"], want, rtol=1e-5)


# --- Tversky: alpha weighs false positives; keras.losses.Tversky swaps them.

def test_tversky_alpha_weighs_false_positives():
    # t = [1, 1, 0, 0], p = [1, 0, 1, 1]: I = 1, FP = P - I = 2, FN = T - I = 1.
    # alpha=0.3, beta=0.7, smooth=0: TI = 1 / (1 + 0.3 * 2 + 0.7 * 1) = 1 / 2.3.
    # Keras' Tversky(alpha=0.3, beta=0.7): 1 / (1 + 0.3 * 1 + 0.7 * 2) = 1 / 2.7.
    t = tf.constant([[1.0, 1.0, 0.0, 0.0]])[..., None]
    p = tf.constant([[1.0, 0.0, 1.0, 1.0]])[..., None]
    ours = TverskyLoss(alpha=0.3, beta=0.7, smooth=0.0)(t, p)
    np.testing.assert_allclose(ours, 1 - 1 / 2.3, rtol=1e-6)
    theirs = keras.losses.Tversky(alpha=0.3, beta=0.7)(t, p)
    np.testing.assert_allclose(theirs, 1 - 1 / 2.7, rtol=1e-6)
    np.testing.assert_allclose(keras.losses.Tversky(alpha=0.7, beta=0.3)(t, p), ours, rtol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("per_image", [False, True])
def test_tversky_equals_keras_with_alpha_and_beta_swapped(rng, channels, per_image):
    y_true, y_pred = make_inputs(rng, (4, 10, 9, channels), from_logits=False)
    a, b = 0.3, 0.7
    ours = TverskyLoss(alpha=a, beta=b, smooth=0.0, per_image=per_image, mode="multilabel")
    # The axes fastiou sums over: within each image, or over the batch too.
    axis = (1, 2) if per_image else (0, 1, 2)
    want = oracle_loss("tversky", y_true.numpy(), y_pred.numpy(), eps=1e-7, per_image=per_image,
                       smooth=0.0, alpha=a, beta=b).mean()
    got = ours(y_true, y_pred)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(keras.losses.Tversky(alpha=b, beta=a, axis=axis)(y_true, y_pred), got,
                               rtol=1e-5)
    if channels == 1 and not per_image:
        np.testing.assert_allclose(keras.losses.Tversky(alpha=b, beta=a)(y_true, y_pred), got,
                                   rtol=1e-5)
    # The same alpha and beta in both do not agree: the conventions differ.
    same = float(keras.losses.Tversky(alpha=a, beta=b, axis=axis)(y_true, y_pred))
    assert abs(same - float(got)) > 1e-3


# --- sample_weight, reduction and masks.

def per_image_case(rng):
    y_true, y_pred = make_inputs(rng, (4, 8, 7, 1), "float32", "uint8", from_logits=False)
    want = oracle_loss("jaccard", y_true.numpy(), y_pred.numpy(), eps=1e-7, per_image=True)
    return y_true, y_pred, want


def test_sample_weight_needs_per_image(rng):
    y_true, y_pred, _ = per_image_case(rng)
    loss = JaccardLoss()
    with pytest.raises(ValueError, match=r"sample_weight needs per_image=True.*pass per_image=True"):
        loss(y_true, y_pred, sample_weight=tf.constant([1.0, 0.0, 0.0, 0.0]))
    # Without weights the batch loss is the oracle's, for any reduction.
    for reduction in ("sum_over_batch_size", "sum", "none"):
        got = JaccardLoss(reduction=reduction)(y_true, y_pred)
        want = oracle_loss("jaccard", y_true.numpy(), y_pred.numpy(), eps=1e-7, per_image=False)
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean", "sum", "none", None,
                                       "mean_with_sample_weight"])
def test_per_image_sample_weight_and_reduction(rng, reduction):
    y_true, y_pred, losses = per_image_case(rng)
    w = np.array([2.0, 0.0, 0.5, 1.0])
    loss = JaccardLoss(per_image=True, reduction=reduction)
    weighted = losses * w
    want = {"sum_over_batch_size": weighted.sum() / 4, "mean": weighted.sum() / 4,
            "sum": weighted.sum(), "none": weighted, None: weighted,
            "mean_with_sample_weight": weighted.sum() / w.sum()}[reduction]
    for sample_weight in (tf.constant(w, tf.float32), tf.constant(w[:, None], tf.float32), w):
        np.testing.assert_allclose(loss(y_true, y_pred, sample_weight=sample_weight), want, rtol=1e-6)
    unweighted = {"sum": losses.sum(), "none": losses, None: losses}.get(reduction, losses.mean())
    np.testing.assert_allclose(loss(y_true, y_pred), unweighted, rtol=1e-6)
    graph = tf.function(lambda t, p, sw: loss(t, p, sample_weight=sw))
    np.testing.assert_allclose(graph(y_true, y_pred, tf.constant(w, tf.float32)), want, rtol=1e-6)


def test_one_weighted_image_is_that_images_loss(rng):
    y_true, y_pred, losses = per_image_case(rng)
    w = tf.constant([0.0, 0.0, 1.0, 0.0])
    got = JaccardLoss(per_image=True, reduction="mean_with_sample_weight")(y_true, y_pred, sample_weight=w)
    np.testing.assert_allclose(got, losses[2], rtol=1e-6)


def test_bad_sample_weight_shapes(rng):
    y_true, y_pred, _ = per_image_case(rng)
    loss = JaccardLoss(per_image=True)
    with pytest.raises(ValueError, match=r"sample_weight weighs images: it needs shape \(B,\) or \(B, 1\)"):
        loss(y_true, y_pred, sample_weight=tf.ones((4, 8, 7)))
    with pytest.raises(ValueError, match="sample_weight has 3 weights for a batch of 4 images"):
        loss(y_true, y_pred, sample_weight=tf.ones((3,)))


def test_fit_with_sample_weight(rng):
    x = rng.normal(size=(8, 6, 6, 1)).astype(np.float32)
    y = (x > 0.5).astype(np.uint8)
    w = np.array([1.0, 0.0, 2.0, 0.0, 1.0, 1.0, 0.0, 3.0], np.float32)
    inputs = keras.Input((6, 6, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    model.compile(loss=JaccardLoss(per_image=True))
    got = model.evaluate(x, y, sample_weight=w, batch_size=8, verbose=0)
    p = model.predict(x, verbose=0)
    want = (oracle_loss("jaccard", y, p, eps=1e-7, per_image=True) * w).mean()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    model.compile(loss=JaccardLoss())
    with pytest.raises(ValueError, match="sample_weight needs per_image=True"):
        model.evaluate(x, y, sample_weight=w, batch_size=8, verbose=0)


def test_keras_masks_are_rejected(rng):
    y_true, y_pred, _ = per_image_case(rng)
    masked = keras.layers.Masking(mask_value=0.5)(y_pred)
    assert getattr(masked, "_keras_mask", None) is not None
    for loss in (JaccardLoss(), DiceLoss(per_image=True)):
        with pytest.raises(ValueError, match="carries a Keras mask"):
            loss(y_true, masked)


# --- mode="auto" on dense targets of several channels.

def test_auto_mode_refuses_dense_targets_of_several_channels(rng):
    y_true, y_pred = make_inputs(rng, (2, 6, 5, 3))
    match = r"mode='auto' cannot tell .* Pass mode='multilabel' .* or mode='multiclass'"
    for call in (lambda: fastiou.jaccard_loss(y_true, y_pred),
                 lambda: DiceLoss()(y_true, y_pred),
                 lambda: fastiou.reference.tversky_loss(y_true, y_pred)):
        with pytest.raises(ValueError, match=match):
            call()
    unknown = tf.TensorSpec((None, None, None, None), tf.float32)
    with pytest.raises(ValueError, match="an unknown number of channels"):
        tf.function(fastiou.jaccard_loss, input_signature=[unknown, unknown]).get_concrete_function()
    if HAVE_JAX_FFI:
        import fastiou.jax as fj

        with pytest.raises(ValueError, match=match):
            fj.jaccard_loss(y_true.numpy(), y_pred.numpy())


def test_explicit_modes_and_auto_where_the_shape_tells(rng):
    y_true, y_pred = make_inputs(rng, (2, 6, 5, 3))
    t, z = y_true.numpy().astype(np.float64), y_pred.numpy().astype(np.float64)
    # multilabel: a sigmoid per channel.
    p = 1.0 / (1.0 + np.exp(-z))
    np.testing.assert_allclose(fastiou.jaccard_loss(y_true, y_pred, from_logits=True, mode="multilabel"),
                               oracle_loss("jaccard", t, p, eps=1e-7, per_image=False), rtol=1e-5)
    # multiclass: a softmax over the channels; one-hot targets equal class indices under "auto".
    labels = rng.integers(0, 3, size=(2, 6, 5)).astype(np.uint8)
    one_hot = np.eye(3, dtype=np.float32)[labels]
    e = np.exp(z - z.max(-1, keepdims=True))
    want = oracle_loss("jaccard", one_hot, e / e.sum(-1, keepdims=True), eps=1e-7, per_image=False)
    got_dense = fastiou.jaccard_loss(one_hot, y_pred, from_logits=True, mode="multiclass")
    got_sparse = fastiou.jaccard_loss(labels, y_pred, from_logits=True)
    np.testing.assert_allclose(got_dense, want, rtol=1e-5)
    np.testing.assert_allclose(got_sparse, want, rtol=1e-5)
    # One channel: binary under "auto".
    y1, z1 = make_inputs(rng, (2, 6, 5, 1))
    p1 = 1.0 / (1.0 + np.exp(-z1.numpy().astype(np.float64)))
    np.testing.assert_allclose(fastiou.dice_loss(y1, z1, from_logits=True),
                               oracle_loss("dice", y1.numpy(), p1, eps=1e-7, per_image=False),
                               rtol=1e-5)


# --- Options as plain attributes, echoed by get_config.

OPTIONS = dict(from_logits=True, mode="multilabel", smooth=0.5, per_image=True,
               class_weights=[1.0, 2.0], log_loss=False, ignore_index=None, classes=[0, 1],
               sync_replicas=False)
CLASSES = [(JaccardLoss, {}), (DiceLoss, {}), (TverskyLoss, dict(alpha=0.2, beta=0.8, gamma=1.5))]


@pytest.mark.parametrize("cls,extra", CLASSES, ids=[c.__name__ for c, _ in CLASSES])
def test_options_are_plain_attributes_and_round_trip(rng, cls, extra):
    loss = cls(**OPTIONS, **extra, reduction="sum", name="my_loss")
    for name, value in {**OPTIONS, **extra}.items():
        assert name in vars(loss), name
        assert not isinstance(getattr(type(loss), name, None), property), name
        assert getattr(loss, name) == value
    config = loss.get_config()
    assert {**OPTIONS, **extra}.items() <= config.items()
    assert config["reduction"] == "sum" and config["name"] == "my_loss"
    again = cls.from_config(config)
    assert type(again) is cls and again.get_config() == config
    assert all(getattr(again, k) == v for k, v in {**OPTIONS, **extra}.items())
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert restored.get_config() == config
    y_true, y_pred = make_inputs(rng, (3, 5, 4, 2))
    np.testing.assert_allclose(again(y_true, y_pred), loss(y_true, y_pred), rtol=1e-7)


def test_changed_attributes_change_the_loss(rng):
    y_true, y_pred = make_inputs(rng, (3, 6, 6, 1), from_logits=False)
    t, p = y_true.numpy(), y_pred.numpy()
    loss = TverskyLoss(smooth=0.0)
    loss.alpha, loss.beta = 0.1, 0.9
    want = oracle_loss("tversky", t, p, eps=1e-7, per_image=False, smooth=0.0, alpha=0.1, beta=0.9)
    np.testing.assert_allclose(loss(y_true, y_pred), want, rtol=1e-5)
    assert loss.get_config()["alpha"] == 0.1 and loss.get_config()["beta"] == 0.9

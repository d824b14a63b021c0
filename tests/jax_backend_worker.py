"""Checks fastiou.losses on Keras' JAX backend in a fresh process (the backend
is fixed when Keras is imported) and prints the results as JSON for
test_keras_jax_backend.py."""

import json
import os
import sys
import tempfile

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import fastiou  # noqa: E402


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def main():
    out = {"backend": keras.backend.backend()}
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 10, 9, 1)).astype(np.float32)
    t = (rng.random(z.shape) < 0.3).astype(np.uint8)
    z21 = rng.normal(size=(2, 8, 8, 21)).astype(np.float32)
    labels = np.where(rng.random((2, 8, 8)) < 0.1, 255, rng.integers(0, 21, (2, 8, 8))).astype(np.uint8)
    diffs = {}
    for kind, cls, extra in (("jaccard", fastiou.losses.JaccardLoss, {}),
                             ("dice", fastiou.losses.DiceLoss, {}),
                             ("tversky", fastiou.losses.TverskyLoss, dict(alpha=0.3, beta=0.7, gamma=1.5))):
        ref = getattr(fastiou.reference, f"{kind}_loss")
        for per_image in (False, True):
            for name, (yt, yp, opts) in {"binary": (t, z, dict(from_logits=True)),
                                         "sparse": (labels, z21, dict(from_logits=True, ignore_index=255))}.items():
                key = f"{kind}-{name}-{per_image}"
                got = cls(per_image=per_image, **opts, **extra)(yt, yp)
                want = np.mean(ref(yt, yp, per_image=per_image, **opts, **extra))
                fn_got = getattr(fastiou, f"{kind}_loss")(yt, yp, per_image=per_image, **opts, **extra)
                g_got = jax.grad(lambda p: cls(per_image=per_image, **opts, **extra)(yt, p))(yp)
                g_want = jax.grad(lambda p: keras.ops.mean(ref(yt, p, per_image=per_image, **opts, **extra)))(yp)
                diffs[key] = [rel(got, want), rel(np.mean(fn_got), want), rel(g_got, g_want)]
    out["diffs"] = diffs
    # Keras itself may import TensorFlow later (tf.data in fit, file I/O in
    # saving) when it is installed; fastiou's import and losses must not.
    out["tensorflow_imported"] = "tensorflow" in sys.modules

    loss = fastiou.losses.TverskyLoss(alpha=0.2, beta=0.8, from_logits=True)
    again = fastiou.losses.TverskyLoss.from_config(loss.get_config())
    out["config_roundtrip"] = again.get_config() == loss.get_config()

    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 9, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1)(h))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=fastiou.losses.JaccardLoss(from_logits=True))
    x = rng.normal(size=(32, 10, 9, 1)).astype(np.float32)
    y = (x > 0.5).astype(np.uint8)
    history = model.fit(x, y, epochs=8, batch_size=8, verbose=0)
    out["fit_losses"] = [float(v) for v in history.history["loss"]]
    path = os.path.join(tempfile.mkdtemp(), "m.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    out["reloaded_loss"] = type(reloaded.loss).__name__
    out["reloaded_predictions_equal"] = bool(np.allclose(reloaded.predict(x, verbose=0),
                                                         model.predict(x, verbose=0)))
    conventions(out, t, z)
    try:
        fastiou.losses.JaccardLoss()(np.zeros((2, 4, 4, 1), np.uint8), np.zeros((2, 4, 5, 1), np.float32))
        out["shape_error"] = None
    except ValueError as e:
        out["shape_error"] = str(e)
    print("RESULT " + json.dumps(out))


def error_of(fn):
    """The message of the ValueError fn raises, or None."""
    try:
        fn()
    except ValueError as e:
        return str(e)
    return None


def conventions(out, t, z):
    """sample_weight and reduction, masks, mode="auto" and epsilon on Keras' JAX backend."""
    JaccardLoss = fastiou.losses.JaccardLoss
    w = np.array([2.0, 0.0, 0.5, 1.0], np.float32)
    per = np.asarray(fastiou.reference.jaccard_loss(t, z, from_logits=True, per_image=True), np.float64)
    by_weight = JaccardLoss(from_logits=True, per_image=True, reduction="mean_with_sample_weight")
    in_jit = jax.jit(lambda p: JaccardLoss(from_logits=True, per_image=True)(t, p, sample_weight=w))(z)
    out["sample_weight"] = [rel(by_weight(t, z, sample_weight=w), (per * w).sum() / w.sum()),
                            rel(in_jit, (per * w).mean())]
    out["sample_weight_error"] = error_of(lambda: JaccardLoss()(t, z, sample_weight=w))
    # Under jax.jit the mask of a traced array lives in Keras' side table.
    out["mask_error"] = error_of(
        lambda: jax.jit(lambda p: JaccardLoss()(t, keras.layers.Masking(mask_value=0.0)(p)))(z))
    dense = np.zeros((2, 4, 4, 3), np.float32)
    out["mode_error"] = error_of(lambda: fastiou.losses.DiceLoss()(dense, dense))
    # A prediction disjoint from its target: -log of the index clamped at epsilon.
    target = np.zeros((1, 4, 1), np.float32)
    target[0, :2] = 1.0
    pred = (1.0 - target) * 0.8
    default = keras.config.epsilon()
    keras.config.set_epsilon(0.05)
    try:
        out["log_loss_at_epsilon_0.05"] = float(JaccardLoss(log_loss=True, smooth=0.0)(target, pred))
    finally:
        keras.config.set_epsilon(default)


if __name__ == "__main__":
    main()

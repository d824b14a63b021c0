"""The TensorFlow ops' GPU kernels: losses and gradients on the GPU equal the
CPU kernels', in every mode: binary, sparse multi-class, dense multi-label
(a sigmoid per channel) and one-hot softmax targets, per-element and
per-pixel weights, and the gradient with respect to float targets. The target
sums T are also checked against NumPy, so a device that dropped the targets
fails even where both would agree.

Skipped where TensorFlow sees no GPU or fastiou has no usable CUDA kernels.
With FASTIOU_TEST_DEVICE=cpu both sides run on the CPU: a dry run of the
tests themselves on a machine without a GPU.
"""

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import fastiou  # noqa: E402

if not getattr(fastiou, "_HAVE_TF_OPS", False):
    pytest.skip("fastiou was built without its TensorFlow ops", allow_module_level=True)

DRY_RUN = os.environ.get("FASTIOU_TEST_DEVICE") == "cpu"
DEVICE_TYPE = "CPU" if DRY_RUN else "GPU"
DEVICE = f"/{DEVICE_TYPE}:0"
if not DRY_RUN:
    if not fastiou.built_with_cuda():
        pytest.skip("fastiou was built without CUDA kernels", allow_module_level=True)
    _reason = getattr(fastiou.kernels, "cuda_unavailable_reason", lambda: None)()
    if _reason:
        pytest.skip(_reason, allow_module_level=True)
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow sees no GPU", allow_module_level=True)

# name, shape, loss options, target kind, weights (None, "element", "pixel")
CASES = [
    ("binary-logits", (4, 64, 64, 1), dict(from_logits=True), "mask", None),
    ("binary-probabilities", (4, 64, 64, 1), dict(from_logits=False), "mask", None),
    ("multiclass-sparse", (2, 48, 48, 21), dict(from_logits=True, ignore_index=255), "labels", None),
    ("multiclass-sparse-pixel-weights", (2, 48, 48, 21), dict(from_logits=True, ignore_index=255), "labels",
     "pixel"),
    ("multilabel-logits", (2, 40, 36, 3), dict(from_logits=True, mode="multilabel"), "mask", None),
    ("multilabel-probabilities", (2, 40, 36, 3), dict(from_logits=False, mode="multilabel"), "mask", None),
    ("multilabel-element-weights", (2, 40, 36, 3), dict(from_logits=True, mode="multilabel"), "mask",
     "element"),
    ("multilabel-pixel-weights", (2, 40, 36, 3), dict(from_logits=True, mode="multilabel", per_image=True),
     "mask", "pixel"),
    ("softmax-one-hot", (2, 40, 36, 4), dict(from_logits=True, mode="multiclass"), "one-hot", None),
    ("softmax-one-hot-probabilities", (2, 40, 36, 4), dict(from_logits=False, mode="multiclass"), "one-hot",
     None),
    ("softmax-one-hot-element-weights", (2, 40, 36, 4), dict(from_logits=True, mode="multiclass"), "one-hot",
     "element"),
    ("softmax-one-hot-pixel-weights", (2, 40, 36, 4), dict(from_logits=True, mode="multiclass",
                                                           per_image=True), "one-hot", "pixel"),
]
GRAD_TOL = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 1e-5}


def make_case(rng, shape, opts, kind, weights, dtype, true_dtype=np.uint8):
    z = rng.normal(size=shape)
    if not opts["from_logits"]:
        e = np.exp(z - z.max(-1, keepdims=True))
        z = e / e.sum(-1, keepdims=True) if kind != "mask" else 1 / (1 + np.exp(-z))
    if kind == "labels":
        labels = rng.integers(0, shape[-1], size=shape[:-1])
        t = np.where(rng.random(shape[:-1]) < 0.05, 255, labels).astype(np.uint8)
    elif kind == "one-hot":
        t = np.eye(shape[-1])[rng.integers(0, shape[-1], size=shape[:-1])].astype(true_dtype)
    else:
        t = (rng.random(shape) < 0.2).astype(true_dtype)
    w = None
    if weights:
        w = rng.random(shape if weights == "element" else shape[:-1] + (1,))
    y_pred = tf.cast(tf.constant(z), dtype)
    return t, y_pred, None if w is None else tf.cast(tf.constant(w), dtype)


def numpy_target_sums(t, w, shape, kind, per_image):
    """T = sum(w * t) per channel (per image and channel with per_image), in float64."""
    if kind == "labels":
        onehot = (t[..., None] == np.arange(shape[-1])).astype(np.float64)  # 255 matches no channel
    else:
        onehot = t.astype(np.float64)
    wt = onehot * (1.0 if w is None else tf.cast(w, tf.float64).numpy())
    axes = tuple(range(1 if per_image else 0, len(shape) - 1))
    return wt.sum(axes)


def loss_and_grads(device, t, y_pred, w, opts, kind, wrt_true=False):
    """Overlap sums, Jaccard loss and its gradients, all computed on `device`."""
    with tf.device(device):
        y_true = tf.identity(tf.constant(t))
        y_pred = tf.identity(y_pred)
        w = None if w is None else tf.identity(w)
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            if wrt_true:
                tape.watch(y_true)
            stats = fastiou.overlap_stats(y_true, y_pred, w, per_image=opts.get("per_image", False),
                                          softmax=kind != "mask", from_logits=opts["from_logits"],
                                          ignore_index=opts.get("ignore_index"))
            loss = tf.reduce_sum(fastiou.jaccard_loss(y_true, y_pred, weights=w, **opts))
        grads = tape.gradient(loss, [y_pred, y_true] if wrt_true else [y_pred])
        return stats, loss, grads


def assert_close_grads(got, want, dtype):
    tol = GRAD_TOL[dtype]
    g, c = (tf.cast(x, tf.float64).numpy() for x in (got, want))
    assert np.abs(c).max() > 0, "the gradient is zero everywhere"
    np.testing.assert_allclose(g, c, rtol=tol, atol=tol * np.abs(c).max())


@pytest.mark.parametrize("name,shape,opts,kind,weights", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_gpu_kernels_match_cpu_kernels(rng, name, shape, opts, kind, weights, dtype):
    t, y_pred, w = make_case(rng, shape, opts, kind, weights, dtype)
    gpu = loss_and_grads(DEVICE, t, y_pred, w, opts, kind)
    cpu = loss_and_grads("/CPU:0", t, y_pred, w, opts, kind)
    assert DEVICE_TYPE in gpu[0][0].device
    for g, c in zip(gpu[0], cpu[0]):
        np.testing.assert_allclose(g.numpy(), c.numpy(), rtol=2e-6, atol=1e-6)
    # The targets' sums do not depend on y_pred: both devices must find them all.
    want_t = numpy_target_sums(t, w, shape, kind, opts.get("per_image", False))
    assert want_t.min() > 0
    np.testing.assert_allclose(gpu[0][2].numpy(), want_t, rtol=1e-5)
    assert gpu[1].numpy() > 0
    np.testing.assert_allclose(gpu[1].numpy(), cpu[1].numpy(), rtol=2e-6)
    assert_close_grads(gpu[2][0], cpu[2][0], dtype)


WRT_TRUE_CASES = [
    ("multilabel", (2, 40, 36, 3), dict(from_logits=True, mode="multilabel"), "mask", None),
    ("multilabel-pixel-weights", (2, 40, 36, 3), dict(from_logits=True, mode="multilabel", per_image=True),
     "mask", "pixel"),
    ("softmax-one-hot", (2, 40, 36, 4), dict(from_logits=True, mode="multiclass"), "one-hot", None),
    ("softmax-one-hot-element-weights", (2, 40, 36, 4), dict(from_logits=True, mode="multiclass"), "one-hot",
     "element"),
]


@pytest.mark.parametrize("name,shape,opts,kind,weights", WRT_TRUE_CASES, ids=[c[0] for c in WRT_TRUE_CASES])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_gradient_wrt_float_targets_matches_cpu(rng, name, shape, opts, kind, weights, dtype):
    t, y_pred, w = make_case(rng, shape, opts, kind, weights, dtype, true_dtype=np.float32)
    gpu = loss_and_grads(DEVICE, t, y_pred, w, opts, kind, wrt_true=True)
    cpu = loss_and_grads("/CPU:0", t, y_pred, w, opts, kind, wrt_true=True)
    np.testing.assert_allclose(gpu[1].numpy(), cpu[1].numpy(), rtol=2e-6)
    assert gpu[2][1].dtype == tf.float32 and gpu[2][1].shape == shape
    assert_close_grads(gpu[2][0], cpu[2][0], dtype)
    assert_close_grads(gpu[2][1], cpu[2][1], dtype)


@pytest.mark.skipif(DRY_RUN, reason="the GPU's behaviour: the CPU raises instead")
def test_gpu_bad_label_gives_nan_not_a_crash():
    labels = np.zeros((1, 8, 8), np.uint8)
    labels[0, 3, 3] = 9
    with tf.device(DEVICE):
        stats = fastiou.overlap_stats(tf.constant(labels), tf.zeros((1, 8, 8, 3)), from_logits=True,
                                      softmax=True)
    assert all(np.isnan(s.numpy()).all() for s in stats)

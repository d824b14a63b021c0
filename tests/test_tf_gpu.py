"""The TensorFlow ops' GPU kernels: losses and gradients on the GPU equal the
CPU kernels'. Skipped where TensorFlow sees no GPU or fastiou has no CUDA."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import fastiou  # noqa: E402

if not fastiou.built_with_cuda():
    pytest.skip("fastiou was built without CUDA kernels", allow_module_level=True)
if not tf.config.list_physical_devices("GPU"):
    pytest.skip("TensorFlow sees no GPU", allow_module_level=True)

CASES = [
    ("binary-logits", (4, 64, 64, 1), dict(from_logits=True), False),
    ("binary-probabilities", (4, 64, 64, 1), dict(from_logits=False), False),
    ("multiclass-sparse", (2, 48, 48, 21), dict(from_logits=True, ignore_index=255), True),
]


def loss_and_grad(device, fn, y_true, y_pred, **kwargs):
    with tf.device(device):
        y_true = tf.identity(y_true)
        y_pred = tf.identity(y_pred)
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            stats = fastiou.overlap_stats(y_true, y_pred, per_image=False,
                                          softmax=kwargs.get("ignore_index") is not None,
                                          from_logits=kwargs["from_logits"],
                                          ignore_index=kwargs.get("ignore_index"))
            loss = tf.reduce_sum(fn(y_true, y_pred, **kwargs))
        return stats, loss, tape.gradient(loss, y_pred)


@pytest.mark.parametrize("name,shape,opts,sparse", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_gpu_kernels_match_cpu_kernels(rng, name, shape, opts, sparse, dtype):
    z = rng.normal(size=shape)
    if not opts["from_logits"]:
        z = 1 / (1 + np.exp(-z))
    if sparse:
        labels = rng.integers(0, shape[-1], size=shape[:-1])
        y_true = tf.constant(np.where(rng.random(shape[:-1]) < 0.05, 255, labels).astype(np.uint8))
    else:
        y_true = tf.constant((rng.random(shape) < 0.2).astype(np.uint8))
    y_pred = tf.cast(tf.constant(z), dtype)
    gpu = loss_and_grad("/GPU:0", fastiou.jaccard_loss, y_true, y_pred, **opts)
    cpu = loss_and_grad("/CPU:0", fastiou.jaccard_loss, y_true, y_pred, **opts)
    assert "GPU" in gpu[0][0].device
    for g, c in zip(gpu[0], cpu[0]):
        np.testing.assert_allclose(g.numpy(), c.numpy(), rtol=2e-6)
    np.testing.assert_allclose(gpu[1].numpy(), cpu[1].numpy(), rtol=2e-6)
    tol = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 1e-5}[dtype]
    g, c = (tf.cast(x[2], tf.float64).numpy() for x in (gpu, cpu))
    np.testing.assert_allclose(g, c, rtol=tol, atol=tol * np.abs(c).max())


def test_gpu_bad_label_gives_nan_not_a_crash():
    labels = np.zeros((1, 8, 8), np.uint8)
    labels[0, 3, 3] = 9
    with tf.device("/GPU:0"):
        stats = fastiou.overlap_stats(tf.constant(labels), tf.zeros((1, 8, 8, 3)), from_logits=True,
                                      softmax=True)
    assert all(np.isnan(s.numpy()).all() for s in stats)

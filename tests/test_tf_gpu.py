"""The TensorFlow ops' GPU kernels: losses and gradients on the GPU equal the
CPU kernels', in every mode: binary, sparse multi-class, dense multi-label
(a sigmoid per channel) and one-hot softmax targets, per-element and
per-pixel weights, and the gradient with respect to float targets. The target
sums T are also checked against the float64 oracle, so a device that dropped the targets
fails even where both would agree. The metrics' confusion-count op on the
device, eager and under jit_compile, against the confusion oracle.

Skipped where TensorFlow sees no GPU or fastiou has no usable CUDA kernels.
With FASTIOU_TEST_DEVICE=cpu both sides run on the CPU: a dry run of the
tests themselves on a machine without a GPU.
"""

import os
from typing import NamedTuple, Optional

import numpy as np
import pytest

from cases import MODE, Mode, make_case
from overlap_oracle import sums as oracle_sums

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

pytestmark = pytest.mark.gpu


class GpuCase(NamedTuple):
    mode: Mode
    shape: tuple
    weights: Optional[str] = None  # "element", "pixel" or None
    per_image: bool = False

    @property
    def name(self):
        return self.mode.name + (f"-{self.weights}-weights" if self.weights else "")

    def loss_options(self):
        return dict(self.mode.loss_options(), per_image=self.per_image)


SPARSE_21 = MODE["multiclass-sparse"]._replace(channels=21)
MULTILABEL, ONE_HOT = MODE["multilabel-logits"], MODE["multiclass-one-hot"]
ONE_HOT_PROBABILITIES = ONE_HOT._replace(name="multiclass-one-hot-probabilities", from_logits=False)
CASES = [
    GpuCase(MODE["binary-logits"], (4, 64, 64, 1)),
    GpuCase(MODE["binary-probabilities"], (4, 64, 64, 1)),
    GpuCase(SPARSE_21, (2, 48, 48, 21)),
    GpuCase(SPARSE_21, (2, 48, 48, 21), "pixel"),
    GpuCase(MULTILABEL, (2, 40, 36, 3)),
    GpuCase(MODE["multilabel-probabilities"], (2, 40, 36, 3)),
    GpuCase(MULTILABEL, (2, 40, 36, 3), "element"),
    GpuCase(MULTILABEL, (2, 40, 36, 3), "pixel", per_image=True),
    GpuCase(ONE_HOT, (2, 40, 36, 4)),
    GpuCase(ONE_HOT_PROBABILITIES, (2, 40, 36, 4)),
    GpuCase(ONE_HOT, (2, 40, 36, 4), "element"),
    GpuCase(ONE_HOT, (2, 40, 36, 4), "pixel", per_image=True),
]
GRAD_TOL = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 1e-5}


def make_gpu_case(rng, case, dtype, true_dtype=np.uint8):
    """Targets (NumPy), predictions and weights (TensorFlow, as dtype)."""
    t, z = make_case(rng, case.shape, case.mode.kind, case.mode.from_logits, true_dtype, "float64",
                     case.mode.ignore_index, scale=1.0, fg=0.2, ignore_share=0.05)
    w = None
    if case.weights:
        w = rng.random(case.shape if case.weights == "element" else case.shape[:-1] + (1,))
    y_pred = tf.cast(tf.constant(z), dtype)
    return t, y_pred, None if w is None else tf.cast(tf.constant(w), dtype)


def target_sums(t, y_pred, w, case):
    """T = sum(w * t) per channel (per image and channel with per_image), from the float64 oracle."""
    f64 = [None if x is None else tf.cast(x, tf.float64).numpy() for x in (y_pred, w)]
    return oracle_sums(t, *f64, per_image=case.per_image, **case.mode.kernel_options())[2]


def loss_and_grads(device, t, y_pred, w, case, wrt_true=False):
    """Overlap sums, Jaccard loss and its gradients, all computed on `device`."""
    mode = case.mode
    with tf.device(device):
        y_true = tf.identity(tf.constant(t))
        y_pred = tf.identity(y_pred)
        w = None if w is None else tf.identity(w)
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            if wrt_true:
                tape.watch(y_true)
            stats = fastiou.overlap_stats(y_true, y_pred, w, per_image=case.per_image, softmax=mode.softmax,
                                          from_logits=mode.from_logits, ignore_index=mode.ignore_index)
            loss = tf.reduce_sum(fastiou.jaccard_loss(y_true, y_pred, weights=w, **case.loss_options()))
        grads = tape.gradient(loss, [y_pred, y_true] if wrt_true else [y_pred])
        return stats, loss, grads


def assert_close_grads(got, want, dtype):
    tol = GRAD_TOL[dtype]
    g, c = (tf.cast(x, tf.float64).numpy() for x in (got, want))
    assert np.abs(c).max() > 0, "the gradient is zero everywhere"
    np.testing.assert_allclose(g, c, rtol=tol, atol=tol * np.abs(c).max())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_gpu_kernels_match_cpu_kernels(rng, case, dtype):
    t, y_pred, w = make_gpu_case(rng, case, dtype)
    gpu = loss_and_grads(DEVICE, t, y_pred, w, case)
    cpu = loss_and_grads("/CPU:0", t, y_pred, w, case)
    assert DEVICE_TYPE in gpu[0][0].device
    for g, c in zip(gpu[0], cpu[0]):
        np.testing.assert_allclose(g.numpy(), c.numpy(), rtol=2e-6, atol=1e-6)
    # The targets' sums do not depend on y_pred: both devices must find them all.
    want_t = target_sums(t, y_pred, w, case)
    assert want_t.min() > 0
    np.testing.assert_allclose(gpu[0][2].numpy(), want_t, rtol=1e-5)
    assert gpu[1].numpy() > 0
    np.testing.assert_allclose(gpu[1].numpy(), cpu[1].numpy(), rtol=2e-6)
    assert_close_grads(gpu[2][0], cpu[2][0], dtype)


WRT_TRUE_CASES = [
    GpuCase(MULTILABEL, (2, 40, 36, 3)),
    GpuCase(MULTILABEL, (2, 40, 36, 3), "pixel", per_image=True),
    GpuCase(ONE_HOT, (2, 40, 36, 4)),
    GpuCase(ONE_HOT, (2, 40, 36, 4), "element"),
]


@pytest.mark.parametrize("case", WRT_TRUE_CASES, ids=[c.name for c in WRT_TRUE_CASES])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_gradient_wrt_float_targets_matches_cpu(rng, case, dtype):
    t, y_pred, w = make_gpu_case(rng, case, dtype, true_dtype=np.float32)
    gpu = loss_and_grads(DEVICE, t, y_pred, w, case, wrt_true=True)
    cpu = loss_and_grads("/CPU:0", t, y_pred, w, case, wrt_true=True)
    np.testing.assert_allclose(gpu[1].numpy(), cpu[1].numpy(), rtol=2e-6)
    assert gpu[2][1].dtype == tf.float32 and gpu[2][1].shape == case.shape
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


METRIC_CASES = [
    # metric, its arguments, y_true, y_pred, sample_weight
    ("MeanIoU", dict(num_classes=21, ignore_class=3, sparse_y_pred=False), "labels", "scores", None),
    ("BinaryIoU", dict(target_class_ids=[0, 1], threshold=0.3), "mask", "probabilities", "pixel"),
    ("OneHotMeanIoU", dict(num_classes=5), "one-hot", "scores", "image"),
]


@pytest.mark.parametrize("case", METRIC_CASES, ids=[c[0] for c in METRIC_CASES])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_metric_counts_on_the_device_match_the_oracle(rng, case, jit_compile):
    """The counts op runs on the device (its GPU kernel, or under XLA its CUDA
    custom call) and gives the oracle's counts: exact with integer weights."""
    from confusion_oracle import np_counts

    from fastiou import metrics as fm

    name, kwargs, true_kind, pred_kind, weights = case
    K = kwargs.get("num_classes", 2)
    shape = (2, 64, 48)
    labels = rng.integers(0, K, shape)
    y_true = {"labels": labels.astype(np.uint8), "mask": (labels % 2).astype(np.uint8),
              "one-hot": np.eye(K, dtype=np.float32)[labels]}[true_kind]
    scores = rng.normal(size=shape + (K,)).astype(np.float32)
    probabilities = rng.random(shape).astype(np.float32)
    y_pred = scores if pred_kind == "scores" else probabilities
    w = {None: None, "pixel": rng.integers(0, 3, shape).astype(np.float32),
         "image": np.array([1.0, 2.0], np.float32)}[weights]
    metric = getattr(fm, name)(**kwargs)

    @tf.function(jit_compile=jit_compile)
    def update(t, p, w):
        metric.update_state(t, p, w)

    with tf.device(DEVICE):
        update(tf.constant(y_true), tf.constant(y_pred), None if w is None else tf.constant(w))
    t_classes = labels if true_kind != "mask" else labels % 2
    p_classes = scores.argmax(-1) if pred_kind == "scores" else (probabilities >= 0.3).astype(np.int64)
    want = np_counts(t_classes, p_classes, K, None if w is None else np.broadcast_to(
        w.reshape((-1,) + (1,) * (len(shape) - 1)) if weights == "image" else w, shape), kwargs.get("ignore_class"))
    np.testing.assert_array_equal(np.asarray(metric.counts.numpy(), np.float64), want)


@pytest.mark.parametrize("K, integer_weights, refused", [
    (256, False, False),  # fractional weights added in a fixed order
    (257, False, True),   # fractional weights added by atomics
    (257, True, False),   # integer weights: exact sums in any order
])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_confusion_op_under_op_determinism(rng, K, integer_weights, refused, jit_compile):
    """With TensorFlow's op determinism enabled, the GPU confusion-count op
    (and under jit_compile its XLA handler) runs where its counts are the
    same on every run, and refuses the others (fractional weights over 256
    classes) with an error that says what to change. The CPU op (the dry
    run) always runs."""
    from confusion_oracle import np_counts

    from fastiou import metrics as fm
    from tensorflow.python.framework import config as tf_config

    shape = (2, 64, 48)
    labels = rng.integers(0, K, shape).astype(np.int32)
    scores = rng.normal(size=shape + (K,)).astype(np.float32)
    w = rng.random(shape) * 3
    w = (np.floor(w) if integer_weights else w).astype(np.float32)
    was_enabled = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        with tf.device(DEVICE):
            @tf.function(jit_compile=jit_compile)
            def counts(t, p, w):
                return fm.confusion_counts(t, p, w, num_classes=K, pred_rule=fm.ARGMAX,
                                           integer_weights=integer_weights)

            def run():
                return counts(tf.constant(labels), tf.constant(scores), tf.constant(w)).numpy()
            if refused and not DRY_RUN:
                # the op's UnimplementedError; XLA passes the handler's on with the code it keeps
                error = tf.errors.OpError if jit_compile else tf.errors.UnimplementedError
                with pytest.raises(error, match="op determinism.*at most 256 classes"):
                    run()
                return
            first, second = run(), run()
    finally:
        if not was_enabled:
            tf_config.disable_op_determinism()
    np.testing.assert_array_equal(first, second)
    want = np_counts(labels, scores.argmax(-1), K, w)
    np.testing.assert_allclose(first, want, rtol=1e-12, atol=1e-9)

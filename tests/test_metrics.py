"""fastiou.metrics against their keras.metrics namesakes and a float64 NumPy
oracle: same result() on the same inputs, exact counts, the fused op and the
plain (XLA) path, fit, serialization."""

import re
import warnings

import numpy as np
import pytest
import tensorflow as tf
import keras

import fastiou
from fastiou import metrics as fm
from confusion_oracle import np_counts


def run(metric, batches):
    for batch in batches:
        metric.update_state(*batch)
    return float(metric.result())


def same_result(keras_metric, fused_metric, batches):
    expected = run(keras_metric, batches)
    got = run(fused_metric, batches)
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)
    return got


# --- BinaryIoU ----------------------------------------------------------------------------


@pytest.mark.parametrize("ids", [[0], [1], [0, 1]])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("true_dtype", ["float32", "uint8", "bool"])
@pytest.mark.parametrize("pred_dtype", ["float32", "float16", "float64"])
def test_binary_iou_matches_keras(rng, ids, threshold, true_dtype, pred_dtype):
    batches = []
    for _ in range(3):
        t = (rng.random((3, 9, 7, 1)) > 0.7).astype(true_dtype)
        p = rng.random((3, 9, 7, 1)).astype(pred_dtype)
        batches.append((t, p))
    same_result(keras.metrics.BinaryIoU(target_class_ids=ids, threshold=threshold),
                fm.BinaryIoU(target_class_ids=ids, threshold=threshold), batches)


def test_binary_iou_threshold_ties_are_foreground():
    # Keras compares with >=: a prediction equal to the threshold is class 1.
    t = np.array([[0, 1, 1, 0]], np.float32)
    p = np.array([[0.5, 0.5, 0.4, 0.6]], np.float32)
    got = same_result(keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5),
                      fm.BinaryIoU(target_class_ids=[1], threshold=0.5), [(t, p)])
    assert got == pytest.approx(1 / 4)  # class 1: tp 1 (the tie), fp 2, fn 1
    m = fm.BinaryIoU(target_class_ids=[1], threshold=0.5)
    m.update_state(t, p)
    np.testing.assert_array_equal(m.counts.numpy(), [[0, 1], [2, 2], [1, 3]])


@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.5, 0.8])
def test_binary_iou_from_logits_matches_probabilities(rng, threshold):
    logits = rng.normal(scale=3, size=(4, 16, 16, 1)).astype(np.float32)
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    # keep clear of the threshold: a logit within rounding of logit(threshold)
    # may fall on either side
    far = np.abs(probs - threshold) > 1e-5
    t = ((rng.random(logits.shape) > 0.6) & far).astype(np.uint8)
    weights = far[..., 0].astype(np.float32)
    k = keras.metrics.BinaryIoU(target_class_ids=[0, 1], threshold=threshold, dtype="float32")
    k.update_state(t, probs.astype(np.float32), weights)
    f = fm.BinaryIoU(target_class_ids=[0, 1], threshold=threshold, from_logits=True, dtype="float32")
    f.update_state(t, logits, weights)
    assert float(f.result()) == pytest.approx(float(k.result()), rel=1e-6)


# --- IoU, MeanIoU, one-hot --------------------------------------------------------------


@pytest.mark.parametrize("label_dtype", ["uint8", "int32", "int64"])
@pytest.mark.parametrize("channel_axis", [False, True])
@pytest.mark.parametrize("ignore_class", [None, 0, 255])
def test_mean_iou_from_scores_matches_keras(rng, label_dtype, channel_axis, ignore_class):
    c = 5
    batches = []
    for _ in range(2):
        labels = rng.integers(0, c, (2, 12, 10))
        if ignore_class == 255:
            labels[rng.random(labels.shape) < 0.2] = 255
        labels = labels.astype(label_dtype)
        if channel_axis:
            labels = labels[..., None]
        batches.append((labels, rng.random((2, 12, 10, c)).astype(np.float32)))
    same_result(keras.metrics.MeanIoU(c, ignore_class=ignore_class, sparse_y_pred=False),
                fm.MeanIoU(c, ignore_class=ignore_class, sparse_y_pred=False), batches)


@pytest.mark.parametrize("ids", [[1], [0, 3], [2, 1, 4]])
def test_iou_target_classes_and_integer_predictions(rng, ids):
    c = 5
    # out-of-range labels and predictions count nowhere, in Keras as here
    labels = rng.integers(-1, c + 1, (3, 8, 8)).astype(np.int32)
    preds = rng.integers(0, c + 1, (3, 8, 8)).astype(np.int64)
    same_result(keras.metrics.IoU(c, ids), fm.IoU(c, ids), [(labels, preds)])


def test_argmax_ties_take_the_first_channel():
    c = 4
    scores = np.zeros((1, 2, 3, c), np.float32)
    scores[0, 0, :, 1:3] = 1.0  # channels 1 and 2 tie
    scores[0, 1, :, :] = 0.25  # all four tie
    labels = np.array([[[1, 2, 1], [0, 3, 0]]], np.int32)
    same_result(keras.metrics.MeanIoU(c, sparse_y_pred=False), fm.MeanIoU(c, sparse_y_pred=False),
                 [(labels, scores)])
    counts = fm.confusion_counts(labels, scores, num_classes=c, pred_rule=fm.ARGMAX).numpy()
    np.testing.assert_array_equal(counts, np_counts(labels, [[[1, 1, 1], [0, 0, 0]]], c))


@pytest.mark.parametrize("ignore_class", [None, 2])
def test_one_hot_metrics_match_keras(rng, ignore_class):
    c = 4
    labels = rng.integers(0, c, (2, 6, 6))
    onehot = np.eye(c, dtype=np.float32)[labels]
    scores = rng.random((2, 6, 6, c)).astype(np.float32)
    same_result(keras.metrics.OneHotMeanIoU(c, ignore_class=ignore_class),
                fm.OneHotMeanIoU(c, ignore_class=ignore_class), [(onehot, scores)])
    same_result(keras.metrics.OneHotIoU(c, [0, 2], ignore_class=ignore_class),
                fm.OneHotIoU(c, [0, 2], ignore_class=ignore_class), [(onehot, scores)])


@pytest.mark.parametrize("dtype", [None, "float32"])
def test_sample_weight_per_pixel_matches_keras(rng, dtype):
    # Keras' default integer dtype truncates float weights: so does fastiou
    c = 3
    labels = rng.integers(0, c, (2, 8, 8))
    scores = rng.random((2, 8, 8, c)).astype(np.float32)
    w = (rng.random((2, 8, 8)) * 3).astype(np.float32)
    k = keras.metrics.MeanIoU(c, sparse_y_pred=False, dtype=dtype)
    f = fm.MeanIoU(c, sparse_y_pred=False, dtype=dtype)
    with pytest.warns(UserWarning) if dtype is None else _nothing():
        k.update_state(labels, scores, w)
    f.update_state(labels, scores, w)
    assert float(f.result()) == pytest.approx(float(k.result()), rel=1e-6)
    expected_w = np.trunc(w) if dtype is None else w
    np.testing.assert_allclose(f.counts.numpy(), np_counts(labels, scores.argmax(-1), c, expected_w),
                               rtol=1e-12)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_sample_weight_per_image_and_scalar(rng):
    c = 3
    labels = rng.integers(0, c, (4, 5, 5))
    scores = rng.random((4, 5, 5, c)).astype(np.float64)
    per_image = rng.random(4)
    got = fm.confusion_counts(labels, scores, per_image, num_classes=c, pred_rule=fm.ARGMAX).numpy()
    expected = np_counts(labels, scores.argmax(-1), c, np.broadcast_to(per_image[:, None, None], labels.shape))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    got = fm.confusion_counts(labels, scores, 2.5, num_classes=c, pred_rule=fm.ARGMAX).numpy()
    np.testing.assert_allclose(got, 2.5 * np_counts(labels, scores.argmax(-1), c), rtol=1e-12)
    # (batch, 1, 1) is per image too
    got = fm.confusion_counts(labels, scores, per_image[:, None, None], num_classes=c, pred_rule=fm.ARGMAX)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_bad_sample_weight_shape_is_refused(rng):
    labels = rng.integers(0, 3, (4, 5, 5))
    with pytest.raises(ValueError, match="sample_weight of shape"):
        fm.confusion_counts(labels, labels, np.ones((4, 5)), num_classes=3)


# --- what fastiou refuses --------------------------------------------------------------------


@pytest.mark.parametrize("metric,match", [
    (lambda: fm.MeanIoU(2), "use BinaryIoU"),
    (lambda: fm.IoU(5, [1]), "sparse_y_pred=False"),
])
def test_float_predictions_read_as_indices_are_refused(rng, metric, match):
    # Keras truncates them to class 0: the metric would stay flat
    t = rng.integers(0, 2, (2, 4, 4, 1))
    p = rng.random((2, 4, 4, 1 if "Binary" in match else 5)).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        metric().update_state(t, p)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="target_class_ids"):
        fm.IoU(3, [3])
    with pytest.raises(ValueError, match="axis"):
        fm.MeanIoU(3, axis=1)


# --- counts: exact, deterministic, on every path ----------------------------------------------


def test_counts_exact_past_float32_integers():
    # 2**25 pixels: Keras' float32 counts would stop at 2**24
    n = 1 << 25
    t = np.zeros((2, n // 2), np.uint8)
    t[:, ::3] = 1
    p = np.zeros((2, n // 2), np.float32)
    p[:, ::2] = 0.9
    got = fm.confusion_counts(t, p, num_classes=2, pred_rule=fm.THRESHOLD).numpy()
    t1 = 2 * len(range(0, n // 2, 3))
    p1 = 2 * len(range(0, n // 2, 2))
    tp1 = 2 * len(range(0, n // 2, 6))
    expected = [[n - t1 - p1 + tp1, tp1], [n - t1, t1], [n - p1, p1]]
    np.testing.assert_array_equal(got, expected)


def test_counts_match_the_oracle_and_repeat_bitwise(rng):
    c = 21
    labels = rng.integers(0, c, (3, 64, 48)).astype(np.uint8)
    scores = rng.normal(size=(3, 64, 48, c)).astype(np.float32)
    w = rng.random((3, 64, 48)).astype(np.float32)
    first = fm.confusion_counts(labels, scores, w, num_classes=c, pred_rule=fm.ARGMAX).numpy()
    np.testing.assert_allclose(first, np_counts(labels, scores.argmax(-1), c, w), rtol=1e-12)
    for _ in range(3):
        again = fm.confusion_counts(labels, scores, w, num_classes=c, pred_rule=fm.ARGMAX).numpy()
        np.testing.assert_array_equal(again, first)


@pytest.mark.parametrize("case", ["binary", "argmax", "onehot", "weighted", "float32_indices",
                                  "float64_indices", "logits_threshold_0", "logits_threshold_1"])
def test_xla_lowering_and_plain_path_match_the_fused_op(rng, case, monkeypatch):
    c = 2 if case == "binary" or case.startswith("logits") else 4
    if case.endswith("_indices"):
        # float class indices truncated; outside int32's range, NaN or negative: no class
        values = np.array([-3e9, -2.0**31, -0.5, 0.0, 0.7, 1.5, 2.9, 3.99, 2.0**31, 3e9, 5e18, np.nan], np.float32)
        t = rng.choice(values, (2, 8, 8))
        t = t.astype(np.float64) if case == "float64_indices" else t
        p = rng.integers(-1, c + 1, (2, 8, 8)).astype(np.int64)
        kw = dict(pred_rule=fm.INDEX)
    elif case.startswith("logits_threshold"):
        # logit(0) = -inf and logit(1) = +inf reach the kernel (and the XLA config) as infinities
        t = (rng.random((2, 8, 8, 1)) > 0.5).astype(np.float32)
        p = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
        kw = dict(pred_rule=fm.THRESHOLD, threshold=float(case[-1]), from_logits=True)
    elif case == "binary":
        t = (rng.random((2, 8, 8, 1)) > 0.5).astype(np.float32)
        p = rng.random((2, 8, 8, 1)).astype(np.float32)
        kw = dict(pred_rule=fm.THRESHOLD, threshold=0.4)
    else:
        t = rng.integers(0, c + 1, (2, 8, 8)).astype(np.int32)
        p = rng.random((2, 8, 8, c)).astype(np.float32)
        kw = dict(pred_rule=fm.ARGMAX, ignore_class=1)
        if case == "onehot":
            t = np.eye(c + 1, dtype=np.float32)[t][..., :c]
            kw["true_rule"] = fm.ARGMAX
    if case == "weighted":  # class indices, so that XLA runs the kernel
        p = rng.integers(-1, c + 1, (2, 8, 8)).astype(np.int32)
        kw = dict(pred_rule=fm.INDEX, ignore_class=1)
    w = rng.random((2, 8, 8)).astype(np.float32) if case == "weighted" else None
    eager = fm.confusion_counts(t, p, w, num_classes=c, **kw).numpy()
    if case.startswith("logits_threshold"):
        everything = case.endswith("0")  # every logit >= -inf, none >= +inf
        n = t.size
        fg = int(t.sum())
        tp = [0, fg] if everything else [n - fg, 0]
        expected = [tp, [n - fg, fg], [0, n] if everything else [n, 0]]
        np.testing.assert_array_equal(eager, expected)
    if case.endswith("_indices"):
        def classes(v):
            v = np.asarray(v, np.float64)
            inside = (v >= -2.0**31) & (v < 2.0**31)  # NaN compares false
            return np.where(inside, np.trunc(np.where(inside, v, -1)), -1)

        np.testing.assert_array_equal(eager, np_counts(classes(t), classes(p), c))
    def counts(t, p):
        return fm.confusion_counts(t, p, w, num_classes=c, **kw)

    # under jit_compile the op lowers to a custom call of the same kernel (the
    # same bits)
    from fastiou import _ops

    lowered = _ops.confusion_lowers_to_xla()  # not in a build without XLA, or on a GPU without CUDA kernels
    fused = tf.function(counts, jit_compile=True)
    assert ("fastiou_confusion_counts" in fused.experimental_get_compiler_ir(t, p)(stage="hlo")) == lowered
    (np.testing.assert_array_equal if lowered else np.testing.assert_allclose)(fused(t, p).numpy(), eager)
    # where it cannot (an XLA cluster on a GPU), the plain keras.ops path
    monkeypatch.setattr(_ops, "confusion_lowers_to_xla", lambda: False)
    plain = tf.function(counts, jit_compile=True)
    assert "fastiou_confusion_counts" not in plain.experimental_get_compiler_ir(t, p)(stage="hlo")
    np.testing.assert_allclose(plain(t, p).numpy(), eager, rtol=1e-12)


def test_lowered_kernel_argmax_matches_the_op(rng):
    # the op's custom call itself on argmax views, with per-pixel weights
    from fastiou import _ops

    if not _ops.confusion_lowers_to_xla():
        pytest.skip("the op lowers to its custom call only in a build with XLA (and CUDA kernels where a GPU "
                    "is visible)")
    t = rng.integers(0, 6, (2, 40, 1)).astype(np.uint8)
    p = rng.normal(size=(2, 40, 5)).astype(np.float32)
    w = rng.random((2, 40)).astype(np.float32)
    kw = dict(num_classes=5, true_rule=fm.INDEX, pred_rule=fm.ARGMAX, threshold=0.5, ignore_class=None,
              integer_weights=False)
    weights, attributes = fm._kernel_arguments(w, kw)
    eager = _ops.confusion_counts_op(t, p, weights, **attributes).numpy()
    np.testing.assert_allclose(eager, np_counts(t[..., 0], p.argmax(-1), 5, w), rtol=1e-12)
    lowered = tf.function(lambda t, p: _ops.confusion_counts_op(t, p, weights, **attributes), jit_compile=True)
    assert "fastiou_confusion_counts" in lowered.experimental_get_compiler_ir(t, p)(stage="hlo")
    np.testing.assert_array_equal(lowered(t, p).numpy(), eager)


def _backend_config(hlo):
    """The backend config of the one fastiou_confusion_counts custom call in
    HLO text."""
    calls = [line for line in hlo.splitlines() if 'custom_call_target="fastiou_confusion_counts"' in line]
    assert len(calls) == 1, hlo
    return re.search(r"backend_config=\"?(\{.*?\})", calls[0]).group(1)


def test_op_determinism_reaches_the_xla_handler(rng):
    """Under TensorFlow's op determinism the XLA lowering asks the handler for
    repeatable counts (deterministic = true in its config, which the CUDA
    handler refuses where it cannot: csrc/core/confusion.h); the host handler
    and the CPU op run every case, here fractional weights past 256 classes,
    with the same bits as without it."""
    from tensorflow.python.framework import config as tf_config

    from fastiou import _ops

    if not _ops.confusion_lowers_to_xla():
        pytest.skip("the op lowers to its custom call only in a build with XLA (and CUDA kernels where a GPU "
                    "is visible)")
    K = 257
    t = rng.integers(0, K, (2, 30, 20)).astype(np.int32)
    p = rng.normal(size=(2, 30, 20, K)).astype(np.float32)
    w = rng.random((2, 30, 20)).astype(np.float32)
    want = np_counts(t, p.argmax(-1), K, w)

    def counts(t, p):
        return fm.confusion_counts(t, p, w, num_classes=K, pred_rule=fm.ARGMAX)

    results = {}
    was_enabled = tf_config.is_op_determinism_enabled()
    try:
        for enabled in (False, True):
            (tf_config.enable_op_determinism if enabled else tf_config.disable_op_determinism)()
            # on the CPU, whose kernel runs every case (a GPU's refuses this one under op determinism)
            with tf.device("/CPU:0"):
                fused = tf.function(counts, jit_compile=True)
                # a device named: finding the default one draws a random number, refused unseeded
                # here (TensorFlow warns that device_name will go; platform_name alone still draws one)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    hlo = fused.experimental_get_compiler_ir(t, p)(stage="hlo", device_name="/device:CPU:0")
                config = _backend_config(hlo)
                assert f"deterministic = {'true' if enabled else 'false'}" in config
                results[enabled] = (fused(t, p).numpy(), counts(t, p).numpy())
    finally:
        (tf_config.enable_op_determinism if was_enabled else tf_config.disable_op_determinism)()
    for lowered, eager in results.values():
        np.testing.assert_allclose(eager, want, rtol=1e-12, atol=1e-9)
        np.testing.assert_array_equal(lowered, eager)
    assert results[True][0].tobytes() == results[False][0].tobytes()


@pytest.mark.parametrize("flags,required", [
    ("", False),
    ("--xla_gpu_exclude_nondeterministic_ops=true", True),
    ("--xla_cpu_enable_fast_math=false --xla_gpu_exclude_nondeterministic_ops", True),
    ("--xla_gpu_deterministic_ops=true", True),
    ("--xla_gpu_deterministic_ops=1", True),
    ("--xla_gpu_exclude_nondeterministic_ops=false", False),
    ("--xla_gpu_deterministic_ops=true --xla_gpu_deterministic_ops=false", False),
    ("--xla_gpu_deterministic_ops_extra=true", False),
    ('--xla_gpu_exclude_nondeterministic_ops="true"', True),   # quotes go, as the shell's
    ("--xla_gpu_exclude_nondeterministic_ops='1' --xla_dump_to=/tmp", True),
    ("-xla_gpu_exclude_nondeterministic_ops=true", False),     # one dash: no flag to XLA
])
def test_xla_flags_that_require_determinism(flags, required, monkeypatch):
    # the JAX door reads XLA's own flags, as XLA parses them (the last setting wins)
    assert fm._xla_flags_require_determinism(flags) is required
    monkeypatch.setenv("XLA_FLAGS", flags)
    assert fm._xla_flags_require_determinism() is required


def test_kernel_arguments_are_the_ops_attributes():
    # one builder of the kernel's attributes for every door: its names are the
    # op's (FASTIOU_CONFUSION_OPTIONS of csrc/core/confusion.h), every one given
    from tensorflow.python.framework import op_def_registry

    from fastiou import _ops  # noqa: F401  (registers the op)

    op = op_def_registry.get("FastiouConfusionCounts")
    declared = [a.name for a in op.attr if a.type != "type"]
    options = dict(num_classes=4, true_rule=fm.INDEX, pred_rule=fm.THRESHOLD, threshold=0.25, ignore_class=None,
                   integer_weights=True)
    weights, attributes = fm._kernel_arguments(None, options)
    assert list(attributes) == declared
    assert tuple(weights.shape) == (0, 0) and attributes["has_weights"] is False
    assert attributes["has_ignore"] is False and attributes["integer_weights"] is True
    w = np.ones((2, 3), np.float32)
    weights, attributes = fm._kernel_arguments(w, dict(options, ignore_class=255))
    assert weights is w and attributes["has_weights"] is True
    assert attributes["has_ignore"] is True and attributes["ignore_class"] == 255


# --- Dice -------------------------------------------------------------------------------------


def test_dice_metrics_against_the_oracle(rng):
    c = 4
    labels = rng.integers(0, c, (2, 10, 10))
    scores = rng.random((2, 10, 10, c)).astype(np.float32)
    tp, tc, pc = np_counts(labels, scores.argmax(-1), c)
    m = fm.MeanDice(c, sparse_y_pred=False)
    m.update_state(labels, scores)
    np.testing.assert_allclose(m.result_per_class().numpy(), 2 * tp / (tc + pc), rtol=1e-6)
    assert float(m.result()) == pytest.approx(np.mean(2 * tp / (tc + pc)), rel=1e-6)
    t = (rng.random((2, 10, 10, 1)) > 0.5).astype(np.uint8)
    p = rng.random((2, 10, 10, 1)).astype(np.float32)
    tp, tc, pc = np_counts(t, p >= 0.5, 2)
    b = fm.BinaryDice(target_class_ids=[1])
    b.update_state(t, p)
    assert float(b.result()) == pytest.approx(2 * tp[1] / (tc[1] + pc[1]), rel=1e-6)


def test_absent_classes(rng):
    # a class in neither the targets nor the predictions: NaN per class,
    # left out of the mean, as Keras leaves it out
    labels = np.array([[0, 0, 1, 1]], np.int32)
    scores = np.eye(3, dtype=np.float32)[[0, 1, 1, 1]][None]
    got = same_result(keras.metrics.MeanIoU(3, sparse_y_pred=False), fm.MeanIoU(3, sparse_y_pred=False),
                      [(labels, scores)])
    assert got == pytest.approx((0.5 + 2 / 3) / 2, rel=1e-6)
    m = fm.MeanIoU(3, sparse_y_pred=False)
    m.update_state(labels, scores)
    per_class = m.result_per_class().numpy()
    np.testing.assert_allclose(per_class[:2], [0.5, 2 / 3], rtol=1e-6)
    assert np.isnan(per_class[2])
    assert float(fm.MeanIoU(3).result()) == 0.0  # nothing seen yet: 0, as Keras gives


# --- state, config, fit --------------------------------------------------------------------


def test_reset_and_config_round_trip(rng):
    m = fm.BinaryIoU(target_class_ids=[1], threshold=0.3, from_logits=True, name="fg_iou")
    m.update_state(np.ones((1, 4, 4, 1)), np.zeros((1, 4, 4, 1), np.float32))
    assert float(m.result()) > 0
    m.reset_state()
    assert float(m.result()) == 0.0
    np.testing.assert_array_equal(m.counts.numpy(), 0)
    for metric in (m, fm.MeanIoU(5, ignore_class=255, sparse_y_pred=False), fm.OneHotIoU(4, [1, 2]),
                   fm.OneHotMeanIoU(3), fm.IoU(4, [0, 1], sparse_y_true=False), fm.MeanDice(3),
                   fm.BinaryDice(threshold=0.7)):
        again = keras.metrics.deserialize(keras.metrics.serialize(metric))
        assert type(again) is type(metric)
        assert again.get_config() == metric.get_config()


def test_keras_config_keys_are_accepted():
    # a Keras metric's config builds the fastiou namesake
    for keras_metric, fused in [
        (keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.4), fm.BinaryIoU),
        (keras.metrics.MeanIoU(4, ignore_class=0, sparse_y_pred=False), fm.MeanIoU),
        (keras.metrics.IoU(4, [1, 2], sparse_y_true=False), fm.IoU),
        (keras.metrics.OneHotIoU(4, [1]), fm.OneHotIoU),
        (keras.metrics.OneHotMeanIoU(4), fm.OneHotMeanIoU),
    ]:
        config = keras_metric.get_config()
        assert fused.from_config(config).get_config() == {**config, **fused.from_config(config).get_config()}


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_reports_the_keras_numbers(rng, jit_compile):
    x = rng.normal(size=(16, 12, 12, 1)).astype(np.float32)
    y = (x > 0.8).astype(np.uint8)
    inputs = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    out = keras.layers.Conv2D(1, 1, activation="sigmoid")(h)
    model = keras.Model(inputs, out)
    model.compile(optimizer="adam", loss=fastiou.losses.JaccardLoss(), jit_compile=jit_compile,
                  metrics=[keras.metrics.BinaryIoU(target_class_ids=[1], name="keras_iou"),
                           fm.BinaryIoU(target_class_ids=[1], name="fused_iou")])
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, validation_data=(x, y))
    for key in ("fused_iou", "val_fused_iou"):
        np.testing.assert_allclose(history.history[key], history.history[key.replace("fused", "keras")],
                                   rtol=1e-6)


_ALL_DTYPES = ["bool", "uint8", "int8", "int16", "uint16", "int32", "int64", "float16", "bfloat16", "float32",
               "float64"]


# Float class indices in y_pred are refused before any kernel runs
# (test_float_predictions_read_as_indices_are_refused).
@pytest.mark.parametrize("side,rule,dtype", [
    (side, rule, dtype) for side, rule in sorted(fm._KERNEL_DTYPES) for dtype in _ALL_DTYPES
    if not (side == "y_pred" and rule == fm.INDEX and dtype in fm._FLOAT_DTYPES)])
def test_every_dtype_reaches_the_kernel(rng, side, rule, dtype):
    # the dtypes fastiou.metrics hands the kernel (as stored, or cast) are
    # the ones it reads: counts against the oracle for each
    c = 3
    labels = rng.integers(0, 2 if dtype == "bool" else c, (2, 5, 4))
    onehot = np.eye(c)[labels]
    scores = rng.random((2, 5, 4, c))
    if side == "y_true":
        t = (labels if rule == fm.INDEX else onehot).astype(dtype)
        p, pred_rule = scores.astype(np.float32), fm.ARGMAX
        t_cls, p_cls = labels, scores.astype(np.float32).argmax(-1)
        true_rule = rule
    else:
        true_rule = fm.INDEX
        t, t_cls = labels, labels
        if rule == fm.INDEX:
            p_cls = rng.integers(0, 2 if dtype == "bool" else c, (2, 5, 4))
            p = p_cls.astype(dtype)
        elif rule == fm.ARGMAX:
            p = (scores * 100).astype(dtype)
            p_cls = np.asarray(tf.cast(p, tf.float64)).argmax(-1)
        else:
            p = scores[..., :1].astype(dtype)
            p_cls = (np.asarray(tf.cast(p, tf.float32)) >= 0.5)[..., 0]
    kw = dict(threshold=0.5) if rule == fm.THRESHOLD and side == "y_pred" else {}
    got = fm.confusion_counts(tf.constant(t) if dtype != "bfloat16" else tf.cast(t.astype(np.float32), tf.bfloat16),
                              tf.constant(p) if dtype != "bfloat16" or side == "y_true"
                              else tf.cast(p.astype(np.float32), tf.bfloat16),
                              num_classes=c, true_rule=true_rule, pred_rule=rule if side == "y_pred" else pred_rule,
                              **kw)
    np.testing.assert_array_equal(got.numpy(), np_counts(t_cls, p_cls, c))


_JAX_SCRIPT = """
import json
import numpy as np, keras
from fastiou import metrics as fm
rng = np.random.default_rng(0)
out = {"backend": keras.backend.backend()}
labels = rng.integers(0, 5, (2, 8, 8)); scores = rng.random((2, 8, 8, 5)).astype("float32")
t = (rng.random((2, 8, 8, 1)) > 0.7).astype("float32"); p = rng.random((2, 8, 8, 1)).astype("float32")
w = (rng.random((2, 8, 8, 1)) * 3).astype("float32")
pairs = [(keras.metrics.MeanIoU(5, sparse_y_pred=False), fm.MeanIoU(5, sparse_y_pred=False), (labels, scores)),
         (keras.metrics.BinaryIoU(target_class_ids=[1], dtype="float32"),
          fm.BinaryIoU(target_class_ids=[1], dtype="float32"), (t, p, w))]
out["results"] = []
for k, f, args in pairs:
    k.update_state(*args); f.update_state(*args)
    out["results"].append([float(k.result()), float(f.result())])
# the fused counts through XLA FFI, eagerly and under jax.jit, against NumPy
import jax
def counts(a, b):  # class indices
    return fm.confusion_counts(a, b, num_classes=5)
def argmax_counts(a, b):
    return fm.confusion_counts(a, b, num_classes=5, pred_rule=fm.ARGMAX)
p_idx = scores.argmax(-1).astype("int32")
out["lowered"] = ["fastiou_confusion_counts" in jax.jit(f).lower(labels, x).as_text()
                  for f, x in ((counts, p_idx), (argmax_counts, scores))]
p_cls = p_idx.ravel(); t_cls = labels.ravel()
oracle = [np.bincount(t_cls[t_cls == p_cls], minlength=5), np.bincount(t_cls, minlength=5),
          np.bincount(p_cls, minlength=5)]
out["counts"] = [np.asarray(counts(labels, p_idx)).tolist(), np.asarray(jax.jit(counts)(labels, p_idx)).tolist(),
                 np.asarray(jax.jit(argmax_counts)(labels, scores)).tolist(), np.asarray(oracle, np.float64).tolist()]
print("RESULT " + json.dumps(out))
"""


_JAX_DETERMINISM_SCRIPT = """
import json
import numpy as np, jax
from fastiou import metrics as fm
rng = np.random.default_rng(0)
K = 257  # fractional weights past 256 classes: the case the CUDA handler cannot repeat bitwise
labels = rng.integers(0, K, (2, 30, 20)); scores = rng.normal(size=(2, 30, 20, K)).astype("float32")
w = rng.random((2, 30, 20)).astype("float32")
def counts(t, p, w):
    return fm.confusion_counts(t, p, w, num_classes=K, pred_rule=fm.ARGMAX)
calls = [line for line in jax.jit(counts).lower(labels, scores, w).as_text().splitlines()
         if "fastiou_confusion_counts" in line]
out = {"calls": calls, "counts": np.asarray(jax.jit(counts)(labels, scores, w), np.float64).tolist(),
       "labels": labels.tolist(), "classes": scores.argmax(-1).tolist(), "w": w.tolist()}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("flags,required", [("", False), ("--xla_gpu_exclude_nondeterministic_ops=true", True)])
def test_jax_determinism_flags_reach_the_handler(flags, required):
    """On Keras' JAX backend, XLA's determinism flag (set as JAX users set it,
    in XLA_FLAGS before the process starts) reaches the custom call as
    deterministic = true; the host handler runs the case the CUDA one
    refuses, with the oracle's counts."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("jax")
    import fastiou.kernels

    if "fastiou_confusion_counts" not in fastiou.kernels.ffi_handlers():
        pytest.skip("this build has no XLA FFI handlers")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    proc = subprocess.run([sys.executable, "-c", _JAX_DETERMINISM_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    out = json.loads(lines[0][len("RESULT "):])
    assert len(out["calls"]) == 1
    assert f"deterministic = {'true' if required else 'false'}" in out["calls"][0]
    want = np_counts(np.array(out["labels"]), np.array(out["classes"]), 257, np.array(out["w"], np.float32))
    np.testing.assert_allclose(out["counts"], want, rtol=1e-6)  # float32 counts (no x64)


@pytest.mark.slow
def test_keras_on_jax_gives_the_keras_numbers():
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _JAX_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    out = json.loads(lines[0][len("RESULT "):])
    assert out["backend"] == "jax"
    for expected, got in out["results"]:
        assert got == pytest.approx(expected, rel=1e-6)
        assert expected > 0
    import fastiou.kernels

    # the kernel where the build has its XLA FFI handler, class indices and argmax alike
    handler = "fastiou_confusion_counts" in fastiou.kernels.ffi_handlers()
    assert out["lowered"] == [handler, handler]
    eager, jitted, argmax_jitted, oracle = out["counts"]
    assert eager == oracle and jitted == oracle and argmax_jitted == oracle


def test_binary_positional_arguments_are_keras_order():
    # Keras: BinaryIoU(target_class_ids, threshold, name, dtype)
    m = fm.BinaryIoU([1], 0.3, "fg_iou", "float32")
    k = keras.metrics.BinaryIoU([1], 0.3, "fg_iou", "float32")
    assert (m.name, m.threshold, m.from_logits, m.target_class_ids) == ("fg_iou", 0.3, False, [1])
    assert m.get_config().items() >= k.get_config().items()


def test_argmax_reads_floats_as_keras_does():
    # -0.0 below +0.0, and NaN never the argmax (TensorFlow's argmax, Keras' reading)
    scores = np.array([[[-0.0, 0.0, -1.0], [np.nan, 1.0, 0.5], [np.nan, np.nan, np.nan], [2.0, np.nan, 3.0]]],
                      np.float32)
    labels = np.array([[1, 1, 0, 2]], np.int32)
    expected = np.asarray(keras.ops.argmax(scores, axis=-1))
    counts = fm.confusion_counts(labels, scores, num_classes=3, pred_rule=fm.ARGMAX).numpy()
    np.testing.assert_array_equal(counts, np_counts(labels, expected, 3))
    assert list(expected[0]) == [1, 1, 0, 2]
    same_result(keras.metrics.MeanIoU(3, sparse_y_pred=False), fm.MeanIoU(3, sparse_y_pred=False),
                [(labels, scores)])


@pytest.mark.parametrize("channels", [2, 3, 16, 21, 40])
@pytest.mark.parametrize("side,dtype", [("y_pred", "float32"), ("y_pred", "float16"), ("y_pred", "float64"),
                                        ("y_true", "float32"), ("y_true", "uint8")])
def test_argmax_of_many_pixels_matches_keras(rng, channels, side, dtype):
    # Enough pixels for many whole tiles of pixels side by side and a short
    # rest (185 pixels an image), with values from a small set, so that ties,
    # -0.0 against +0.0, NaN, infinities and the lowest value meet in every
    # tile. Labels are Keras' argmax of the scores (what its metrics take):
    # every pixel then counts as a true positive exactly when the kernel's
    # argmax agrees.
    if dtype == "uint8":
        values = np.array([0, 1, 2, 255])
    else:
        values = np.array([-np.inf, np.finfo(dtype).min, -1.0, -0.0, 0.0, 0.5, 1.0, np.inf, np.nan])
    scores = rng.choice(values, (3, 37, 5, channels)).astype(dtype)
    expected = np.asarray(keras.ops.argmax(scores, axis=-1)).astype(np.int32)
    if side == "y_pred":
        got = fm.confusion_counts(expected, scores, num_classes=channels, pred_rule=fm.ARGMAX).numpy()
    else:
        got = fm.confusion_counts(scores, expected, num_classes=channels, true_rule=fm.ARGMAX).numpy()
    np.testing.assert_array_equal(got, np_counts(expected, expected, channels))
    assert got[0].sum() == expected.size


@pytest.mark.parametrize("label_dtype,metric_dtype", [("float64", "float32"), ("float64", None),
                                                       ("float64", "float64"), ("float32", "float16"),
                                                       ("float32", "float32")])
def test_fractional_labels_take_the_metric_dtype_first(rng, label_dtype, metric_dtype):
    # Keras converts y_true to the metric's dtype before taking the integer
    # part: a float metric dtype narrower than the labels rounds them first
    # (float64 2.9999999999 is 3.0 in float32: class 3), an integer one
    # truncates the stored value (class 2), as a wider float does.
    values = np.array([2.9999999999, 1.0000000001, 0.99999999999, 3.5, 1.9999, 0.9995, 2.0], np.float64)
    labels = rng.choice(values, (2, 7, 5)).astype(label_dtype)
    preds = rng.integers(0, 4, (2, 7, 5)).astype(np.int32)
    keras_metric = keras.metrics.IoU(4, [0, 1, 2, 3], dtype=metric_dtype)
    fused = fm.IoU(4, [0, 1, 2, 3], dtype=metric_dtype)
    same_result(keras_metric, fused, [(labels, preds)])
    stored = np.trunc(labels.astype(np.float64))
    rounded = np.trunc(labels.astype(metric_dtype) if metric_dtype else labels)
    np.testing.assert_array_equal(fused.counts.numpy(), np_counts(rounded, preds, 4))
    if (label_dtype, metric_dtype) in (("float64", "float32"), ("float32", "float16")):
        assert not np.array_equal(rounded, stored)  # the case tells the two readings apart


def test_negative_target_class_ids_count_from_the_last(rng):
    labels = rng.integers(0, 4, (2, 6, 6))
    scores = rng.random((2, 6, 6, 4)).astype(np.float32)
    same_result(keras.metrics.IoU(4, [-1, 1], sparse_y_pred=False), fm.IoU(4, [-1, 1], sparse_y_pred=False),
                [(labels, scores)])


@pytest.mark.parametrize("metric", ["onehot", "binary", "weighted"])
def test_unknown_sizes_while_tracing(rng, metric):
    # as in fit with variable-size images: every size but the rank unknown
    c = 4
    labels = rng.integers(0, c, (2, 6, 5))
    if metric == "onehot":
        k, f = keras.metrics.OneHotMeanIoU(c), fm.OneHotMeanIoU(c)
        t, p, w = np.eye(c, dtype=np.float32)[labels], rng.random((2, 6, 5, c)).astype(np.float32), None
    else:
        k, f = keras.metrics.BinaryIoU([1], dtype="float32"), fm.BinaryIoU([1], dtype="float32")
        t, p = (labels[..., None] > 1).astype(np.float32), rng.random((2, 6, 5, 1)).astype(np.float32)
        w = rng.random((2, 6, 5, 1)).astype(np.float32) if metric == "weighted" else None
    spec = [tf.TensorSpec([None] * 4, tf.float32)] * (2 if w is None else 3)

    @tf.function(input_signature=spec)
    def update(*args):
        f.update_state(*args)
        return f.result()

    args = (t, p) if w is None else (t, p, w)
    k.update_state(*args)
    assert float(update(*args)) == pytest.approx(float(k.result()), rel=1e-6)


@pytest.mark.parametrize("weights", ["flat-known", "flat-unknown", "per-image", "per-image-unknown", "one-image"])
def test_weights_with_an_unknown_batch(rng, weights):
    # the batch unknown while tracing (fit's last, short batch): one weight
    # per image or per pixel, flattened as Keras flattens them, or one image
    # of weights for every image; against Keras' metric on the same values
    t = (rng.random((3, 6, 5, 1)) > 0.6).astype(np.float32)
    p = rng.random((3, 6, 5, 1)).astype(np.float32)
    w, w_spec = {
        "flat-known": (rng.random(90), [90]),
        "flat-unknown": (rng.random(90), [None]),
        "per-image": (rng.random(3), [3]),
        "per-image-unknown": (rng.random(3), [None]),
        "one-image": (rng.random((1, 6, 5, 1)), [1, 6, 5, 1]),
    }[weights]
    w = w.astype(np.float32)
    k, f = keras.metrics.BinaryIoU([0, 1], dtype="float32"), fm.BinaryIoU([0, 1], dtype="float32")
    spec = [tf.TensorSpec([None, 6, 5, 1], tf.float32)] * 2 + [tf.TensorSpec(w_spec, tf.float32)]

    @tf.function(input_signature=spec)
    def update(*args):
        f.update_state(*args)
        return f.result()

    k.update_state(t, p, np.broadcast_to(w.reshape(-1, 1, 1, 1) if w.ndim == 1 and w.size == 3 else w.reshape(
        (1, 6, 5, 1) if w.ndim == 4 else (3, 6, 5, 1)), t.shape))
    assert float(update(t, p, w)) == pytest.approx(float(k.result()), rel=1e-6)


def test_unknown_rank_is_refused_clearly(rng):
    # Keras' own metric fails here too ("Cannot take the length of shape with
    # unknown rank"); fastiou says which input and what to do
    f = fm.BinaryIoU([0, 1])

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec([None, 4, 1], tf.float32)])
    def update(t, p):
        f.update_state(t, p)
        return f.result()

    with pytest.raises(ValueError, match="y_true has an unknown rank"):
        update(np.zeros((2, 4, 1), np.float32), np.zeros((2, 4, 1), np.float32))


def test_wide_one_hot_targets_keep_their_precision():
    # int32 targets 2**24 and 2**24 + 1 tie in float32, not as stored
    t = np.array([[[16777216, 16777217]]], np.int32)
    p = np.array([[[0.0, 1.0]]], np.float32)
    counts = fm.confusion_counts(t, p, num_classes=2, true_rule=fm.ARGMAX, pred_rule=fm.ARGMAX).numpy()
    np.testing.assert_array_equal(counts, np_counts([[1]], [[1]], 2))


def test_many_classes_chunk_by_the_classes(rng):
    # 1000 classes: chunks of 8 pixels per class at least, counts still exact
    c = 1000
    labels = rng.integers(0, c, (2, 64, 64)).astype(np.int32)
    scores = rng.random((2, 64, 64, c)).astype(np.float32)
    got = fm.confusion_counts(labels, scores, num_classes=c, pred_rule=fm.ARGMAX).numpy()
    np.testing.assert_array_equal(got, np_counts(labels, scores.argmax(-1), c))

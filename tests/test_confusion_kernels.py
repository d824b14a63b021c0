"""The confusion counts of fastiou's metrics on the framework-neutral module
(fastiou.kernels.confusion_counts, NumPy arrays), against the float64 NumPy
oracle (confusion_oracle.py): the C++ kernel, and `by_pixel`, the steps each
CUDA thread takes (confusion_pixel in csrc/core/confusion_math.h) run one
pixel at a time on the host, so that the CUDA kernel's per-pixel logic is
checked on every machine. No TensorFlow.
"""

import itertools

import numpy as np
import pytest

import fastiou.kernels as fk
from confusion_oracle import counts as oracle_counts
from confusion_oracle import make_case

# (true rule, true dtypes, pred rule, pred dtypes): every stored type each
# rule reads (csrc/core/confusion_math.h, confusion_reads).
READS = [
    ("index", ["uint8", "int32", "int64", "float32", "float64", "bool"], "index", ["uint8", "int32", "int64", "bool"]),
    ("argmax", ["uint8", "float32", "float64"], "argmax", ["float16", "float32", "float64"]),
    ("index", ["uint8", "int64", "float32"], "argmax", ["float16", "float32", "float64"]),
    ("argmax", ["uint8", "float32"], "index", ["uint8", "int32", "int64"]),
    ("index", ["uint8", "float32", "bool"], "threshold", ["float16", "float32", "float64"]),
    ("argmax", ["float64"], "threshold", ["float32"]),
]
PAIRS = [(tr, td, pr, pd) for tr, tds, pr, pds in READS for td, pd in itertools.product(tds, pds)]


def run_both(y_true, y_pred, w, **options):
    fused = fk.confusion_counts(y_true, y_pred, w, **options)
    by_pixel = fk.confusion_counts(y_true, y_pred, w, by_pixel=True, **options)
    return np.asarray(fused), np.asarray(by_pixel)


@pytest.mark.parametrize("true_rule,true_dtype,pred_rule,pred_dtype", PAIRS,
                         ids=[f"{tr}-{td}-{pr}-{pd}" for tr, td, pr, pd in PAIRS])
def test_every_rule_and_dtype_matches_the_oracle(rng, true_rule, true_dtype, pred_rule, pred_dtype):
    K = 2 if "threshold" in (pred_rule,) or "bool" in (true_dtype, pred_dtype) else 5
    y_true, y_pred, _ = make_case(rng, batch=3, pixels=517, num_classes=K, true_rule=true_rule,
                                  pred_rule=pred_rule, true_dtype=true_dtype, pred_dtype=pred_dtype)
    options = dict(num_classes=K, true_rule=true_rule, pred_rule=pred_rule, threshold=0.4)
    want = oracle_counts(y_true, y_pred, **options)
    assert want[1].sum() > 0 and want[0].sum() > 0  # the case counts something
    fused, by_pixel = run_both(y_true, y_pred, None, **options)
    np.testing.assert_array_equal(fused, want)  # unit weights: exact
    np.testing.assert_array_equal(by_pixel, want)


@pytest.mark.parametrize("weights", ["image", "pixel", "row", "one"])
@pytest.mark.parametrize("weight_dtype", ["float32", "float64"])
@pytest.mark.parametrize("fractional,integer_weights", [(True, False), (True, True), (False, False)])
@pytest.mark.parametrize("ignore_class", [None, 0, 3])
def test_weights_and_ignore_class_match_the_oracle(rng, weights, weight_dtype, fractional, integer_weights,
                                                   ignore_class):
    K = 6
    y_true, y_pred, w = make_case(rng, batch=4, pixels=333, num_classes=K, true_rule="index", pred_rule="argmax",
                                  true_dtype="int32", pred_dtype="float32", weights=weights,
                                  weight_dtype=weight_dtype, fractional=fractional)
    options = dict(num_classes=K, true_rule="index", pred_rule="argmax", ignore_class=ignore_class,
                   integer_weights=integer_weights)
    want = oracle_counts(y_true, y_pred, w, **options)
    fused, by_pixel = run_both(y_true, y_pred, w, **options)
    if fractional and not integer_weights:
        np.testing.assert_allclose(fused, want, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(by_pixel, want, rtol=1e-12, atol=1e-9)
    else:
        np.testing.assert_array_equal(fused, want)
        np.testing.assert_array_equal(by_pixel, want)
    if ignore_class is not None:
        assert want[1][ignore_class] == 0


@pytest.mark.parametrize("K", [4, 5, 21, 32, 33])
@pytest.mark.parametrize("weighted", [False, True])
def test_each_way_of_counting_matches_the_oracle(rng, K, weighted):
    """The C++ kernel counts a chunk by per-class sums (up to 4 classes), a
    joint histogram of target and predicted class (5 to 32) or per-class
    histograms (33 and more): each way, over three chunks per image, with
    classes past num_classes, an ignored class and fractional weights, gives
    the oracle's counts."""
    y_true, y_pred, w = make_case(rng, batch=2, pixels=3 * 32768 // K + 37, num_classes=K, true_rule="index",
                                  pred_rule="argmax", true_dtype="uint8", pred_dtype="float32",
                                  weights="pixel" if weighted else None)
    options = dict(num_classes=K, true_rule="index", pred_rule="argmax", ignore_class=1)
    want = oracle_counts(y_true, y_pred, w, **options)
    fused = np.asarray(fk.confusion_counts(y_true, y_pred, w, **options))
    if weighted:
        np.testing.assert_allclose(fused, want, rtol=1e-12, atol=1e-9)
    else:
        np.testing.assert_array_equal(fused, want)
    assert want[0].sum() > 0 and want[1][1] == 0


def edge_rows(dtype):
    """Every ordered triple of edge values of a float dtype, as pixels of 3
    channels: NaN, -inf, the lowest value, -1, the smallest normal and a
    subnormal of each sign, the zeros, 0.5, 1, inf."""
    f = np.finfo(dtype)
    edge = np.array([np.nan, -np.inf, f.min, -1.0, -f.tiny, -f.smallest_subnormal, -0.0, 0.0,
                     f.smallest_subnormal, f.tiny, 0.5, 1.0, np.inf], dtype)
    return np.array(list(itertools.product(edge, repeat=3)), dtype)  # 2197 pixels


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_argmax_edge_values_match_the_oracle(dtype):
    """NaN never wins, -0.0 ranks below +0.0, subnormals read as zeros of
    their sign, -inf and the lowest value never beat channel 0, ties take the
    first channel: every pixel's class is the oracle's (its target here), so
    each one counts as a true positive."""
    from confusion_oracle import classes

    y_pred = edge_rows(dtype)[None]
    y_true = classes(y_pred, "argmax")[..., None].astype(np.int32)
    n = y_pred.shape[1]
    want = oracle_counts(y_true, y_pred, num_classes=3, true_rule="index", pred_rule="argmax")
    assert want[0].sum() == n
    fused, by_pixel = run_both(y_true, y_pred, None, num_classes=3, true_rule="index", pred_rule="argmax")
    np.testing.assert_array_equal(fused, want)
    np.testing.assert_array_equal(by_pixel, want)


def first_greater(row, lowest):
    """The argmax of the values as stored, by Python's comparisons: the
    first largest, never NaN, 0 when none is above `lowest`."""
    best, at = lowest, 0
    for c, v in enumerate(row):
        if v > best:
            best, at = v, c
    return at


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_argmax_tiles_whose_largest_values_are_zeros(dtype):
    """21 channels, so the C++ kernel takes its tiles of pixels side by side:
    it compares the values as stored and compares a tile again by the
    argmax's reading (-0.0 below +0.0, subnormals as zeros of their sign)
    where some pixel's largest value is a zero or a subnormal. Tiles where
    every pixel's largest value is one, tiles where some are and tiles where
    none is (zeros, subnormals, the smallest normal numbers and NaN among
    the other values): every class is the oracle's, and the oracle's classes
    differ from a comparison of the values as stored at many pixels."""
    from confusion_oracle import classes

    rng = np.random.default_rng(11)
    f = np.finfo(dtype)
    small = np.array([-f.tiny, -f.smallest_subnormal, -0.0, 0.0, f.smallest_subnormal], dtype)
    low = np.array([np.nan, -np.inf, f.min, -1.0, -f.tiny], dtype)
    high = np.array([f.tiny, 0.5, 1.0, np.inf], dtype)
    rows = []
    for tile in range(96):
        for lane in range(16):
            small_largest = tile % 3 == 0 or (tile % 3 == 1 and lane % 5 == 0)
            row = rng.choice(low, 21)
            at = rng.choice(21, int(rng.integers(2, 7)), replace=False)
            row[at] = rng.choice(small if small_largest else np.concatenate([small, high]), len(at))
            if not small_largest:
                row[at[0]] = rng.choice(high)
            rows.append(row)
    y_pred = np.array(rows, dtype)[None]
    want_classes = classes(y_pred, "argmax")
    as_stored = np.array([first_greater(r, f.min) for r in y_pred[0]])
    assert (as_stored != want_classes[0]).sum() > 20  # the second comparison matters
    y_true = want_classes[..., None].astype(np.int32)
    want = oracle_counts(y_true, y_pred, num_classes=21, true_rule="index", pred_rule="argmax")
    assert want[0].sum() == y_pred.shape[1]
    fused, by_pixel = run_both(y_true, y_pred, None, num_classes=21, true_rule="index", pred_rule="argmax")
    np.testing.assert_array_equal(fused, want)
    np.testing.assert_array_equal(by_pixel, want)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_threshold_reads_subnormals_as_zero(dtype):
    """A logit threshold of 0 (a probability of 0.5 from logits): -0.0 and
    the float32 subnormals of either sign meet it, as on a CPU that flushes
    them; the classes are hand-computed."""
    f = np.finfo(dtype)
    values = np.array([-f.tiny, -f.smallest_subnormal, -0.0, 0.0, f.smallest_subnormal, f.tiny], dtype)
    y_pred = values[None, :, None]
    # read as float32 first: float16's subnormals are normal float32 values
    # (only -tiny and -subnormal stay below 0); float64's tiny values become
    # float32 zeros or subnormals (all meet 0)
    want_classes = {"float16": [0, 0, 1, 1, 1, 1], "float32": [0, 1, 1, 1, 1, 1], "float64": [1] * 6}[dtype]
    want_classes = np.array(want_classes)
    y_true = want_classes[None, :, None].astype(np.int32)
    want = oracle_counts(y_true, y_pred, num_classes=2, pred_rule="threshold", threshold=0.0)
    assert want[0].sum() == len(values)
    fused, by_pixel = run_both(y_true, y_pred, None, num_classes=2, pred_rule="threshold", threshold=0.0)
    np.testing.assert_array_equal(fused, want)
    np.testing.assert_array_equal(by_pixel, want)


def test_many_classes_and_empty_inputs(rng):
    K = 3000
    y_true, y_pred, _ = make_case(rng, batch=2, pixels=4099, num_classes=K, true_rule="index", pred_rule="index",
                                  true_dtype="int32", pred_dtype="int64")
    y_pred[:, ::2] = y_true[:, ::2]  # half the pixels agree
    want = oracle_counts(y_true, y_pred, num_classes=K)
    fused, by_pixel = run_both(y_true, y_pred, None, num_classes=K)
    np.testing.assert_array_equal(fused, want)
    np.testing.assert_array_equal(by_pixel, want)
    empty = np.zeros((0, 7, 1), np.int32)
    fused, by_pixel = run_both(empty, empty, None, num_classes=4)
    np.testing.assert_array_equal(fused, np.zeros((3, 4)))
    np.testing.assert_array_equal(by_pixel, np.zeros((3, 4)))


def test_bad_arguments_are_refused(rng):
    t = np.zeros((2, 5, 1), np.int32)
    p = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(ValueError, match="pred_rule must be one of"):
        fk.confusion_counts(t, p, num_classes=3, pred_rule="max")
    with pytest.raises(TypeError, match="weights must be float32 or float64"):
        fk.confusion_counts(t, p, np.ones((2, 5), np.int32), num_classes=3, pred_rule="argmax")
    with pytest.raises(TypeError, match="unsupported confusion inputs: y_true int32 by the class index rule, "
                                        "y_pred int32 by the argmax rule"):
        fk.confusion_counts(t, np.zeros((2, 5, 3), np.int32), num_classes=3, pred_rule="argmax")
    with pytest.raises(ValueError, match="one value per pixel"):
        fk.confusion_counts(t, p, num_classes=3)
    with pytest.raises(ValueError, match="same batch and pixels"):
        fk.confusion_counts(t[:1], p, num_classes=3, pred_rule="argmax")
    with pytest.raises(ValueError, match="weights must be seen as"):
        fk.confusion_counts(t, p, np.ones((3, 5), np.float32), num_classes=3, pred_rule="argmax")
    with pytest.raises(TypeError, match="__dlpack__"):
        fk.confusion_counts([[0]], p, num_classes=3)


@pytest.mark.parametrize("K,weights,fractional,integer_weights,refused", [
    (256, "pixel", True, False, False),   # fractional, in a fixed order: repeatable
    (257, "pixel", True, False, True),    # fractional, by atomics: refused
    (257, "image", True, False, True),
    (257, "pixel", True, True, False),    # truncated to integers: exact
    (257, None, False, False, False),     # unit weights: exact
])
def test_deterministic_refuses_what_the_cuda_kernel_cannot_repeat(rng, K, weights, fractional, integer_weights,
                                                                  refused):
    """deterministic=True: the CUDA kernel's counts that can differ between
    runs (fractional weights past 256 classes) are refused with a message
    that says what to change; by_pixel (the CUDA kernel's steps on the host)
    refuses the same, the C++ kernel always runs and keeps its bits."""
    y_true, y_pred, w = make_case(rng, batch=2, pixels=300, num_classes=K, true_rule="index", pred_rule="argmax",
                                  true_dtype="int32", pred_dtype="float32", weights=weights,
                                  fractional=fractional)
    options = dict(num_classes=K, true_rule="index", pred_rule="argmax", integer_weights=integer_weights)
    want = oracle_counts(y_true, y_pred, w, **options)
    plain = np.asarray(fk.confusion_counts(y_true, y_pred, w, **options))
    fused = np.asarray(fk.confusion_counts(y_true, y_pred, w, deterministic=True, **options))
    assert fused.tobytes() == plain.tobytes()
    np.testing.assert_allclose(fused, want, rtol=1e-12, atol=1e-9)
    if refused:
        with pytest.raises(NotImplementedError, match=rf"over more than 256 classes \(here {K}\).*integer or no "
                                                      r"sample weights, at most 256 classes"):
            fk.confusion_counts(y_true, y_pred, w, deterministic=True, by_pixel=True, **options)
    else:
        by_pixel = np.asarray(fk.confusion_counts(y_true, y_pred, w, deterministic=True, by_pixel=True, **options))
        np.testing.assert_allclose(by_pixel, want, rtol=1e-12, atol=1e-9)
    # without deterministic, by_pixel runs them all
    np.testing.assert_allclose(np.asarray(fk.confusion_counts(y_true, y_pred, w, by_pixel=True, **options)), want,
                               rtol=1e-12, atol=1e-9)

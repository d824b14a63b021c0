"""Sparse labels through the C++ kernels' tile path (pixels across vector
lanes) and channel path (a pixel's channels across the lanes), on NumPy
arrays through fastiou.kernels, against the float64 oracle: channel counts
from 2 to 300, pixel counts that leave short tiles and several chunks per
image, per-pixel and per-element weights, ignored pixels whatever their
prediction, and the channel limit."""

import numpy as np
import pytest

import fastiou.kernels as fk
from cases import make_case
from overlap_oracle import grad as oracle_grad
from overlap_oracle import jaccard_group_grads
from overlap_oracle import sums as oracle_sums

IGNORE = 255


def sparse_case(rng, shape, from_logits, label_dtype="uint8", ignored=0.1):
    """Labels of shape[:-1] (about `ignored` of them IGNORE) and float32
    predictions: logits, or softmax probabilities."""
    return make_case(rng, shape, "labels", from_logits, label_dtype, "float32", IGNORE, ignore_share=ignored)


def check_against_oracle(t, z, w, opts, per_image):
    got = fk.overlap_stats(t, z, w, per_image=per_image, **opts)
    want = oracle_sums(t, z, w, per_image=per_image, **opts)
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(e).max()))
    g_i, g_p, g_t = (g.astype(np.float32) for g in jaccard_group_grads(*got))
    dz = fk.overlap_grad(t, z, w, g_i, g_p, g_t, per_image=per_image, **opts)
    want_dz = oracle_grad(t, z, w, g_i, g_p, g_t, per_image=per_image, **opts)
    # Rounding is relative to dL/dp, which the softmax Jacobian cancels.
    scale = np.abs(oracle_grad(t, z, w, g_i, g_p, g_t, per_image=per_image,
                               **dict(opts, from_logits=False))).max()
    np.testing.assert_allclose(dz, want_dz, rtol=2e-4, atol=2e-5 * scale)


# Pixels per image: 1601 leaves a short last tile; with 21 channels a chunk
# holds 1560 pixels, so every image has two chunks, the second of 41 pixels.
# The channel counts give the transposed tile read (load_tile) a last block of
# every width it moves differently with AVX-512: 1 to 4 channels (2, 3, 4,
# 17, 20), 5 to 8 (8, 21, 150) and 9 to 16 (300).
@pytest.mark.parametrize("channels", [2, 3, 4, 8, 17, 20, 21, 150, 300])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("weights", [None, "pixel", "element"])
def test_sparse_labels_match_float64_oracle(rng, channels, from_logits, weights):
    shape = (2, 1601 if channels <= 21 else 230, channels)
    t, z = sparse_case(rng, shape, from_logits)
    w = None
    if weights == "pixel":
        w = rng.random(shape[:-1] + (1,)).astype(np.float32)
    elif weights == "element":
        w = rng.random(shape).astype(np.float32)
    opts = dict(from_logits=from_logits, softmax=True, sparse=True, ignore_index=IGNORE)
    for per_image in (True, False):
        check_against_oracle(t, z, w, opts, per_image)


@pytest.mark.parametrize("label_dtype", ["uint8", "int32", "int64"])
@pytest.mark.parametrize("pixels", [1, 7, 8, 9, 15, 16, 17, 33])
def test_short_images_every_tile_length(rng, label_dtype, pixels):
    t, z = sparse_case(rng, (3, pixels, 6), True, label_dtype=label_dtype)
    check_against_oracle(t, z, None, dict(from_logits=True, softmax=True, sparse=True, ignore_index=IGNORE),
                         per_image=True)


def test_sigmoid_per_channel_with_sparse_labels(rng):
    # from_logits without softmax: a sigmoid per channel, one-hot targets.
    t, z = sparse_case(rng, (2, 100, 5), True)
    check_against_oracle(t, z, None, dict(from_logits=True, sparse=True, ignore_index=IGNORE), per_image=False)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("weights", [False, True])
def test_ignored_pixels_count_nowhere_whatever_their_prediction(rng, from_logits, weights):
    shape = (2, 70, 21)
    t, z = sparse_case(rng, shape, from_logits, ignored=0.3)
    w = rng.random(shape[:-1] + (1,)).astype(np.float32) if weights else None
    ignored = t == IGNORE
    wild = z.copy()
    wild[ignored] = np.array([np.nan, np.inf, -np.inf] * 7, np.float32)
    tame = z.copy()
    tame[ignored] = 0.0
    opts = dict(from_logits=from_logits, softmax=True, sparse=True, ignore_index=IGNORE)
    for per_image in (True, False):
        got = fk.overlap_stats(t, wild, w, per_image=per_image, **opts)
        want = fk.overlap_stats(t, tame, w, per_image=per_image, **opts)
        for g, e in zip(got, want):
            assert np.isfinite(g).all()
            np.testing.assert_array_equal(g, e)
        gs = [g.astype(np.float32) for g in jaccard_group_grads(*want)]
        dz = fk.overlap_grad(t, wild, w, *gs, per_image=per_image, **opts)
        assert (dz[ignored] == 0).all() and np.signbit(dz[ignored]).sum() == 0
        np.testing.assert_array_equal(dz[~ignored], fk.overlap_grad(t, tame, w, *gs, per_image=per_image,
                                                                    **opts)[~ignored])


@pytest.mark.parametrize("channels", [2, 3, 21, 150])
def test_probabilities_whole_tiles_and_mixed_tiles(rng, channels):
    # From probabilities without weights, tiles whose pixels all count are
    # read as stored (the periodic read) and the rest across the lanes; the
    # gradient writes whole tiles. Here: no ignored pixel at all, ignored
    # pixels in runs that cover whole tiles, and single ones that mix a tile,
    # in one image; every one against the oracle.
    pixels = 1601 if channels <= 21 else 230
    t, z = sparse_case(rng, (2, pixels, channels), False, ignored=0.0)
    t[0, 32:96] = IGNORE   # whole tiles at any vector width
    t[0, 200] = IGNORE     # one in a tile
    t[1, pixels - 3:] = IGNORE  # the short last tile
    opts = dict(from_logits=False, softmax=True, sparse=True, ignore_index=IGNORE)
    for per_image in (True, False):
        check_against_oracle(t, z, None, opts, per_image)
    # a label out of range matches no channel in the gradient (the stats
    # refuse it): its row is the gradient of target 0 everywhere
    bad = t.copy()
    bad[1, 5] = channels
    gs = [g.astype(np.float32) for g in jaccard_group_grads(*fk.overlap_stats(t, z, per_image=False, **opts))]
    dz = fk.overlap_grad(bad, z, None, *gs, per_image=False, **opts)
    np.testing.assert_allclose(dz[1, 5], gs[1], rtol=1e-6)
    np.testing.assert_array_equal(np.delete(dz.reshape(-1, channels), pixels + 5, 0),
                                  np.delete(fk.overlap_grad(t, z, None, *gs, per_image=False, **opts)
                                            .reshape(-1, channels), pixels + 5, 0))


@pytest.mark.parametrize("true_at_value", [True, False])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_probabilities_not_finite_in_whole_tiles(rng, value, true_at_value):
    # with the range guards off, a value that is not finite adds to I as the
    # oracle's w*t*p does (inf*1, or NaN from inf*0 and NaN*t), on the
    # periodic read too
    t, z = sparse_case(rng, (1, 64, 5), False, ignored=0.0)
    z[0, 10] = 0.1
    z[0, 10, 3] = value
    t[0, 10] = 3 if true_at_value else 1
    opts = dict(from_logits=False, softmax=True, sparse=True, per_image=False)
    got = fk.overlap_stats(t, z, check_range=False, **opts)
    want = oracle_sums(t, z, None, **opts)
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=2e-5)  # NaN and inf where the oracle has them


def test_out_of_range_label_found_in_a_short_tile(rng):
    t, z = sparse_case(rng, (2, 1601, 21), True, ignored=0.0)
    t[1, 1600] = 21  # the last pixel of the last, short tile of the last chunk
    with pytest.raises(ValueError, match=r"21"):
        fk.overlap_stats(t, z, from_logits=True, softmax=True, sparse=True)


@pytest.mark.parametrize("from_logits", [True, False])
def test_repeated_runs_are_bitwise_equal(rng, from_logits):
    t, z = sparse_case(rng, (2, 3001, 21), from_logits)
    opts = dict(from_logits=from_logits, softmax=True, sparse=True, ignore_index=IGNORE, per_image=False)
    first = fk.overlap_stats(t, z, **opts)
    gs = [g.astype(np.float32) for g in jaccard_group_grads(*first)]
    dz = fk.overlap_grad(t, z, None, *gs, **opts)
    for _ in range(3):
        assert [a.tobytes() for a in fk.overlap_stats(t, z, **opts)] == [a.tobytes() for a in first]
        assert fk.overlap_grad(t, z, None, *gs, **opts).tobytes() == dz.tobytes()


def test_channel_limit(rng):
    limit = 2**24
    z = np.zeros((0, limit + 1), np.float32)
    with pytest.raises(ValueError, match=f"at most {limit}"):
        fk.overlap_stats(np.zeros((0,), np.uint8), z, sparse=True, softmax=True)

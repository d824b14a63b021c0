"""The demo's pieces: the synthetic data, the image/mask loader, a short run."""

import math

import numpy as np
import pytest

from fastiou import demo

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def test_synthetic_data_shapes_dtypes_and_foreground_share():
    x, y = demo.synthetic_dataset(200, size=64, seed=3)
    assert x.shape == (200, 64, 64, 1) and x.dtype == np.float32
    assert y.shape == (200, 64, 64, 1) and y.dtype == np.uint8
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(y)) == {0, 1}
    share = y.mean()
    assert 0.03 <= share <= 0.08, share  # about 5%
    per_image = y.reshape(200, -1).mean(1)
    assert per_image.min() > 0 and per_image.std() > 0.005  # every image has objects, in several amounts
    # Objects differ from background in the images, not just in the masks.
    assert x[y == 1].mean() > x[y == 0].mean() + 0.05
    again = demo.synthetic_dataset(200, size=64, seed=3)
    np.testing.assert_array_equal(again[0], x)
    np.testing.assert_array_equal(again[1], y)


def test_split_is_fixed_and_disjoint():
    x = np.arange(50)[:, None]
    (xt, _), (xv, _) = demo.split(x, x, validation=0.2, seed=1)
    assert len(xv) == 10 and len(xt) == 40
    assert not set(xt[:, 0]) & set(xv[:, 0])
    (xt2, _), (xv2, _) = demo.split(x, x, validation=0.2, seed=1)
    np.testing.assert_array_equal(xv, xv2)


def _write_pairs(tmp_path, suffix, rgb=False):
    images, masks = tmp_path / f"images{suffix}", tmp_path / f"masks{suffix}"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    expected = []
    for k in range(3):
        img = (rng.random((10, 12, 3) if rgb else (10, 12)) * 255).astype(np.uint8)
        mask = np.zeros((10, 12), np.uint8)
        mask[2:6, 3 + k:8] = 200 + k  # any non-zero value is foreground
        # Names sort as the pairing expects, whatever their numbers.
        Image.fromarray(img).save(images / f"img_{k:02d}{suffix}")
        Image.fromarray(mask).save(masks / f"m_{k:02d}{suffix}")
        expected.append(mask != 0)
    return images, masks, expected


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_loader_reads_folders_paired_by_sorted_name(tmp_path, suffix):
    images, masks, expected = _write_pairs(tmp_path, suffix)
    x, y = demo.load_image_mask_pairs(str(images), str(masks), size=12)
    assert x.shape == (3, 12, 12, 1) and x.dtype == np.float32
    assert y.shape == (3, 12, 12, 1) and y.dtype == np.uint8
    assert 0.0 <= x.min() and x.max() <= 1.0
    for k in range(3):
        # Resized from 10 rows to 12 with nearest neighbours: row counts scale, columns stay.
        assert y[k, ..., 0].any(1).sum() == math.ceil(4 * 12 / 10)
        np.testing.assert_array_equal(y[k, ..., 0].any(0), expected[k].any(0))


def test_loader_reads_colour_and_multipage_tiff(tmp_path):
    images, masks, expected = _write_pairs(tmp_path, ".png", rgb=True)
    x, y = demo.load_image_mask_pairs(str(images), str(masks), size=8)
    assert x.shape == (3, 8, 8, 3)
    frames = [Image.fromarray(m.astype(np.uint8) * 255) for m in expected]
    stack = tmp_path / "masks.tif"
    frames[0].save(stack, save_all=True, append_images=frames[1:])
    pages = [Image.fromarray((np.full((10, 12), 40 * k, np.uint16))) for k in range(3)]
    img_stack = tmp_path / "images.tif"
    pages[0].save(img_stack, save_all=True, append_images=pages[1:])
    x, y = demo.load_image_mask_pairs(str(img_stack), str(stack), size=12)
    assert x.shape == (3, 12, 12, 1) and y.shape == (3, 12, 12, 1)
    for k in range(3):
        assert y[k].sum() == np.asarray(Image.fromarray(expected[k].astype(np.uint8)).resize((12, 12), Image.NEAREST)).sum()


def test_loader_errors(tmp_path):
    images, masks, _ = _write_pairs(tmp_path, ".png")
    (masks / "m_00.png").unlink()
    with pytest.raises(ValueError, match="3 images but 2 masks"):
        demo.load_image_mask_pairs(str(images), str(masks), size=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no PNG or TIFF files"):
        demo.load_image_mask_pairs(str(empty), str(masks), size=8)
    with pytest.raises(FileNotFoundError):
        demo.load_image_mask_pairs(str(tmp_path / "missing"), str(masks), size=8)


def test_metrics_against_hand_computed_case():
    masks = np.zeros((1, 4, 4, 1), np.uint8)
    masks[0, :2, :2] = 1                      # 4 foreground pixels
    probs = np.zeros((1, 4, 4, 1), np.float32)
    probs[0, :2, :3] = 0.9                    # 6 predicted, 4 of them right
    r = demo.evaluate(masks, probs)
    assert r["iou"] == pytest.approx(4 / 6)
    assert r["dice"] == pytest.approx(8 / 10)
    assert r["pixel_accuracy"] == pytest.approx(14 / 16)
    # MeanIoU on probabilities sees class 0 everywhere: background IoU 12/16, foreground 0.
    assert r["keras_meaniou_sigmoid"] == pytest.approx((12 / 16 + 0.0) / 2)
    assert r["meaniou_thresholded"] == pytest.approx((10 / 12 + 4 / 6) / 2)


@pytest.mark.slow
def test_one_epoch_tiny_run_gives_finite_metrics_and_a_picture(tmp_path):
    out = tmp_path / "demo.png"
    results = demo.main(["--epochs", "1", "--size", "16", "--samples", "24", "--batch-size", "8",
                         "--out", str(out), "--verbose", "0"])
    assert set(results) == set(demo.LOSSES)
    for r in results.values():
        for key in ("pixel_accuracy", "iou", "dice", "keras_meaniou_sigmoid", "meaniou_thresholded"):
            assert np.isfinite(r[key]) and 0.0 <= r[key] <= 1.0
    assert out.stat().st_size > 10_000
    assert Image.open(out).format == "PNG"


def test_bad_arguments():
    with pytest.raises(SystemExit, match="multiple of 4"):
        demo.main(["--size", "30"])
    with pytest.raises(SystemExit, match="both --images and --masks"):
        demo.main(["--images", "somewhere"])

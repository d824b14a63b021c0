"""The demo's pieces: the synthetic data, the image/mask loader, a short run."""

import json
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
    assert r["val_iou"] == pytest.approx(4 / 6)
    assert r["val_dice"] == pytest.approx(8 / 10)
    # the same from lists of images of different sizes (own data at native resolution)
    split_masks = [masks[0, :1], masks[0, 1:]]
    split_probs = [probs[0, :1], probs[0, 1:]]
    assert demo.evaluate(split_masks, split_probs) == pytest.approx(r)
    assert r["pixel_accuracy"] == pytest.approx(14 / 16)
    # MeanIoU on probabilities sees class 0 everywhere: background IoU 12/16, foreground 0.
    assert r["keras_meaniou_sigmoid"] == pytest.approx((12 / 16 + 0.0) / 2)
    assert r["meaniou_thresholded"] == pytest.approx((10 / 12 + 4 / 6) / 2)


@pytest.mark.slow
def test_one_checkpoint_tiny_run_gives_finite_metrics_and_a_picture(tmp_path):
    out = tmp_path / "demo.png"
    results = demo.main(["--steps", "2", "--epochs", "1", "--size", "16", "--samples", "24", "--batch-size", "8",
                         "--out", str(out), "--verbose", "0"])
    assert set(results) == set(demo.LOSSES)
    for r in results.values():
        for key in ("pixel_accuracy", "val_iou", "val_dice", "keras_meaniou_sigmoid", "meaniou_thresholded"):
            assert np.isfinite(r[key]) and 0.0 <= r[key] <= 1.0
    assert out.stat().st_size > 10_000
    assert Image.open(out).format == "PNG"


def test_bad_arguments():
    with pytest.raises(SystemExit, match="multiple of 4"):
        demo.main(["--size", "30"])
    with pytest.raises(SystemExit, match="both --images and --masks"):
        demo.main(["--images", "somewhere"])
    with pytest.raises(SystemExit, match="--steps must be at least 1"):
        demo.main(["--steps", "0"])


# --- own data: stand-in, native resolution, budget, crops, tiles, best checkpoint, --json, --seeds -----


def _min_filter(a, k):
    """Erosion of a boolean image by a k x k square (outside counts as foreground)."""
    p = np.pad(a, k // 2, constant_values=True)
    return np.lib.stride_tricks.sliding_window_view(p, (k, k)).all(axis=(-1, -2))


def test_membrane_stand_in_is_thin_imbalanced_and_visible():
    x, y = demo.membrane_dataset(3, size=256, seed=1)
    assert x.shape == (3, 256, 256, 1) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert y.shape == (3, 256, 256, 1) and y.dtype == np.uint8 and set(np.unique(y)) == {0, 1}
    assert 0.05 <= y.mean() <= 0.3, y.mean()
    # thin: a 9 x 9 erosion removes nearly all of the membranes, but little of the cells
    fg = y[..., 0].astype(bool)
    assert np.mean([_min_filter(m, 9).sum() / m.sum() for m in fg]) < 0.1
    assert np.mean([_min_filter(~m, 9).sum() / (~m).sum() for m in fg]) > 0.5
    assert x[y == 1].mean() < x[y == 0].mean() - 0.15  # membranes are dark
    np.testing.assert_array_equal(demo.membrane_dataset(3, size=256, seed=1)[1], y)


def test_write_membranes_then_load_at_native_resolution(tmp_path):
    demo.main(["--write-membranes", str(tmp_path / "em"), "--samples", "2"])
    x, y = demo.load_image_mask_pairs(str(tmp_path / "em" / "images"), str(tmp_path / "em" / "masks"))
    assert [a.shape for a in x] == [(512, 512, 1)] * 2 and [m.shape for m in y] == [(512, 512, 1)] * 2
    _, masks = demo.membrane_dataset(2, 512, seed=0)
    np.testing.assert_array_equal(np.stack(y), masks)


def test_loader_keeps_native_sizes_and_checks_pairs(tmp_path):
    for sub in ("i", "m", "bad"):
        (tmp_path / sub).mkdir()
    sizes = [(40, 50), (64, 36)]
    for k, (h, w) in enumerate(sizes):
        Image.fromarray(np.full((h, w), 10 * k + 5, np.uint8)).save(tmp_path / "i" / f"{k}.png")
        Image.fromarray(np.eye(h, w, dtype=np.uint8)).save(tmp_path / "m" / f"{k}.png")
        Image.fromarray(np.zeros((h + 4, w), np.uint8)).save(tmp_path / "bad" / f"{k}.png")
    x, y = demo.load_image_mask_pairs(str(tmp_path / "i"), str(tmp_path / "m"))
    assert [a.shape for a in x] == [(40, 50, 1), (64, 36, 1)]
    np.testing.assert_array_equal(y[1][..., 0], np.eye(64, 36))
    with pytest.raises(ValueError, match="0.png is 50x40 but its mask 0.png is 50x44"):
        demo.load_image_mask_pairs(str(tmp_path / "i"), str(tmp_path / "bad"))


def _coordinate_images(shapes):
    """Images whose value is the pixel's flat index, masks of a pattern of it."""
    images = [np.arange(h * w, dtype=np.float32).reshape(h, w, 1) for h, w in shapes]
    masks = [(a % 7 == 0).astype(np.uint8) for a in images]
    return images, masks


def _symmetries(w):
    """The 8 symmetries of a square, built without demo.dihedral."""
    t = np.swapaxes(w, 0, 1)
    return [w, w[::-1], w[:, ::-1], w[::-1, ::-1], t, t[::-1], t[:, ::-1], t[::-1, ::-1]]


def test_crops_are_windows_at_native_resolution():
    shapes = [(40, 50), (64, 36), (32, 32)]
    images, masks = _coordinate_images(shapes)
    x, y = demo.BatchStream(images, masks, 32, seed=3, augment=False).take(30)
    assert x.shape == (30, 32, 32, 1) and y.shape == (30, 32, 32, 1) and y.dtype == np.uint8
    seen = set()
    for xk, yk in zip(x[..., 0], y[..., 0]):
        i = next(i for i, (h, w) in enumerate(shapes) if xk[1, 0] - xk[0, 0] == w)  # widths differ
        h, w = shapes[i]
        r, c = divmod(int(xk[0, 0]), w)
        assert r + 32 <= h and c + 32 <= w
        np.testing.assert_array_equal(xk, images[i][r:r + 32, c:c + 32, 0])
        np.testing.assert_array_equal(yk, masks[i][r:r + 32, c:c + 32, 0])
        seen.add((i, r, c))
    assert len(seen) > 10  # windows move


def test_augmentation_draws_all_eight_symmetries_for_image_and_mask_alike():
    images, masks = _coordinate_images([(48, 48)])
    x, y = demo.BatchStream(images, masks, 16, seed=0).take(200)
    used = set()
    for xk, yk in zip(x[..., 0], y[..., 0]):
        r, c = divmod(int(xk.min()), 48)  # the window's top-left pixel has the smallest value
        window, mask = images[0][r:r + 16, c:c + 16, 0], masks[0][r:r + 16, c:c + 16, 0]
        k = next(k for k, s in enumerate(_symmetries(window)) if np.array_equal(s, xk))
        np.testing.assert_array_equal(yk, _symmetries(mask)[k])
        used.add(k)
    assert used == set(range(8))


def test_batches_are_the_same_for_every_loss_and_every_image_equally_often():
    images, masks = _coordinate_images([(40, 40)] * 5)
    for k, a in enumerate(images):
        a += 10_000 * k  # tell the images apart
    a, b = demo.BatchStream(images, masks, 16, seed=7), demo.BatchStream(images, masks, 16, seed=7)
    for n in (3, 4, 8):  # in pieces of any size
        np.testing.assert_array_equal(a.take(n)[0], b.take(n)[0])
    other = demo.BatchStream(images, masks, 16, seed=8).take(15)[0]
    assert not np.array_equal(other, demo.BatchStream(images, masks, 16, seed=7).take(15)[0])
    drawn = demo.BatchStream(images, masks, 16, seed=7, augment=False).take(15)[0]
    assert np.bincount((drawn[:, 0, 0, 0] // 10_000).astype(int), minlength=5).tolist() == [3] * 5
    with pytest.raises(ValueError, match="smaller than the 48x48 training window"):
        demo.BatchStream(images, masks, 48, seed=0)


def test_checkpoints_split_the_budget_whatever_the_data():
    for steps, epochs in [(192, 8), (100, 8), (5, 8), (7, 3), (1, 1)]:
        plan = demo.checkpoint_steps(steps, epochs)
        assert sum(plan) == steps and len(plan) == min(steps, epochs) and max(plan) - min(plan) <= 1
    args = demo.parse_args([])
    # the synthetic default: 8 checkpoints of 24 steps of 16, one pass over 384 training images each
    assert demo.checkpoint_steps(args.steps, args.epochs) == [24] * 8 and args.batch_size == 16


@pytest.fixture(scope="module")
def unet():
    import keras

    keras.utils.set_random_seed(5)
    model = demo.small_unet(None, 2)
    # non-trivial batch-norm statistics, so every layer matters
    for layer in model.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.random.default_rng(n).normal(0, 0.1, n))
            layer.moving_variance.assign(np.random.default_rng(n + 1).uniform(0.5, 1.5, n))
    return model


@pytest.mark.parametrize("shape, tile", [((98, 74), 32), ((64, 64), 40), ((30, 130), 64), ((20, 24), 256)])
def test_tiled_prediction_is_the_whole_image_prediction(unet, shape, tile):
    image = np.random.default_rng(0).random(shape + (2,)).astype(np.float32)
    h, w = shape
    H, W = -(-h // 4) * 4, -(-w // 4) * 4
    padded = np.pad(image, ((0, H - h), (0, W - w), (0, 0)), mode="symmetric")
    whole = np.asarray(unet.predict_on_batch(padded[None]))[0, :h, :w]
    tiled = demo.predict_tiled(unet, image, tile=tile)
    assert tiled.shape == (h, w, 1)
    np.testing.assert_allclose(tiled, whole, atol=1e-4)
    if tile < max(h, w):
        # the negative control: without enough context the tiles' edges differ
        short = demo.predict_tiled(unet, image, tile=tile, margin=4)
        assert np.abs(short - whole).max() > 1e-3


@pytest.mark.slow
def test_best_checkpoint_is_kept_and_restored(monkeypatch):
    x, y = demo.synthetic_dataset(12, size=16, seed=2)
    data = demo.split(x, y, seed=0)
    scripted = iter([0.2, 0.5, 0.5, 0.1])  # best: checkpoint 2, the earlier of a tie
    seen = []

    def fake_iou(masks, probabilities):
        seen.append(np.array(probabilities, copy=True))
        return next(scripted)

    monkeypatch.setattr(demo, "foreground_iou", fake_iou)
    r = demo.train("jaccard", data, size=16, steps=8, epochs=4, batch_size=4, seed=0)
    assert r["val_iou_per_epoch"] == [0.2, 0.5, 0.5, 0.1] and r["best_epoch"] == 2
    assert r["steps"] == 8 and r["steps_per_epoch"] == [2, 2, 2, 2]
    np.testing.assert_array_equal(r["probabilities"], seen[1])
    assert np.abs(seen[3] - seen[1]).max() > 1e-4  # training moved the model after checkpoint 2
    restored = 1 / (1 + np.exp(-np.asarray(r["model"].predict_on_batch(data[1][0]))))
    np.testing.assert_allclose(restored, seen[1], atol=1e-5)


def _run_json(tmp_path, args):
    path = tmp_path / "out.json"
    demo.main(args + ["--json", str(path), "--out", "", "--verbose", "0"])
    return json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["few large images", "many small images"])
def test_json_reports_the_budget_and_the_data_for_both_kinds_of_data_sets(tmp_path, kind):
    if kind == "few large images":
        x, y = demo.membrane_dataset(5, size=96, seed=0)
        x, y = x[:, :, :80], y[:, :, :80]  # not square, larger than the window
    else:
        x, y = demo.synthetic_dataset(40, size=24, seed=0)
    demo.write_pairs(str(tmp_path / "data"), x, y)
    got = _run_json(tmp_path, ["--images", str(tmp_path / "data" / "images"), "--masks",
                               str(tmp_path / "data" / "masks"), "--size", "32", "--steps", "5",
                               "--epochs", "2", "--batch-size", "4", "--loss", "jaccard", "--tile", "48"])
    data = got["data"]
    assert data["steps"] == 5 and data["steps_per_epoch"] == [3, 2] and data["epochs"] == 2
    assert data["images"] == len(x) and data["train"] + data["validation"] == len(x)
    if kind == "few large images":
        assert data["mode"] == "native resolution" and data["native_sizes"] == ["80x96"]
        assert data["foreground_share"] == pytest.approx(float(y.mean()), abs=1e-6)
    else:
        assert data["mode"] == "resized" and "smaller than --size 32" in data["why"]
        assert data["foreground_share"] == pytest.approx(float(y.mean()), abs=0.003)  # nearest-neighbour resize
    r = got["losses"]["jaccard"]
    (run,) = r["runs"]
    assert run["steps"] == 5  # the optimizer's own count: the budget, however many images
    assert 1 <= run["best_epoch"] <= 2 and r["best_epoch"] == [run["best_epoch"]]
    assert run["val_iou"] == pytest.approx(max(run["val_iou_per_epoch"]), abs=1e-9)
    for key in demo.METRICS:
        assert r[key] == run[key] and r["std"][key] == 0.0


@pytest.mark.slow
def test_seeds_report_mean_and_spread(tmp_path):
    got = _run_json(tmp_path, ["--samples", "20", "--size", "16", "--steps", "4", "--epochs", "2",
                               "--batch-size", "4", "--loss", "bce", "--seeds", "3"])
    r = got["losses"]["bce"]
    assert [run["seed"] for run in r["runs"]] == [0, 1, 2] and got["data"]["seeds"] == [0, 1, 2]
    for key in demo.METRICS:
        values = [run[key] for run in r["runs"]]
        assert r[key] == pytest.approx(np.mean(values), rel=1e-12)
        assert r["std"][key] == pytest.approx(np.std(values, ddof=1), rel=1e-12, abs=1e-15)
    assert r["best_epoch"] == [run["best_epoch"] for run in r["runs"]]
    table = demo.format_table(got["losses"], 0.05)
    assert f"{r['val_iou']:.3f}±{r['std']['val_iou']:.3f}" in table and "over 3 seeds" in table


def test_table_tells_the_meaniou_trap_in_one_line():
    # The MeanIoU of sigmoid outputs is no column (it measures no model): one
    # line under the table gives each loss's value and why it sits near
    # (1 - foreground share) / 2.
    def result(iou, trap):
        return {"pixel_accuracy": 0.99, "val_iou": iou, "val_dice": 0.9, "keras_meaniou_sigmoid": trap,
                "meaniou_thresholded": 0.95, "seconds": 1.0, "best_epoch": [3], "runs": [{}], "std": {}}

    table = demo.format_table({"BCE": result(0.8, 0.4751), "Jaccard": result(0.85, 0.5123)}, 0.05)
    head, rule, bce, jaccard = table.splitlines()[:4]
    assert "sigmoid" not in head and bce.split()[2] == "0.800" and jaccard.split()[2] == "0.850"
    trap = [line for line in table.splitlines() if "Keras' MeanIoU" in line]
    assert len(trap) == 1
    assert "BCE 0.475, Jaccard 0.512" in trap[0] and "(1 - 0.050) / 2 = 0.475" in trap[0]

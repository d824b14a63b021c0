"""Train a small U-Net on imbalanced binary masks with three losses and compare.

    python -m fastiou.demo                                  # built-in synthetic data
    python -m fastiou.demo --images imgs/ --masks masks/    # your own data
    python -m fastiou.demo --help

The same U-Net (same initial weights, same batches) is trained with binary
cross-entropy, fastiou's JaccardLoss and BCE + Jaccard for the same number of
optimizer steps (`--steps`), checked on the held-out images `--epochs` times
along the way; each loss keeps its best checkpoint by validation IoU. The
script then prints, per loss, the pixel accuracy, the foreground IoU and Dice
at threshold 0.5 and the MeanIoU of thresholded predictions, with one line
for Keras' MeanIoU fed the sigmoid outputs instead, and writes a PNG of
predictions and of the validation IoU per checkpoint.

The built-in data set is made at run time: shapes of several sizes on
textured, noisy backgrounds, about 5% foreground, with a held-out validation
split and fixed seeds. With your own images, the budget stays the same number
of optimizer steps however many images there are; training batches are
random flips and quarter turns of the images and, when the images are larger
than `--size`, random `--size` crops at native resolution, and validation
predicts whole images at native resolution in overlapping tiles. `--seeds N`
repeats every loss with N seeds and reports mean and spread; `--json` writes
the results.

Why Keras' MeanIoU stays flat on sigmoid outputs: MeanIoU takes class
indices. Given probabilities it casts them to integers, which truncates every
value below 1 to class 0: the model is scored as predicting background
everywhere, whatever it learned, and MeanIoU sits at about
(background IoU + 0) / 2 = (1 - foreground share) / 2. Only probabilities that
round to exactly 1.0 in float32 (logits above about 17, which overlap losses
tend to produce) count as foreground, so it can move a little for them, for
the wrong reason. Threshold first (or use fastiou.metrics.BinaryIoU, or
keras.metrics.BinaryIoU) to measure the model. fastiou.metrics.MeanIoU
refuses probabilities with an error rather than truncate them.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

LOSSES = ("bce", "jaccard", "bce+jaccard")

# The U-Net halves its input twice: sizes and tile offsets are multiples of
# ALIGN, so that every tile pools the same pixels together as the whole image.
ALIGN = 4
# Output pixels depend on input pixels up to about 26 pixels away (two 3x3
# convolutions per level, at strides 1, 2 and 4, down and up again): tiles
# read this much context on every side, a multiple of ALIGN.
TILE_MARGIN = 32

METRICS = ("val_iou", "val_dice", "pixel_accuracy", "keras_meaniou_sigmoid", "meaniou_thresholded",
           "seconds")


# --- Data ---------------------------------------------------------------------

def synthetic_dataset(n, size=96, foreground=0.05, seed=0):
    """Images (n, size, size, 1) float32 in [0, 1] and masks (n, size, size, 1) uint8.

    Backgrounds are smooth random gratings under an illumination gradient;
    objects (ellipses and rotated rectangles of several sizes) carry a fine
    striped texture and a small brightness shift; Gaussian noise covers both.
    Each image aims at a foreground share drawn around `foreground`, so the
    data set's share is close to it and single images vary.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = np.empty((n, size, size, 1), np.float32)
    masks = np.zeros((n, size, size, 1), np.uint8)
    for i in range(n):
        background = np.zeros((size, size), np.float32)
        for _ in range(3):
            fx, fy = rng.uniform(-4, 4, size=2)
            background += rng.uniform(0.05, 0.15) * np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 6.3))
        background += rng.uniform(-0.2, 0.2) * (xx - 0.5) + rng.uniform(-0.2, 0.2) * (yy - 0.5)
        target = foreground * rng.uniform(0.1, 1.0)
        mask = np.zeros((size, size), bool)
        for _ in range(8):
            if mask.mean() >= target:
                break
            mask |= _random_shape(rng, xx, yy, size)
        angle = rng.uniform(0, np.pi)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * size / 4.0 * (np.cos(angle) * xx + np.sin(angle) * yy))
        image = 0.5 + background + mask * (0.12 + 0.18 * stripes)
        image += rng.normal(0.0, 0.08, size=(size, size))
        images[i, ..., 0] = np.clip(image, 0.0, 1.0)
        masks[i, ..., 0] = mask
    return images, masks


def _random_shape(rng, xx, yy, size):
    cx, cy = rng.uniform(0.1, 0.9, size=2)
    radius = rng.uniform(1 / 32, 1 / 6)  # several sizes: 3 to 16 pixels at 96 x 96
    theta = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    aspect = rng.uniform(0.5, 1.0)
    if rng.random() < 0.6:
        return (u / radius) ** 2 + (v / (radius * aspect)) ** 2 <= 1.0
    return (np.abs(u) <= radius) & (np.abs(v) <= radius * aspect)


def membrane_dataset(n, size=512, seed=0):
    """A stand-in for a small electron-microscopy set: images (n, size, size, 1)
    float32 in [0, 1] and masks (n, size, size, 1) uint8, foreground = thin
    membranes (2 to 6 pixels wide, 10 to 20% of the pixels) between cells.

    Cells are the regions of a randomly warped Voronoi diagram; their
    interiors carry a smooth texture under uneven illumination and dark
    elongated organelles as dark as the membranes but not labelled (the
    distractors a model must learn to tell apart by shape); the image is
    blurred and noisy.
    `python -m fastiou.demo --write-membranes DIR` writes such a set as PNG
    files, to try the own-data path without data.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, size, size, 1), np.float32)
    masks = np.empty((n, size, size, 1), np.uint8)
    for i in range(n):
        # a smooth warp, so that membranes bend
        wy, wx = (_smooth_noise(rng, size, 48) * 10.0 for _ in range(2))
        py, px = yy + wy, xx + wx
        cells = max(3, int(rng.integers(40, 70) * (size / 512) ** 2))  # cells of about 60 to 80 pixels
        seeds = rng.uniform(-0.05 * size, 1.05 * size, (cells, 2)).astype(np.float32)
        d1 = np.full((size, size), np.inf, np.float32)
        d2 = np.full((size, size), np.inf, np.float32)
        for sy, sx in seeds:
            d = np.hypot(py - sy, px - sx)
            d2 = np.minimum(d2, np.maximum(d1, d))
            d1 = np.minimum(d1, d)
        width = rng.uniform(2.0, 4.5) * (1.0 + 0.35 * _smooth_noise(rng, size, 24))
        membrane = (d2 - d1) < width
        # uneven cells under uneven illumination
        interior = 0.56 + 0.1 * _smooth_noise(rng, size, 16) + 0.08 * _smooth_noise(rng, size, 128)
        # organelles: dark elongated blobs, as dark as the membranes, not labelled
        organelles = np.zeros((size, size), bool)
        for _ in range(int(rng.integers(20, 40) * (size / 512) ** 2)):
            cy, cx = rng.uniform(0, size, 2)
            r, aspect, theta = rng.uniform(5, 14), rng.uniform(0.2, 0.6), rng.uniform(0, np.pi)
            u = (yy - cy) * np.cos(theta) + (xx - cx) * np.sin(theta)
            v = (xx - cx) * np.cos(theta) - (yy - cy) * np.sin(theta)
            organelles |= (u / r) ** 2 + (v / (r * aspect)) ** 2 <= 1.0
        image = np.where(membrane, 0.34, interior) - 0.2 * (organelles & ~membrane)
        image = _box_blur(_box_blur(image, 1), 1) + rng.normal(0.0, 0.1, (size, size))
        images[i, ..., 0] = np.clip(image, 0.0, 1.0)
        masks[i, ..., 0] = membrane
    return images, masks


def _smooth_noise(rng, size, scale):
    """Zero-mean noise with features of about `scale` pixels, values in about [-1, 1]."""
    coarse = rng.normal(size=(size // scale + 2, size // scale + 2)).astype(np.float32)
    t = np.arange(size, dtype=np.float32) / scale
    i = t.astype(int)
    f = t - i
    f = f * f * (3 - 2 * f)
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return (rows[:, i] * (1 - f) + rows[:, i + 1] * f) / 1.5


def _box_blur(a, r):
    k = 2 * r + 1
    p = np.pad(a, r, mode="edge")
    c = np.cumsum(np.cumsum(np.pad(p, ((1, 0), (1, 0))), 0), 1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def write_pairs(folder, images, masks):
    """Write images and masks as PNG files under folder/images and folder/masks."""
    from PIL import Image

    for sub in ("images", "masks"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for k, (x, y) in enumerate(zip(images, masks)):
        grey = np.round(x[..., 0] * 255).astype(np.uint8)
        Image.fromarray(grey).save(os.path.join(folder, "images", f"{k:03d}.png"))
        Image.fromarray(y[..., 0] * 255).save(os.path.join(folder, "masks", f"{k:03d}.png"))


IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


def _frames(path):
    """The images in a folder (sorted by file name) or the pages of one TIFF stack."""
    from PIL import Image, ImageSequence

    if os.path.isdir(path):
        names = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise ValueError(f"fastiou.demo: no PNG or TIFF files in {path}")
        for name in names:
            with Image.open(os.path.join(path, name)) as im:
                yield name, im.copy()
    elif os.path.isfile(path):
        with Image.open(path) as im:
            for k, page in enumerate(ImageSequence.Iterator(im)):
                yield f"{os.path.basename(path)}[{k}]", page.copy()
    else:
        raise FileNotFoundError(f"fastiou.demo: {path} is neither a folder nor a file")


def _as_array(im, size, is_mask):
    """One image as float32 (H, W, C) in [0, 1] (min-max scaled if grey) or one
    mask as uint8 (H, W, 1) (1 where non-zero); resized to size x size unless
    size is None."""
    from PIL import Image

    if is_mask:
        a = np.asarray(im.convert("F") if im.mode not in ("L", "1", "P") else im.convert("L"))
        m = (a != 0).astype(np.uint8)
        if size is not None:
            m = np.asarray(Image.fromarray(m).resize((size, size), Image.NEAREST))
        return m[..., None]
    if im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA"):
        im = im.convert("RGB")
        if size is not None:
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, np.float32) / 255.0
    im = im.convert("F")
    if size is not None:
        im = im.resize((size, size), Image.BILINEAR)
    a = np.asarray(im, np.float32)
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a))[..., None]


def read_pairs(images, masks):
    """The (name, image) frames of the images and of the masks, read once:
    two folders of PNG/TIFF files (paired by sorted file name) or two
    multi-page TIFF stacks, as many of each."""
    image_frames = list(_frames(images))
    mask_frames = list(_frames(masks))
    if len(image_frames) != len(mask_frames):
        raise ValueError(f"fastiou.demo: {len(image_frames)} images but {len(mask_frames)} masks")
    return image_frames, mask_frames


def pairs_as_arrays(image_frames, mask_frames, size=None):
    """Frames of read_pairs as arrays: see load_image_mask_pairs."""
    xs = [_as_array(im, size, False) for _, im in image_frames]
    channels = max(a.shape[-1] for a in xs)
    xs = [np.repeat(a, channels, -1) if a.shape[-1] != channels else a for a in xs]
    ys = [_as_array(m, size, True) for _, m in mask_frames]
    for (name, _), (mask_name, _), x, y in zip(image_frames, mask_frames, xs, ys):
        if x.shape[:2] != y.shape[:2]:
            raise ValueError(f"fastiou.demo: image {name} is {x.shape[1]}x{x.shape[0]} but its mask "
                             f"{mask_name} is {y.shape[1]}x{y.shape[0]}")
    if size is not None:
        return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.uint8)
    return xs, ys


def load_image_mask_pairs(images, masks, size=None):
    """Images and masks from two folders of PNG/TIFF files (paired by sorted
    file name) or two multi-page TIFF stacks.

    With `size`: arrays, images (N, size, size, C) float32 in [0, 1] (C = 1,
    or 3 if any image is in colour) and masks (N, size, size, 1) uint8, 1
    where the mask is non-zero, resized. Without: lists of such arrays at
    native resolution, (H, W, C) and (H, W, 1), each mask the size of its image.
    """
    return pairs_as_arrays(*read_pairs(images, masks), size)


def _take(a, indices):
    return a[indices] if isinstance(a, np.ndarray) else [a[i] for i in indices]


def split(x, y, validation=0.2, seed=0):
    """A fixed random held-out split (of arrays or lists)."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(round(len(x) * validation)))
    val, train = order[:n_val], order[n_val:]
    return (_take(x, train), _take(y, train)), (_take(x, val), _take(y, val))


def foreground_share(masks):
    """Share of foreground pixels over all masks (an array or a list of arrays)."""
    if isinstance(masks, np.ndarray):
        return float(masks.mean())
    return float(sum(float(m.sum()) for m in masks) / sum(m.size for m in masks))


# --- Training batches -------------------------------------------------------------

def dihedral(a, k):
    """One of the 8 symmetries of the square on the first two axes of `a`:
    k % 4 quarter turns, then a left-right flip if k >= 4."""
    a = np.rot90(a, k % 4, axes=(0, 1))
    return a[:, ::-1] if k >= 4 else a


class BatchStream:
    """The training batches, the same for every loss given the same seed.

    Images are drawn in rounds: every image once per round, in a new random
    order each round, so every image is seen equally often whatever the
    budget. From each drawn image a random `size` x `size` window is cut at
    native resolution (the whole image when it is `size` x `size`), then,
    with `augment`, turned by a random symmetry of the square (flips and
    quarter turns). Images may differ in size; none may be smaller than `size`.
    """

    def __init__(self, images, masks, size, seed, augment=True):
        for x in images:
            if x.shape[0] < size or x.shape[1] < size:
                raise ValueError(f"fastiou.demo: an image of {x.shape[1]}x{x.shape[0]} is smaller than the "
                                 f"{size}x{size} training window")
        self.images, self.masks, self.size, self.augment = images, masks, size, augment
        self.rng = np.random.default_rng(seed)
        self.queue = np.empty(0, np.int64)

    def take(self, count):
        """The next `count` windows: x (count, size, size, C) float32, y (count, size, size, 1) uint8."""
        while len(self.queue) < count:
            self.queue = np.concatenate([self.queue, self.rng.permutation(len(self.images))])
        drawn, self.queue = self.queue[:count], self.queue[count:]
        s = self.size
        x = np.empty((count, s, s, self.images[0].shape[-1]), np.float32)
        y = np.empty((count, s, s, 1), np.uint8)
        for k, i in enumerate(drawn):
            image, mask = self.images[i], self.masks[i]
            r = int(self.rng.integers(0, image.shape[0] - s + 1))
            c = int(self.rng.integers(0, image.shape[1] - s + 1))
            turn = int(self.rng.integers(0, 8)) if self.augment else 0
            x[k] = dihedral(image[r:r + s, c:c + s], turn)
            y[k] = dihedral(mask[r:r + s, c:c + s], turn)
        return x, y


def checkpoint_steps(steps, epochs):
    """The optimizer steps between validation checkpoints: `epochs` parts
    (fewer if steps < epochs) that add up to `steps`."""
    epochs = max(1, min(epochs, steps))
    return [steps // epochs + (1 if k < steps % epochs else 0) for k in range(epochs)]


# --- Prediction at native resolution -------------------------------------------------

def _tile_starts(length, tile):
    """Starts of tiles of `tile` covering [0, length), all multiples of ALIGN
    (length and tile are): the last tile ends at length."""
    if tile >= length:
        return [0]
    return list(range(0, length - tile, tile)) + [length - tile]


def predict_tiled(model, image, tile=256, margin=TILE_MARGIN, batch_size=8):
    """The model's output (H, W, 1) for one image (H, W, C) of any size,
    predicted in overlapping tiles so memory stays bounded.

    The image is padded (reflected) to a multiple of ALIGN on the bottom and
    right, as a whole-image prediction would need. Each `tile` x `tile`
    output tile is predicted from a window that reaches `margin` pixels
    further on every side (less at the image's edge, where the whole-image
    prediction's own padding applies), its offset a multiple of ALIGN: with a
    margin of at least the U-Net's receptive radius, the tiles give the
    whole-image prediction.
    """
    h, w = image.shape[:2]
    H, W = -(-h // ALIGN) * ALIGN, -(-w // ALIGN) * ALIGN
    padded = np.pad(image, ((0, H - h), (0, W - w), (0, 0)), mode="symmetric")
    tile = max(ALIGN, tile // ALIGN * ALIGN)
    th, tw = min(tile, H), min(tile, W)
    out = np.empty((H, W, 1), np.float32)
    jobs = {}  # window shape -> [(window, (r, c), (r0, c0))]
    for r in _tile_starts(H, th):
        for c in _tile_starts(W, tw):
            r0, c0 = max(0, r - margin), max(0, c - margin)
            r1, c1 = min(H, r + th + margin), min(W, c + tw + margin)
            jobs.setdefault((r1 - r0, c1 - c0), []).append((padded[r0:r1, c0:c1], (r, c), (r0, c0)))
    for group in jobs.values():
        for k in range(0, len(group), batch_size):
            part = group[k:k + batch_size]
            pred = np.asarray(model.predict_on_batch(np.stack([p[0] for p in part])))
            for p, (_, (r, c), (r0, c0)) in zip(pred, part):
                out[r:r + th, c:c + tw] = p[r - r0:r - r0 + th, c - c0:c - c0 + tw]
    return out[:h, :w]


def predict_probabilities(model, images, tile, batch_size):
    """Foreground probabilities (the sigmoid of the model's logits) for an
    array of equal images (whole, in batches; an array back) or a list of
    images at native resolution (each in tiles; a list back)."""
    if isinstance(images, np.ndarray) and max(images.shape[1:3]) <= tile and not images.shape[1] % ALIGN \
            and not images.shape[2] % ALIGN:
        logits = np.concatenate([np.asarray(model.predict_on_batch(images[k:k + batch_size]))
                                 for k in range(0, len(images), batch_size)])
        return 1.0 / (1.0 + np.exp(-logits))
    return [1.0 / (1.0 + np.exp(-predict_tiled(model, x, tile, batch_size=batch_size))) for x in images]


# --- Model and losses -----------------------------------------------------------

def small_unet(size, channels, filters=(16, 32, 64), foreground=0.05):
    """A three-level U-Net with batch normalization and logits out.

    The output bias starts at the logit of the expected foreground share, so
    training starts from "rare foreground" rather than from p = 0.5 everywhere,
    which keeps the first steps of every loss from swinging the whole mask
    from all-foreground to all-background.
    """
    import keras
    from keras import layers

    def block(x, f):
        for _ in range(2):
            x = layers.Conv2D(f, 3, padding="same", use_bias=False, kernel_initializer="he_normal")(x)
            x = layers.BatchNormalization(momentum=0.9)(x)  # few steps: moving stats must keep up
            x = layers.Activation("relu")(x)
        return x

    inputs = keras.Input((size, size, channels))
    x, skips = inputs, []
    for f in filters[:-1]:
        x = block(x, f)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = block(x, filters[-1])
    for f, skip in zip(reversed(filters[:-1]), reversed(skips)):
        x = layers.Conv2DTranspose(f, 2, strides=2, padding="same")(x)
        x = block(layers.Concatenate()([x, skip]), f)
    prior = keras.initializers.Constant(float(np.log(foreground / (1.0 - foreground))))
    outputs = layers.Conv2D(1, 1, bias_initializer=prior, name="logits")(x)
    return keras.Model(inputs, outputs, name="unet")


def make_loss(name):
    import keras

    import fastiou

    if name == "bce":
        return keras.losses.BinaryCrossentropy(from_logits=True)
    if name == "jaccard":
        return fastiou.losses.JaccardLoss(from_logits=True)
    if name == "bce+jaccard":
        bce = keras.losses.BinaryCrossentropy(from_logits=True)
        jaccard = fastiou.losses.JaccardLoss(from_logits=True)

        def bce_jaccard(y_true, y_pred):
            return bce(y_true, y_pred) + jaccard(y_true, y_pred)

        return bce_jaccard
    raise ValueError(f"fastiou.demo: unknown loss {name!r}; choose from {LOSSES}")


# --- Metrics ----------------------------------------------------------------------

def _flat(a):
    return a.ravel() if isinstance(a, np.ndarray) else np.concatenate([m.ravel() for m in a])


def _foreground_overlap(masks, probabilities):
    """The foreground of the masks and the predictions at probability 0.5,
    flattened, and their intersection and union in pixels."""
    t, p = _flat(masks).astype(bool), _flat(probabilities) >= 0.5
    return t, p, np.logical_and(t, p).sum(), np.logical_or(t, p).sum()


def _iou(inter, union):
    return float(inter / union) if union else 1.0


def foreground_iou(masks, probabilities):
    """IoU of the foreground at probability 0.5 over all pixels of all images."""
    return _iou(*_foreground_overlap(masks, probabilities)[2:])


def evaluate(masks, probabilities):
    """Pixel accuracy, foreground IoU and Dice at 0.5 over all pixels, and
    Keras' MeanIoU fed the probabilities as they are versus thresholded
    predictions. masks and probabilities: arrays, or lists of per-image arrays."""
    import keras

    t, p, inter, union = _foreground_overlap(masks, probabilities)
    probabilities = _flat(probabilities)
    total = t.sum() + p.sum()
    raw = keras.metrics.MeanIoU(num_classes=2)
    raw.update_state(t.astype(np.int32), probabilities)  # the common misuse
    thresholded = keras.metrics.MeanIoU(num_classes=2)
    thresholded.update_state(t.astype(np.int32), p.astype(np.int32))
    return {
        "pixel_accuracy": float((t == p).mean()),
        "val_iou": _iou(inter, union),
        "val_dice": float(2 * inter / total) if total else 1.0,
        "keras_meaniou_sigmoid": float(raw.result()),
        "meaniou_thresholded": float(thresholded.result()),
    }


def summarize(runs):
    """One loss's results over its seeds: the mean of every metric, their
    sample standard deviation ("std", 0 for one seed), the best checkpoint of
    each run ("best_epoch", a list, one per seed) and the runs themselves."""
    out = {k: float(np.mean([r[k] for r in runs])) for k in METRICS}
    out["std"] = {k: float(np.std([r[k] for r in runs], ddof=1)) if len(runs) > 1 else 0.0 for k in METRICS}
    out["best_epoch"] = [r["best_epoch"] for r in runs]
    out["runs"] = runs
    return out


def format_table(results, foreground_share):
    cols = [("pixel acc", "pixel_accuracy"), ("IoU fg@0.5", "val_iou"), ("Dice fg@0.5", "val_dice"),
            ("MeanIoU(thresholded)", "meaniou_thresholded")]
    several = any(len(r["runs"]) > 1 for r in results.values())

    def cell(r, key):
        return f"{r[key]:.3f}" + (f"±{r['std'][key]:.3f}" if several else "")

    cells = {name: [cell(r, k) for _, k in cols] + [",".join(map(str, r["best_epoch"]))]
             for name, r in results.items()}
    heads = [c for c, _ in cols] + ["best epoch"]
    widths = [max(len(h), *(len(v[j]) for v in cells.values())) + 3 for j, h in enumerate(heads)]
    width = max(len(k) for k in results) + 2
    head = f"{'loss':<{width}}" + "".join(f"{h:>{w}}" for h, w in zip(heads, widths))
    lines = [head, "-" * len(head)]
    for name, row in cells.items():
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{w}}" for v, w in zip(row, widths)))
    if several:
        lines.append(f"(mean ± standard deviation over {len(next(iter(results.values()))['runs'])} seeds)")
    lines.append(f"(validation foreground share {foreground_share:.3f}: predicting all background "
                 f"scores pixel accuracy {1 - foreground_share:.3f} and IoU 0)")
    trap = ", ".join(f"{name} {r['keras_meaniou_sigmoid']:.3f}" for name, r in results.items())
    lines.append(f"(Keras' MeanIoU fed the sigmoid outputs reads {trap}: it casts every probability below "
                 f"1.0 to background, so it sits near (1 - {foreground_share:.3f}) / 2 = "
                 f"{(1 - foreground_share) / 2:.3f} whatever the model learned; threshold first, or use "
                 "fastiou.metrics.BinaryIoU, and fastiou.metrics.MeanIoU refuses probabilities)")
    return "\n".join(lines)


# --- Training and the picture ----------------------------------------------------

def _checkpoint_progress(checkpoints):
    """Keras' progress bar, headed "Epoch k/checkpoints" although each
    checkpoint is a fit() of its own."""
    import keras

    class CheckpointProgress(keras.callbacks.ProgbarLogger):
        def set_params(self, params):
            super().set_params(params)
            self.epochs = checkpoints

    return CheckpointProgress()


def train(name, data, *, size, steps, epochs, batch_size, seed, augment=True, tile=256, verbose=0):
    """Train one U-Net with loss `name` for `steps` optimizer steps, checked on
    the validation images after each of `epochs` parts; keep the best
    checkpoint's weights (the earliest on a tie).

    Returns the validation IoU per checkpoint, the steps taken before each,
    the best checkpoint (1-based) and its predicted probabilities, the
    seconds spent (training and checkpoints), the optimizer's step count and
    the model at its best weights.
    """
    import keras

    import fastiou

    (x_train, y_train), (x_val, y_val) = data
    keras.utils.set_random_seed(seed)  # the same initial weights for every loss
    share = float(np.clip(foreground_share(y_train), 1e-3, 0.5))
    model = small_unet(None, x_train[0].shape[-1], foreground=share)
    iou = fastiou.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, from_logits=True, name="iou")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss(name), metrics=[iou])
    stream = BatchStream(x_train, y_train, size, seed, augment)  # the same batches for every loss
    plan = checkpoint_steps(steps, epochs)
    progress = _checkpoint_progress(len(plan))
    val_iou, best = [], None
    start = time.perf_counter()
    for epoch, n in enumerate(plan):
        x, y = stream.take(n * batch_size)
        model.fit(x, y, batch_size=batch_size, epochs=epoch + 1, initial_epoch=epoch, shuffle=False,
                  verbose=verbose, callbacks=[progress])
        probabilities = predict_probabilities(model, x_val, tile, batch_size)
        val_iou.append(foreground_iou(y_val, probabilities))
        improved = best is None or val_iou[-1] > best["val_iou"]
        if improved:
            best = {"val_iou": val_iou[-1], "epoch": epoch + 1, "weights": model.get_weights(),
                    "probabilities": probabilities}
        if verbose:
            print(f"checkpoint {epoch + 1}/{len(plan)} ({int(model.optimizer.iterations)} steps): "
                  f"validation IoU {val_iou[-1]:.3f}" + (" (best so far)" if improved else ""), flush=True)
    seconds = time.perf_counter() - start
    model.set_weights(best["weights"])
    return {"val_iou_per_epoch": val_iou, "steps_per_epoch": plan, "best_epoch": best["epoch"],
            "probabilities": best["probabilities"], "seconds": seconds,
            "steps": int(model.optimizer.iterations), "model": model}


def save_figure(path, x_val, y_val, runs, rows=4):
    """Validation images (most foreground first), their masks and each loss's
    predicted probabilities, and the validation IoU per checkpoint (mean over
    seeds, with the range when there are several). runs: loss -> list of
    train() results, one per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    cols = 2 + len(names)
    rows = min(rows, len(x_val))
    order = np.argsort([-float(m.sum()) for m in y_val])[:rows]
    fig = plt.figure(figsize=(2.2 * cols, 2.2 * rows + 2.8))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1] * rows + [1.4])
    for r, k in enumerate(order):
        image = x_val[k]
        panels = [("image", image[..., 0] if image.shape[-1] == 1 else image, "gray"),
                  ("mask", y_val[k][..., 0], "gray")]
        for name in names:
            p = runs[name][0]["probabilities"][k][..., 0]
            t = y_val[k][..., 0].astype(bool)
            iou = (np.logical_and(p >= 0.5, t).sum() / max(1, np.logical_or(p >= 0.5, t).sum()))
            panels.append((f"{name} (IoU {iou:.2f})", p, "magma"))
        for c, (title, img, cmap) in enumerate(panels):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
    ax = fig.add_subplot(grid[rows, :])
    for name in names:
        curves = np.array([run["val_iou_per_epoch"] for run in runs[name]])
        steps = np.cumsum(runs[name][0]["steps_per_epoch"])
        line, = ax.plot(steps, curves.mean(0), marker="o", label=name)
        if len(curves) > 1:
            ax.fill_between(steps, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("optimizer steps (validation checkpoints)")
    ax.set_ylabel("validation foreground IoU")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _describe_sizes(images):
    sizes = sorted({f"{x.shape[1]}x{x.shape[0]}" for x in images})
    return sizes if len(sizes) <= 5 else sizes[:5] + [f"... ({len(sizes)} sizes)"]


def load_data(args):
    """The data set and how it is used: (x, y, data description). x and y are
    arrays of equal images, or lists of images at native resolution when the
    images are larger than --size on both sides (training crops, tiled
    validation)."""
    if not args.images:
        x, y = synthetic_dataset(args.samples, args.size, seed=args.seed)
        return x, y, {"source": f"{len(x)} synthetic images (seed {args.seed})", "mode": "synthetic"}
    frames = read_pairs(args.images, args.masks)
    x, y = pairs_as_arrays(*frames)
    source = f"{len(x)} images from {args.images}"
    smallest = min(min(a.shape[:2]) for a in x)
    info = {"source": source, "native_sizes": _describe_sizes(x)}
    if args.resize or smallest < args.size:
        x, y = pairs_as_arrays(*frames, args.size)
        why = "--resize" if args.resize else f"an image is smaller than --size {args.size}"
        return x, y, dict(info, mode="resized", why=why)
    if all(a.shape[:2] == (args.size, args.size) for a in x):
        return np.stack(x), np.stack(y), dict(info, mode="whole images")
    return x, y, dict(info, mode="native resolution")


def run(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if args.write_membranes:
        x, y = membrane_dataset(args.samples if args.samples_given else 30, 512, seed=args.seed)
        write_pairs(args.write_membranes, x, y)
        print(f"wrote {len(x)} images of 512x512 ({y.mean():.1%} membranes) to {args.write_membranes}/images "
              f"and their masks to {args.write_membranes}/masks")
        return None
    if args.size % ALIGN:
        raise SystemExit(f"fastiou.demo: --size must be a multiple of {ALIGN} (the U-Net halves it twice), "
                         f"got {args.size}")
    if (args.images is None) != (args.masks is None):
        raise SystemExit("fastiou.demo: give both --images and --masks, or neither")
    for flag in ("steps", "epochs", "batch_size", "seeds", "tile"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"fastiou.demo: --{flag.replace('_', '-')} must be at least 1")
    x, y, info = load_data(args)
    data = split(x, y, seed=args.seed)
    (x_train, y_train), (x_val, y_val) = data
    if len(x_train) == 0:
        raise SystemExit(f"fastiou.demo: {len(x)} image(s) leave none for training after the held-out split")
    share = foreground_share(y_val)
    seeds = [args.seed + k for k in range(args.seeds)]
    plan = checkpoint_steps(args.steps, args.epochs)
    mode = info["mode"]
    if mode == "native resolution":
        how = (f"native resolution ({', '.join(info['native_sizes'])}): random {args.size}x{args.size} crops "
               f"for training, validation in {args.tile}x{args.tile} tiles")
    elif mode == "resized":
        how = f"resized to {args.size}x{args.size} ({info['why']})"
    else:
        how = f"{args.size}x{args.size}" + (", whole images" if mode == "whole images" else "")
    print(f"fastiou demo: {info['source']}, {how}, foreground {foreground_share(y):.1%}; "
          f"{len(x_train)} for training, {len(x_val)} held out")
    print(f"budget: {args.steps} optimizer steps of {args.batch_size} per loss"
          + (" (random flips and quarter turns)" if not args.no_augment else "")
          + f", validated at {len(plan)} checkpoints; "
          + (f"seeds {seeds[0]} to {seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}"))
    names = LOSSES if args.loss == "all" else (args.loss,)
    verbose = args.verbose if args.verbose is not None else ("auto" if sys.stdout.isatty() else 2)
    runs, results = {}, {}
    for name in names:
        runs[name], per_seed = [], []
        for seed in seeds:
            print(f"\n== {name}" + (f", seed {seed}" if len(seeds) > 1 else "") + " ==", flush=True)
            r = train(name, data, size=args.size, steps=args.steps, epochs=args.epochs,
                      batch_size=args.batch_size, seed=seed, augment=not args.no_augment, tile=args.tile,
                      verbose=verbose)
            del r["model"]
            runs[name].append(r)
            metrics = evaluate(y_val, r["probabilities"])
            per_seed.append(dict(seed=seed, **metrics, seconds=r["seconds"], best_epoch=r["best_epoch"],
                                 steps=r["steps"], val_iou_per_epoch=r["val_iou_per_epoch"]))
        results[name] = summarize(per_seed)
    print("\nValidation set, best checkpoint of each loss, thresholds at probability 0.5:\n")
    print(format_table(results, share))
    print("time per loss (training and checkpoints): "
          + ", ".join(f"{n} {r['seconds']:.0f} s" for n, r in results.items()))
    if args.json:
        info.update(images=len(x), train=len(x_train), validation=len(x_val),
                    foreground_share=foreground_share(y), validation_foreground_share=share,
                    window=args.size, steps=args.steps, epochs=len(plan), steps_per_epoch=plan,
                    batch_size=args.batch_size, augment=not args.no_augment, tile=args.tile, seeds=seeds)
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"losses": results, "data": info}, f, indent=2)
        print(f"wrote {args.json}")
    if args.out:
        save_figure(args.out, x_val, y_val, runs)
        print(f"wrote {args.out}")
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastiou.demo", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", help="folder of PNG/TIFF images (paired with --masks by sorted name) or a "
                                    "multi-page TIFF")
    p.add_argument("--masks", help="folder of PNG/TIFF masks or a multi-page TIFF; foreground where non-zero")
    p.add_argument("--steps", type=int, default=192, help="optimizer steps per loss, however many images")
    p.add_argument("--epochs", type=int, default=8,
                   help="validation checkpoints along the steps; each loss keeps its best")
    p.add_argument("--size", type=int, default=96,
                   help="training window (multiple of 4): synthetic image size; own images larger than this "
                        "are cropped at native resolution, smaller ones resized to it")
    p.add_argument("--resize", action="store_true", help="resize own images to --size instead of cropping")
    p.add_argument("--tile", type=int, default=256, help="tile size for validation at native resolution")
    p.add_argument("--no-augment", action="store_true", help="no random flips and quarter turns")
    p.add_argument("--loss", default="all", choices=("all",) + LOSSES)
    p.add_argument("--seeds", type=int, default=1, help="runs per loss, seeds --seed, --seed + 1, ...")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--out", default="demo/fastiou-demo.png", help="PNG to write ('' for none)")
    p.add_argument("--samples", type=int, default=None,
                   help="synthetic images to make (480; 30 with --write-membranes)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="the validation split's seed and the first run's")
    p.add_argument("--verbose", type=int, default=None, help="Keras fit verbosity (default: bars on a terminal)")
    p.add_argument("--write-membranes", metavar="DIR",
                   help="write a membrane-like stand-in for a small microscopy set (PNG images and masks) "
                        "to DIR and exit")
    args = p.parse_args(argv)
    args.samples_given = args.samples is not None
    if args.samples is None:
        args.samples = 480
    return args


def main(argv=None):
    return run(parse_args(argv))


if __name__ == "__main__":
    main()

"""Train a small U-Net on imbalanced binary masks with three losses and compare.

    python -m fastiou.demo                                  # built-in synthetic data
    python -m fastiou.demo --images imgs/ --masks masks/    # your own data
    python -m fastiou.demo --help

The built-in data set is made at run time: shapes of several sizes on
textured, noisy backgrounds, about 5% foreground, with a held-out validation
split and fixed seeds. The same U-Net (same initial weights) is trained with
binary cross-entropy, fastiou's JaccardLoss and BCE + Jaccard; the script then
prints, per loss, the pixel accuracy, the foreground IoU and Dice at
threshold 0.5, and Keras' MeanIoU fed sigmoid outputs next to the MeanIoU of
thresholded predictions, and writes a PNG of predictions and of the
validation IoU per epoch.

Why Keras' MeanIoU stays flat on sigmoid outputs: MeanIoU takes class
indices. Given probabilities it casts them to integers, which truncates every
value below 1 to class 0: the model is scored as predicting background
everywhere, whatever it learned, and MeanIoU sits at about
(background IoU + 0) / 2 = (1 - foreground share) / 2. Only probabilities that
round to exactly 1.0 in float32 (logits above about 17, which overlap losses
tend to produce) count as foreground, so it can move a little for them, for
the wrong reason. Threshold first (or use keras.metrics.BinaryIoU) to measure
the model.
"""

import argparse
import os
import sys
import time

import numpy as np

LOSSES = ("bce", "jaccard", "bce+jaccard")


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
    from PIL import Image

    if is_mask:
        a = np.asarray(im.convert("F") if im.mode not in ("L", "1", "P") else im.convert("L"))
        a = np.asarray(Image.fromarray((a != 0).astype(np.uint8)).resize((size, size), Image.NEAREST))
        return a[..., None]
    if im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA"):
        a = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255.0
        return a
    a = np.asarray(im.convert("F").resize((size, size), Image.BILINEAR), np.float32)
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a))[..., None]


def load_image_mask_pairs(images, masks, size):
    """Images and masks from two folders of PNG/TIFF files (paired by sorted
    file name) or two multi-page TIFF stacks, resized to size x size.

    Returns images (N, size, size, C) float32 in [0, 1] (C = 1, or 3 if any
    image is in colour) and masks (N, size, size, 1) uint8, foreground where
    the mask is non-zero.
    """
    image_frames = list(_frames(images))
    mask_frames = list(_frames(masks))
    if len(image_frames) != len(mask_frames):
        raise ValueError(f"fastiou.demo: {len(image_frames)} images but {len(mask_frames)} masks")
    arrays = [_as_array(im, size, False) for _, im in image_frames]
    channels = max(a.shape[-1] for a in arrays)
    arrays = [np.repeat(a, channels, -1) if a.shape[-1] != channels else a for a in arrays]
    x = np.stack(arrays).astype(np.float32)
    y = np.stack([_as_array(m, size, True) for _, m in mask_frames]).astype(np.uint8)
    return x, y


def split(x, y, validation=0.2, seed=0):
    """A fixed random held-out split."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(round(len(x) * validation)))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


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

def evaluate(masks, probabilities):
    """Pixel accuracy, foreground IoU and Dice at 0.5, and Keras' MeanIoU fed
    the probabilities as they are versus thresholded predictions."""
    import keras

    t = masks.astype(bool)
    p = probabilities >= 0.5
    inter = np.logical_and(t, p).sum()
    union = np.logical_or(t, p).sum()
    total = t.sum() + p.sum()
    raw = keras.metrics.MeanIoU(num_classes=2)
    raw.update_state(masks.astype(np.int32), probabilities)  # the common misuse
    thresholded = keras.metrics.MeanIoU(num_classes=2)
    thresholded.update_state(masks.astype(np.int32), p.astype(np.int32))
    return {
        "pixel_accuracy": float((t == p).mean()),
        "iou": float(inter / union) if union else 1.0,
        "dice": float(2 * inter / total) if total else 1.0,
        "keras_meaniou_sigmoid": float(raw.result()),
        "meaniou_thresholded": float(thresholded.result()),
    }


def format_table(results, foreground_share):
    cols = [("pixel acc", "pixel_accuracy"), ("IoU fg@0.5", "iou"), ("Dice fg@0.5", "dice"),
            ("Keras MeanIoU(sigmoid)", "keras_meaniou_sigmoid"),
            ("MeanIoU(thresholded)", "meaniou_thresholded")]
    width = max(len(k) for k in results) + 2
    head = f"{'loss':<{width}}" + "".join(f"{c:>{len(c) + 3}}" for c, _ in cols)
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(f"{name:<{width}}" + "".join(f"{r[k]:>{len(c) + 3}.3f}" for c, k in cols))
    lines.append(f"(validation foreground share {foreground_share:.3f}: predicting all background "
                 f"scores pixel accuracy {1 - foreground_share:.3f} and IoU 0)")
    return "\n".join(lines)


# --- Training and the picture ----------------------------------------------------

def train(name, data, size, channels, epochs, batch_size, seed, verbose):
    import keras

    (x_train, y_train), (x_val, y_val) = data
    keras.utils.set_random_seed(seed)  # the same initial weights for every loss
    share = float(np.clip(y_train.mean(), 1e-3, 0.5))
    model = small_unet(size, channels, foreground=share)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss(name),
                  metrics=[keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.0, name="iou")])
    start = time.perf_counter()
    history = model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=epochs,
                        batch_size=batch_size, shuffle=True, verbose=verbose)
    seconds = time.perf_counter() - start
    logits = model.predict(x_val, batch_size=batch_size, verbose=0)
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    return {"history": history.history, "probabilities": probabilities, "seconds": seconds}


def save_figure(path, x_val, y_val, runs, rows=4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    cols = 2 + len(names)
    rows = min(rows, len(x_val))
    # Validation images with the most foreground first: they show the most.
    order = np.argsort(-y_val.reshape(len(y_val), -1).sum(1))[:rows]
    fig = plt.figure(figsize=(2.2 * cols, 2.2 * rows + 2.8))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1] * rows + [1.4])
    for r, k in enumerate(order):
        image = x_val[k]
        panels = [("image", image[..., 0] if image.shape[-1] == 1 else image, "gray"),
                  ("mask", y_val[k, ..., 0], "gray")]
        for name in names:
            p = runs[name]["probabilities"][k, ..., 0]
            t = y_val[k, ..., 0].astype(bool)
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
        iou = runs[name]["history"].get("val_iou", [])
        ax.plot(np.arange(1, len(iou) + 1), iou, marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation foreground IoU")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if args.size % 4:
        raise SystemExit(f"fastiou.demo: --size must be a multiple of 4 (the U-Net halves it twice), got {args.size}")
    if (args.images is None) != (args.masks is None):
        raise SystemExit("fastiou.demo: give both --images and --masks, or neither")
    if args.images:
        x, y = load_image_mask_pairs(args.images, args.masks, args.size)
        source = f"{len(x)} images from {args.images}"
    else:
        x, y = synthetic_dataset(args.samples, args.size, seed=args.seed)
        source = f"{len(x)} synthetic images (seed {args.seed})"
    data = split(x, y, seed=args.seed)
    (x_train, _), (x_val, y_val) = data
    share = float(y_val.mean())
    print(f"fastiou demo: {source}, {args.size}x{args.size}, foreground {y.mean():.1%}; "
          f"{len(x_train)} for training, {len(x_val)} held out")
    names = LOSSES if args.loss == "all" else (args.loss,)
    verbose = args.verbose if args.verbose is not None else ("auto" if sys.stdout.isatty() else 2)
    runs, results = {}, {}
    for name in names:
        print(f"\n== {name} ==")
        runs[name] = train(name, data, args.size, x.shape[-1], args.epochs, args.batch_size, args.seed,
                           verbose)
        results[name] = evaluate(y_val, runs[name]["probabilities"])
        results[name]["seconds"] = runs[name]["seconds"]
    print("\nValidation set, thresholds at probability 0.5:\n")
    print(format_table(results, share))
    print("\nKeras' MeanIoU given sigmoid outputs casts them to integers: every probability below 1.0 "
          f"becomes background, so it sits near (1 - {share:.3f}) / 2 = {(1 - share) / 2:.3f} whatever the "
          "model learned, unless probabilities saturate to exactly 1.0. Threshold first.")
    print("training time: " + ", ".join(f"{n} {r['seconds']:.0f} s" for n, r in results.items()))
    if args.out:
        save_figure(args.out, x_val, y_val, runs)
        print(f"wrote {args.out}")
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastiou.demo", description=__doc__.split("\n")[0])
    p.add_argument("--images", help="folder of PNG/TIFF images (paired with --masks by sorted name) or a multi-page TIFF")
    p.add_argument("--masks", help="folder of PNG/TIFF masks or a multi-page TIFF; foreground where non-zero")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--size", type=int, default=96, help="images are resized to size x size (multiple of 4)")
    p.add_argument("--loss", default="all", choices=("all",) + LOSSES)
    p.add_argument("--out", default="demo/fastiou-demo.png", help="PNG to write ('' for none)")
    p.add_argument("--samples", type=int, default=480, help="synthetic images to make")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=None, help="Keras fit verbosity (default: bars on a terminal)")
    return p.parse_args(argv)


def main(argv=None):
    return run(parse_args(argv))


if __name__ == "__main__":
    main()

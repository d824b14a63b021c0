"""Runs fastiou.jax over several forced host devices in a fresh process (the
device count must be set before JAX starts) and writes what it computed for
test_jax_sharding.py, which checks it.

    python sharding_worker.py partition N OUT   # sharded jax.jit vs one device: arrays, HLO, shardings
    python sharding_worker.py keras N OUT       # Keras on JAX: DataParallel model.fit vs one device
    python sharding_worker.py confusion N OUT   # fastiou.metrics' counts, sharded vs one device

OUT receives result.json, arrays.npz and (partition) one HLO text per case.
"""

import json
import os
import sys

DEVICES = int(sys.argv[2])
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={DEVICES}").strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from cases import MODE, mode_case  # noqa: E402

# (B, H, W): splits evenly over 2 or 4 devices along the batch and the rows.
BATCH_SHAPE = (8, 16, 12)
# name: (mode of cases.py, per-pixel weights, float targets)
PARTITION_CASES = {
    "binary-logits": ("binary-logits", False, False),
    "multiclass-sparse": ("multiclass-sparse", False, False),
    "multiclass-one-hot": ("multiclass-one-hot", False, False),
    "multilabel-weighted": ("multilabel-logits", True, True),
}
OUTPUTS = ("I", "P", "T", "d_sums", "loss", "d_loss", "d_sums_true")


def layouts():
    """name: (mesh, y_pred's partition spec)."""
    devices = np.array(jax.devices())
    line = Mesh(devices, ("d",))
    out = {"batch": (line, P("d")), "rows": (line, P(None, "d")),
           "channels": (line, P(None, None, None, "d"))}
    if DEVICES == 4:
        out["batch-rows"] = (Mesh(devices.reshape(2, 2), ("a", "b")), P("a", "b"))
    return out


def step_fn(mode, per_image, weighted, float_true):
    """The OUTPUTS: I, P, T, their vjp for cotangents g (wrt y_pred, and wrt
    float targets, else 0), the mean Jaccard loss and its gradient."""
    kernel = mode.kernel_options()
    loss_opts = mode.loss_options()

    def step(z, t, w, g_i, g_p, g_t):
        w = w if weighted else None

        def sums(z, t):
            return fj.overlap_stats(t, z, w, per_image=per_image, **kernel)

        if float_true:
            (I, P_, T), vjp = jax.vjp(sums, z, t)
            d_sums, d_true = vjp((g_i, g_p, g_t))
        else:
            (I, P_, T), vjp = jax.vjp(lambda z: sums(z, t), z)
            (d_sums,), d_true = vjp((g_i, g_p, g_t)), jnp.zeros(())
        loss, d_loss = jax.value_and_grad(
            lambda z: jnp.mean(fj.jaccard_loss(t, z, per_image=per_image, weights=w, **loss_opts)))(z)
        return I, P_, T, d_sums, loss, d_loss, d_true

    return step


def partition(out_dir):
    rng = np.random.default_rng(22)
    arrays, result = {}, {"devices": jax.device_count(), "cases": {}}
    for name, (mode_name, weighted, float_true) in PARTITION_CASES.items():
        mode = MODE[mode_name]
        t, z = mode_case(rng, mode, BATCH_SHAPE, true_dtype="float32" if float_true else "uint8")
        w = rng.random(BATCH_SHAPE + (1,)).astype(np.float32) if weighted else np.zeros(1, np.float32)
        arrays[f"{name}/t"], arrays[f"{name}/z"], arrays[f"{name}/w"] = t, z, w
        for per_image in (False, True):
            sums_shape = (BATCH_SHAPE[0], mode.channels) if per_image else (mode.channels,)
            g = [rng.normal(size=sums_shape).astype(np.float32) for _ in range(3)]
            key = f"{name}/{per_image}"
            arrays.update({f"{key}/g{i}": gi for i, gi in enumerate(g)})
            step = step_fn(mode, per_image, weighted, float_true)
            single = jax.jit(step)(z, t, w, *g)  # numpy inputs: one device
            arrays.update({f"{key}/single/{o}": np.asarray(v) for o, v in zip(OUTPUTS, single)})
            for layout, (mesh, spec) in layouts().items():
                if layout == "channels" and mode.channels % DEVICES:
                    continue
                zs = jax.device_put(z, NamedSharding(mesh, spec))
                pixels = P(*tuple(spec)[:z.ndim - 1])  # spec without the channel axis
                ts = jax.device_put(t, NamedSharding(mesh, spec if t.shape == z.shape else pixels))
                ws = jax.device_put(w, NamedSharding(mesh, pixels if weighted else P()))
                compiled = jax.jit(step).lower(zs, ts, ws, *g).compile()
                got = compiled(zs, ts, ws, *g)
                arrays.update({f"{key}/{layout}/{o}": np.asarray(v) for o, v in zip(OUTPUTS, got)})
                hlo_file = f"{name}-{per_image}-{layout}.hlo.txt"
                with open(os.path.join(out_dir, hlo_file), "w") as f:
                    f.write(compiled.as_text())
                grads = [got[3], got[5]] + ([got[6]] if float_true else [])
                result["cases"][f"{key}/{layout}"] = {
                    "mode": mode_name, "weighted": weighted, "float_true": float_true, "hlo": hlo_file,
                    "local_pixels": int(np.prod(zs.addressable_shards[0].data.shape[:-1])),
                    "input_sharding": str(zs.sharding.spec),
                    "grad_shardings": [str(v.sharding.spec) for v in grads],
                    "grads_keep_sharding": [bool(v.sharding.is_equivalent_to(zs.sharding, z.ndim))
                                            for v in grads],
                }
    uneven(rng, arrays)
    np.savez(os.path.join(out_dir, "arrays.npz"), **arrays)
    return result


def uneven(rng, arrays):
    """A batch of 2N - 1 images split over N devices inside jax.jit (arrays
    passed in must split evenly; intermediate ones need not)."""
    mode = MODE["binary-logits"]
    t, z = mode_case(rng, mode, (2 * DEVICES - 1,) + BATCH_SHAPE[1:])
    split = NamedSharding(Mesh(np.array(jax.devices()), ("d",)), P("d"))
    arrays["uneven/t"], arrays["uneven/z"] = t, z
    for per_image in (False, True):
        def loss(z, t, constrain):
            z = jax.lax.with_sharding_constraint(z, split) if constrain else z
            return jnp.mean(fj.jaccard_loss(t, z, per_image=per_image, **mode.loss_options()))

        for constrain in (True, False):
            value, grad = jax.jit(jax.value_and_grad(lambda z, t: loss(z, t, constrain)))(z, t)
            arrays[f"uneven/{per_image}/{'split' if constrain else 'single'}"] = np.asarray(value)
            arrays[f"uneven/{per_image}/{'split' if constrain else 'single'}/grad"] = np.asarray(grad)


# --- fastiou.metrics' fused confusion counts over several devices.

COUNTS_CASES = {
    # name: (num_classes, pred_rule, weighted)
    "threshold": (2, "threshold", False),
    "threshold-weighted": (2, "threshold", True),
    "class-index-weighted": (5, "index", True),
}


def confusion(out_dir):
    """Counts of sharded batches inside jax.jit against one device's."""
    from fastiou import metrics as fm

    rng = np.random.default_rng(5)
    arrays, result = {}, {"devices": jax.device_count(), "cases": {}}
    for name, (k, rule, weighted) in COUNTS_CASES.items():
        t = rng.integers(0, k, BATCH_SHAPE + (1,)).astype(np.int32)
        if rule == "threshold":
            z = rng.random(BATCH_SHAPE + (1,)).astype(np.float32)
        else:
            z = rng.integers(-1, k + 1, BATCH_SHAPE + (1,)).astype(np.int32)  # some out of range
        w = rng.integers(0, 4, BATCH_SHAPE + (1,)).astype(np.float32)  # exact sums in float32

        def count(t, z, w, rule=rule, k=k, weighted=weighted):
            return fm.confusion_counts(t, z, w if weighted else None, num_classes=k, ignore_class=0,
                                       pred_rule=fm.THRESHOLD if rule == "threshold" else fm.INDEX)

        arrays[f"{name}/single"] = np.asarray(jax.jit(count)(t, z, w))
        for layout, (mesh, spec) in layouts().items():
            if layout == "channels":
                continue
            put = [jax.device_put(a, NamedSharding(mesh, spec)) for a in (t, z, w)]
            compiled = jax.jit(count).lower(*put).compile()
            arrays[f"{name}/{layout}"] = np.asarray(compiled(*put))
            hlo_file = f"counts-{name}-{layout}.hlo.txt"
            with open(os.path.join(out_dir, hlo_file), "w") as f:
                f.write(compiled.as_text())
            result["cases"][f"{name}/{layout}"] = {
                "hlo": hlo_file, "classes": k, "local_pixels": int(np.prod(put[1].addressable_shards[0].data.shape))}
    np.savez(os.path.join(out_dir, "arrays.npz"), **arrays)
    return result


# --- Keras on JAX: model.fit under DataParallel against one device.

GLOBAL_BATCH = 8
SIZE = 8


def fit_data(channels, steps=3, seed=0):
    """Images and targets whose two halves of every global batch differ in
    foreground share (binary) or in class mix (sparse labels), so that losses
    of the halves alone differ from the global batch's."""
    rng = np.random.default_rng(seed)
    n = steps * GLOBAL_BATCH
    x = rng.normal(size=(n, SIZE, SIZE, 2)).astype(np.float32)
    share = np.tile(np.repeat([0.05, 0.5], GLOBAL_BATCH // 2), steps)[:, None, None]
    if channels == 1:
        return x, (rng.random((n, SIZE, SIZE, 1)) < share[..., None]).astype(np.uint8)
    labels = np.where(rng.random((n, SIZE, SIZE)) < share, rng.integers(1, channels, (n, SIZE, SIZE)), 0)
    labels = np.where(rng.random((n, SIZE, SIZE)) < 0.1, 255, labels)  # ignored pixels
    return x, labels.astype(np.uint8)


def keras_fit(out_dir):
    import keras

    import fastiou

    cases = {
        "jaccard-binary": (1, lambda: fastiou.losses.JaccardLoss(from_logits=True)),
        "dice-sparse": (3, lambda: fastiou.losses.DiceLoss(from_logits=True, ignore_index=255)),
        "jaccard-per-image": (1, lambda: fastiou.losses.JaccardLoss(from_logits=True, per_image=True)),
    }
    # fastiou.metrics compiled with the model, and how Keras' namesake reads
    # the same logits (its BinaryIoU takes probabilities).
    metrics = {
        "jaccard-binary": (lambda: fastiou.metrics.BinaryIoU(target_class_ids=[1], from_logits=True, name="iou"),
                           lambda: keras.metrics.BinaryIoU(target_class_ids=[1], name="iou"),
                           lambda z: 1 / (1 + np.exp(-z))),
        "dice-sparse": (lambda: fastiou.metrics.MeanIoU(3, ignore_class=255, sparse_y_pred=False, name="iou"),
                        lambda: keras.metrics.MeanIoU(3, ignore_class=255, sparse_y_pred=False, name="iou"),
                        lambda z: z),
    }

    def model(channels):
        inputs = keras.Input((SIZE, SIZE, 2))
        h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Conv2D(channels, 1)(h))

    # What fastiou's partitioning saw: the mesh axes splitting y_pred's batch
    # axis, for each custom call XLA partitioned.
    from fastiou._backends import jax_sharding

    seen, seen_counts, split = [], [], jax_sharding._split

    def record(mesh, lay, pred):
        axes = split(mesh, lay, pred)
        (seen_counts if isinstance(lay, jax_sharding.CountsLayout) else seen).append(axes[0])
        return axes

    jax_sharding._split = record

    result = {"backend": keras.backend.backend(), "devices": len(keras.distribution.list_devices())}
    for name, (channels, make_loss) in cases.items():
        x, y = fit_data(channels)
        keras.utils.set_random_seed(0)
        initial = model(channels).get_weights()

        def train(distribution):
            keras.distribution.set_distribution(distribution)
            try:
                m = model(channels)
                m.set_weights(initial)
                with_metric = name in metrics
                m.compile(optimizer=keras.optimizers.SGD(0.5), loss=make_loss(),
                          metrics=[metrics[name][0]()] if with_metric else None)
                history = m.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
                evaluated = m.evaluate(x, y, batch_size=GLOBAL_BATCH, verbose=0, return_dict=True)
                return (m.get_weights(), history.history["loss"][0], history.history.get("iou", [None])[0],
                        evaluated.get("iou"))
            finally:
                keras.distribution.set_distribution(None)

        single, single_loss, single_fit_iou, single_iou = train(None)
        seen.clear()
        seen_counts.clear()
        parallel, parallel_loss, parallel_fit_iou, parallel_iou = train(keras.distribution.DataParallel(
            devices=keras.distribution.list_devices()))
        batch_split = sorted({" ".join(axes) for axes in seen})
        counts_split = sorted({" ".join(axes) for axes in seen_counts})
        if name in metrics:
            # Keras' namesake over the whole set, on one device, from the
            # predictions of the weights DataParallel trained: what the
            # parallel evaluate must give.
            z = model(channels)
            z.set_weights(parallel)
            oracle = metrics[name][1]()
            for i in range(0, len(x), GLOBAL_BATCH):
                oracle.update_state(y[i:i + GLOBAL_BATCH], metrics[name][2](np.asarray(z(x[i:i + GLOBAL_BATCH]))))
            keras_iou = float(oracle.result())
        # The first batch's loss over each half alone: what a loss that saw
        # only its devices' share would report.
        z = model(channels)
        z.set_weights(initial)
        logits = np.asarray(z(x[:GLOBAL_BATCH]))
        half = GLOBAL_BATCH // 2
        loss = make_loss()
        halves = [float(loss(y[i * half:(i + 1) * half], logits[i * half:(i + 1) * half])) for i in (0, 1)]
        result[name] = {
            "update": max(float(np.abs(w1 - w0).max()) for w1, w0 in zip(single, initial)),
            "weight_diff": max(float(np.abs(w1 - w0).max()) for w1, w0 in zip(parallel, single)),
            "single_loss": single_loss, "parallel_loss": parallel_loss,
            "whole_first_batch": float(loss(y[:GLOBAL_BATCH], logits)), "halves_first_batch": halves,
            "batch_split_in_fit": batch_split,
        }
        if name in metrics:
            result[name].update({
                "single_fit_iou": single_fit_iou, "parallel_fit_iou": parallel_fit_iou,
                "single_iou": single_iou, "parallel_iou": parallel_iou, "keras_iou": keras_iou,
                "counts_split": counts_split})
    return result


if __name__ == "__main__":
    import fastiou
    import fastiou.jax as fj

    what, out = sys.argv[1], sys.argv[3]
    result = {"partition": partition, "keras": keras_fit, "confusion": confusion}[what](out)
    result["fastiou_file"] = fastiou.__file__
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)
    print("RESULT " + json.dumps({"ok": True}))

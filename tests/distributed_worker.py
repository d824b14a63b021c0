"""Runs one tf.distribute experiment in a fresh process and prints its result
as JSON (test_distributed.py starts it: logical devices and TF_CONFIG must be
set before TensorFlow starts).

    python distributed_worker.py mirrored      # 2 logical CPUs: model.fit, single device vs MirroredStrategy
    python distributed_worker.py multiworker   # one worker of a 2-worker cluster (TF_CONFIG set by the caller)
    python distributed_worker.py metrics       # 2 logical CPUs: fastiou.metrics in evaluate, single vs mirrored
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

GLOBAL_BATCH = 8
SIZE = 16


def data(steps=3, seed=0):
    """Images and masks whose two halves of every global batch differ in
    foreground: the first half nearly empty, the second crowded."""
    rng = np.random.default_rng(seed)
    n = steps * GLOBAL_BATCH
    x = rng.normal(size=(n, SIZE, SIZE, 1)).astype(np.float32)
    share = np.tile(np.repeat([0.02, 0.4], GLOBAL_BATCH // 2), steps)
    y = (rng.random((n, SIZE, SIZE, 1)) < share[:, None, None, None]).astype(np.uint8)
    return x, y


def tiny_unet():
    import keras
    from keras import layers

    inputs = keras.Input((SIZE, SIZE, 1))
    a = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    b = layers.MaxPooling2D()(a)
    b = layers.Conv2D(8, 3, padding="same", activation="relu")(b)
    b = layers.UpSampling2D()(b)
    c = layers.Concatenate()([a, b])
    c = layers.Conv2D(4, 3, padding="same", activation="relu")(c)
    return keras.Model(inputs, layers.Conv2D(1, 1)(c))


def mirrored():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    import fastiou

    x, y = data()
    keras.utils.set_random_seed(0)
    initial = tiny_unet().get_weights()

    def train(strategy, sync):
        with strategy.scope():
            model = tiny_unet()
            model.set_weights(initial)
            model.compile(optimizer=keras.optimizers.SGD(0.5),
                          loss=fastiou.losses.JaccardLoss(from_logits=True, sync_replicas=sync))
        history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
        return model.get_weights(), history.history["loss"][0]

    single, single_loss = train(tf.distribute.get_strategy(), False)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    result = {"single_loss": single_loss}
    step = max(float(np.abs(w1 - w0).max()) for w1, w0 in zip(single, initial))
    result["update"] = step
    for sync in (True, False):
        weights, loss = train(strategy, sync)
        diff = max(float(np.abs(w1 - w0).max()) for w1, w0 in zip(weights, single))
        result[f"sync_{sync}"] = {"weight_diff": diff, "loss": loss}

    # The loss value of one step, replica by replica, against one device.
    t, z = tf.constant(y[:GLOBAL_BATCH]), tf.constant(np.random.default_rng(1).normal(
        size=(GLOBAL_BATCH, SIZE, SIZE, 1)).astype(np.float32))
    whole = float(fastiou.jaccard_loss(t, z, from_logits=True))
    dist = strategy.experimental_distribute_values_from_function(
        lambda ctx: (t[ctx.replica_id_in_sync_group * 4:(ctx.replica_id_in_sync_group + 1) * 4],
                     z[ctx.replica_id_in_sync_group * 4:(ctx.replica_id_in_sync_group + 1) * 4]))
    for sync in (True, False):
        loss_fn = fastiou.losses.JaccardLoss(from_logits=True, sync_replicas=sync)
        per_replica = strategy.run(tf.function(lambda tz: loss_fn(tz[0], tz[1])), args=(dist,))
        result[f"step_sync_{sync}"] = float(strategy.reduce("SUM", per_replica, axis=None))
    result["step_whole"] = whole
    print("RESULT " + json.dumps(result))


def metrics():
    """model.evaluate with fastiou.metrics and their Keras namesakes, on one
    device and under MirroredStrategy (each replica counts its half of every
    batch into its own copy of the state; the result reads their sum)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    import fastiou

    x, y = data(steps=5)
    keras.utils.set_random_seed(0)
    initial = tiny_unet().get_weights()
    # sample weights per pixel: the replicas must also split them right
    w = np.random.default_rng(3).random(y.shape[:3]).astype(np.float32)

    def evaluate(strategy):
        with strategy.scope():
            model = tiny_unet()
            model.set_weights(initial)
            # float metric dtype: Keras' default integer one would truncate the weights to 0
            metrics = [fastiou.metrics.BinaryIoU(target_class_ids=[0, 1], from_logits=True, dtype="float32",
                                                 name="fastiou_iou"),
                       keras.metrics.BinaryIoU(target_class_ids=[0, 1], threshold=0.0, dtype="float32",
                                               name="keras_iou"),
                       fastiou.metrics.BinaryDice(target_class_ids=[1], from_logits=True, dtype="float32",
                                                  name="fastiou_dice")]
            model.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True), weighted_metrics=metrics)
        out = model.evaluate(x, y, sample_weight=w, batch_size=GLOBAL_BATCH, verbose=0, return_dict=True)
        return {k: float(v) for k, v in out.items()}

    single = evaluate(tf.distribute.get_strategy())
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    logits = tiny_unet()
    logits.set_weights(initial)
    z = np.asarray(logits.predict(x, verbose=0))
    print("RESULT " + json.dumps({"single": single, "mirrored": evaluate(strategy),
                                  "logits": z.ravel().tolist(), "truth": y.ravel().tolist(),
                                  "weights": w.ravel().tolist()}))


def multiworker():
    import tensorflow as tf

    import fastiou

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    rng = np.random.default_rng(5)
    z = rng.normal(size=(GLOBAL_BATCH, SIZE, SIZE, 1)).astype(np.float32)
    share = np.repeat([0.02, 0.4], GLOBAL_BATCH // 2)[:, None, None, None]
    t = (rng.random(z.shape) < share).astype(np.uint8)
    half = slice(task * GLOBAL_BATCH // 2, (task + 1) * GLOBAL_BATCH // 2)
    local_t, local_z = tf.constant(t[half]), tf.constant(z[half])

    @tf.function
    def step(sync):
        return strategy.run(
            lambda: fastiou.jaccard_loss(local_t, local_z, from_logits=True, sync_replicas=sync))

    synced = float(strategy.experimental_local_results(step(True))[0])
    local = float(strategy.experimental_local_results(step(False))[0])
    whole = float(fastiou.jaccard_loss(tf.constant(t), tf.constant(z), from_logits=True))
    print("RESULT " + json.dumps({"task": task, "synced": synced, "local": local, "whole": whole}))


if __name__ == "__main__":
    {"mirrored": mirrored, "multiworker": multiworker, "metrics": metrics}[sys.argv[1]]()

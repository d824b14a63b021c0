"""Bitwise-identical losses and gradients across runs and intra-op thread counts."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import fastiou

SCRIPT = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
tf.config.threading.set_inter_op_parallelism_threads(1)
import fastiou
rng = np.random.default_rng(7)
y_pred = tf.constant(rng.normal(size=(3, 200, 190, 2)).astype(np.float32))
y_true = tf.constant((rng.random((3, 200, 190, 2)) < 0.2).astype(np.uint8))
out = {}
for per_image in (False, True):
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        loss = tf.reduce_sum(fastiou.jaccard_loss(y_true, y_pred, from_logits=True, per_image=per_image,
                                                  mode="multilabel"))
    grad = tape.gradient(loss, y_pred)
    stats = fastiou.overlap_stats(y_true, y_pred, from_logits=True, per_image=per_image)
    out[str(per_image)] = [float(loss).hex(), [s.numpy().tobytes().hex() for s in stats],
                           grad.numpy().tobytes().hex()[:64], int(np.sum(grad.numpy().view(np.uint32), dtype=np.uint64))]
# Sparse labels with a softmax (the tile path), several chunks per image.
logits = tf.constant(rng.normal(size=(2, 130, 110, 21)).astype(np.float32))
labels = tf.constant(np.where(rng.random((2, 130, 110)) < 0.05, 255,
                              rng.integers(0, 21, size=(2, 130, 110))).astype(np.uint8))
with tf.GradientTape() as tape:
    tape.watch(logits)
    loss = fastiou.jaccard_loss(labels, logits, from_logits=True, mode="multiclass", ignore_index=255)
grad = tape.gradient(loss, logits)
out["sparse"] = [float(loss).hex(), int(np.sum(grad.numpy().view(np.uint32), dtype=np.uint64))]
print(json.dumps(out))
"""


def run_with_threads(n):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(n)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_identical_across_thread_counts():
    one, two = run_with_threads(1), run_with_threads(2)
    assert one == two


def test_identical_across_runs(rng):
    y_pred = tf.constant(rng.normal(size=(2, 150, 170, 3)).astype(np.float32))
    y_true = tf.constant((rng.random((2, 150, 170, 3)) < 0.1).astype(np.float32))

    def run():
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            loss = fastiou.tversky_loss(y_true, y_pred, from_logits=True, gamma=0.75,
                                        mode="multilabel")
        return loss.numpy(), tape.gradient(loss, y_pred).numpy()

    first = run()
    for _ in range(5):
        again = run()
        assert first[0].tobytes() == again[0].tobytes()
        assert first[1].tobytes() == again[1].tobytes()

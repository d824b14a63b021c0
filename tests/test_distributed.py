"""sync_replicas: under tf.distribute the loss and the weights equal those of
single-device training on the global batch. Each experiment runs in fresh
processes (distributed_worker.py), since logical devices and TF_CONFIG must be
set before TensorFlow starts."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import fastiou

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_worker.py")


def _result(stdout, stderr):
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"no result; stderr:\n{stderr[-4000:]}")


def _run_worker(mode):
    """One experiment of distributed_worker.py in a fresh process: its result."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, WORKER, mode], capture_output=True, text=True, env=env, timeout=600)
    return _result(proc.stdout, proc.stderr)


@pytest.mark.slow
def test_mirrored_fit_matches_single_device_only_with_sync():
    r = _run_worker("mirrored")
    update = r["update"]
    assert update > 1e-3  # the steps moved the weights
    # With sync_replicas the two replicas train exactly like one device on the
    # global batches (float32 sums in another order).
    assert r["sync_True"]["weight_diff"] < 1e-4 * max(1.0, update) + 1e-5, r
    assert r["sync_True"]["loss"] == pytest.approx(r["single_loss"], rel=1e-5)
    # Without it, a mean of per-replica Jaccards on halves with 2% and 40%
    # foreground is another loss: the weights move elsewhere.
    assert r["sync_False"]["weight_diff"] > 100 * r["sync_True"]["weight_diff"], r
    assert r["sync_False"]["weight_diff"] > 1e-3 * update, r
    # One step's loss, reduced over the replicas.
    assert r["step_sync_True"] == pytest.approx(r["step_whole"], rel=1e-6)
    assert abs(r["step_sync_False"] - r["step_whole"]) > 1e-3


@pytest.mark.slow
def test_metrics_under_mirrored_strategy_count_the_whole_batch():
    r = _run_worker("metrics")
    z, t, w = (np.array(r[k], np.float64) for k in ("logits", "truth", "weights"))
    p = z >= 0.0
    t = t.astype(bool)
    # the float64 oracle: weighted IoU of both classes, Dice of the foreground
    ious = []
    for cls in (False, True):
        tp = w[(t == cls) & (p == cls)].sum()
        ious.append(tp / (w[t == cls].sum() + w[p == cls].sum() - tp))
    dice = 2 * w[t & p].sum() / (w[t].sum() + w[p].sum())
    for where in ("single", "mirrored"):
        got = r[where]
        assert got["fastiou_iou"] == pytest.approx(np.mean(ious), rel=1e-5), (where, got)
        assert got["fastiou_dice"] == pytest.approx(dice, rel=1e-5), (where, got)
        assert got["keras_iou"] == pytest.approx(np.mean(ious), rel=1e-4), (where, got)  # float32 counts
    assert r["mirrored"]["fastiou_iou"] == pytest.approx(r["single"]["fastiou_iou"], rel=1e-6)
    assert r["mirrored"]["keras_iou"] == pytest.approx(r["single"]["keras_iou"], rel=1e-6)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_loss_is_the_global_loss():
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, WORKER, "multiworker"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    results = [_result(o, e) for o, e in outs]
    assert {r["task"] for r in results} == {0, 1}
    whole = results[0]["whole"]
    for r in results:
        assert r["whole"] == pytest.approx(whole, rel=1e-7)
        assert r["synced"] == pytest.approx(whole, rel=1e-6)  # the global batch's loss, on both workers
    # Unsynchronized, each worker sees only its half: two different losses.
    assert abs(results[0]["local"] - results[1]["local"]) > 1e-2


def test_sync_is_a_no_op_outside_a_strategy_and_checks_per_image(rng):
    t = tf.constant((rng.random((4, 8, 8, 1)) < 0.3).astype("uint8"))
    z = tf.constant(rng.normal(size=(4, 8, 8, 1)).astype("float32"))
    plain = fastiou.losses.JaccardLoss(from_logits=True)(t, z)
    synced = fastiou.losses.JaccardLoss(from_logits=True, sync_replicas=True)(t, z)
    assert float(plain) == float(synced)
    with pytest.raises(ValueError, match="sync_replicas needs per_image=False"):
        fastiou.losses.DiceLoss(per_image=True, sync_replicas=True)
    with pytest.raises(ValueError, match="sync_replicas needs per_image=False"):
        fastiou.tversky_loss(t, z, per_image=True, sync_replicas=True)
    loss = fastiou.losses.TverskyLoss(alpha=0.3, beta=0.7, sync_replicas=True)
    again = fastiou.losses.TverskyLoss.from_config(loss.get_config())
    assert again.sync_replicas and again.alpha == pytest.approx(0.3)

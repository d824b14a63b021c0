"""Threads and lifetime: every door called from 8 Python threads at once gives
the serial results bit for bit, and thousands of calls, succeeding or
failing, leave the process's memory where it was."""

import threading

import numpy as np
import pytest

import fastiou.kernels as fk
from cases import make_case

THREADS = 8
CALLS_PER_THREAD = 4


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def inputs(seed, shape=(2, 24, 24, 5)):
    rng = np.random.default_rng(seed)
    return make_case(rng, shape, "labels", True, "uint8", "float32", ignore=255)


def module_door():
    def run(t, z):
        stats = fk.overlap_stats(t, z, from_logits=True, softmax=True, sparse=True, ignore_index=255)
        ones = np.ones_like(stats[0])
        grad = fk.overlap_grad(t, z, None, ones, ones, ones, from_logits=True, softmax=True, sparse=True,
                               ignore_index=255)
        return [np.asarray(s) for s in stats] + [np.asarray(grad)]
    return run


def tf_door(jit_compile):
    import tensorflow as tf

    import fastiou

    def loss_and_grad(t, z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = fastiou.jaccard_loss(t, z, from_logits=True, ignore_index=255, per_image=True)
        return loss, tape.gradient(loss, z)

    step = loss_and_grad if jit_compile is None else tf.function(loss_and_grad, jit_compile=jit_compile)

    def run(t, z):
        return [x.numpy() for x in step(tf.constant(t), tf.constant(z))]
    return run


def jax_door():
    import jax

    import fastiou.jax as fj

    step = jax.jit(jax.value_and_grad(
        lambda z, t: fj.jaccard_loss(t, z, from_logits=True, ignore_index=255, per_image=False)))

    def run(t, z):
        return [np.asarray(x) for x in step(z, t)]
    return run


DOORS = {
    "module": module_door,
    "tf-eager": lambda: tf_door(None),
    "tf-graph": lambda: tf_door(False),
    "tf-xla": lambda: tf_door(True),
    "jax": jax_door,
}


@pytest.mark.parametrize("door", list(DOORS))
def test_threads_give_the_serial_bits(door):
    if door != "module":
        pytest.importorskip("tensorflow" if door.startswith("tf") else "jax")
    run = DOORS[door]()
    cases = [inputs(seed) for seed in range(THREADS)]
    serial = [run(t, z) for t, z in cases]  # also traces and compiles once
    results = [[None] * CALLS_PER_THREAD for _ in range(THREADS)]
    errors = []
    barrier = threading.Barrier(THREADS)

    def worker(k):
        try:
            barrier.wait()
            for i in range(CALLS_PER_THREAD):
                results[k][i] = run(*cases[k])
        except Exception as e:  # reported below, with the thread
            errors.append((k, e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not any(th.is_alive() for th in threads), "a thread hangs"
    assert not errors, errors
    for k in range(THREADS):
        for got in results[k]:
            for a, b in zip(got, serial[k]):
                np.testing.assert_array_equal(a, b, err_msg=f"{door}, thread {k}")
    # The cases differ, so equal bits are each thread's own results.
    assert not np.array_equal(serial[0][0], serial[1][0])


def _leak_check(call, calls, warmup=100, limit=32 << 20):
    """The process's growth over each of two windows of `calls` calls, after
    a warm-up: a leak grows both, a one-time cache (TensorFlow's, the
    allocator's) at most one, so the smaller growth must stay under `limit`.
    A leak of the inputs (256 KB a call) would be 75 MB a window of 300."""
    for _ in range(warmup):
        call()
    growth = []
    for _ in range(2):
        before = rss_bytes()
        for _ in range(calls):
            call()
        growth.append(rss_bytes() - before)
    assert min(growth) < limit, (f"the process grew by {growth[0] / 2**20:.1f} MB and "
                                 f"{growth[1] / 2**20:.1f} MB over two windows of {calls} calls")


def test_the_leak_check_sees_a_leak():
    # The yardstick against a deliberate leak of one 256 KB input a call.
    kept = []
    z = np.zeros((4, 64, 64, 4), np.float32)
    with pytest.raises(AssertionError, match="grew by"):
        _leak_check(lambda: kept.append(z.copy()), calls=300, warmup=10)


def test_module_calls_leak_nothing():
    t, z = inputs(0, shape=(4, 64, 64, 4))  # 256 KB of logits
    bad = t.copy()
    bad[0, 0, 0] = 7  # a label outside [0, 4): the kernels' error path
    ones = np.ones((4, 4), np.float32)

    def call():
        fk.overlap_stats(t, z, from_logits=True, softmax=True, sparse=True, ignore_index=255)
        fk.overlap_grad(t, z, None, ones, ones, ones, from_logits=True, softmax=True, sparse=True,
                        ignore_index=255)
        with pytest.raises(ValueError, match="label"):
            fk.overlap_stats(bad, z, from_logits=True, softmax=True, sparse=True, ignore_index=255)

    _leak_check(call, calls=1000)


def test_tensorflow_calls_leak_nothing():
    tf = pytest.importorskip("tensorflow")
    import fastiou

    t, z = inputs(0, shape=(4, 64, 64, 4))
    bad = t.copy()
    bad[0, 0, 0] = 7
    t, z, bad = tf.constant(t), tf.constant(z), tf.constant(bad)

    def call():
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = fastiou.jaccard_loss(t, z, from_logits=True, ignore_index=255)
        tape.gradient(loss, z)
        with pytest.raises(tf.errors.InvalidArgumentError):
            fastiou.jaccard_loss(bad, z, from_logits=True, ignore_index=255)

    _leak_check(call, calls=300)

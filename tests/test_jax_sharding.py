"""fastiou.jax over several devices: inputs sharded over the batch, the image
rows or both run the kernels on each device's block and add the sums with one
all-reduce; the values and gradients equal one device's and the float64
oracle's, the gradient keeps the input's sharding and nothing mask-sized
crosses devices. Keras on JAX under DataParallel trains as one device does on
the global batch. Each run is a fresh process (sharding_worker.py) on 2 or 4
forced host devices, which must be set before JAX starts."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax")

import fastiou.kernels as fk  # noqa: E402
import overlap_oracle as oracle  # noqa: E402
from cases import MODE, mask_sized_work  # noqa: E402

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sharding_worker.py")
SPLIT_LAYOUTS = ("batch", "rows", "batch-rows")  # "channels" is gathered (see test_split_channels_...)


def _run(what, devices, out_dir):
    if not fk.ffi_handlers():
        pytest.skip("built without XLA FFI handlers")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, WORKER, what, str(devices), str(out_dir)], capture_output=True,
                          text=True, env=env, timeout=900)
    if "RESULT " not in proc.stdout:
        raise AssertionError(proc.stderr[-4000:])
    with open(os.path.join(out_dir, "result.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module", params=[2, 4], ids=["2-devices", "4-devices"])
def run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"partition{request.param}")
    result = _run("partition", request.param, out)
    assert result["devices"] == request.param
    arrays = dict(np.load(os.path.join(out, "arrays.npz")))
    return result, arrays, out


OUTPUTS = ("I", "P", "T", "d_sums", "loss", "d_loss", "d_sums_true")


def _cases(result, layouts=SPLIT_LAYOUTS):
    """(case name, mode, per_image, layout, key, facts) of every sharded run in `layouts`."""
    for key, facts in result["cases"].items():
        name, per_image, layout = key.split("/")
        if layout in layouts:
            yield name, MODE[facts["mode"]], per_image == "True", layout, key, facts


def _outputs(arrays, key, facts):
    """The run's OUTPUTS (the gradient wrt the targets only for float targets)."""
    return {o: arrays[f"{key}/{o}"] for o in OUTPUTS if o != "d_sums_true" or facts["float_true"]}


def _oracle(arrays, name, mode, per_image, facts):
    """The float64 OUTPUTS from overlap_oracle: the sums, their vjp for the
    run's cotangents, the mean Jaccard loss and its gradient."""
    t, z = arrays[f"{name}/t"], arrays[f"{name}/z"]
    w = arrays[f"{name}/w"] if facts["weighted"] else None
    kernel = dict(from_logits=mode.from_logits, softmax=mode.softmax, sparse=mode.sparse,
                  ignore_index=mode.ignore_index, per_image=per_image)
    I, P, T = oracle.sums(t, z, w, **kernel)
    g = [arrays[f"{name}/{per_image}/g{i}"] for i in range(3)]
    index = (I + 1.0) / (T + P - I + 1.0)
    # The mean over the groups: each group's dL/dI, dL/dP, dL/dT over their count.
    group = [d / I.size for d in oracle.jaccard_group_grads(I, P, T)]
    out = dict(I=I, P=P, T=T, d_sums=oracle.grad(t, z, w, *g, **kernel), loss=np.mean(1.0 - index),
               d_loss=oracle.grad(t, z, w, *group, **kernel))
    if facts["float_true"]:
        out["d_sums_true"] = oracle.grad(t, z, w, *g, wrt_true=True, **kernel)
    return out


@pytest.mark.slow
def test_values_and_gradients_match_the_float64_oracle(run):
    result, arrays, _ = run
    for name, mode, per_image, layout, key, facts in _cases(result, SPLIT_LAYOUTS + ("channels",)):
        want = _oracle(arrays, name, mode, per_image, facts)
        got = _outputs(arrays, key, facts)
        assert got.keys() == want.keys()
        for what in got:
            scale = np.abs(want[what]).max()
            np.testing.assert_allclose(got[what], want[what], rtol=2e-5, atol=2e-6 * scale,
                                       err_msg=f"{key} {what}")


@pytest.mark.slow
def test_values_and_gradients_match_one_device(run):
    result, arrays, _ = run
    for name, mode, per_image, layout, key, facts in _cases(result, SPLIT_LAYOUTS + ("channels",)):
        single = _outputs(arrays, f"{name}/{per_image}/single", facts)
        for what, got in _outputs(arrays, key, facts).items():
            np.testing.assert_allclose(got, single[what], rtol=1e-6, atol=1e-6 * np.abs(single[what]).max(),
                                       err_msg=f"{key} {what}")
            if per_image and layout == "batch" and what != "loss":
                # Each image's sums come from one device's kernel, as on one
                # device: the sums and the gradients are bitwise the same.
                np.testing.assert_array_equal(got, single[what], err_msg=f"{key} {what}")


@pytest.mark.slow
def test_gradients_keep_the_input_sharding(run):
    result, _, _ = run
    for _, _, _, _, key, facts in _cases(result, SPLIT_LAYOUTS + ("channels",)):
        assert all(facts["grads_keep_sharding"]), (key, facts)
        assert set(facts["grad_shardings"]) == {facts["input_sharding"]}, (key, facts)
        assert len(facts["grad_shardings"]) == (3 if facts["float_true"] else 2)


_COLLECTIVE = re.compile(r"=\s*(\(.*?\)|\w+\[[\d,]*\]\S*)\s+"
                         r"(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter|"
                         r"all-reduce-start|all-gather-start|collective-permute-start)\(")


def _collectives(hlo):
    """(opcode, elements of its largest result) of every collective in the HLO text."""
    out = []
    for line in hlo.splitlines():
        m = _COLLECTIVE.search(line)
        if m:
            sizes = [int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
                     for dims in re.findall(r"\w+\[([\d,]*)\]", m.group(1))]
            out.append((m.group(2), max(sizes)))
    return out


@pytest.mark.slow
def test_only_the_sums_cross_devices(run):
    result, _, out = run
    for _, mode, per_image, layout, key, case in _cases(result):
        with open(os.path.join(out, case["hlo"])) as f:
            hlo = f.read()
        assert 'custom_call_target="fastiou_overlap_stats"' in hlo, key
        assert 'custom_call_target="fastiou_overlap_grad"' in hlo, key
        collectives = _collectives(hlo)
        assert collectives, key  # the sums, at least, are added across devices
        sums = 3 * (8 if per_image else 1) * mode.channels
        for opcode, elements in collectives:
            assert opcode.startswith("all-reduce"), (key, opcode)
            assert elements <= sums, (key, opcode, elements)
        # Nor does any other mask-sized work run outside the kernels on a device.
        assert mask_sized_work(hlo, case["local_pixels"]) == [], key


@pytest.mark.slow
def test_split_channels_are_gathered_and_still_correct(run):
    # The kernels take a pixel's channels whole (softmax, labels): a split
    # channel axis is gathered, and the values are checked with the others.
    result, _, out = run
    channel_cases = list(_cases(result, ("channels",)))
    assert channel_cases  # the one-hot mode's 4 channels split over 2 or 4 devices
    for _, _, _, _, key, _ in channel_cases:
        with open(os.path.join(out, result["cases"][key]["hlo"])) as f:
            assert any(op == "all-gather" for op, _ in _collectives(f.read())), key


@pytest.mark.slow
def test_uneven_batch_split_is_gathered_and_still_correct(run):
    # A batch that does not split evenly (2N - 1 images on N devices, inside
    # jax.jit) is gathered: padded blocks would enter the sums.
    _, arrays, _ = run
    t, z = arrays["uneven/t"], arrays["uneven/z"]
    for per_image in (False, True):
        I, P, T = oracle.sums(t, z, from_logits=True, per_image=per_image)
        loss = np.mean(1.0 - (I + 1.0) / (T + P - I + 1.0))
        got, single = arrays[f"uneven/{per_image}/split"], arrays[f"uneven/{per_image}/single"]
        assert float(got) == pytest.approx(loss, rel=1e-5)
        assert float(got) == pytest.approx(float(single), rel=1e-6)
        np.testing.assert_allclose(arrays[f"uneven/{per_image}/split/grad"],
                                   arrays[f"uneven/{per_image}/single/grad"], rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module", params=[2, 4], ids=["2-devices", "4-devices"])
def keras_run(request, tmp_path_factory):
    result = _run("keras", request.param, tmp_path_factory.mktemp(f"keras{request.param}"))
    assert result["backend"] == "jax"
    assert result["devices"] == request.param
    return result


@pytest.mark.slow
def test_keras_data_parallel_fit_matches_one_device(keras_run):
    for name in ("jaccard-binary", "dice-sparse", "jaccard-per-image"):
        r = keras_run[name]
        assert r["update"] > 1e-3, name  # training moved the weights
        # The loss ran on each device's share of the batch, split over the
        # DataParallel mesh's one axis.
        assert r["batch_split_in_fit"] == ["batch"], (name, r)
        assert r["weight_diff"] < 1e-4 * r["update"] + 1e-6, (name, r)
        assert r["parallel_loss"] == pytest.approx(r["single_loss"], rel=1e-5), name
    for name in ("jaccard-binary", "dice-sparse"):
        # The halves alone give other losses than the global batch: a loss of
        # each device's share only would not have matched.
        r = keras_run[name]
        assert min(abs(h - r["whole_first_batch"]) for h in r["halves_first_batch"]) > 1e-2, (name, r)


@pytest.mark.slow
def test_keras_data_parallel_metrics_match_keras(keras_run):
    # fastiou.metrics compiled with the model: model.fit and model.evaluate
    # under DataParallel give one device's values, and evaluate gives Keras'
    # namesake metric over the whole set (one device, the same weights)
    for name in ("jaccard-binary", "dice-sparse"):
        r = keras_run[name]
        assert 0.05 < r["keras_iou"] < 0.95, (name, r)  # a value a wrong count would change
        assert r["parallel_iou"] == pytest.approx(r["keras_iou"], rel=1e-6, abs=1e-9), (name, r)
        assert r["parallel_iou"] == pytest.approx(r["single_iou"], rel=1e-6, abs=1e-9), (name, r)
        assert r["parallel_fit_iou"] == pytest.approx(r["single_fit_iou"], rel=1e-6, abs=1e-9), (name, r)
    # Both metrics count with the fused kernel (a threshold, and MeanIoU's
    # argmax over C scores), each device its share of the batch (one
    # all-reduce of the counts).
    assert keras_run["jaccard-binary"]["counts_split"] == ["batch"]
    assert keras_run["dice-sparse"]["counts_split"] == ["batch"]


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 4])
def test_confusion_counts_split_over_devices(tmp_path, devices):
    # fastiou.metrics' fused counts on a batch split over the batch, the rows
    # or both: each device counts its block, one all-reduce of 3 x K adds
    # them; the counts equal one device's and a NumPy count exactly
    result = _run("confusion", devices, tmp_path)
    arrays = dict(np.load(os.path.join(tmp_path, "arrays.npz")))
    layouts = {key.split("/")[1] for key in result["cases"]}
    assert layouts == ({"batch", "rows", "batch-rows"} if devices == 4 else {"batch", "rows"})
    rng = np.random.default_rng(5)  # the worker's inputs, drawn again in its order
    for name, facts in {key.split("/")[0]: f for key, f in result["cases"].items()}.items():
        k = facts["classes"]
        t = rng.integers(0, k, (8, 16, 12, 1))
        z = rng.random((8, 16, 12, 1)).astype(np.float32) if name.startswith("threshold") else \
            rng.integers(-1, k + 1, (8, 16, 12, 1))
        w = rng.integers(0, 4, (8, 16, 12, 1)).astype(np.float64)
        pred = (z >= 0.5).astype(int) if name.startswith("threshold") else z
        keep = (t != 0) & (pred >= 0) & (pred < k)  # ignore_class=0, predictions out of range
        weight = np.where(keep, w if name.endswith("weighted") else 1.0, 0.0)
        want = np.zeros((3, k))
        for c in range(k):
            want[0, c] = (weight * ((t == c) & (pred == c))).sum()
            want[1, c] = (weight * (t == c)).sum()
            want[2, c] = (weight * (pred == c)).sum()
        np.testing.assert_array_equal(arrays[f"{name}/single"], want, err_msg=name)
        for layout in layouts:
            key = f"{name}/{layout}"
            np.testing.assert_array_equal(arrays[key], want, err_msg=key)
            with open(os.path.join(tmp_path, result["cases"][key]["hlo"])) as f:
                hlo = f.read()
            assert 'custom_call_target="fastiou_confusion_counts"' in hlo, key
            collectives = _collectives(hlo)
            assert collectives and all(op.startswith("all-reduce") and n <= 3 * k for op, n in collectives), \
                (key, collectives)
            assert mask_sized_work(hlo, result["cases"][key]["local_pixels"]) == [], key

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


def _cases(result, layouts=SPLIT_LAYOUTS):
    """(mode, per_image, layout, key) of every sharded run in `layouts`."""
    for key in result["cases"]:
        name, per_image, layout = key.split("/")
        if layout in layouts:
            yield MODE[name], per_image == "True", layout, key


def _outputs(arrays, key):
    return [arrays[f"{key}/{i}"] for i in range(6)]  # I, P, T, vjp of the sums, loss, its gradient


def _oracle(arrays, mode, per_image):
    """The float64 sums, their vjp for the run's cotangents, the mean Jaccard
    loss and its gradient, from overlap_oracle."""
    t, z = arrays[f"{mode.name}/t"], arrays[f"{mode.name}/z"]
    kernel = dict(from_logits=mode.from_logits, softmax=mode.softmax, sparse=mode.sparse,
                  ignore_index=mode.ignore_index, per_image=per_image)
    I, P, T = oracle.sums(t, z, **kernel)
    g = [arrays[f"{mode.name}/{per_image}/g{i}"] for i in range(3)]
    d_sums = oracle.grad(t, z, None, *g, **kernel)
    index = (I + 1.0) / (T + P - I + 1.0)
    loss = np.mean(1.0 - index)
    # The mean over the groups: each group's dL/dI, dL/dP, dL/dT over their count.
    d_loss = oracle.grad(t, z, None, *(d / I.size for d in oracle.jaccard_group_grads(I, P, T)), **kernel)
    return [I, P, T, d_sums, loss, d_loss]


@pytest.mark.slow
def test_values_and_gradients_match_the_float64_oracle(run):
    result, arrays, _ = run
    for mode, per_image, layout, key in _cases(result, SPLIT_LAYOUTS + ("channels",)):
        for got, want, what in zip(_outputs(arrays, key), _oracle(arrays, mode, per_image),
                                   ("I", "P", "T", "d_sums", "loss", "d_loss")):
            scale = np.abs(want).max()
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6 * scale, err_msg=f"{key} {what}")


@pytest.mark.slow
def test_values_and_gradients_match_one_device(run):
    result, arrays, _ = run
    for mode, per_image, layout, key in _cases(result, SPLIT_LAYOUTS + ("channels",)):
        single = _outputs(arrays, f"{mode.name}/{per_image}/single")
        for got, want, what in zip(_outputs(arrays, key), single, ("I", "P", "T", "d_sums", "loss", "d_loss")):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max(),
                                       err_msg=f"{key} {what}")
        if per_image and layout == "batch":
            # Each image's sums come from one device's kernel, as on one device:
            # the sums and the gradients are bitwise the same.
            for i in (0, 1, 2, 3, 5):
                np.testing.assert_array_equal(arrays[f"{key}/{i}"], single[i], err_msg=f"{key} output {i}")


@pytest.mark.slow
def test_gradients_keep_the_input_sharding(run):
    result, _, _ = run
    for _, _, _, key in _cases(result, SPLIT_LAYOUTS + ("channels",)):
        case = result["cases"][key]
        assert case["grads_keep_sharding"] == [True, True], (key, case)
        assert case["stats_grad_sharding"] == case["loss_grad_sharding"] == case["input_sharding"], key


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
    for mode, per_image, layout, key in _cases(result):
        case = result["cases"][key]
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
    for _, _, _, key in channel_cases:
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

"""fastiou.losses on Keras' JAX backend: the same classes, on the same kernels
through jax.ffi, with no TensorFlow imported (run in a fresh process)."""

import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("jax")

import fastiou.kernels as fk  # noqa: E402

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jax_backend_worker.py")


@pytest.fixture(scope="module")
def results():
    if not fk.ffi_handlers():
        pytest.skip("built without XLA FFI handlers")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, WORKER], capture_output=True, text=True, env=env, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(proc.stderr[-4000:])


@pytest.mark.slow
def test_runs_on_the_jax_backend_without_tensorflow(results):
    assert results["backend"] == "jax"
    assert results["tensorflow_imported"] is False


@pytest.mark.slow
def test_values_and_gradients_match_the_reference(results):
    assert len(results["diffs"]) == 12
    for key, (cls_value, fn_value, grad) in results["diffs"].items():
        assert cls_value < 2e-6, key
        assert fn_value < 2e-6, key
        assert grad < 2e-4, key


@pytest.mark.slow
def test_fit_trains_and_the_model_reloads(results):
    losses = results["fit_losses"]
    assert all(v == v for v in losses)  # finite
    assert losses[-1] < 0.8 * losses[0]
    assert results["config_roundtrip"]
    assert results["reloaded_loss"] == "JaccardLoss"
    assert results["reloaded_predictions_equal"]


@pytest.mark.slow
def test_bad_input_gets_the_same_error(results):
    assert "y_true shape (2, 4, 4, 1) does not match y_pred shape (2, 4, 5, 1)" in results["shape_error"]


@pytest.mark.slow
def test_keras_conventions(results):
    # Per-image losses weighted and reduced as Keras does, against the reference.
    assert max(results["sample_weight"]) < 2e-6
    assert "sample_weight needs per_image=True" in results["sample_weight_error"]
    assert "carries a Keras mask" in results["mask_error"]
    assert "mode='auto' cannot tell" in results["mode_error"]
    assert abs(results["log_loss_at_epsilon_0.05"] + math.log(0.05)) < 1e-6


def test_missing_backend_names_the_extra():
    code = ("import fastiou\n"
            "try:\n    fastiou.losses\nexcept AttributeError as e:\n    print(e)\n")
    env = dict(os.environ, KERAS_BACKEND="numpy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "pip install 'fastiou[tensorflow]'" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "here: 'numpy'" in proc.stdout

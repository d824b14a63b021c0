"""fastiou.jax: the fused kernels in plain JAX through XLA FFI, on JAX's default
device (the CPU; the GPU under `make gpu-check`).

Values against the float64 oracle, jax.grad against JAX autodiff of the plain
formula (and numerically in float64), jit and vmap, the compiled HLO, errors,
and that importing it on Keras' JAX backend imports no TensorFlow.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import fastiou.kernels as fk  # noqa: E402

if not fk.ffi_handlers():
    pytest.skip("built without XLA FFI handlers", allow_module_level=True)

import fastiou.jax as fj  # noqa: E402
from cases import LOSS_MODES, make_case, mask_sized_work, mode_case, mode_ids  # noqa: E402
from overlap_oracle import sums as oracle_sums  # noqa: E402
from confusion_oracle import counts as oracle_counts  # noqa: E402
from confusion_oracle import make_case as confusion_case  # noqa: E402


def plain_loss(kind, t, z, *, from_logits, mode="auto", per_image=False, ignore_index=None, smooth=1.0,
               alpha=0.5, beta=0.5, gamma=1.0):
    """The formula written plainly in jnp: activation, one-hot, sums, index."""
    sparse = t.ndim == z.ndim - 1
    multiclass = sparse or mode == "multiclass"
    p = z
    if from_logits:
        p = jax.nn.softmax(z, -1) if multiclass else jax.nn.sigmoid(z)
    w = jnp.ones_like(p)
    if sparse:
        tt = jax.nn.one_hot(t, z.shape[-1], dtype=p.dtype)
        if ignore_index is not None:
            w = w * (t != ignore_index)[..., None]
    else:
        tt = t.astype(p.dtype)
    axes = tuple(range(1 if per_image else 0, z.ndim - 1))
    I, P, T = (w * tt * p).sum(axes), (w * p).sum(axes), (w * tt).sum(axes)
    if kind == "jaccard":
        index = (I + smooth) / (T + P - I + smooth)
    elif kind == "dice":
        index = (2 * I + smooth) / (T + P + smooth)
    else:
        index = (I + smooth) / (I + alpha * (P - I) + beta * (T - I) + smooth)
    return (jnp.maximum(1 - index, 0) ** gamma).mean(-1)


@pytest.mark.parametrize("mode", LOSS_MODES, ids=mode_ids(LOSS_MODES))
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("loss", ["jaccard", "dice", "tversky"])
def test_values_and_gradients_against_plain_jax(rng, mode, per_image, loss):
    t, z = mode_case(rng, mode, (3, 9, 7))
    opts = mode.loss_options()
    t, z = jnp.asarray(t), jnp.asarray(z, jnp.float32)
    extra = dict(alpha=0.3, beta=0.7, gamma=1.5) if loss == "tversky" else {}
    fused = getattr(fj, f"{loss}_loss")

    def total_fused(z):
        return fused(t, z, per_image=per_image, **opts, **extra).sum()

    def total_plain(z):
        return plain_loss(loss, t, z, per_image=per_image, **opts, **extra).sum()

    value, grad = jax.jit(jax.value_and_grad(total_fused))(z)
    want_value, want_grad = jax.value_and_grad(total_plain)(z)
    np.testing.assert_allclose(float(value), float(want_value), rtol=2e-5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=1e-3,
                               atol=1e-5 * float(jnp.abs(want_grad).max()))


@pytest.mark.parametrize("pred_dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("true_dtype", [np.bool_, np.uint8, np.int32, np.float32])
def test_stats_dtypes_against_float64_oracle(rng, pred_dtype, true_dtype):
    t, z = make_case(rng, (2, 13, 5, 2), "mask", True, true_dtype)
    zj = jnp.asarray(z, pred_dtype)
    got = jax.jit(lambda t, z: fj.overlap_stats(t, z, from_logits=True))(t, zj)
    want = oracle_sums(t, np.asarray(zj.astype(jnp.float32)), from_logits=True)
    tol = {"float16": 2e-3, "bfloat16": 2e-3, "float32": 2e-5}[pred_dtype]
    for g, w in zip(got, want):
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(g), w, rtol=tol, atol=tol)
    # The same kernels as fastiou.kernels on the same device: bitwise the same sums.
    device = next(iter(zj.devices()))
    for g, w in zip(got, fk.overlap_stats(jax.device_put(t, device), zj, from_logits=True)):
        assert np.asarray(g).tobytes() == np.asarray(w).tobytes()


def test_gradient_numerically_in_float64(rng):
    t, z = make_case(rng, (2, 5, 4, 1), "mask", True)
    with jax.enable_x64(True):
        z64 = jnp.asarray(z, jnp.float64)
        f = lambda z: fj.dice_loss(t, z, from_logits=True, per_image=True).sum()  # noqa: E731
        grad = np.asarray(jax.grad(f)(z64))
        eps = 1e-6
        flat = np.asarray(z64).ravel()
        for i in rng.choice(flat.size, 8, replace=False):
            up, down = flat.copy(), flat.copy()
            up[i] += eps
            down[i] -= eps
            numeric = (float(f(up.reshape(z.shape))) - float(f(down.reshape(z.shape)))) / (2 * eps)
            np.testing.assert_allclose(grad.ravel()[i], numeric, rtol=1e-6, atol=1e-10)


def test_gradient_with_respect_to_float_targets(rng):
    t, z = make_case(rng, (2, 6, 6, 1), "mask", True, np.float32)
    dt, dz = jax.grad(lambda t, z: fj.jaccard_loss(t, z, from_logits=True), argnums=(0, 1))(
        jnp.asarray(t), jnp.asarray(z, jnp.float32))
    pt, pz = jax.grad(lambda t, z: plain_loss("jaccard", t, z, from_logits=True), argnums=(0, 1))(
        jnp.asarray(t), jnp.asarray(z, jnp.float32))
    np.testing.assert_allclose(np.asarray(dt), np.asarray(pt), rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(np.asarray(dz), np.asarray(pz), rtol=1e-3, atol=1e-7)


def test_vmap_gives_per_item_losses(rng):
    t, z = make_case(rng, (4, 6, 6, 1), "mask", True)
    batched = jax.vmap(lambda t, z: fj.jaccard_loss(t, z, from_logits=True))(t[:, None], z[:, None])
    one_by_one = [float(fj.jaccard_loss(t[i:i + 1], z[i:i + 1], from_logits=True)) for i in range(4)]
    np.testing.assert_allclose(np.asarray(batched), one_by_one, rtol=1e-6)
    per_image = fj.jaccard_loss(t, z, from_logits=True, per_image=True)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(per_image), rtol=1e-6)


@pytest.mark.parametrize("mode", LOSS_MODES, ids=mode_ids(LOSS_MODES))
def test_compiled_hlo_holds_only_the_custom_calls(rng, mode):
    shape = (2, 32, 32, mode.channels)
    t, z = mode_case(rng, mode, shape[:-1])
    opts = mode.loss_options()
    step = jax.jit(jax.value_and_grad(lambda z, t: fj.jaccard_loss(t, z, **opts)))
    hlo = step.lower(jnp.asarray(z, jnp.bfloat16), t).compile().as_text()
    assert 'custom_call_target="fastiou_overlap_stats"' in hlo
    assert 'custom_call_target="fastiou_overlap_grad"' in hlo
    assert mask_sized_work(hlo, int(np.prod(shape[:-1]))) == []


def test_errors():
    z = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match="does not match y_pred shape"):
        fj.jaccard_loss(jnp.zeros((2, 4, 5, 3)), z)
    with pytest.raises(ValueError, match="rank >= 2"):
        fj.dice_loss(jnp.zeros(5), jnp.zeros(5))
    with pytest.raises(TypeError, match="y_pred must be float16"):
        fj.jaccard_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="need mode='multiclass'"):
        fj.jaccard_loss(jnp.zeros((2, 4, 4), jnp.uint8), z, mode="binary")
    with pytest.raises(ValueError, match="smooth must be >= 0"):
        fj.tversky_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), smooth=-1.0)
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[1, 2, 3] = 9
    step = jax.jit(lambda t, z: fj.jaccard_loss(t, z, from_logits=True))
    if jax.default_backend() == "cpu":
        with pytest.raises(Exception, match=r"label 9 at batch index 1, pixel 11 .* outside \[0, 3\)"):
            jax.block_until_ready(step(labels, z))
    else:
        # A compiled GPU step cannot raise: the CUDA kernels make the sums, and so the loss, NaN.
        assert np.isnan(np.asarray(step(labels, z))).all()
        assert np.isfinite(np.asarray(step(np.minimum(labels, 2), z))).all()


@pytest.mark.slow
def test_importing_on_the_jax_backend_imports_no_tensorflow():
    code = ("import sys, numpy as np, fastiou, fastiou.jax as fj; "
            "v = float(fj.jaccard_loss(np.ones((1, 4, 1), np.uint8), np.zeros((1, 4, 1), np.float32))); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print(v)")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # p = 0 everywhere, t = 1: J = 1 / (4 + 1), loss 0.8.
    assert float(proc.stdout.strip()) == pytest.approx(0.8)


@pytest.mark.parametrize("opts", [
    dict(class_weights=[1.0, 3.0, 0.5], mode="multilabel"),
    dict(classes=[0, 2], mode="multilabel"),
    dict(log_loss=True, smooth=0.5, mode="multilabel"),
    dict(per_image=True, smooth=0.0, mode="multilabel"),
    dict(weights="per-pixel", mode="multilabel"),
])
@pytest.mark.parametrize("loss", ["jaccard", "dice", "tversky"])
def test_options_match_the_reference(rng, opts, loss):
    import fastiou

    if not hasattr(fastiou, "reference"):
        pytest.skip("the reference runs on Keras' TensorFlow backend in this process")
    t, z = make_case(rng, (3, 7, 6, 3), "mask", True)
    opts = dict(opts)
    if opts.get("weights") == "per-pixel":
        opts["weights"] = rng.random((3, 7, 6, 1)).astype(np.float32)
    z = z.astype(np.float32)
    got = getattr(fj, f"{loss}_loss")(t, z, from_logits=True, **opts)
    want = getattr(fastiou.reference, f"{loss}_loss")(t, z, from_logits=True, **opts)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=1e-6)


def test_gpu_handlers_registered_under_xla_platform_name(monkeypatch):
    """On a GPU, the CUDA handlers must be filed under the name the CUDA
    plugin registers its custom calls for: jaxlib files a platform under
    xla_client.xla_platform_names.get(name, name), and the plugin's name
    is "CUDA". A name filed otherwise is never handed to the GPU."""
    from jax._src.lib import xla_client

    from fastiou._backends import jax as backend

    class Gpu:
        platform = "gpu"

    calls = []
    monkeypatch.setattr(jax, "devices", lambda *a: [Gpu()])
    monkeypatch.setattr(jax.ffi, "register_ffi_target",
                        lambda target, capsule, platform: calls.append((target, platform)))
    backend._register()
    filed = {(t, xla_client.xla_platform_names.get(p, p)) for t, p in calls}
    targets = set(fk.ffi_handlers())
    assert {t for t, p in filed if p == "Host"} == targets
    # every target on the host; on the GPU those with a CUDA handler (the confusion counts have none)
    assert {t for t, p in filed if p == "CUDA"} == {t for t, v in fk.ffi_handlers().items() if "cuda" in v}
    assert {p for _, p in filed} <= {"Host", "CUDA"}


def test_raw_custom_call_rejects_float_sparse_labels():
    """The handlers check the label dtype themselves: the custom-call target can
    be called without fastiou.jax's checks, and a float label must not be
    truncated to a class (on the GPU, NaN would become class 0)."""
    from fastiou.jax import _attrs, _stats_call

    z = jnp.zeros((2, 4, 4, 3))
    labels = jnp.ones((2, 4, 4), jnp.float32)
    # from_logits, per_image, softmax, sparse, ignore, weights, check_range
    opts = (True, False, True, True, None, False, True)
    assert _attrs(opts)["sparse"] == 1
    with pytest.raises(Exception, match=r"sparse labels \(class indices\) must be uint8, int32 or int64, "
                                        r"got float32"):
        jax.block_until_ready(_stats_call(labels, z, jnp.zeros((), z.dtype), opts))
    # The same call with integer labels runs: only the dtype is refused.
    sums = _stats_call(labels.astype(jnp.int32), z, jnp.zeros((), z.dtype), opts)
    np.testing.assert_allclose(np.asarray(sums[2]), [0.0, 32.0, 0.0])


@pytest.mark.parametrize("x64", [False, True])
def test_confusion_counts_call_matches_the_oracle(rng, x64):
    """The metrics' counts as an XLA custom call under jit, on JAX's default
    device: float64 counts with x64, else float32 (the float64 counts
    rounded once; exact here, below 2**24)."""
    from fastiou._backends import jax as jax_backend

    K = 21
    y_true, y_pred, w = confusion_case(rng, batch=2, pixels=5000, num_classes=K, true_rule="index",
                                       pred_rule="argmax", true_dtype="uint8", pred_dtype="float32",
                                       weights="image", fractional=False)
    want = oracle_counts(y_true, y_pred, w, num_classes=K, true_rule="index", pred_rule="argmax", ignore_class=3)
    attributes = dict(num_classes=K, pred_rule=fk.CLASS_RULES["argmax"], true_rule=fk.CLASS_RULES["index"],
                      threshold=0.5, has_weights=True, integer_weights=False, has_ignore=True, ignore_class=3,
                      deterministic=False)
    with jax.enable_x64(x64):
        call = jax.jit(lambda t, p, w: jax_backend.confusion_counts_call(t, p, w, **attributes))
        got = call(jnp.asarray(y_true), jnp.asarray(y_pred), jnp.asarray(w))
        assert got.dtype == (jnp.float64 if x64 else jnp.float32)
        np.testing.assert_array_equal(np.asarray(got, np.float64), want)


@pytest.mark.parametrize("K", [256, 257])
def test_confusion_counts_call_under_determinism(rng, K):
    """deterministic=True on JAX's default device: the host handler runs
    every case with the same bits as without it; the CUDA handler (under
    `make gpu-check`) refuses fractional weights past 256 classes, whose
    atomics can differ between runs, with the message of
    csrc/core/confusion.h, and runs 256 classes with the same bits."""
    from fastiou._backends import jax as jax_backend

    y_true, y_pred, w = confusion_case(rng, batch=2, pixels=3000, num_classes=K, true_rule="index",
                                       pred_rule="argmax", true_dtype="int32", pred_dtype="float32",
                                       weights="pixel", fractional=True)
    want = oracle_counts(y_true, y_pred, w, num_classes=K, true_rule="index", pred_rule="argmax")
    attributes = dict(num_classes=K, pred_rule=fk.CLASS_RULES["argmax"], true_rule=fk.CLASS_RULES["index"],
                      threshold=0.5, has_weights=True, integer_weights=False, has_ignore=False, ignore_class=0)
    args = (jnp.asarray(y_true), jnp.asarray(y_pred), jnp.asarray(w))

    def run(deterministic):
        call = jax.jit(lambda t, p, w: jax_backend.confusion_counts_call(t, p, w, deterministic=deterministic,
                                                                         **attributes))
        return np.asarray(jax.block_until_ready(call(*args)), np.float64)

    with jax.enable_x64(True):
        plain = run(False)
        np.testing.assert_allclose(plain, want, rtol=1e-12, atol=1e-9)
        if jax.default_backend() != "cpu" and K > 256:
            with pytest.raises(jax.errors.JaxRuntimeError, match=r"over more than 256 classes \(here 257\)"):
                run(True)
        else:
            assert run(True).tobytes() == plain.tobytes()

"""The benchmark report's arithmetic and plots, on hand-made rows (no timing)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import bench_losses  # noqa: E402


def test_fused_bytes_hand_computed():
    # 2x3x1 float32 logits, float32 mask: forward 6*4 + 6*4, backward 6*4 (t) + 6*4 (z) + 6*4 (write).
    assert bench_losses.fused_bytes((2, 3, 1), "logits", 4) == 5 * 24
    # Probabilities skip reading z in the backward pass; a uint8 mask is 1 byte per element.
    assert bench_losses.fused_bytes((2, 3, 1), "probabilities", 1) == 24 + 6 + 6 + 24
    # Multi-class: sparse uint8 labels, one byte per pixel (4 pixels, 5 channels).
    assert bench_losses.fused_bytes((4, 5), "logits", 1) == (80 + 4) + (4 + 80 + 80)


def test_copy_bandwidth_is_measured():
    r = bench_losses.copy_bandwidth(nbytes=8 * 2**20, threads=2, repeats=3)
    assert r["copy_bytes_per_s"] > 1e8 and r["copy_threads"] == 2


def _rows():
    rows = []
    for case, shape, scale in (("a", (4, 64, 64, 1), 1), ("b", (8, 128, 128, 1), 4)):
        for impl, t in (("fused", 1.0), ("keras", 3.0)):
            rows.append(dict(case=case, shape=list(shape), inputs="logits", impl=impl, device="cpu",
                             elements=shape[0] * shape[1] * shape[2], time_s=t * scale / 1e3,
                             peak_extra_masks=1.0 if impl == "fused" else 2.0,
                             bandwidth_fraction=0.5 if impl == "fused" else None,
                             speedup_vs_keras=3.0 / t if impl == "fused" else 1.0))
    return rows


def test_plots_and_table(tmp_path):
    pytest.importorskip("matplotlib")
    written = bench_losses.plot(_rows(), str(tmp_path / "r"), "test")
    assert [os.path.basename(f) for f in written] == ["r-time.png", "r-memory.png"]
    assert all(os.path.getsize(f) > 5000 for f in written)
    table = bench_losses.markdown_table(_rows(), {"cpu": "X", "cores": 2, "tensorflow": "2.21"}, "float32")
    assert "| a | logits | 1.0 | 3.0 | n/a | n/a | n/a | n/a | 3.00x | 50% | 1.00 / 2.00 |" in table


@pytest.mark.slow
def test_rows_record_the_configuration_their_children_ran(tmp_path):
    """Each row's child reports what it computed and the parent checks it: a
    logits row runs from logits, a probabilities row from probabilities."""
    import json

    out = tmp_path / "run.json"
    bench_losses.main(["--cases", "4x128x128x21", "--inputs", "logits", "probabilities", "--impls", "fused",
                       "--repeats", "1", "--gpu", "no", "--no-plots", "--json", str(out)])
    rows = json.loads(out.read_text())["results"]
    by_inputs = {r["inputs"]: r for r in rows}
    assert set(by_inputs) == {"logits", "probabilities"}
    assert by_inputs["logits"]["config"]["from_logits"] is True
    assert by_inputs["logits"]["config"]["pred_is_probability"] is False
    assert by_inputs["probabilities"]["config"]["from_logits"] is False
    assert by_inputs["probabilities"]["config"]["pred_is_probability"] is True
    for r in rows:
        assert r["config"]["shape"] == [4, 128, 128, 21] and r["config"]["true_dtype"] == "uint8"
        # The time comes from a child with the defaults, the peak from one with the probe.
        assert r["config"]["settings"] == {key: None for key in bench_losses.MEMORY_PROBE_ENV}
        assert r["memory_config"]["settings"] == bench_losses.MEMORY_PROBE_ENV
    # From logits the backward pass reads z as well: more bytes for the same time budget.
    assert by_inputs["logits"]["fused_bytes"] > by_inputs["probabilities"]["fused_bytes"]


def test_a_child_that_ran_something_else_is_refused():
    config = {"inputs": "logits", "from_logits": False, "shape": [2, 3, 1], "impl": "fused",
              "pred_is_probability": True, "cpu_target": bench_losses.fastiou_cpu_target()}
    with pytest.raises(RuntimeError, match="ran"):
        bench_losses.check_config(config, (2, 3, 1), "fused", "logits")
    with pytest.raises(RuntimeError, match="ran"):
        bench_losses.check_config(None, (2, 3, 1), "fused", "logits")
    ok = dict(config, from_logits=True, pred_is_probability=False)
    bench_losses.check_config(ok, (2, 3, 1), "fused", "logits")
    with pytest.raises(RuntimeError, match="probabilities as logits"):
        bench_losses.check_config(dict(ok, pred_is_probability=True), (2, 3, 1), "fused", "logits")
    # A child whose kernels ran at another SIMD level than the parent's.
    with pytest.raises(RuntimeError, match="ran"):
        bench_losses.check_config(dict(ok, cpu_target="x86-64-v1"), (2, 3, 1), "fused", "logits")


def test_time_children_run_with_the_defaults_memory_children_with_the_probe(monkeypatch):
    """A fixed mmap threshold makes every mask-sized temporary fault its pages
    in on each call, so it would slow the baselines' timed updates: time
    children run without it (even where the caller's shell sets it), memory
    children with it, and a child that ran otherwise is refused."""
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4096")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    timed = bench_losses.child_env("time", KERAS_BACKEND="jax")
    assert "MALLOC_MMAP_THRESHOLD_" not in timed and "TF_ENABLE_ONEDNN_OPTS" not in timed
    assert timed["KERAS_BACKEND"] == "jax" and timed["TF_CPP_MIN_LOG_LEVEL"] == "3"
    probed = bench_losses.child_env("memory")
    assert probed["MALLOC_MMAP_THRESHOLD_"] == "131072" and probed["TF_ENABLE_ONEDNN_OPTS"] == "0"
    # What a child reports, in the environment each kind gets.
    for measure, env in (("time", timed), ("memory", probed)):
        monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
        monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
        for key in ("MALLOC_MMAP_THRESHOLD_", "TF_ENABLE_ONEDNN_OPTS"):
            if key in env:
                monkeypatch.setenv(key, env[key])
        config = {"settings": bench_losses.measure_settings()}
        bench_losses.check_measure_settings(config, measure, "row")
        other = "memory" if measure == "time" else "time"
        with pytest.raises(RuntimeError, match=f"measured {other}"):
            bench_losses.check_measure_settings(config, other, "row")
        monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1")
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    with pytest.raises(RuntimeError, match="measured time"):
        bench_losses.check_measure_settings({}, "time", "row")


@pytest.mark.slow
def test_metrics_rows_time_with_the_defaults_and_probe_memory_apart(tmp_path):
    """The metrics benchmark's quick run: each row's time comes from a child
    with the defaults and its peak memory from one with the probe's
    settings, each checked by the parent; the two children's results agree
    with each other and with Keras'."""
    import json

    import bench_metrics

    out = tmp_path / "metrics.json"
    bench_metrics.main(["--quick", "--impls", "fused", "keras", "--repeats", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {r["impl"] for r in rows} == {"fused", "keras"} and len(rows) == 4
    for r in rows:
        assert r["config"]["settings"] == {"MALLOC_MMAP_THRESHOLD_": None, "TF_ENABLE_ONEDNN_OPTS": None}
        assert r["memory_config"]["settings"] == bench_losses.MEMORY_PROBE_ENV
        assert r["time_s"] > 0 and "peak_extra_bytes" in r
        assert r["memory_result"] == pytest.approx(r["result"], rel=1e-5)


def test_paired_ratios_hand_computed():
    import bench_cpu_levels

    # rounds 2/1, 4/2, 6/2: the slow second and third rounds hit both builds
    got = bench_cpu_levels.paired_ratios([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])
    assert got["per_round"] == [2.0, 2.0, 3.0]
    assert got["median"] == 2.0
    # a median of three of {2, 2, 3} drawn with replacement lies in [2, 3]
    assert 2.0 <= got["low"] <= got["median"] <= got["high"] <= 3.0
    same = bench_cpu_levels.paired_ratios([5.0, 7.0], [5.0, 7.0])
    assert (same["low"], same["median"], same["high"]) == (1.0, 1.0, 1.0)

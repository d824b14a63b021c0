"""The CPU kernels' SIMD levels: one copy per x86-64 level in the default
build, the best one the CPU runs chosen at load, FASTIOU_CPU_TARGET forcing a
lower one. Every level this machine runs is tested against the float64 oracle
by running the kernel test modules in a child process at that level; the
child reports the level it ran and the parent checks it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastiou.kernels as fk
from fastiou import _fastiou_kernels as ext

TESTS = Path(__file__).resolve().parent
LEVELS = ["x86-64-v2", "x86-64-v3", "x86-64-v4"]
PORTABLE = not fk.cpu_target().startswith("-march=")
# The kernel tests each level runs: every path (single-channel, tile, channel)
# against the float64 oracle, bitwise repeatability included, the
# property-based cases of the module, and the metrics' confusion counts (every
# rule and dtype, the argmax's tiles of pixels) against Keras and the oracle.
LEVEL_TESTS = ["test_sparse_paths.py", "test_kernels_module.py",
               "test_properties.py::test_module_against_the_oracle",
               "test_metrics.py::test_argmax_of_many_pixels_matches_keras",
               "test_metrics.py::test_every_dtype_reaches_the_kernel",
               "test_metrics.py::test_counts_match_the_oracle_and_repeat_bitwise"]

# Flags of /proc/cpuinfo each x86-64 level adds (the x86-64 psABI's list;
# abm is how Linux names LZCNT).
LEVEL_FLAGS = {
    2: {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"},
    3: {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"},
    4: {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}


def cpuinfo_level():
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    level = 1
    for lv in (2, 3, 4):
        if not LEVEL_FLAGS[lv] <= set(flags):
            break
        level = lv
    return level


def test_cpu_level_agrees_with_cpuinfo():
    assert ext.cpu_level() == cpuinfo_level()


def test_target_follows_the_environment():
    """Without FASTIOU_CPU_TARGET the best level this CPU runs; with it, the
    level it names (the child processes below run this test too)."""
    available = fk.cpu_targets()
    forced = os.environ.get("FASTIOU_CPU_TARGET")
    if PORTABLE:
        assert available == LEVELS[:cpuinfo_level() - 1]
    else:
        assert available == [fk.cpu_target()]
    expected = forced if forced else available[-1]
    if forced and not forced.startswith("x86-64-"):
        expected = "x86-64-" + forced
    assert fk.cpu_target() == expected


@pytest.mark.skipif(not PORTABLE, reason="a build for one -march holds one copy of the kernels")
@pytest.mark.parametrize(
    "requested, cpu, level, available, problem",
    [
        ("", 4, "x86-64-v4", LEVELS, ""),
        ("", 3, "x86-64-v3", LEVELS[:2], ""),
        ("", 2, "x86-64-v2", LEVELS[:1], ""),
        ("x86-64-v2", 4, "x86-64-v2", LEVELS, ""),
        ("v3", 4, "x86-64-v3", LEVELS, ""),
        ("x86-64-v3", 3, "x86-64-v3", LEVELS[:2], ""),
        ("x86-64-v4", 3, "", LEVELS[:2], "names a SIMD level this CPU lacks; it runs x86-64-v2, x86-64-v3"),
        ("avx2", 4, "", LEVELS, "names no SIMD level of this fastiou build"),
        ("x86-64", 4, "", LEVELS, "names no SIMD level of this fastiou build"),
        ("", 1, "", [], "need an x86-64 CPU of level x86-64-v2 at least"),
        ("x86-64-v2", 1, "", [], "need an x86-64 CPU of level x86-64-v2 at least"),
    ],
)
def test_level_choice(requested, cpu, level, available, problem):
    got_level, got_available, got_problem = ext.select_cpu_target(requested, cpu)
    assert got_level == level
    assert list(got_available) == available
    if problem:
        assert problem in got_problem
        if requested and cpu >= 2:
            assert f"FASTIOU_CPU_TARGET={requested}" in got_problem
    else:
        assert got_problem == ""


def run_child(env_value, args, timeout=900):
    env = dict(os.environ, FASTIOU_CPU_TARGET=env_value)
    return subprocess.run([sys.executable, *args], env=env, cwd=TESTS, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
@pytest.mark.skipif(not PORTABLE, reason="a build for one -march holds one copy of the kernels")
@pytest.mark.parametrize("level", LEVELS)
def test_kernels_at_every_level(level):
    """The kernel tests, run in a child process forced to `level`: each level
    this CPU runs passes them (against the float64 oracle); a level it lacks
    refuses to run, with a message naming the levels it has."""
    if level not in fk.cpu_targets():
        child = run_child(level, ["-c", "import fastiou.kernels as fk; fk.cpu_target()"], timeout=120)
        assert child.returncode != 0
        assert "names a SIMD level this CPU lacks" in child.stderr
        return
    child = run_child(level, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rN",
                              "test_cpu_levels.py::test_target_follows_the_environment", *LEVEL_TESTS])
    report = child.stdout + child.stderr
    assert child.returncode == 0, report[-4000:]
    assert " passed" in report and " failed" not in report


@pytest.mark.slow
def test_tensorflow_ops_read_the_environment():
    """The TensorFlow op library holds its own copy of the dispatcher: a bad
    FASTIOU_CPU_TARGET reaches the user as the op's error."""
    code = ("import numpy as np, fastiou\n"
            "y = np.ones((1, 4, 4, 1), np.float32)\n"
            "print(float(fastiou.jaccard_loss(y, 0.5 * y, smooth=0.0)))\n")
    child = run_child("x86-64-v9", ["-c", code], timeout=300)
    assert child.returncode != 0
    assert "FASTIOU_CPU_TARGET=x86-64-v9 names no SIMD level" in child.stderr
    ok = run_child(fk.cpu_targets()[0], ["-c", code], timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    # 1 - (0.5 * 16) / (16 + 8 - 8) = 0.5
    assert abs(float(ok.stdout.split()[-1]) - 0.5) < 1e-6

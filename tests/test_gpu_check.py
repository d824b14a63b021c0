"""The device check (`make gpu-check`), dry-run on the CPU as a GPU machine
would run it: the TensorFlow-free build (CUDA off, to keep CI short), the
module and JAX tests on CPU arrays, the GPU-only stages skipped with their
reason, and results that fit what comes back from the device machine.

The build folder is build/gpu-check-dry (FASTIOU_CHECK_BUILD_DIR to move it):
the first run compiles the module (a minute or more on 2 cores), later runs
reuse it. The budget is twice the device's, for slow or busy CI machines.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import gpu_check  # noqa: E402

STAGES = ["build", "module-tests", "cuda-tests", "jax-tests", "sanitizers", "bench"]
LINE = re.compile(r"^(?P<stage>[\w-]+)\s+(?P<status>pass|fail|skipped)\s+(?P<counts>.*?)\s+"
                  r"(?P<seconds>\d+\.\d) s(?:  (?P<note>.*))?$")

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("make") is None,
                                reason="needs cmake and make")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    build = os.environ.get("FASTIOU_CHECK_BUILD_DIR") or str(REPO / "build" / "gpu-check-dry")
    # One copy of the CPU kernels (for this machine) is enough to dry-run the check.
    env = dict(os.environ, FASTIOU_TEST_DEVICE="cpu", FASTIOU_CUDA="OFF", FASTIOU_CPU_ARCH="native",
               FASTIOU_CHECK_BUILD_DIR=build,
               FASTIOU_CHECK_K="binary-logits or errors", FASTIOU_CHECK_BUDGET="900")
    env.pop("FASTIOU_CHECK_BENCH_ARGS", None)
    proc = subprocess.run(["make", "-s", "gpu-check", f"OUT={out}", f"PYTHON={sys.executable}"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    return proc, out, Path(build)


def stages(out):
    return {s["stage"]: s for s in json.loads((out / "summary.json").read_text())["stages"]}


@pytest.mark.slow
def test_one_summary_line_per_stage(dry_run):
    proc, out, _ = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = (out / "summary.txt").read_text().splitlines()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [m["stage"] for m in matches] == STAGES
    for line in lines:
        assert line in proc.stdout  # printed as written
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["device"] == "cpu (dry run)"
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [(m["stage"], m["status"]) for m in matches]


@pytest.mark.slow
def test_build_and_tests_pass_on_the_cpu(dry_run):
    _, out, build = dry_run
    got = stages(out)
    assert got["build"]["status"] == "pass"
    assert "CUDA kernels: no" in got["build"]["note"]
    assert (build / "pkg" / "fastiou" / "kernels.py").exists()
    assert list((build / "pkg" / "fastiou").glob("_fastiou_kernels*.so"))
    module = got["module-tests"]
    assert module["status"] == "pass" and module["tests"]["passed"] > 0 and module["tests"]["failed"] == 0
    for name, package in (("cuda-tests", "torch"), ("jax-tests", "jax")):
        if gpu_check.have(package):
            assert got[name]["status"] == "pass" and got[name]["tests"]["passed"] > 0, got[name]
        else:
            assert got[name]["status"] == "skipped"
            assert got[name]["note"] == f"{'torch' if package == 'torch' else 'JAX'} not installed"
    if gpu_check.have("jax"):
        assert "on cpu" in got["jax-tests"]["note"]


@pytest.mark.slow
def test_gpu_only_stages_skip_with_their_reason(dry_run):
    _, out, _ = dry_run
    got = stages(out)
    for name in ("sanitizers", "bench"):
        assert got[name]["status"] == "skipped"
        assert got[name]["note"] == "needs a GPU (FASTIOU_TEST_DEVICE=cpu)"


@pytest.mark.slow
def test_results_fit_what_comes_back_from_the_device(dry_run):
    _, out, _ = dry_run
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 3 <= len(files) <= 8
    assert {p.name for p in files} <= set(gpu_check.OUT_FILES)
    for p in files:
        assert len(p.relative_to(out).parts) <= 3  # OUT/a/b/file at most
        assert re.fullmatch(r"[A-Za-z0-9._-]+", p.name)
        assert p.stat().st_size <= 16 * 2**20
    assert "test_kernels_module.py" in (out / "tests.log").read_text()


@pytest.mark.slow
def test_sanitizer_driver_runs_its_cases_on_host_arrays(dry_run):
    _, _, build = dry_run
    env = dict(os.environ, PYTHONPATH=str(build / "pkg"))
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check_sanitize.py"), "--device", "cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = re.search(r"sanitize driver: done, (\d+) cases on cpu", proc.stdout)
    assert done and int(done[1]) >= 10, proc.stdout
    assert "bad-label-raises" in proc.stdout


def test_pytest_stage_counts_and_status(tmp_path, monkeypatch):
    (tmp_path / "test_mixed.py").write_text(
        "import pytest\n"
        "def test_ok():\n    pass\n"
        "def test_bad():\n    assert 1 == 2\n"
        "def test_later():\n    pytest.skip('not here')\n")
    (tmp_path / "test_skipped.py").write_text(
        "import pytest\npytest.skip('no GPU visible', allow_module_level=True)\n")
    monkeypatch.setenv("FASTIOU_CHECK_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.delenv("FASTIOU_CHECK_K", raising=False)
    check = gpu_check.Check(tmp_path)
    check.work.mkdir(parents=True)
    assert check.pytest("mixed", [tmp_path / "test_mixed.py"], 120, False) == (
        "fail", "1 passed, 1 failed, 1 skipped", "pytest exit code 1; failed: test_bad: see tests.log")
    assert check.pytest("skipped", [tmp_path / "test_skipped.py"], 120, False) == (
        "skipped", "0 passed, 0 failed, 1 skipped", "no GPU visible")
    status, _, note = check.pytest("skipped", [tmp_path / "test_skipped.py"], 120, True)
    assert status == "fail" and note == "all skipped on a GPU machine: no GPU visible"


def test_tensorflow_free_module_keeps_definitions_not_tests(tmp_path):
    (tmp_path / "helpers_tf.py").write_text(
        "import re\nimport tensorflow as tf\nMODES = [1, 2]\nPATTERN = re.compile('a+')\n"
        "LOOKS_AT_TF = tf.float32\n"
        "def helper(x):\n    return tf.constant(x)\n"
        "def test_something():\n    pass\n")
    code = ("import sys, gpu_check_pytest as g; m = g.tensorflow_free_module(sys.argv[1], 'helpers_tf'); "
            "print(sorted(k for k in vars(m) if not k.startswith('__'))); "
            "import importlib.util as u; print(u.find_spec('tensorflow'))")
    env = dict(os.environ, PYTHONPATH=str(REPO / "tools"))
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "helpers_tf.py")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names, spec = proc.stdout.splitlines()
    assert names == "['MODES', 'PATTERN', 'helper', 're']"
    assert spec == "None"


@pytest.mark.slow
def test_prebuilt_module_used_and_a_broken_one_built_instead(dry_run, tmp_path, monkeypatch):
    _, _, build = dry_run
    module = sorted(build.glob("_fastiou_kernels*.so"))[-1]
    monkeypatch.setenv("FASTIOU_TEST_DEVICE", "cpu")
    monkeypatch.setenv("FASTIOU_CUDA", "OFF")
    monkeypatch.setenv("FASTIOU_CHECK_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.setenv("FASTIOU_CHECK_PREBUILT", str(module))
    check = gpu_check.Check(tmp_path)
    status, _, note = check.build(120)
    assert status == "pass" and note.startswith(f"prebuilt {module.name}; CUDA kernels: no"), note
    assert check.built and check.module["file"].startswith(str(tmp_path / "build" / "pkg"))

    # A file that does not import: the check says so and builds (here it runs
    # out of its 1 s at once, which is enough to see that it tried).
    broken = tmp_path / module.name
    broken.write_text("not a module")
    monkeypatch.setenv("FASTIOU_CHECK_PREBUILT", str(broken))
    check = gpu_check.Check(tmp_path)
    status, _, note = check.build(1)
    assert status == "fail" and note.startswith("configure: stopped after"), note
    log = (tmp_path / "build.log").read_text()
    assert "prebuilt module not used (the built module does not import" in log
    assert "$ cmake -S" in log.split("prebuilt module not used")[-1]


def test_bench_summary_against_each_peer():
    def row(case, impl, time_s, gpu_time_s, share=None):
        return {"case": case, "inputs": "logits", "impl": impl, "time_s": time_s, "gpu_time_s": gpu_time_s,
                "kernel_bandwidth_fraction": share}

    rows = [row("a", "fused-cuda", 1.0, 0.1, 0.5), row("a", "torch-eager", 2.0, 0.3),
            row("a", "torch-compile", 0.5, 0.05),
            row("b", "fused-cuda", 2.0, 1.0, 0.9), row("b", "torch-eager", 3.0, 2.0),
            row("b", "torch-compile", 1.0, 1.0)]
    assert gpu_check.bench_summary(rows) == (
        "vs torch-eager: step 1.5x to 2.0x, kernels 2.0x to 3.0x; "
        "vs torch-compile: step 0.5x to 0.5x, kernels 0.5x to 1.0x; "
        "fastiou's kernels at 50% to 90% of copy bandwidth")

#!/usr/bin/env python3
"""The device check: fastiou's CUDA kernels built and exercised on a GPU
machine in one command, without TensorFlow (`make gpu-check OUT=dir`).

Stages, each with a time limit inside one overall budget; a failing stage does
not stop the later ones, except that nothing runs without a build:

  build         the TensorFlow-free module with the machine's nvcc (sm_90 by
                default), copied with python/fastiou into a package folder
  module-tests  tests/test_kernels_module.py, tests/test_confusion_kernels.py
  cuda-tests    tests/test_cuda.py, tests/test_cuda_streams.py: the CUDA kernels
                on PyTorch tensors
  jax-tests     tests/test_jax.py with JAX on the GPU: the CUDA XLA FFI handlers
  sanitizers    compute-sanitizer memcheck, racecheck, synccheck and initcheck
                on tools/gpu_check_sanitize.py (small cases of every mode)
  bench         the GPU cases of benchmarks/bench_losses.py: JSON and plot

It writes at most eight files to OUT: summary.txt (one line per stage: name,
pass/fail/skipped, counts, seconds, note), summary.json, build.log, tests.log,
sanitizer.log, bench.log, bench.json and bench.png. It exits non-zero when a
stage failed.

FASTIOU_TEST_DEVICE=cpu dry-runs it on a machine without a GPU: the tests run
on CPU arrays and the GPU-only stages report themselves skipped. The test
processes never import TensorFlow (tools/gpu_check_pytest.py), wherever it is
installed, so a dry run takes the paths the GPU machine takes.

Settings, from the environment or as make variables:
  FASTIOU_CUDA                ON, OFF or AUTO (default ON; AUTO for a dry run)
  FASTIOU_CUDA_ARCHITECTURES  CUDA architectures to build (default 90)
  FASTIOU_CPU_ARCH            one -march for the CPU kernels (default: empty, one copy per x86-64 level)
  FASTIOU_CHECK_BUILD_DIR     build folder, reused between runs (default build/gpu-check)
  FASTIOU_CHECK_BUDGET        seconds for the whole check (default 450)
  FASTIOU_CHECK_K             a pytest -k expression for the test stages
  FASTIOU_CHECK_BENCH_ARGS    extra arguments of bench_losses.py (e.g. --quick)
  FASTIOU_CHECK_JOBS          parallel build jobs (default: all cores)
  FASTIOU_CHECK_PREBUILT      a _fastiou_kernels module built elsewhere for this machine's Python
                              (same settings); used instead of building when it imports, else built
"""

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"
PY = sys.executable
OUT_FILES = ("summary.txt", "summary.json", "build.log", "tests.log", "sanitizer.log", "bench.log",
             "bench.json", "bench.png")
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
MAX_LOG_BYTES = 15 * 2**20

# name, method, longest time (s), time kept back for it while earlier stages run (s), GPU only
STAGES = [
    ("build", "build", float("inf"), 0, False),
    ("module-tests", "module_tests", 60, 15, False),
    ("cuda-tests", "cuda_tests", 150, 30, False),
    ("jax-tests", "jax_tests", 120, 30, False),
    ("sanitizers", "sanitizers", 160, 60, True),
    ("bench", "bench", 240, 45, True),
]


def have(module):
    return importlib.util.find_spec(module) is not None


class Check:
    def __init__(self, out):
        self.out = out
        self.gpu = os.environ.get("FASTIOU_TEST_DEVICE", "cuda") != "cpu"
        self.cuda = (os.environ.get("FASTIOU_CUDA") or ("ON" if self.gpu else "AUTO")).upper()
        self.archs = os.environ.get("FASTIOU_CUDA_ARCHITECTURES") or "90"
        self.build_dir = Path(os.environ.get("FASTIOU_CHECK_BUILD_DIR") or REPO / "build" / "gpu-check")
        self.build_dir = self.build_dir.resolve()
        self.pkg = self.build_dir / "pkg"
        self.work = self.build_dir / "work"
        self.budget = float(os.environ.get("FASTIOU_CHECK_BUDGET") or 450)
        self.select = os.environ.get("FASTIOU_CHECK_K") or ""
        self.start = time.monotonic()
        self.results = []
        self.built = False
        self.module = {}
        self.tests = None  # pass/fail/skip counts of the stage's pytest run

    # --- running commands -------------------------------------------------------

    def env(self):
        env = dict(os.environ)
        paths = [str(self.pkg), str(TOOLS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1",
                   FASTIOU_TEST_DEVICE="cuda" if self.gpu else "cpu",
                   JAX_PLATFORMS="cuda,cpu" if self.gpu else "cpu", XLA_PYTHON_CLIENT_PREALLOCATE="false")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return env

    def run(self, cmd, log, timeout, env=None):
        """Runs cmd with its output appended to OUT/log; (exit code or None, timed out)."""
        cmd = [str(c) for c in cmd]
        with open(self.out / log, "a") as f:
            f.write(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}\n")
            f.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, env=env or self.env(), stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                return proc.wait(timeout=max(timeout, 1)), False
            except subprocess.TimeoutExpired:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(proc.pid, sig)
                        proc.wait(timeout=10)
                        break
                    except ProcessLookupError:
                        break
                    except subprocess.TimeoutExpired:
                        continue
                f.write(f"\n[gpu-check] stopped after {timeout:.0f} s, the stage's time limit\n")
                return None, True

    def probe(self, code, timeout=120):
        """Runs Python code in the test environment; its last output line as JSON, or raises."""
        proc = subprocess.run([PY, "-c", code], cwd=REPO, env=self.env(), capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else
                               f"exit code {proc.returncode}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    # --- stages -----------------------------------------------------------------

    def build(self, timeout):
        prebuilt = os.environ.get("FASTIOU_CHECK_PREBUILT")
        if prebuilt:
            status, counts, note = self.install(Path(prebuilt).resolve(), f"prebuilt {Path(prebuilt).name}")
            if status == "pass":
                return status, counts, note
            with open(self.out / "build.log", "a") as f:
                f.write(f"\n[gpu-check] prebuilt module not used ({note}); building\n")
        bdir, deadline = self.build_dir, time.monotonic() + timeout
        self.work.mkdir(parents=True, exist_ok=True)
        cmd = ["cmake", "-S", REPO, "-B", bdir, "-DFASTIOU_WITH_TENSORFLOW=OFF", f"-DFASTIOU_CUDA={self.cuda}",
               f"-DPython_EXECUTABLE={PY}", "-DCMAKE_BUILD_TYPE=Release",
               f"-DFASTIOU_CPU_ARCH={os.environ.get('FASTIOU_CPU_ARCH', '')}"]
        if shutil.which("ninja") and not (bdir / "CMakeCache.txt").exists():
            cmd += ["-G", "Ninja"]
        if self.cuda != "OFF":
            cmd += [f"-DFASTIOU_CUDA_ARCHITECTURES={self.archs}", f"-DCMAKE_CUDA_ARCHITECTURES={self.archs}"]
        jobs = os.environ.get("FASTIOU_CHECK_JOBS") or str(os.cpu_count() or 2)
        for what, step in (("configure", cmd), ("compile", ["cmake", "--build", bdir, "-j", jobs])):
            rc, timed_out = self.run(step, "build.log", deadline - time.monotonic())
            if rc != 0:
                why = f"stopped after {timeout:.0f} s" if timed_out else f"exit code {rc}"
                return "fail", "-", f"{what}: {why}: see build.log"
        built = sorted(bdir.glob("_fastiou_kernels*.so"))
        if not built:
            return "fail", "-", "no _fastiou_kernels module in the build folder: see build.log"
        return self.install(built[-1], "built here")

    def install(self, module, origin):
        """The package folder: python/fastiou with the module; checks that it imports."""
        if not module.is_file():
            return "fail", "-", f"no module at {module}"
        shutil.rmtree(self.pkg, ignore_errors=True)
        shutil.copytree(REPO / "python" / "fastiou", self.pkg / "fastiou",
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        shutil.copy2(module, self.pkg / "fastiou")
        code = ("import json, fastiou.kernels as fk; "
                "r = getattr(fk, 'cuda_unavailable_reason', lambda: None); "
                "print(json.dumps({'file': fk.__file__, 'cuda': fk.built_with_cuda(), "
                "'devices': fk.cuda_device_count(), 'reason': r(), "
                "'ffi': sorted({p for v in fk.ffi_handlers().values() for p in v})}))")
        try:
            self.module = info = self.probe(code)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as err:
            return "fail", "-", f"the built module does not import: {err}"
        with open(self.out / "build.log", "a") as f:
            f.write(f"\n[gpu-check] built module: {json.dumps(info)}\n")
        if not info["file"].startswith(str(self.pkg)):
            return "fail", "-", f"fastiou.kernels came from {info['file']}, not the build"
        self.built = True
        archs = f" (CUDA architectures {self.archs})" if info["cuda"] else ""
        note = (f"{origin}; CUDA kernels: {'yes' if info['cuda'] else 'no'}{archs}, "
                f"{info['devices']} GPU(s) visible, "
                f"XLA FFI: {'+'.join(info['ffi']) or 'none'}")
        if self.gpu and self.cuda != "OFF" and not info["cuda"]:
            return "fail", "-", note + "; built without the CUDA kernels: see build.log"
        if self.gpu and info["cuda"] and (info["reason"] or not info["devices"]):
            return "fail", "-", note + f"; the GPU is unusable: {info['reason'] or 'no CUDA device'}"
        return "pass", "-", note

    def pytest(self, name, files, timeout, must_run, extra=()):
        junit = self.work / f"junit-{name}.xml"
        junit.unlink(missing_ok=True)
        cmd = [PY, "-m", "pytest", "-q", "-rfEs", "-p", "gpu_check_pytest", "-p", "no:cacheprovider",
               f"--junitxml={junit}", *files, *extra]
        if self.select:
            cmd += ["-k", self.select]
        rc, timed_out = self.run(cmd, "tests.log", timeout)
        counts = junit_counts(junit)
        self.tests = {k: counts[k] for k in ("passed", "failed", "skipped")}
        text = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
        reasons = "; ".join(counts["reasons"][:2])
        if timed_out:
            return "fail", text, f"stopped after {timeout:.0f} s: see tests.log"
        if rc in (0, 5) and counts["tests"] == 0:
            return "skipped", text, "no test selected"
        if rc not in (0, 5) or counts["failed"]:
            failed = counts["failures"]
            named = f"; failed: {', '.join(failed[:4])}{' ...' if len(failed) > 4 else ''}" if failed else ""
            return "fail", text, f"pytest exit code {rc}{named}: see tests.log"
        if counts["passed"] == 0:
            if must_run:
                return "fail", text, f"all skipped on a GPU machine: {reasons}"
            return "skipped", text, reasons
        return "pass", text, f"skipped: {reasons}" if reasons else ""

    def module_tests(self, timeout):
        extra = []
        if self.cuda == "OFF":  # that test asserts the default build, CUDA wherever nvcc is
            extra = ["--deselect", "tests/test_kernels_module.py::test_cuda_built_where_nvcc_is_found"]
        status, counts, note = self.pytest("module-tests", ["tests/test_kernels_module.py", "tests/test_confusion_kernels.py"],
                                            timeout, False, extra)
        if extra:
            note = "; ".join(filter(None, [note, "CUDA off: deselected test_cuda_built_where_nvcc_is_found"]))
        return status, counts, note

    def cuda_tests(self, timeout):
        if not have("torch"):
            return "skipped", "-", "torch not installed"
        device = "the GPU" if self.gpu else "CPU tensors (FASTIOU_TEST_DEVICE=cpu)"
        files = ["tests/test_cuda.py", "tests/test_cuda_streams.py"]
        status, counts, note = self.pytest("cuda-tests", files, timeout, self.gpu)
        return status, counts, "; ".join(filter(None, [f"on {device}", note]))

    def jax_tests(self, timeout):
        if not have("jax"):
            return "skipped", "-", "JAX not installed"
        code = ("import json, importlib.util as u, jax, fastiou.kernels as fk; "
                "print(json.dumps({'backend': jax.default_backend(), 'version': jax.__version__, "
                "'keras': u.find_spec('keras') is not None, "
                "'cuda_ffi': all('cuda' in v for v in fk.ffi_handlers().values()) and bool(fk.ffi_handlers())}))")
        try:
            info = self.probe(code, timeout=min(120, timeout))
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as err:
            with open(self.out / "tests.log", "a") as f:
                f.write(f"\n[gpu-check] jax-tests: JAX does not start: {err}\n")
            return "fail", "-", f"JAX does not start: {err}"
        where = f"JAX {info['version']} on {info['backend']}"
        if self.gpu and info["backend"] != "gpu":
            return "fail", "-", f"{where}, not the GPU"
        if self.gpu and not info["cuda_ffi"]:
            return "fail", "-", f"{where}, but the build has no CUDA XLA FFI handlers"
        extra, notes = [], [where]
        if not info["keras"]:  # that test imports fastiou on Keras' JAX backend
            extra = ["--deselect", "tests/test_jax.py::test_importing_on_the_jax_backend_imports_no_tensorflow"]
            notes.append("keras not installed: deselected test_importing_on_the_jax_backend_imports_no_tensorflow")
        status, counts, note = self.pytest("jax-tests", ["tests/test_jax.py"], timeout, self.gpu, extra)
        return status, counts, "; ".join(filter(None, notes + [note]))

    def sanitizers(self, timeout):
        tool = shutil.which("compute-sanitizer") or next(
            (str(p) for p in Path("/usr/local").glob("cuda*/bin/compute-sanitizer")), None)
        if tool is None:
            return "skipped", "-", "compute-sanitizer not found"
        if not have("torch"):
            return "skipped", "-", "torch not installed"
        deadline, outcome = time.monotonic() + timeout, {}
        for k, name in enumerate(SANITIZER_TOOLS):
            limit = (deadline - time.monotonic()) / (len(SANITIZER_TOOLS) - k)
            log = self.out / "sanitizer.log"
            start = log.stat().st_size if log.exists() else 0
            cmd = [tool, "--tool", name, "--error-exitcode", "86", "--print-limit", "50",
                   PY, TOOLS / "gpu_check_sanitize.py", "--device", "cuda"]
            rc, timed_out = self.run(cmd, "sanitizer.log", limit)
            with open(log, errors="replace") as f:
                f.seek(start)
                text = f.read()
            errors = re.findall(r"SUMMARY: .*?(\d+) errors?", text)
            if timed_out:
                outcome[name] = f"stopped after {limit:.0f} s"
            elif "Device not supported" in text or "device is not supported" in text.lower():
                outcome[name] = "unsupported"
            elif rc == 0 and "sanitize driver: done" in text:
                outcome[name] = "clean"
            elif rc == 86 or (errors and errors[-1] != "0"):
                outcome[name] = f"{errors[-1] if errors else 'some'} errors"
            else:
                outcome[name] = f"exit code {rc}"
        clean = sum(v == "clean" for v in outcome.values())
        note = ", ".join(f"{k} {v}" for k, v in outcome.items())
        if all(v == "unsupported" for v in outcome.values()):
            return "skipped", "-", "compute-sanitizer does not support this device: " + note
        return ("pass" if clean == len(outcome) else "fail"), f"{clean}/{len(outcome)} tools clean", note

    def bench(self, timeout):
        if not have("torch"):
            return "skipped", "-", "torch not installed"
        bench_dir = self.work / "bench"
        shutil.rmtree(bench_dir, ignore_errors=True)
        bench_dir.mkdir(parents=True)
        args = shlex.split(os.environ.get("FASTIOU_CHECK_BENCH_ARGS", ""))
        notes = []
        if not args and timeout < 90:
            args, notes = ["--quick"], [f"--quick: {timeout:.0f} s left"]
        cmd = [PY, REPO / "benchmarks" / "bench_losses.py", "--no-cpu", "--gpu", "yes",
               "--json", bench_dir / "bench.json", *args]
        rc, timed_out = self.run(cmd, "bench.log", timeout)
        if timed_out or rc != 0:
            return "fail", "-", (f"stopped after {timeout:.0f} s" if timed_out else f"exit code {rc}") + \
                ": see bench.log"
        with open(bench_dir / "bench.json") as f:
            saved = json.load(f)
        shutil.copy2(bench_dir / "bench.json", self.out / "bench.json")
        gpu_rows = [r for r in saved["results"] if r["device"] == "gpu" and r.get("time_s")]
        fused = [r for r in gpu_rows if r["impl"] == "fused-cuda"]
        if not fused:
            return "fail", "0 cases", "no GPU rows in bench.json"
        notes.append(f"{saved['machine'].get('gpu', {}).get('name', 'GPU')}: " + bench_summary(gpu_rows))
        notes.append(merge_plots(sorted(bench_dir.glob("bench*.png"), reverse=True), self.out / "bench.png"))
        return "pass", f"{len(fused)} cases", "; ".join(filter(None, notes))

    # --- the whole check --------------------------------------------------------

    def write_summary(self):
        lines = [summary_line(r) for r in self.results]
        (self.out / "summary.txt").write_text("".join(line + "\n" for line in lines))
        payload = {"device": "gpu" if self.gpu else "cpu (dry run)", "fastiou_cuda": self.cuda,
                   "cuda_architectures": self.archs, "module": self.module, "machine": machine(),
                   "seconds": round(time.monotonic() - self.start, 1), "stages": self.results,
                   "ok": not any(r["status"] == "fail" for r in self.results)}
        (self.out / "summary.json").write_text(json.dumps(payload, indent=1) + "\n")

    def main(self):
        deadline = self.start + self.budget
        mode = "GPU" if self.gpu else "dry run on the CPU (FASTIOU_TEST_DEVICE=cpu)"
        print(f"fastiou device check: {mode}, FASTIOU_CUDA={self.cuda}, budget {self.budget:.0f} s, "
              f"results in {self.out}", flush=True)
        for k, (name, method, cap, _, gpu_only) in enumerate(STAGES):
            kept = sum(s[3] for s in STAGES[k + 1:] if self.gpu or not s[4])
            timeout = min(cap, deadline - time.monotonic() - kept)
            began, self.tests = time.monotonic(), None
            if gpu_only and not self.gpu:
                status, counts, note = "skipped", "-", "needs a GPU (FASTIOU_TEST_DEVICE=cpu)"
            elif name != "build" and not self.built:
                status, counts, note = "skipped", "-", "nothing to test: the build failed"
            elif timeout < 10:
                status, counts, note = "skipped", "-", f"out of time: {timeout:.0f} s left of the budget"
            else:
                try:
                    status, counts, note = getattr(self, method)(timeout)
                except Exception as err:  # a broken stage must not stop the others
                    status, counts, note = "fail", "-", f"{type(err).__name__}: {err}"
            self.results.append({"stage": name, "status": status, "counts": counts, "note": note,
                                 "seconds": round(time.monotonic() - began, 1), "tests": self.tests})
            print(summary_line(self.results[-1]), flush=True)
            self.write_summary()
        for name in OUT_FILES:
            cap_log(self.out / name)
        total = {s: sum(r["status"] == s for r in self.results) for s in ("pass", "fail", "skipped")}
        print(f"gpu-check: {total['pass']} passed, {total['fail']} failed, {total['skipped']} skipped "
              f"in {time.monotonic() - self.start:.0f} s; results in {self.out}", flush=True)
        return 1 if total["fail"] else 0


def bench_summary(rows):
    """The GPU rows in a line: fastiou's step and kernel time against each peer, and
    the share of the copy bandwidth its kernels reach."""
    fused = {(r["case"], r["inputs"]): r for r in rows if r["impl"] == "fused-cuda"}

    def span(values, fmt):
        values = [v for v in values if v]
        return f"{fmt(min(values))} to {fmt(max(values))}" if values else "-"

    def x(v):
        return f"{v:.1f}x"

    parts = []
    for peer in dict.fromkeys(r["impl"] for r in rows if r["impl"] != "fused-cuda"):
        pairs = [(fused[k], r) for r in rows if r["impl"] == peer
                 for k in [(r["case"], r["inputs"])] if k in fused]
        step = span([p["time_s"] / f["time_s"] for f, p in pairs], x)
        kernels = span([p["gpu_time_s"] / f["gpu_time_s"] for f, p in pairs
                        if p.get("gpu_time_s") and f.get("gpu_time_s")], x)
        parts.append(f"vs {peer}: step {step}, kernels {kernels}")
    share = span([r.get("kernel_bandwidth_fraction") for r in fused.values()], lambda v: f"{v:.0%}")
    return "; ".join(parts + [f"fastiou's kernels at {share} of copy bandwidth"])


def summary_line(r):
    return f"{r['stage']:<13} {r['status']:<8} {r['counts']:<34} {r['seconds']:6.1f} s  {r['note']}".rstrip()


def junit_counts(path):
    counts = {"tests": 0, "passed": 0, "failed": 0, "skipped": 0, "reasons": [], "failures": []}
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return counts
    for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        counts["tests"] += int(suite.get("tests", 0))
        counts["failed"] += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        counts["skipped"] += int(suite.get("skipped", 0))
    counts["passed"] = counts["tests"] - counts["failed"] - counts["skipped"]
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failures"].append(case.get("name", "?"))
    for skipped in root.iter("skipped"):
        reason = skipped.get("message", "")
        if reason == "collection skipped":  # a module-level skip: the reason is in the text
            found = re.search(r"Skipped: (.*?)['\"]\)\s*$", skipped.text or "")
            reason = found[1] if found else reason
        reason = re.sub(r"^Skipped: ", "", reason).strip()
        if reason and reason not in counts["reasons"]:
            counts["reasons"].append(reason)
    return counts


def merge_plots(pngs, target):
    """The benchmark's plots stacked into one PNG; returns a note if that failed."""
    if not pngs:
        return "no plot: matplotlib not installed"
    try:
        import matplotlib.image as mpimg
        import numpy as np
    except ImportError:
        shutil.copy2(pngs[0], target)
        return f"plot: {pngs[0].name} only"
    images = [mpimg.imread(p)[..., :3] for p in pngs]
    width = max(i.shape[1] for i in images)
    padded = [np.pad(i, ((0, 0), (0, width - i.shape[1]), (0, 0)), constant_values=1.0) for i in images]
    mpimg.imsave(target, np.concatenate(padded, axis=0))
    return ""


def machine():
    desc = {"python": sys.version.split()[0], "cores": os.cpu_count()}
    for key, cmd in (("gpu", ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]),
                     ("nvcc", ["nvcc", "--version"])):
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
            desc[key] = text.splitlines()[-1] if key == "nvcc" and text else text or None
        except (OSError, subprocess.SubprocessError):
            desc[key] = None
    return desc


def cap_log(path):
    """Keeps a file under the 16 MiB that come back from the device: head and tail."""
    if path.exists() and path.stat().st_size > MAX_LOG_BYTES:
        data = path.read_bytes()
        half = MAX_LOG_BYTES // 2
        path.write_bytes(data[:half] + b"\n[gpu-check] ... cut ...\n" + data[-half:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "build" / "gpu-check-out"),
                        help="folder for the results (default: $OUT, else build/gpu-check-out)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in OUT_FILES:  # results of an earlier run
        (out / name).unlink(missing_ok=True)
    return Check(out).main()


if __name__ == "__main__":
    sys.exit(main())

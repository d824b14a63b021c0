"""Checks what `make wheel` wrote to dist/, then tests the wheel as a user gets it.

1. The wheel: a `manylinux_*_x86_64` tag (file name and WHEEL file), the
   metadata a user expects (Requires-Python, the license and its file, the
   TensorFlow pin of the `tensorflow` extra admitting the TensorFlow the op
   library was compiled against and nothing of another minor version), and
   no library bundled by the repair (TensorFlow's come from its own wheel).
2. The sdist: the sources a build needs.
3. A fresh virtual environment gets the wheel with its `tensorflow`, `jax` and
   `test` extras, binaries only (`--only-binary=:all:`: nothing is compiled),
   and fastiou is imported from there, not from the source tree.
4. The kernel, op, XLA and JAX tests run against that installed package at the
   SIMD level the CPU chooses, and the kernel tests again at every lower level
   it runs (forced by FASTIOU_CPU_TARGET), each run reporting its level.

Usage: python tools/check_wheel.py [--dist dist] [--venv build/wheel-venv]
Run by `make test-wheel` (after `make wheel`); CI runs it after `make test`.
"""

import argparse
import email.parser
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile

from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The installed-package tests: the kernels module, the sparse and tile paths,
# the module's property-based cases, the TF ops, the XLA custom calls and fastiou.jax.
TESTS = ["tests/test_kernels_module.py", "tests/test_sparse_paths.py", "tests/test_properties.py",
         "tests/test_forward.py", "tests/test_xla.py", "tests/test_jax.py", "tests/test_metrics.py"]
# At each forced lower level: the kernels against the float64 oracle.
LEVEL_TESTS = ["tests/test_kernels_module.py", "tests/test_sparse_paths.py",
               "tests/test_properties.py::test_module_against_the_oracle",
               "tests/test_metrics.py::test_counts_match_the_oracle_and_repeat_bitwise",
               "tests/test_metrics.py::test_every_dtype_reaches_the_kernel"]
SDIST_NEEDS = ["CMakeLists.txt", "pyproject.toml", "LICENSE", "README.md", "csrc/core/overlap_kernels.h",
               "csrc/cpu/overlap_cpu.cc", "cmake/check_level_symbols.cmake", "python/fastiou/__init__.py"]

PROBE = """
import json, sys, fastiou, fastiou.kernels as k
print(json.dumps({"file": fastiou.__file__, "prefix": sys.prefix, "cpu_target": k.cpu_target(),
                  "cpu_targets": list(k.cpu_targets()), "cuda": fastiou.built_with_cuda()}))
"""


class WheelError(Exception):
    pass


def log(message):
    print(f"[check-wheel] {message}", flush=True)


def one(paths, what):
    if len(paths) != 1:
        raise WheelError(f"expected one {what} in dist/, found {[p.name for p in paths] or 'none'}")
    return paths[0]


def version_tuple(text):
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def check_wheel(wheel, tf_version):
    """The tag, the metadata and the contents of the repaired wheel."""
    if not re.search(r"-manylinux_\d+_\d+_x86_64\.whl$", wheel.name):
        raise WheelError(f"{wheel.name} is not tagged manylinux_*_x86_64 (was it repaired by auditwheel?)")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = [n for n in names if re.fullmatch(r"fastiou-[^/]+\.dist-info/WHEEL", n)]
        meta = [n for n in names if re.fullmatch(r"fastiou-[^/]+\.dist-info/METADATA", n)]
        wheel_info = z.read(one(info, "WHEEL file")).decode()
        metadata = email.parser.Parser().parsestr(z.read(one(meta, "METADATA file")).decode())
    tags = re.findall(r"^Tag: (.+)$", wheel_info, re.M)
    if not tags or not all("manylinux_" in t for t in tags):
        raise WheelError(f"the WHEEL file's tags {tags} are not manylinux")
    if not metadata.get("Requires-Python"):
        raise WheelError("the metadata has no Requires-Python")
    license_ = metadata.get("License-Expression") or metadata.get("License") or ""
    if "Apache-2.0" not in license_:
        raise WheelError(f"the metadata's license is {license_!r}, not Apache-2.0")
    if not any(re.search(r"\.dist-info/licenses/LICENSE$", n) for n in names):
        raise WheelError("the wheel carries no LICENSE file")
    bundled = [n for n in names if re.match(r"fastiou\.libs/", n)]
    if bundled:
        raise WheelError(f"auditwheel bundled libraries into the wheel: {bundled}")
    for so in ("fastiou/_fastiou_ops.so", "fastiou/_fastiou_kernels."):
        if not any(n.startswith(so) for n in names):
            raise WheelError(f"the wheel has no {so}*")
    tf_pins = [r for r in metadata.get_all("Requires-Dist") or []
               if re.match(r"tensorflow\b", r) and 'extra == "tensorflow"' in r]
    pin = one(tf_pins, "tensorflow requirement of the tensorflow extra")
    spec = Requirement(pin).specifier
    major, minor = version_tuple(tf_version)[:2]
    if not spec.contains(tf_version):
        raise WheelError(f"the pin {pin!r} refuses TensorFlow {tf_version}, which the op library was built against")
    for other in (f"{major}.{minor + 1}.0", f"{major}.{minor - 1}.0"):
        if spec.contains(other):
            raise WheelError(f"the pin {pin!r} admits TensorFlow {other}, whose ABI the op library does not match")
    log(f"wheel {wheel.name}: tags {', '.join(tags)}; Requires-Python {metadata['Requires-Python']}; "
        f"license {license_}; {pin}")


def check_sdist(sdist):
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    missing = [n for n in SDIST_NEEDS if n not in names]
    if missing:
        raise WheelError(f"{sdist.name} lacks {missing}")
    log(f"sdist {sdist.name}: {len(names)} files, the build's sources included")


def run(cmd, env=None, **kw):
    log("$ " + " ".join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], check=True, env=env, **kw)


def fresh_venv(venv, wheel):
    if venv.exists():
        shutil.rmtree(venv)
    run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    start = time.monotonic()
    run([py, "-m", "pip", "install", "--quiet", "--only-binary=:all:", f"{wheel}[tensorflow,jax,test]"])
    log(f"installed the wheel and its dependencies in {time.monotonic() - start:.0f} s, binaries only")
    return py


def probe(py, env):
    """Imports fastiou in the fresh environment, from the directory the tests run in."""
    out = subprocess.run([str(py), "-c", PROBE], check=True, env=env, cwd=ROOT, capture_output=True, text=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    if not pathlib.Path(info["file"]).resolve().is_relative_to(pathlib.Path(info["prefix"]).resolve()):
        raise WheelError(f"fastiou was imported from {info['file']}, not from the fresh environment {info['prefix']}")
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dist", type=pathlib.Path, default=ROOT / "dist")
    parser.add_argument("--venv", type=pathlib.Path, default=ROOT / "build" / "wheel-venv")
    parser.add_argument("--check-only", action="store_true", help="check the wheel and the sdist, install nothing")
    args = parser.parse_args(argv)

    from importlib.metadata import version
    wheel = one(sorted(args.dist.glob("fastiou-*.whl")), "wheel")
    check_wheel(wheel, version("tensorflow"))
    check_sdist(one(sorted(args.dist.glob("fastiou-*.tar.gz")), "sdist"))
    if args.check_only:
        return 0

    py = fresh_venv(args.venv.resolve(), wheel.resolve())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FASTIOU_CPU_TARGET")}
    info = probe(py, env)
    log(f"fastiou imported from {info['file']}; CPU level {info['cpu_target']} of {info['cpu_targets']}; "
        f"CUDA kernels built: {info['cuda']}")
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow"]
    run(pytest + TESTS, env=env, cwd=ROOT)

    # Every lower level this CPU runs, each forced and reported by the child.
    lower = [t for t in info["cpu_targets"] if t != info["cpu_target"]]
    if not lower:
        raise WheelError(f"this CPU runs only {info['cpu_target']}: no lower level to force")
    for target in lower:
        forced = dict(env, FASTIOU_CPU_TARGET=target)
        level = probe(py, forced)["cpu_target"]
        if level != target:
            raise WheelError(f"FASTIOU_CPU_TARGET={target} ran at {level}")
        log(f"forced level: {level}")
        run(pytest + LEVEL_TESTS, env=forced, cwd=ROOT)
    log(f"the installed wheel passed at {info['cpu_target']} (chosen) and {', '.join(lower)} (forced)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (WheelError, subprocess.CalledProcessError) as e:
        print(f"[check-wheel] FAILED: {e}", file=sys.stderr)
        sys.exit(1)

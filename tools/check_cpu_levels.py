"""The CPU kernels on emulated older CPUs: `make check-levels`.

Runs the kernel tests (every CPU path against the float64 oracle) under
qemu-user emulating a CPU without AVX (Nehalem: x86-64-v2) and one without
AVX-512 (Haswell: x86-64-v3). Each run first checks that fastiou chose that
CPU's level; an instruction of a higher level anywhere in what runs would
stop the process with SIGILL. Needs qemu-user (apt install qemu-user).
Emulation checks the instructions, not the speed.
"""

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPUS = {"Nehalem": "x86-64-v2", "Haswell": "x86-64-v3"}
TESTS = ["tests/test_sparse_paths.py", "tests/test_kernels_module.py",
         "tests/test_properties.py::test_module_against_the_oracle", "-k", "not cuda"]


def main():
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        sys.exit("make check-levels needs qemu-user: apt install qemu-user")
    for cpu, level in CPUS.items():
        cmd = [qemu, "-cpu", cpu, sys.executable]
        got = subprocess.run(cmd + ["-c", "import fastiou.kernels as k; print(k.cpu_target())"],
                             capture_output=True, text=True, cwd=REPO)
        ran = got.stdout.strip()
        if got.returncode != 0 or ran != level:
            sys.exit(f"{cpu}: expected fastiou to choose {level}, got {ran!r} (exit {got.returncode})\n"
                     f"{got.stderr[-2000:]}")
        print(f"{cpu} (emulated): fastiou runs {ran}; kernel tests:", flush=True)
        rc = subprocess.run(cmd + ["-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=REPO).returncode
        if rc != 0:
            sys.exit(f"{cpu}: the kernel tests failed (exit {rc}; -4 is SIGILL)")
    print("every emulated CPU ran its level's kernels and passed")


if __name__ == "__main__":
    main()

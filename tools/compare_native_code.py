"""Is the default build's CPU code this machine's -march=native code? `make compare-native`.

The default build holds one copy of the CPU kernels per x86-64 level and runs
the best one the CPU supports (csrc/cpu/cpu_dispatch.cc). This compiles the
kernels' sources twice with the compile commands of that build (taken from
its build folder, so the flags are the ones CMakeLists.txt gives): once for
the level this CPU runs and once with -march=native, both in the same
namespace. It then compares the machine code function by function (jump
targets and addresses aside) and lists the functions that differ.

Where every function a benchmark runs is the same machine code, the two
builds cannot differ in speed but by the dispatch (one indirect call per
kernel call), whatever a noisy machine's timings say; bench_cpu_levels.py
times them side by side. Needs a build (make setup) and binutils' objdump.
"""

import argparse
import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_commands(build_dir, level):
    """The compile commands of the level's objects in build_dir's ninja build."""
    out = subprocess.run(["ninja", "-C", build_dir, "-t", "commands"], capture_output=True, text=True,
                         check=True).stdout
    marker = f"fastiou_cpu_{level}.dir/"
    commands = [shlex.split(line) for line in out.splitlines() if marker in line and " -c " in line]
    if not commands:
        sys.exit(f"no compile command for the {level} kernels in {build_dir}")
    return commands


def functions(obj):
    """Each function's instructions in obj, addresses and jump targets dropped."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj], capture_output=True, text=True,
                          check=True).stdout
    found, current = {}, None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            current = found.setdefault(head.group(1), [])
            continue
        if current is None or not line.strip():
            continue
        body = re.sub(r"^\s*[0-9a-f]+:\s*", "", line)
        current.append(re.sub(r"\b[0-9a-f]+ <[^>]*>", "<target>", body))
    return found


def build(command, march, out):
    """Starts command (one object's compile) for march, writing out."""
    cmd, skip = [], False
    for a in command:
        if skip:  # the dependency file's arguments
            skip = False
        elif a in ("-MT", "-MF"):
            skip = True
        elif a != "-MD":
            cmd.append(("-march=" + march) if a.startswith("-march=") else a)
    cmd[cmd.index("-o") + 1] = out
    return subprocess.Popen(cmd, cwd=os.path.dirname(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", help="the default build's folder (default: build/<wheel tag> of make setup)")
    parser.add_argument("--level", help="v2, v3 or v4 (default: the one fastiou runs on this CPU)")
    args = parser.parse_args()
    build_dir = args.build_dir or next(iter(sorted(glob.glob(os.path.join(REPO, "build", "cp*", "build.ninja")))),
                                       None)
    if build_dir is None:
        sys.exit("no default build found: run make setup first")
    build_dir = os.path.dirname(build_dir) if build_dir.endswith("build.ninja") else build_dir
    level = args.level
    if level is None:
        import fastiou.kernels as fk

        level = fk.cpu_target()
    level = level.removeprefix("x86-64-")  # v2, v3 or v4
    native = subprocess.run(["gcc", "-march=native", "-Q", "--help=target"], capture_output=True,
                            text=True).stdout
    arch = re.search(r"-march=\s+(\S+)", native)
    print(f"comparing the x86-64-{level} kernels with -march=native ({arch.group(1) if arch else '?'}) "
          f"from the commands of {build_dir}", flush=True)
    total = same = 0
    differ = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for command in compile_commands(build_dir, level):
            source = os.path.basename(command[command.index("-c") + 1]).rsplit(".", 1)[0]
            pair = [os.path.join(tmp, f"{source}.{name}.o") for name in (level, "native")]
            jobs.append((source, pair))
            procs = [build(command, march, out) for march, out in zip((f"x86-64-{level}", "native"), pair)]
            if any(p.wait() != 0 for p in procs):
                sys.exit(f"compiling {source} failed")
        for source, (ours, theirs) in jobs:
            a, b = functions(ours), functions(theirs)
            if set(a) != set(b):
                sys.exit(f"{source}: the two builds hold different functions")
            for name in a:
                total += 1
                if a[name] == b[name]:
                    same += 1
                else:
                    differ.append(name)
    print(f"{same} of {total} functions are the same machine code")
    if differ:
        names = subprocess.run(["c++filt"], input="\n".join(differ), capture_output=True, text=True).stdout
        print(f"{len(differ)} differ:")
        for n in names.splitlines():
            print("  " + (n if len(n) < 160 else n[:157] + "..."))


if __name__ == "__main__":
    main()

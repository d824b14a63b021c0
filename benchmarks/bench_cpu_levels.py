"""Times fastiou's CPU kernels at each SIMD level, and against other builds.

    python benchmarks/bench_cpu_levels.py                      # the installed build, every level this CPU runs
    python benchmarks/bench_cpu_levels.py --build native=DIR   # and a build in DIR (a folder holding fastiou/)
    python benchmarks/bench_cpu_levels.py --no-installed --build before=DIR1 --build after=DIR2 --kernels stats
    python benchmarks/bench_cpu_levels.py --kernels stats --unchecked   # and each with check_range=False

Each configuration (build, level) runs in its own child process, which
imports fastiou from that build, forces the level with FASTIOU_CPU_TARGET,
times the stats and gradient kernels through fastiou.kernels on NumPy arrays
and reports the level and build it ran; the parent checks both. The
configurations take turns for several rounds, so a slow spell of a shared
machine hits them alike; each figure is the median over rounds of each
round's median. A build made for one -march (FASTIOU_CPU_ARCH=native) reports
"-march=native" and runs as it is.

The ratios pair each configuration with the first other build (or the best
level) round by round, with a 90% bootstrap interval of their median. A
second table splits the CPU time of a step into user time (the kernels'
work) and system time: on a virtual machine the first touch of a fresh
gradient output can cost more than the kernels, and its cost varies from
process to process and with the frameworks a process has loaded (so the
children report theirs and the builds must load the same ones).
"""

import argparse
import json
import os
import subprocess
import sys
import time

CASES = {
    # name: (shape, from_logits, sparse)
    "4x512x512x21 sparse logits": ((4, 512, 512, 21), True, True),
    "4x512x512x21 sparse probabilities": ((4, 512, 512, 21), False, True),
    "8x128x128x128x1 logits": ((8, 128, 128, 128, 1), True, False),
    "8x128x128x128x1 probabilities": ((8, 128, 128, 128, 1), False, False),
    "4x256x256x8 multi-label probabilities": ((4, 256, 256, 8), False, False),
}


def child(case, repeats, kernels, check_range=True):
    import numpy as np

    import fastiou.kernels as fk

    shape, from_logits, sparse = CASES[case]
    rng = np.random.default_rng(0)
    z = rng.normal(size=shape).astype(np.float32)
    if sparse:
        y = rng.integers(0, shape[-1], size=shape[:-1]).astype(np.uint8)
        if not from_logits:
            z = np.exp(z - z.max(-1, keepdims=True))
            z /= z.sum(-1, keepdims=True)
        opts = dict(from_logits=from_logits, softmax=from_logits, sparse=True, per_image=False,
                    check_range=check_range)
    else:
        y = (rng.random(shape) < 0.2).astype(np.float32)
        if not from_logits:
            z = 1 / (1 + np.exp(-z))
        opts = dict(from_logits=from_logits, per_image=False, check_range=check_range)
    g = [np.full(shape[-1], v, np.float32) for v in (-0.5, 0.25, 0.1)]
    import resource

    times, user, system = [], [], []
    for i in range(repeats + 2):
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        if kernels in ("both", "stats"):
            fk.overlap_stats(y, z, None, **opts)
        if kernels in ("both", "grad"):
            fk.overlap_grad(y, z, None, *g, **opts)
        if i >= 2:
            times.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_SELF)
            user.append(after.ru_utime - before.ru_utime)
            system.append(after.ru_stime - before.ru_stime)
    # CPU time of all threads: user time is the kernels' own work; system time
    # is mostly the operating system's first touch of the fresh gradient
    # output, which varies from process to process on a virtual machine
    return {"ms": 1e3 * float(np.median(times)), "user_ms": 1e3 * float(np.mean(user)),
            "system_ms": 1e3 * float(np.mean(system)), "cpu_target": fk.cpu_target(),
            # frameworks in the process change what the first touch of fresh
            # memory costs: builds compare alike only with the same ones
            "frameworks": sorted(m for m in ("tensorflow", "jax", "torch") if m in sys.modules),
            "fastiou": os.path.dirname(os.path.dirname(fk.__file__)), "check_range": opts["check_range"]}


def paired_ratios(times, base_times, resamples=2000):
    """Each round's time over the base configuration's in the same round:
    their median, and a 90% bootstrap interval of that median (the rounds
    resampled with replacement). Pairing by round cancels the slow swings of
    a shared machine that hit both configurations of a round alike."""
    import numpy as np

    r = np.asarray(times, float) / np.asarray(base_times, float)
    rng = np.random.default_rng(0)
    medians = np.median(r[rng.integers(0, len(r), size=(resamples, len(r)))], axis=1)
    return {"median": float(np.median(r)), "low": float(np.quantile(medians, 0.05)),
            "high": float(np.quantile(medians, 0.95)), "per_round": [float(x) for x in r]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", action="append", default=[], metavar="NAME=DIR",
                        help="another build: DIR holds its fastiou package (repeatable)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), metavar="CASE")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per child")
    parser.add_argument("--kernels", choices=["both", "stats", "grad"], default="both",
                        help="what one timed step runs: the stats and the gradient kernel, or one of them")
    parser.add_argument("--no-installed", action="store_true",
                        help="time the --build builds alone, not the installed one's levels")
    parser.add_argument("--unchecked", action="store_true",
                        help="time each configuration with check_range=False too (the range guards off)")
    parser.add_argument("--no-check-range", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.repeats, args.kernels, not args.no_check_range)))
        return

    import fastiou.kernels as fk

    installed = os.path.dirname(os.path.dirname(fk.__file__))
    configs = [] if args.no_installed else [(f"installed {level}", installed, level) for level in fk.cpu_targets()]
    if not configs and not args.build:
        parser.error("--no-installed needs --build")
    for spec in args.build:
        name, _, path = spec.partition("=")
        configs.append((name, os.path.abspath(path), None))
    # (name, path, level, check_range)
    configs = [c + (True,) for c in configs]
    if args.unchecked:
        configs = [v for c in configs for v in (c, (c[0] + " unchecked",) + c[1:3] + (False,))]
    results = {}
    for r in range(args.rounds):
        for case in args.cases:
            # Every other round runs the configurations in reverse order, so
            # that a drift of the machine's speed within a round favours none.
            for name, path, level, check in (configs if r % 2 == 0 else configs[::-1]):
                env = dict(os.environ, PYTHONPATH=path)
                env.pop("FASTIOU_CPU_TARGET", None)
                if level:
                    env["FASTIOU_CPU_TARGET"] = level
                command = [sys.executable, __file__, "--child", case, "--repeats", str(args.repeats),
                           "--kernels", args.kernels] + ([] if check else ["--no-check-range"])
                proc = subprocess.run(command, env=env, capture_output=True, text=True)
                line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
                if line is None:
                    raise RuntimeError(f"{name} {case} failed:\n{proc.stderr[-3000:]}")
                got = json.loads(line[len("RESULT "):])
                if got["fastiou"] != path or (level and got["cpu_target"] != level) or got["check_range"] != check:
                    raise RuntimeError(f"child for {name} ran {got['cpu_target']} from {got['fastiou']}, "
                                       f"check_range={got['check_range']}")
                results.setdefault((case, name), []).append(got)
        loaded = {name: tuple(results[(args.cases[0], name)][-1]["frameworks"]) for name, *_ in configs}
        if len(set(loaded.values())) > 1:
            raise RuntimeError(f"the builds' processes loaded different frameworks {loaded}: a build "
                               "without TensorFlow's op library imports none, and pays less for fresh "
                               "memory, so its times would not compare; give every build the same files "
                               "(e.g. copy _fastiou_ops.so beside a kernels-only build's module)")
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    import numpy as np

    names = [c[0] for c in configs]
    what = {"both": "stats + gradient", "stats": "stats", "grad": "gradient"}[args.kernels]
    print(f"fastiou CPU kernels, {what} through fastiou.kernels, ms (median of {args.rounds} rounds)")
    print("| case | " + " | ".join(f"{n} ({results[(args.cases[0], n)][0]['cpu_target']})" for n in names) + " |")
    print("| --- |" + " ---: |" * len(names))
    rows = []
    # Ratios over the first other build (e.g. -march=native), else over the best level.
    installed_levels = (0 if args.no_installed else len(fk.cpu_targets())) * (2 if args.unchecked else 1)
    base = installed_levels if args.build else installed_levels - (2 if args.unchecked else 1)
    for case in args.cases:
        rounds = {n: [g["ms"] for g in results[(case, n)]] for n in names}
        ms = [float(np.median(rounds[n])) for n in names]
        ratios = {n: paired_ratios(rounds[n], rounds[names[base]]) for n in names}
        print(f"| {case} | " + " | ".join(
            f"{m:.1f} ({ratios[n]['median']:.2f}x, {ratios[n]['low']:.2f}-{ratios[n]['high']:.2f})"
            for n, m in zip(names, ms)) + " |")
        rows.append({"case": case, "ms": dict(zip(names, ms)), "rounds": rounds, "ratio_over_base": ratios})
    print(f"(in brackets: time over {names[base]}'s in the same round, median over rounds, "
          "then the middle 90% of the medians of rounds resampled with replacement)")
    print(f"\nCPU time of all threads per step, ms: user (the kernels' work) / system (mostly the first touch "
          "of the fresh gradient output), median of rounds")
    print("| case | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for case, row in zip(args.cases, rows):
        cpu = {n: {k: float(np.median([g[k] for g in results[(case, n)]])) for k in ("user_ms", "system_ms")}
               for n in names}
        user_ratio = {n: paired_ratios([g["user_ms"] for g in results[(case, n)]],
                                       [g["user_ms"] for g in results[(case, names[base])]]) for n in names}
        print(f"| {case} | " + " | ".join(
            f"{cpu[n]['user_ms']:.1f} / {cpu[n]['system_ms']:.1f} (user {user_ratio[n]['median']:.2f}x)"
            for n in names) + " |")
        row["cpu_ms"] = cpu
        row["user_ratio_over_base"] = user_ratio
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"kernels": args.kernels,
                       "configs": [{"name": n, "path": p, "level": l, "check_range": c} for n, p, l, c in configs],
                       "results": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()

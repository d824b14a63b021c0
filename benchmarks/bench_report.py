"""What a run of bench_losses.py reports beside its timings: the machine it
ran on, a Markdown table of the CPU cases and the plots (time against element
count, peak extra memory)."""

import os
import platform


def fastiou_cpu_target():
    """The SIMD level fastiou's CPU kernels run at here (FASTIOU_CPU_TARGET
    reaches the children through their environment)."""
    try:
        import fastiou.kernels

        return fastiou.kernels.cpu_target()
    except (ImportError, RuntimeError) as err:
        return f"unavailable: {err}"


def machine_description():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            mem_gib = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    desc = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    desc["fastiou_cpu_target"] = fastiou_cpu_target()
    for name in ("tensorflow", "keras", "torch"):
        try:
            desc[name] = __import__(name).__version__
        except ImportError:
            desc[name] = None
    return desc


def markdown_table(rows, machine, mask_dtype):
    lines = [f"Forward + backward of the Jaccard loss (median over at least 1 s) on {machine['cpu']} ({machine['cores']} cores), "
             f"TensorFlow {machine['tensorflow']}, fastiou CPU kernels {machine.get('fastiou_cpu_target')}, "
             f"float32 y_pred, {mask_dtype} y_true (multi-class "
             "cases: sparse uint8 labels, 5% ignored); time in ms "
             "(median), speedup over the pure-Keras graph version, the fused step's bytes per "
             "second as a share of the machine's copy bandwidth measured in the same run, peak "
             "extra memory in mask-sized float32 tensors.", "",
             "| case | inputs | fused | keras | fused-xla | keras-xla | fused-jax | keras-jax | fused speedup | fused / copy bandwidth | fused / keras memory |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    groups = {}
    for r in rows:
        groups.setdefault((r["case"], r["inputs"]), {})[r["impl"]] = r
    for (case, inp), g in groups.items():
        t = {k: f"{v['time_s'] * 1e3:.1f}" for k, v in g.items()}
        mem = lambda k: "n/a" if k not in g or g[k]["peak_extra_masks"] is None else f"{g[k]['peak_extra_masks']:.2f}"
        speed = f"{g['fused']['speedup_vs_keras']:.2f}x" if "fused" in g and "keras" in g else "n/a"
        frac = (f"{g['fused']['bandwidth_fraction']:.0%}" if "fused" in g
                and g["fused"].get("bandwidth_fraction") is not None else "n/a")
        lines.append(f"| {case} | {inp} | {t.get('fused', 'n/a')} | {t.get('keras', 'n/a')} | "
                     f"{t.get('fused-xla', 'n/a')} | {t.get('keras-xla', 'n/a')} | "
                     f"{t.get('fused-jax', 'n/a')} | {t.get('keras-jax', 'n/a')} | {speed} | {frac} | "
                     f"{mem('fused')} / {mem('keras')} |")
    return "\n".join(lines)



def plot(rows, path_stem, title):
    """Time against elements (log-log, one line per implementation) and peak
    extra memory per case; returns the files written."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed: no plots")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["device"], "multi-class" if r["shape"][-1] > 1 else "binary", r["inputs"])
                     for r in rows})
    from matplotlib.ticker import NullFormatter

    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, 3.6 * nrows + 0.4), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (device, suite, inp) in zip(axes.flat, panels):
        sel = [r for r in rows if r["device"] == device and r["inputs"] == inp
               and ("multi-class" if r["shape"][-1] > 1 else "binary") == suite]
        for impl in dict.fromkeys(r["impl"] for r in sel):
            # GPU rows: the kernels' time (the whole step is bound by the host there).
            pts = sorted((r["elements"], (r.get("gpu_time_s") or r["time_s"]) * 1e3) for r in sel
                         if r["impl"] == impl and r.get("time_s"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
        # The time the fused step's bytes take at the copy bandwidth: the floor.
        floor = sorted((r["elements"], r["time_s"] * 1e3 * r["bandwidth_fraction"]) for r in sel
                       if r.get("bandwidth_fraction"))
        if floor:
            ax.plot([p[0] for p in floor], [p[1] for p in floor], "k--", lw=1,
                    label="fused bytes at copy bandwidth")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        # Ticks at the measured sizes: they may all lie within one decade.
        sizes = sorted({r["elements"] for r in sel})
        ax.set_xticks(sizes)
        ax.set_xticklabels([f"{e / 1e6:.3g}M" for e in sizes], fontsize=8)
        ax.set_xlabel("elements of y_pred")
        ax.set_ylabel("forward + backward, ms" + (" (kernels)" if device == "gpu" else ""))
        ax.set_title(f"{device}: {suite}, {inp}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    time_png = path_stem + "-time.png"
    fig.savefig(time_png, dpi=100)
    plt.close(fig)

    mem_rows = [r for r in rows if r.get("peak_extra_masks") is not None]
    written = [time_png]
    if mem_rows:
        keys = list(dict.fromkeys((r["device"], r["case"], r["inputs"]) for r in mem_rows))
        impls = list(dict.fromkeys(r["impl"] for r in mem_rows))
        fig, ax = plt.subplots(figsize=(max(6, 1.15 * len(keys)), 3.8))
        width = 0.8 / len(impls)
        for k, impl in enumerate(impls):
            vals = [next((r["peak_extra_masks"] for r in mem_rows if (r["device"], r["case"], r["inputs"]) == key
                          and r["impl"] == impl), 0.0) for key in keys]
            ax.bar([i + k * width for i in range(len(keys))], vals, width, label=impl)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))])
        short = {"logits": "logits", "probabilities": "probs"}
        ax.set_xticklabels([f"{c}\n{short.get(i, i)}" + ("" if d == "cpu" else f"\n{d}") for d, c, i in keys],
                           fontsize=7)
        ax.set_ylabel("peak extra memory\n(mask-sized float32 tensors)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        mem_png = path_stem + "-memory.png"
        fig.savefig(mem_png, dpi=100)
        plt.close(fig)
        written.append(mem_png)
    return written

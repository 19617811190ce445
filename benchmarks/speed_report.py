"""speed.json, speed.md (tables and the targets) and speed.png from the benchmark's results."""

import importlib.metadata
import json
import os

WORKS = ("train", "inference", "inverse")
BACKENDS = ("tensorflow", "jax", "torch")
# Training costs about 3x the forward pass (forward, then gradients w.r.t. activations and
# weights); the memory-efficient mode's extra evaluation of F is not counted as useful work.
FLOP_FACTOR = {"train": 3, "inference": 1, "inverse": 1}


def _versions():
    versions = {}
    for package in ("keras", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def summarize(records):
    """Adds GFLOP/s, % of peak and the ratio to the reference to every timing; returns targets."""
    models = sorted({r["model"] for r in records}, key=lambda m: m != "cifar")
    summary = {}
    for model in models:
        rows = [r for r in records if r["model"] == model]
        flops = next((r["forward_flops"] for r in rows if r["work"] == "flops"), None)
        peaks = [r["gflops"] for r in rows if r["work"] == "matmul_peak"]
        peak = max(peaks) if peaks else None
        reference = {
            r["work"]: r["images_per_second"]
            for r in rows
            if r["backend"] == "reference" and "images_per_second" in r
        }
        for r in rows:
            if "images_per_second" not in r:
                continue
            if flops:
                r["gflops"] = r["images_per_second"] * flops * FLOP_FACTOR[r["work"]] / 1e9
                if peak:
                    r["fraction_of_peak"] = r["gflops"] / peak
            if r["work"] in reference:
                r["vs_reference"] = r["images_per_second"] / reference[r["work"]]
        summary[model] = dict(
            forward_gflop_per_image=flops / 1e9 if flops else None,
            matmul_peak_gflops=peak,
            targets=_targets(rows),
        )
    return summary


def _best(rows, backend, work):
    timed = [
        r
        for r in rows
        if r["backend"] == backend and r["work"] == work and "images_per_second" in r
    ]
    return max(timed, key=lambda r: r["images_per_second"]) if timed else None


def _targets(rows):
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
    best = {(b, w): _best(rows, b, w) for b in backends for w in WORKS}
    targets = {}
    for work in ("train", "inference"):
        ratios = {b: best[b, work].get("vs_reference") for b in backends if best[b, work]}
        ratios = {b: v for b, v in ratios.items() if v is not None}
        if ratios:
            top = max(ratios, key=ratios.get)
            targets[work] = dict(
                best_backend=top,
                best_vs_reference=ratios[top],
                best_met=ratios[top] >= 1.0,
                per_backend=ratios,
                every_backend_met=min(ratios.values()) >= 0.7,
            )
    inverse = {}
    for b in backends:
        # The fastest inverse against the fastest forward pass (each in its best mode).
        if best[b, "inverse"] and best[b, "inference"]:
            ratio = (
                best[b, "inverse"]["images_per_second"] / best[b, "inference"]["images_per_second"]
            )
            inverse[b] = dict(
                inverse_vs_forward=ratio, jit=best[b, "inverse"]["jit"], met=ratio >= 0.9
            )
    targets["inverse"] = inverse
    return targets


def markdown(records, summary, machine):
    lines = [
        f"Machine: {machine['processor'] or machine['platform']}, {machine['cpus']} CPUs, "
        f"Python {machine['python']}; "
        + ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items())
        + f". {'Quick run' if machine['quick'] else 'Full run'}, {machine['date']}, "
        f"{machine['total_seconds'] / 60:.0f} min.",
        "",
    ]
    for model, info in summary.items():
        workload = next((w for w in machine["workloads"] if w["model"] == model), {})
        flops = info["forward_gflop_per_image"]
        peak = info["matmul_peak_gflops"]
        lines += [
            f"### {model}: {workload.get('image_size')}x{workload.get('image_size')} images, "
            f"training batch {workload.get('train_batch')}, inference batch "
            f"{workload.get('infer_batch')}"
            + (f"; {flops:.2f} GFLOP per image forward" if flops else "")
            + (f"; float32 matmul peak {peak:.0f} GFLOP/s" if peak else ""),
            "",
            "| backend | compiled by | memory_efficient | work | img/s | x reference | GFLOP/s "
            "| % of peak | warm-up s |",
            "|---|---|---|---|---:|---:|---:|---:|---:|",
        ]
        rows = [r for r in records if r["model"] == model and r["work"] in WORKS]
        order = ("reference",) + BACKENDS
        rows.sort(key=lambda r: (order.index(r["backend"]), WORKS.index(r["work"])))
        for r in rows:
            if "images_per_second" not in r:
                lines.append(
                    f"| {r['backend']} | {r.get('jit', '')} | "
                    f"{r.get('memory_efficient', '')} | {r['work']} | failed: "
                    f"{r['error'][:120]} | | | | |"
                )
                continue
            lines.append(
                f"| {r['backend']} | {r['jit']} | {r['memory_efficient']} | {r['work']} | "
                f"{r['images_per_second']:.1f} | {r.get('vs_reference', 0):.2f} | "
                f"{r.get('gflops', 0):.0f} | {100 * r.get('fraction_of_peak', 0):.0f} | "
                f"{r['warmup_seconds']:.1f} |"
            )
        lines += ["", f"Targets ({model}):", ""]
        targets = info["targets"]
        for work in ("train", "inference"):
            if work in targets:
                t = targets[work]
                per = ", ".join(f"{b} {v:.2f}x" for b, v in t["per_backend"].items())
                lines.append(
                    f"- {work}: best backend {t['best_backend']} at {t['best_vs_reference']:.2f}x "
                    f"the reference ({'met' if t['best_met'] else 'NOT met'}, target 1.0x); "
                    f"every backend >= 0.7x: {'met' if t['every_backend_met'] else 'NOT met'} "
                    f"({per})."
                )
        for b, t in targets["inverse"].items():
            lines.append(
                f"- inverse vs forward, {b} ({t['jit']}): {t['inverse_vs_forward']:.2f}x "
                f"({'met' if t['met'] else 'NOT met'}, target 0.9x)."
            )
        lines.append("")
    failed = [r for r in records if r["work"] == "worker"]
    for r in failed:
        lines.append(f"Worker {r['model']} / {r['backend']} failed: {r['error'][-300:]}")
    return "\n".join(lines) + "\n"


def plot(records, summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(summary)
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.2), squeeze=False)
    names = ("reference",) + BACKENDS
    colors = dict(reference="0.55", tensorflow="tab:orange", jax="tab:blue", torch="tab:red")
    for ax, model in zip(axes[0], models):
        rows = [r for r in records if r["model"] == model]
        width = 0.8 / len(names)
        for i, backend in enumerate(names):
            values, labels = [], []
            for work in WORKS:
                best = _best(rows, backend, work)
                values.append(best["vs_reference"] if best and "vs_reference" in best else 0)
                labels.append(best["jit"] if best else "")
            xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(WORKS))]
            bars = ax.bar(
                xs,
                values,
                width,
                color=colors[backend],
                label="plain torch (reference)" if backend == "reference" else backend,
            )
            for bar, value, label in zip(bars, values, labels):
                if value:
                    ax.text(
                        bar.get_x() + bar.get_width() / 2,
                        value,
                        f"{value:.2f}\n{label}",
                        ha="center",
                        va="bottom",
                        fontsize=6,
                    )
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(0.7, color="k", lw=0.6, ls=":")
        ax.set_xticks(range(len(WORKS)), WORKS)
        ax.set_ylabel("throughput / plain-torch reference (best mode)")
        ax.set_title(f"{model}")
        ax.set_ylim(0, max(1.5, ax.get_ylim()[1] * 1.15))
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(records, machine, output_dir):
    machine = dict(machine, versions=_versions())
    summary = summarize(records)
    with open(os.path.join(output_dir, "speed.json"), "w") as f:
        json.dump(dict(machine=machine, summary=summary, results=records), f, indent=1)
    with open(os.path.join(output_dir, "speed.md"), "w") as f:
        f.write(markdown(records, summary, machine))
    plot(records, summary, os.path.join(output_dir, "speed.png"))

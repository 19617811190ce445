"""speed.json, speed.md (tables and the targets) and speed.png from the benchmark's results."""

import importlib.metadata
import os

from keras_irevnet import atomic

WORKS = ("train", "inference", "inverse")
BACKENDS = ("tensorflow", "jax", "torch")
# How Keras runs a model compiled with its default jit_compile="auto" on a CPU machine.
DEFAULT_JIT = {"tensorflow": "tf.function", "jax": "jax.jit", "torch": "eager"}
# The ways a user calls each work; each must meet the target.
CALLS = {
    "train": ("fit", "train_on_batch"),
    "inference": ("predict", "predict_on_batch"),
    "inverse": ("predict", "predict_on_batch"),
}
# Throughput as a multiple of the plain-torch reference, with the library's defaults.
TARGETS = {
    "train": dict(tensorflow=1.0, jax=0.8, torch=1.0),
    "inference": dict(tensorflow=1.1, jax=0.8, torch=1.0),
    "inverse": dict(tensorflow=1.1, jax=0.8, torch=1.0),
}
# Step time of reversible (memory-efficient) training over plain training, same mode.
REVERSIBLE_TARGET = 1.3
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
        for r in rows:
            if "images_per_second" not in r:
                continue
            if flops:
                r["gflops"] = r["images_per_second"] * flops * FLOP_FACTOR[r["work"]] / 1e9
                if peak:
                    r["fraction_of_peak"] = r["gflops"] / peak
            reference = _reference_rate(rows, r)
            if reference:
                r["vs_reference"] = r["images_per_second"] / reference
        summary[model] = dict(
            forward_gflop_per_image=flops / 1e9 if flops else None,
            matmul_peak_gflops=peak,
            targets=_targets(rows),
        )
    return summary


def _reference_rate(rows, row):
    """The reference's img/s for `row`'s work: the mean over the reference runs named by
    `row["reference_rounds"]` (those just before and after its backend's), or over all of
    them (for reference rows themselves, and results without rounds)."""
    rounds = row.get("reference_rounds") if row["backend"] != "reference" else None
    rates = [
        r["images_per_second"]
        for r in rows
        if r["backend"] == "reference"
        and r["work"] == row["work"]
        and "images_per_second" in r
        and (rounds is None or r.get("round", 0) in rounds)
    ]
    return sum(rates) / len(rates) if rates else None


def _best(rows, backend, work):
    timed = [
        r
        for r in rows
        if r["backend"] == backend and r["work"] == work and "images_per_second" in r
    ]
    return max(timed, key=lambda r: r["images_per_second"]) if timed else None


def _default_memory_efficient():
    import inspect

    import keras_irevnet

    return inspect.signature(keras_irevnet.IRevNetCIFAR).parameters["memory_efficient"].default


def _as_run_by_default(rows, backend, work, call, memory_efficient):
    """The row a user gets from the library's defaults (compile mode, memory_efficient)."""
    for r in rows:
        if (
            r["backend"] == backend
            and r["work"] == work
            and r.get("call") == call
            and r.get("jit") == DEFAULT_JIT[backend]
            and r.get("memory_efficient") == memory_efficient
            and "images_per_second" in r
        ):
            return r
    return None


def _targets(rows):
    """Each target against the rows the library's defaults produce (see TARGETS)."""
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
    default_efficient = _default_memory_efficient()
    targets = {}
    for work, calls in CALLS.items():
        per_call = {}
        for call in calls:
            efficient = default_efficient if work == "train" else False
            ratios = {}
            for b in backends:
                row = _as_run_by_default(rows, b, work, call, efficient)
                if row is not None and "vs_reference" in row:
                    ratios[b] = dict(
                        vs_reference=row["vs_reference"],
                        target=TARGETS[work][b],
                        met=row["vs_reference"] >= TARGETS[work][b],
                    )
            if ratios:
                per_call[call] = ratios
        targets[work] = per_call
    reversible = {}
    for b in backends:
        plain = _as_run_by_default(rows, b, "train", "fit", False)
        efficient = _as_run_by_default(rows, b, "train", "fit", True)
        if plain and efficient:
            ratio = plain["images_per_second"] / efficient["images_per_second"]
            reversible[b] = dict(
                time_vs_plain=ratio, target=REVERSIBLE_TARGET, met=ratio <= REVERSIBLE_TARGET
            )
    targets["reversible"] = reversible
    return targets


def markdown(records, summary, machine):
    lines = [
        f"Machine: {machine['processor'] or machine['platform']}, {machine['cpus']} CPUs, "
        f"Python {machine['python']}; "
        + ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items())
        + f". {'Quick run' if machine['quick'] else 'Full run'}, {machine['date']}, "
        f"{machine['total_seconds'] / 60:.0f} min.",
        "",
        'The reference ran before the first backend and again after each one ("run k"); '
        'each backend\'s "x reference" is to the mean of the runs just before and after it, '
        "and each reference run's to the mean of all of them (the machine's drift).",
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
            "| backend | compiled by | memory_efficient | work | called by | img/s | x reference "
            "| GFLOP/s | % of peak | warm-up s |",
            "|---|---|---|---|---|---:|---:|---:|---:|---:|",
        ]
        rows = [r for r in records if r["model"] == model and r["work"] in WORKS]
        order = ("reference",) + BACKENDS
        rows.sort(key=lambda r: (order.index(r["backend"]), WORKS.index(r["work"])))
        for r in rows:
            if "images_per_second" not in r:
                lines.append(
                    f"| {r['backend']} | {r.get('jit', '')} | "
                    f"{r.get('memory_efficient', '')} | {r['work']} | {r.get('call', '')} | "
                    f"failed: {r['error'][:120]} | | | | |"
                )
                continue
            lines.append(
                f"| {r['backend']} | {r['jit']} | {r['memory_efficient']} | {r['work']} | "
                f"{r.get('call', 'loop')}{_run_label(r)} | {r['images_per_second']:.1f} | "
                f"{r.get('vs_reference', 0):.2f} | "
                f"{r.get('gflops', 0):.0f} | {100 * r.get('fraction_of_peak', 0):.0f} | "
                f"{r['warmup_seconds']:.1f} |"
            )
        lines += ["", f"Targets ({model}), as the library's defaults run it:", ""]
        lines += _target_lines(info["targets"])
        lines.append("")
    failed = [r for r in records if r["work"] == "worker"]
    for r in failed:
        lines.append(f"Worker {r['model']} / {r['backend']} failed: {r['error'][-300:]}")
    return "\n".join(lines) + "\n"


def _run_label(row):
    return f", run {row['round']}" if "round" in row else ""


def _target_lines(targets):
    lines = []
    for work in CALLS:
        for call, ratios in targets.get(work, {}).items():
            per = ", ".join(
                f"{b} {t['vs_reference']:.2f}x ({'met' if t['met'] else 'NOT met'}, "
                f">= {t['target']}x)"
                for b, t in ratios.items()
            )
            lines.append(f"- {work}, `{call}`, x reference: {per}.")
    for b, t in targets.get("reversible", {}).items():
        lines.append(
            f"- reversible training time / plain, {b} ({DEFAULT_JIT[b]}, `fit`): "
            f"{t['time_vs_plain']:.2f}x ({'met' if t['met'] else 'NOT met'}, <= {t['target']}x)."
        )
    return lines


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
                if backend == "reference":
                    values.append(1.0 if best else 0)  # the yardstick itself
                else:
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
    atomic.write_json(
        os.path.join(output_dir, "speed.json"),
        dict(machine=machine, summary=summary, results=records),
        indent=1,
    )
    with atomic.atomic_open(os.path.join(output_dir, "speed.md")) as f:
        f.write(markdown(records, summary, machine))
    with atomic.atomic_path(os.path.join(output_dir, "speed.png")) as temporary:
        plot(records, summary, temporary)

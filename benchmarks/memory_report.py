"""memory.md (table and targets) and memory.png from `benchmarks.memory`'s measurements.

Kept apart from `benchmarks/memory.py`, which defines command-line flags, so that it can be
imported anywhere (the tests do).
"""

MIB = 2.0**20


def markdown(records, backends):
    """The table (plain vs memory-efficient, per backend and depth) and the target lines."""
    by_key = {(r["backend"], r["depth"], r["mode"]): r for r in records}
    lines = [
        "| backend | blocks | batch | plain MiB | efficient MiB | ratio | plain s/step | "
        "efficient s/step | time ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for backend in backends:
        for depth in sorted({r["depth"] for r in records}):
            plain = by_key.get((backend, depth, "plain"))
            efficient = by_key.get((backend, depth, "efficient"))
            if plain is None and efficient is None:
                continue

            def mib(r):
                return f"{r['activation_bytes'] / MIB:.1f}" if r else "-"

            def sec(r):
                return f"{r['seconds_per_step']:.2f}" if r else "-"

            ratio = time_ratio = "-"
            if plain and efficient:
                if plain["activation_bytes"] > 0:
                    ratio = f"{efficient['activation_bytes'] / plain['activation_bytes']:.3f}"
                time_ratio = f"{efficient['seconds_per_step'] / plain['seconds_per_step']:.2f}"
            batch = (plain or efficient)["batch_size"]
            lines.append(
                f"| {backend} | {depth} | {batch} | {mib(plain)} | {mib(efficient)} | {ratio} | "
                f"{sec(plain)} | {sec(efficient)} | {time_ratio} |"
            )
    methods = {r["backend"]: r.get("method") for r in records if r.get("method")}
    measured = [""] + [f"- {b}: {methods[b]}." for b in backends if b in methods]
    text = lines + [""] + target_lines(by_key, backends) + measured + allocator_lines(records)
    return "\n".join(text) + "\n"


def allocator_lines(records):
    """Lines with the allocator's own figure where it differs in kind from the tensors' bytes
    (TensorFlow: the chunks its allocator handed out; see `benchmarks.memory`)."""
    lines = [
        f"- {r['backend']}, {r['mode']}, {r['depth']} blocks: the allocator's chunks at its "
        f"peak, less the weight gradients: "
        f"{(r['allocator_peak_bytes'] - r['weight_gradient_bytes']) / MIB:.1f} MiB."
        for r in records
        if "allocator_peak_bytes" in r
    ]
    return [""] + lines if lines else []


# Reversible backprop's memory targets: at the deepest depth measured, at most this fraction
# of plain autodiff's activation memory, and within this factor of the shallowest depth.
TARGET_FRACTION, TARGET_FLATNESS = 0.1, 1.2


def target_lines(by_key, backends):
    """One line per backend: the memory targets, met or not, at the depths measured.

    `by_key` maps (backend, depth, mode) to a measurement with `activation_bytes`.
    """
    lines = []
    for backend in backends:
        depths = sorted(d for b, d, m in by_key if b == backend and m == "efficient")
        if len(depths) < 2:
            continue
        low, high = (
            by_key[(backend, d, "efficient")]["activation_bytes"] for d in (depths[0], depths[-1])
        )
        plain = by_key.get((backend, depths[-1], "plain"))
        parts = []
        if plain and plain["activation_bytes"] > 0:
            fraction = high / plain["activation_bytes"]
            verdict = "met" if fraction <= TARGET_FRACTION else "NOT met"
            parts.append(
                f"{fraction:.3f} of plain at {depths[-1]} blocks ({verdict}, <= {TARGET_FRACTION})"
            )
        if low > 0:
            growth = high / low
            verdict = "met" if growth <= TARGET_FLATNESS else "NOT met"
            parts.append(
                f"{depths[-1]} blocks / {depths[0]} blocks = {growth:.2f} ({verdict}, "
                f"<= {TARGET_FLATNESS})"
            )
        lines.append(f"- {backend}, memory-efficient: " + "; ".join(parts) + ".")
    return lines


def plot(records, backends, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for backend in backends:
        for mode, style in (("plain", "-o"), ("efficient", "--s")):
            rows = sorted(
                (r for r in records if r["backend"] == backend and r["mode"] == mode),
                key=lambda r: r["depth"],
            )
            if rows:
                ax.plot(
                    [r["depth"] for r in rows],
                    [r["activation_bytes"] / MIB for r in rows],
                    style,
                    label=f"{backend} {mode}",
                )
    ax.set_xlabel("blocks")
    ax.set_ylabel("training-step memory above warm-up (MiB)")
    ax.set_title(f"i-RevNet (CIFAR width), batch {records[0]['batch_size']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

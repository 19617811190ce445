"""The GPU benchmark's tables (benchmarks/gpu.py): speed against the reference, largest batches."""

BACKENDS = ("torch", "jax", "torch+cudnn.benchmark")


def _kind(record):
    return record.get("job", {}).get("kind", "")


def _backend(record):
    job = record.get("job", {})
    return job.get("backend", "reference") + (
        "+cudnn.benchmark" if job.get("cudnn_benchmark") else ""
    )


def _precision(record):
    return record.get("job", {}).get("precision", "float32")


def speed_rows(records):
    """One row per (run, model, work, memory_efficient, precision) measured by any worker:
    images per second of the reference and each backend, and each backend's ratio to the
    reference's same work in the same precision and run (memory-efficient training against
    the reference's only, plain, training)."""
    measured = [r for r in records if "images_per_second" in r]
    reference = {
        (r.get("run", 1), r["model"], r["work"], _precision(r)): r
        for r in measured
        if _kind(r) == "reference_speed"
    }
    by_key = {}  # (run, model, work, memory_efficient, precision) -> {backend: record}
    for r in measured:
        if _kind(r) == "keras_speed":
            key = (r.get("run", 1), r["model"], r["work"], r["memory_efficient"], _precision(r))
            by_key.setdefault(key, {}).setdefault(_backend(r), r)
    rows = []
    for (run, model, work, memory_efficient, precision), by_backend in by_key.items():
        ref = reference.get((run, model, work, precision))
        row = dict(
            run=run,
            model=model,
            work=work,
            memory_efficient=memory_efficient,
            precision=precision,
            reference=ref and ref["images_per_second"],
        )
        for backend in BACKENDS:
            if backend in by_backend:
                match = by_backend[backend]
                value = match["images_per_second"]
                row[backend] = value
                row[f"{backend}_vs_reference"] = ref and value / ref["images_per_second"]
                row[f"{backend}_warmup_seconds"] = match["warmup_seconds"]
                row[f"{backend}_peak_bytes"] = match.get("peak_bytes")
        rows.append(row)
    return rows


def _number(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def _gib(value):
    return "-" if value is None else f"{value / 2**30:.1f}"


def markdown(records, machine):
    lines = ["# keras_irevnet on a GPU", ""]
    devices = {}
    for r in records:
        if r.get("work") == "device":
            devices[_backend(r)] = {k: v for k, v in r.items() if k not in ("work", "job", "run")}
    for backend, info in devices.items():
        lines.append(f"- {backend} worker: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    for number, run in enumerate(machine.get("runs", [machine]), 1):
        lines.append(
            f"- run {number}: {run.get('date')}, {run.get('total_seconds')} s; "
            f"workloads (model, image size, training batch, inference batch, timed steps): "
            + "; ".join(
                f"{w['model']} {w['image_size']} {w['train_batch']} {w['infer_batch']} {w['steps']}"
                for w in run.get("workloads", {}).values()
            )
        )
    if machine.get("cpu_dry_run"):
        lines.append("- CPU DRY RUN: tiny sizes on the CPU; these figures say nothing about GPUs")
    lines += [
        "",
        "## Speed (images per second; x = ratio to the plain-torch reference, same precision)",
        "",
        "| run | model | work | memory_efficient | precision | reference | torch | x | JAX | x "
        "| torch, cudnn.benchmark | x | torch warm-up s | JAX warm-up s | torch peak GiB |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in speed_rows(records):
        lines.append(
            f"| {row['run']} | {row['model']} | {row['work']} | {row['memory_efficient']} "
            f"| {row['precision']} "
            f"| {_number(row['reference'])} | {_number(row.get('torch'))} "
            f"| {_number(row.get('torch_vs_reference'), 2)} | {_number(row.get('jax'))} "
            f"| {_number(row.get('jax_vs_reference'), 2)} "
            f"| {_number(row.get('torch+cudnn.benchmark'))} "
            f"| {_number(row.get('torch+cudnn.benchmark_vs_reference'), 2)} "
            f"| {_number(row.get('torch_warmup_seconds'))} "
            f"| {_number(row.get('jax_warmup_seconds'))} "
            f"| {_gib(row.get('torch_peak_bytes'))} |"
        )
    reference_train = [
        r for r in records if _kind(r) == "reference_speed" and r.get("work") == "train"
    ]
    if reference_train:
        lines.append("")
    for r in reference_train:
        lines.append(
            f"- reference {r['model']} training, {_precision(r)}, run {r.get('run', 1)}: "
            f"peak {_gib(r.get('peak_bytes'))} GiB allocated at batch {r['batch']}"
        )
    lines += [
        "",
        "## Largest training batch, bijective model at 224x224, float32",
        "",
        "| run | backend | memory_efficient | largest that fitted | smallest that failed "
        "| its peak GiB | MiB per image there | first estimate | probes |",
        "|---|---|---|---|---|---:|---:|---:|---|",
    ]
    notes = []
    for r in records:
        if r.get("work") == "largest_batch" and "largest_fitting" in r:
            probes = ", ".join(
                f"{p['batch']}{'' if p['fits'] else ' (failed)'}" for p in r["probes"]
            )
            for p in r["probes"]:
                if p.get("error"):
                    notes.append(f"- {_backend(r)}, batch {p['batch']}: {p['error']}")
            if r.get("by") == "xla_analysis":
                check = r.get("check") or {}
                if check.get("ran"):
                    outcome = f"ran (peak {_gib(check.get('peak_bytes'))} GiB allocated)"
                else:
                    outcome = f"did not run: {check.get('error', 'no time left')}"
                notes.append(
                    f"- {_backend(r)}, memory_efficient={r['memory_efficient']}: probes are "
                    "XLA's memory plan of the compiled step (arguments, outputs, temporaries), "
                    f"not runs; one real step at the answer, batch {check.get('batch')}, "
                    f"{outcome}"
                )
            if r.get("cut_short"):
                notes.append(
                    f"- {_backend(r)}, memory_efficient={r['memory_efficient']}: search cut "
                    f"short: {r['cut_short']}"
                )
            peak = next(
                (p["peak_bytes"] for p in r["probes"] if p["batch"] == r["largest_fitting"]),
                None,
            )
            per_image = peak and peak / r["largest_fitting"] / 2**20
            lines.append(
                f"| {r.get('run', 1)} | {_backend(r)} | {r['memory_efficient']} "
                f"| {r['largest_fitting']} "
                f"| {r['smallest_failing'] or '-'} | {_gib(peak)} | {_number(per_image)} "
                f"| {r['estimate'] or '-'} | {probes} |"
            )
    if notes:
        lines += [
            "",
            "How searches were made or cut short, probes that failed other than out of memory:",
            "",
        ]
        lines += notes
    errors = [r for r in records if r.get("error") and r.get("work") != "probe"]
    if errors:
        lines += ["", "## Not measured", ""]
        for r in errors:
            what = r.get("job", {})
            lines.append(
                f"- run {r.get('run', 1)}: {what} {r.get('model', '')} {r.get('work')}: "
                f"{r['error'][:400]}"
            )
    return "\n".join(lines) + "\n"

"""keras_irevnet on a GPU: JAX and torch against the plain-torch reference on the same GPU.

    python -m benchmarks.gpu                           # everything, within --budget seconds
    python -m benchmarks.gpu --parts=speed --backends=reference,torch --precisions=float32
    python -m benchmarks.gpu --parts=largest_batch --backends=jax   # JAX's alone
    python -m benchmarks.gpu --cpu_dry_run             # every code path, tiny, on the CPU
    python -m benchmarks.gpu --merge=a/gpu.json,b/gpu.json --output_dir=benchmarks/results

Speed (per model and precision): training with `fit` (library defaults, and with
`memory_efficient=True`), inference with `predict`, and the inverse (`inverse_model()`'s
`predict`), each step timed until its outputs are on the host, median of the timed steps
after a warm-up step (compilation); the reference's training step as the authors' loop
runs it, its inference and inverse in `eval()` mode under `torch.no_grad()`, each
followed by `torch.cuda.synchronize()`, with `cudnn.benchmark = True` as the authors'
programs set it. Precisions: float32 (each library's own default for float32
convolutions, TF32 on this hardware for torch's cuDNN and XLA alike) and bfloat16 mixed
precision (Keras' "mixed_bfloat16"; `torch.autocast` for the reference).

Largest batch: the bijective ImageNet model at 224x224, float32, the largest training batch
(`train_on_batch`, SGD with momentum) that fits, with and without `memory_efficient`, and
the reference's. Two small probes give bytes per image and an estimate; the search starts
there (benchmarks/batch_search.py). A probe is one training step on torch; on JAX it is a
compilation of the step and XLA's plan of its memory (JAX's peak statistics cannot be reset,
and the first compilation's autotuning sets a peak that hides the steps' own), and the
search's answer is then run once for real. JAX's worker lets XLA's allocator take 95 % of the
GPU's memory (`XLA_PYTHON_CLIENT_MEM_FRACTION=.95`; JAX's default is 75 %), near what torch
can use, and allocates it only when needed, so the two JAX searches can run at once
(`--memory_efficient=false` and `=true` in two runs side by side; their checks take turns).

Workers run one after the other, each in its own process, in order of priority, within
`--budget` seconds overall; what a worker measured before it was stopped is kept. Writes
gpu.json, gpu.md and gpu_log.txt (the workers' own output) to --output_dir after every
worker.
"""

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time

from absl import app, flags

# This process only schedules workers and writes files (keras_irevnet.atomic, which imports
# Keras): torch is a backend every GPU machine has, where TensorFlow may be missing.
os.environ.setdefault("KERAS_BACKEND", "torch")

from keras_irevnet import atomic  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("parts", ["speed", "largest_batch"], "What to measure.")
flags.DEFINE_list(
    "backends",
    ["reference", "torch", "jax"],
    "What to measure: the plain-torch reference and Keras backends. A run without the "
    "reference has no ratios: merge it with one that has (same precision and work).",
)
flags.DEFINE_list("precisions", ["float32", "bfloat16"], "float32, bfloat16 (mixed).")
flags.DEFINE_list("models", ["cifar", "bijective"], "Models whose speed to measure.")
flags.DEFINE_multi_enum(
    "memory_efficient",
    ["false", "true"],
    ["false", "true"],
    "Largest-batch searches: without and/or with memory_efficient.",
)
flags.DEFINE_integer("budget", 540, "Seconds for the whole run; workers beyond it are skipped.")
flags.DEFINE_bool("cpu_dry_run", False, "Tiny sizes on the CPU: checks every code path.")
flags.DEFINE_string("output_dir", "runs/benchmarks/gpu", "Where gpu.json, gpu.md, the log go.")
flags.DEFINE_list("merge", None, "Instead of measuring: merge these runs' gpu.json files.")
flags.DEFINE_string("worker", None, "Internal: the worker's job, as JSON.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRY_RUN_WORKLOADS = {
    "cifar": ("cifar", 32, 4, 4, 1),
    "bijective": ("bijective", 64, 2, 2, 1),
}
# Largest-batch search: most probes per worker, and the batch it stops at in a dry run.
MAX_PROBES = {"torch": 8, "jax": 3, "reference": 8}
DRY_RUN_LIMIT = 20


def _workload(model):
    from benchmarks.speed_setup import GPU_WORKLOADS, Workload

    if FLAGS.cpu_dry_run:
        return Workload(*DRY_RUN_WORKLOADS[model])
    return GPU_WORKLOADS[model]


def jobs():
    """The workers in order of priority: the reference, then per backend (torch first: it
    compiles nothing) the library's defaults, the largest batches, and memory-efficient
    training and the inverse."""
    speed = "speed" in FLAGS.parts
    largest = "largest_batch" in FLAGS.parts
    precisions = [p for p in ("float32", "bfloat16") if p in FLAGS.precisions]
    models = [m for m in ("cifar", "bijective") if m in FLAGS.models]
    backends = [b for b in ("torch", "jax") if b in FLAGS.backends]

    def keras_speed(backend, works):
        return [
            dict(kind="keras_speed", backend=backend, precision=p, models=models, works=works)
            for p in precisions
        ]

    def keras_largest(backend):
        return [
            dict(kind="keras_largest_batch", backend=backend, memory_efficient=m)
            for m in (False, True)
            if str(m).lower() in FLAGS.memory_efficient
        ]

    order = []
    if speed and "reference" in FLAGS.backends:
        order += [dict(kind="reference_speed", precision=p, models=models) for p in precisions]
    if largest and "reference" in FLAGS.backends:
        order.append(dict(kind="reference_largest_batch"))
    for backend in backends:
        if speed:
            order += keras_speed(backend, ["train", "inference"])
        if largest:
            order += keras_largest(backend)
        if speed:
            order += keras_speed(backend, ["train_memory_efficient", "inverse"])
        if speed and backend == "torch" and "float32" in precisions:
            # What cuDNN's autotuning (off in torch by default, on in the reference) gives.
            order.append(
                dict(
                    kind="keras_speed",
                    backend=backend,
                    precision="float32",
                    models=models,
                    works=["train", "inference"],
                    cudnn_benchmark=True,
                )
            )
    return order


def worker(job, deadline):
    """Runs in a fresh process: prints one `RESULT {json}` line per measurement."""
    from benchmarks import gpu_workers

    _emit(dict(work="device", **gpu_workers.device_description()))
    limit = DRY_RUN_LIMIT if FLAGS.cpu_dry_run else 1 << 20
    kind = job["kind"]
    if kind == "reference_speed":
        for model in job["models"]:
            for result in gpu_workers.reference_speed(_workload(model), job["precision"]):
                _emit(dict(result, model=model))
    elif kind == "keras_speed":
        if job.get("cudnn_benchmark"):
            import torch

            torch.backends.cudnn.benchmark = True
        for model in job["models"]:
            for result in gpu_workers.keras_speed(_workload(model), job["precision"], job["works"]):
                _emit(dict(result, model=model))
    elif kind == "reference_largest_batch":
        for result in gpu_workers.reference_largest_batch(
            _largest_batch_workload(), deadline, MAX_PROBES["reference"], limit
        ):
            _emit(dict(result, model="bijective"))
    elif kind == "keras_largest_batch" and job["backend"] == "jax":
        for result in gpu_workers.jax_largest_batch_by_analysis(
            _largest_batch_workload(),
            job["memory_efficient"],
            deadline,
            MAX_PROBES["jax"],
            limit,
        ):
            _emit(dict(result, model="bijective"))
    elif kind == "keras_largest_batch":
        for result in gpu_workers.keras_largest_batch(
            _largest_batch_workload(),
            job["memory_efficient"],
            deadline,
            MAX_PROBES[job["backend"]],
            limit,
        ):
            _emit(dict(result, model="bijective"))
    else:
        raise ValueError(f"unknown worker kind {kind!r}")


def _largest_batch_workload():
    from benchmarks.speed_setup import Workload

    return Workload("bijective", 64 if FLAGS.cpu_dry_run else 224, 1, 1, 0)


def _emit(result):
    print("RESULT " + json.dumps(result), flush=True)


def _run(job, deadline, log):
    """One worker process, stopped at `deadline`; returns its results as they were printed."""
    backend = job.get("backend", "torch")  # the reference's workers import Keras for nothing
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONUNBUFFERED="1")
    if job["kind"] == "keras_largest_batch" and backend == "jax":
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = ".95"
        # Probes compile without running: two searches can share the GPU (--memory_efficient
        # in separate runs at once); the memory is taken only by the final check's step.
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if FLAGS.cpu_dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["JAX_PLATFORMS"] = "cpu"
    command = [
        sys.executable,
        "-m",
        "benchmarks.gpu",
        f"--worker={json.dumps(job)}",
        f"--budget={int(deadline - time.time())}",
        f"--cpu_dry_run={FLAGS.cpu_dry_run}",
    ]
    label = " ".join(f"{k}={v}" for k, v in job.items())
    print(f"[{time.strftime('%H:%M:%S')}] {label}", flush=True)
    log.write(f"\n===== [{time.strftime('%H:%M:%S')}] {label}\n")
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    timer = threading.Timer(max(1.0, deadline - time.time()), process.kill)
    timer.start()
    results = []
    try:
        for line in process.stdout:
            log.write(line)
            log.flush()
            if line.startswith("RESULT "):
                result = dict(json.loads(line[len("RESULT ") :]), job=job)
                results.append(result)
                _print_result(result)
    finally:
        timer.cancel()
        process.wait()
    if process.returncode != 0:
        stopped = process.returncode < 0 and time.time() >= deadline - 1
        why = "stopped at the time budget" if stopped else f"exit status {process.returncode}"
        results.append(dict(work="worker", job=job, error=why))
        print(f"  worker: {why}", flush=True)
        results += _recovered_search(job, results, why)
    return results


def _recovered_search(job, results, why):
    """A largest-batch search whose worker ended early: its bracket from the probes that
    were printed, marked as cut short."""
    from benchmarks import batch_search

    if not job["kind"].endswith("largest_batch"):
        return []
    if any(r.get("work") == "largest_batch" for r in results):
        return []
    probes = [r for r in results if r.get("work") == "probe"]
    if not probes:
        return []
    fields = [field.name for field in dataclasses.fields(batch_search.Probe)]
    low, high = batch_search.bracket(
        [batch_search.Probe(**{k: p.get(k) for k in fields}) for p in probes]
    )
    result = dict(
        job=job,
        model=probes[0]["model"],
        memory_efficient=probes[0]["memory_efficient"],
        work="largest_batch",
        largest_fitting=low,
        smallest_failing=high,
        estimate=None,
        probes=[{k: p.get(k) for k in fields} for p in probes],
        cut_short=f"the worker ended after its last probe ({why}); see gpu_log.txt",
    )
    _print_result(result)
    return [result]


def _print_result(r):
    if "images_per_second" in r:
        print(
            f"  {r['model']:9s} {r['work']:9s} memory_efficient={r['memory_efficient']!s:5s} "
            f"{r['images_per_second']:9.1f} img/s (warm-up {r['warmup_seconds']:.1f} s)",
            flush=True,
        )
    elif r.get("work") == "largest_batch" and "largest_fitting" in r:
        print(
            f"  largest batch, memory_efficient={r['memory_efficient']}: {r['largest_fitting']}"
            f" fits, {r['smallest_failing']} does not",
            flush=True,
        )
    elif r.get("error") and r.get("work") != "probe":
        print(f"  {r.get('model', '')} {r.get('work')} failed: {r['error'][:300]}", flush=True)


def main(argv):
    del argv
    start = time.time()
    deadline = start + FLAGS.budget
    if FLAGS.worker:
        worker(json.loads(FLAGS.worker), deadline)
        return
    if FLAGS.merge:
        merge(FLAGS.merge)
        return
    for name, values, allowed in (
        ("parts", FLAGS.parts, ("speed", "largest_batch")),
        ("backends", FLAGS.backends, ("reference", "torch", "jax")),
        ("precisions", FLAGS.precisions, ("float32", "bfloat16")),
        ("models", FLAGS.models, ("cifar", "bijective")),
    ):
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise app.UsageError(f"--{name}: unknown {unknown}; choose from {list(allowed)}.")
    from benchmarks import gpu_report

    os.makedirs(FLAGS.output_dir, exist_ok=True)
    records = []
    # The log is a plain append-only file: it is evidence of what ran, not a result.
    with open(os.path.join(FLAGS.output_dir, "gpu_log.txt"), "w") as log:
        for job in jobs():
            if time.time() > deadline - 20:
                records.append(dict(work="worker", job=job, error="skipped: time budget spent"))
                print(f"  skipped (time budget): {job}", flush=True)
                continue
            records += _run(job, deadline, log)
            _write(records, start, gpu_report)
    _write(records, start, gpu_report)
    print(open(os.path.join(FLAGS.output_dir, "gpu.md")).read())


def _write(records, start, gpu_report, machine=None):
    machine = machine or dict(
        cpu_dry_run=FLAGS.cpu_dry_run,
        workloads={m: _workload(m).__dict__ for m in FLAGS.models},
        total_seconds=round(time.time() - start, 1),
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    atomic.write_json(
        os.path.join(FLAGS.output_dir, "gpu.json"), dict(machine=machine, results=records)
    )
    with atomic.atomic_open(os.path.join(FLAGS.output_dir, "gpu.md")) as f:
        f.write(gpu_report.markdown(records, machine))


def merge(paths):
    """One gpu.json / gpu.md from several runs' gpu.json (device time often comes in short
    leases), merged ones included: each record is tagged with its run's number, each backend
    compared with the reference of its own run; each run's log is copied beside them as
    gpu_log_run{N}.txt."""

    from benchmarks import gpu_report

    os.makedirs(FLAGS.output_dir, exist_ok=True)
    records, runs, logs = [], [], []
    for path in paths:
        payload = atomic.read_json(path, "Pass the gpu.json files benchmarks.gpu wrote.")
        directory = os.path.dirname(path)
        # A merged file keeps its runs, renumbered after those before it, and their logs.
        merged = payload["machine"].get("runs")
        first = len(runs)
        runs += merged or [payload["machine"]]
        records += [dict(r, run=first + r.get("run", 1)) for r in payload["results"]]
        names = [f"gpu_log_run{n}.txt" for n in range(1, len(merged) + 1)] if merged else []
        logs += [os.path.join(directory, name) for name in names or ["gpu_log.txt"]]
    copies = []
    for number, log in enumerate(logs, 1):
        if os.path.exists(log):
            with open(log) as stream:  # read all first: a source may be overwritten below
                copies.append((number, stream.read()))
    for number, text in copies:
        with atomic.atomic_open(os.path.join(FLAGS.output_dir, f"gpu_log_run{number}.txt")) as f:
            f.write(text)
    _write(records, None, gpu_report, machine=dict(runs=runs))
    print(open(os.path.join(FLAGS.output_dir, "gpu.md")).read())


if __name__ == "__main__":
    app.run(main)

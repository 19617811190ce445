"""Speed of keras_irevnet on this machine, against a plain-PyTorch i-RevNet of the same design.

    python -m benchmarks.run             # CIFAR at 32x32, the ImageNet model at 224x224
    python -m benchmarks.run --quick     # fewer steps, the ImageNet model at batch 4
    python -m benchmarks.run --quick --jit_modes=tf.function,jax.jit,eager  # defaults only
    python -m benchmarks.run --backends=jax --models=cifar

For `IRevNetCIFAR` and `IRevNetBijective` and each Keras backend: training throughput
(`model.fit` and `model.train_on_batch`), inference (`model.predict` and
`model.predict_on_batch`) and inverse (the same on `model.inverse_model()`), with and
without `memory_efficient` and with each
compilation mode the backend offers; achieved GFLOP/s from the architecture's FLOP count
(training counts 3x the forward FLOPs, whether or not the memory-efficient mode recomputes
F) and its fraction of the float32 matmul peak measured in the same run (the best of
1024^3, 2048^3 and 4096^3 matmuls in torch and numpy); and the plain-torch reference
(`benchmarks/torch_irevnet.py`, eager, as the authors' code runs) as the yardstick.

Every measurement excludes its warm-up step (compilation, tracing), reported apart, and
reports the median of the timed steps that follow. Each backend and the reference run in
their own process, one after the other; the reference runs again after each backend, and
each backend's ratios are to the mean of the reference runs just before and after it.
Writes speed.json, speed.md and speed.png to --output_dir; the targets in speed.md are
checked on the rows the library's defaults give (Keras' default compilation on CPU, the
constructors' default `memory_efficient`).
"""

import json
import os
import platform
import subprocess
import sys
import time

from absl import app, flags

from benchmarks.speed_setup import MODELS, workloads

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Short version: fewer steps, ImageNet model at batch 4.")
flags.DEFINE_list("backends", ["tensorflow", "jax", "torch"], "Keras backends to measure.")
flags.DEFINE_list("models", list(MODELS), "Models to measure: cifar, bijective.")
flags.DEFINE_list(
    "jit_modes",
    None,
    "Only these compilation modes (tf.function, XLA, jax.jit, eager, torch.compile).",
)
flags.DEFINE_string("output_dir", "runs/benchmarks/speed", "Where the JSON, table and plot go.")
flags.DEFINE_integer("timeout", 5400, "Seconds allowed to one worker process.")
flags.DEFINE_string("worker", None, "Internal: 'reference' or 'keras': measure, print JSON.")
flags.DEFINE_string("model", None, "Internal: the worker's model.")
flags.DEFINE_bool("xla_default_fusions", False, "Internal: JAX worker keeps XLA's CPU fusions.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# JAX on CPU also runs with XLA's default YNNPACK fusions, which keras_irevnet turns off for
# its models' compiled steps (keras_irevnet/models/xla_cpu_options.py): the comparison shows
# what that choice is worth.
JAX_VARIANTS = {"": False, " + YNN": True}


def _workload(name):
    return next(w for w in workloads(FLAGS.quick) if w.model == name)


def worker():
    """Runs in a fresh process: prints one `RESULT {json}` line per measurement."""
    workload = _workload(FLAGS.model)
    if FLAGS.worker == "reference":
        from benchmarks import speed_reference

        model = speed_reference.reference_model(workload.model)
        flops = speed_reference.forward_flops(model, workload.image_size)
        _emit(dict(work="flops", forward_flops=flops))
        _emit(dict(work="matmul_peak", gflops=speed_reference.matmul_peak_gflops()))
        results = speed_reference.measure(workload)
    else:
        from benchmarks import speed_keras

        if FLAGS.xla_default_fusions:
            from keras_irevnet.models import xla_cpu_options

            xla_cpu_options.jax_compiler_options = lambda: None

        results = speed_keras.measure(workload, FLAGS.jit_modes)
    for result in results:
        _emit(result)


def _emit(result):
    print("RESULT " + json.dumps(result), flush=True)


def _run_worker(kind, backend, model, xla_default_fusions=False, label_suffix="", tags=None):
    """Runs one worker process; returns its results, tagged, as they were printed."""
    env = dict(os.environ, KERAS_BACKEND=backend or "tensorflow")
    command = [
        sys.executable,
        "-m",
        "benchmarks.run",
        f"--worker={kind}",
        f"--model={model}",
        f"--quick={FLAGS.quick}",
        f"--xla_default_fusions={xla_default_fusions}",
    ]
    if FLAGS.jit_modes:
        command.append(f"--jit_modes={','.join(FLAGS.jit_modes)}")
    label = f"{model} / {backend or 'plain torch'}{label_suffix}"
    print(f"[{time.strftime('%H:%M:%S')}] {label} ...", flush=True)
    results = []
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=FLAGS.timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        stderr += f"\ntimed out after {FLAGS.timeout} s"
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            result.update(model=model, backend=backend or "reference", **(tags or {}))
            if label_suffix and "jit" in result:
                result["jit"] += label_suffix
            results.append(result)
            _print_result(result)
    if process.returncode != 0:
        # Keep what was measured; record why the rest is missing.
        results.append(
            dict(
                model=model,
                backend=backend or "reference",
                work="worker",
                error=stderr.strip()[-2000:],
            )
        )
        print(f"  worker failed:\n{stderr.strip()[-2000:]}", flush=True)
    return results


def _print_result(r):
    if "images_per_second" in r:
        print(
            f"  {r['work']:9s} {r.get('call', 'loop'):16s} {r['jit']:13s} "
            f"memory_efficient={r['memory_efficient']!s:5s} "
            f"{r['images_per_second']:8.1f} img/s (warm-up {r['warmup_seconds']:.1f} s)",
            flush=True,
        )
    elif "error" in r:
        print(f"  {r['work']} {r.get('jit', '')} failed: {r['error'][:300]}", flush=True)


def main(argv):
    del argv
    if FLAGS.worker:
        worker()
        return
    unknown = sorted(set(FLAGS.models) - set(MODELS))
    if unknown:
        raise app.UsageError(f"--models: unknown {unknown}; choose from {sorted(MODELS)}.")
    unknown = sorted(set(FLAGS.backends) - {"tensorflow", "jax", "torch"})
    if unknown:
        raise app.UsageError(f"--backends: unknown {unknown}; choose tensorflow, jax, torch.")
    from benchmarks import speed_report

    os.makedirs(FLAGS.output_dir, exist_ok=True)
    records = []
    start = time.time()
    for model in FLAGS.models:
        # The reference runs again after each backend, and each backend is compared with the
        # mean of the two reference runs around it: the machine's speed drifts by 10-25 %
        # over a run, which a single reference measured at the start would attribute to the
        # backends measured last.
        records += _run_worker("reference", None, model, tags=dict(round=0))
        for number, backend in enumerate(FLAGS.backends):
            variants = JAX_VARIANTS if backend == "jax" else {"": False}
            for suffix, xla_default_fusions in variants.items():
                records += _run_worker(
                    "keras",
                    backend,
                    model,
                    xla_default_fusions,
                    suffix,
                    tags=dict(reference_rounds=[number, number + 1]),
                )
            records += _run_worker("reference", None, model, tags=dict(round=number + 1))
            # Written after every worker: an interrupted run keeps what it measured.
            speed_report.write(records, _machine(start), FLAGS.output_dir)
    speed_report.write(records, _machine(start), FLAGS.output_dir)
    print(open(os.path.join(FLAGS.output_dir, "speed.md")).read())


def _machine(start):
    return dict(
        platform=platform.platform(),
        processor=platform.processor(),
        cpus=os.cpu_count(),
        python=platform.python_version(),
        quick=FLAGS.quick,
        workloads=[w.__dict__ for w in workloads(FLAGS.quick) if w.model in FLAGS.models],
        total_seconds=round(time.time() - start, 1),
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )


if __name__ == "__main__":
    app.run(main)

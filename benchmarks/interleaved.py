"""keras_irevnet against the plain-torch reference in one process, their steps interleaved.

    python -m benchmarks.interleaved                               # CIFAR, every backend
    python -m benchmarks.interleaved --models=cifar,bijective --memory_efficient=true
    KERAS_BACKEND=jax python -m benchmarks.interleaved --backends=  # the current backend only

`benchmarks.run` measures each backend in a process of its own and compares it with
reference runs before and after it; on a shared machine whose speed drifts by 10-25 %
within minutes, single ratios still move by 10-15 % between runs. Here the reference
(`benchmarks/torch_irevnet.py`, eager, as the authors' training script runs it) lives in the
same process as the Keras model, and each timed step of one is followed by a step of the
other: a slow spell falls on both alike. Steps are the `*_on_batch` calls (whole calls,
result on the host) against the reference's training step and `no_grad` forward pass, with
the library's defaults otherwise (Keras' default compilation). Prints one table row per
model and work, and writes `interleaved.json` to `--output_dir`.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS


def _define_flags():
    # Defined when run as a program only: absl's flags are global, and the test process that
    # imports this module for `compare` also imports programs with flags of the same names.
    flags.DEFINE_list("backends", ["tensorflow", "jax", "torch"], "Keras backends, a process each.")
    flags.DEFINE_list("models", ["cifar"], "cifar, bijective.")
    flags.DEFINE_bool("memory_efficient", False, "Train the Keras model with reversible backprop.")
    flags.DEFINE_integer("steps", 6, "Timed steps of each, interleaved, after two warm-up steps.")
    flags.DEFINE_string("output_dir", "runs/benchmarks/interleaved", "Where the JSON goes.")
    flags.DEFINE_bool("worker", False, "Internal: measure the current backend, print JSON lines.")


WORKS = ("train", "inference")


def keras_steps(workload, memory_efficient):
    """The Keras model's `train_on_batch` and `predict_on_batch` on `workload`'s batches,
    compiled as `benchmarks.run` compiles it, with Keras' default compilation."""
    import numpy as np

    from benchmarks.speed_keras import _compiled
    from benchmarks.speed_setup import MODELS

    model = _compiled(workload, "auto", memory_efficient)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((workload.train_batch,) + workload.image_shape).astype("float32")
    y = rng.integers(0, MODELS[workload.model]["classes"], workload.train_batch)
    x_inference = rng.standard_normal((workload.infer_batch,) + workload.image_shape)
    x_inference = x_inference.astype("float32")
    return {
        "train": lambda: model.train_on_batch(x, y),
        "inference": lambda: model.predict_on_batch(x_inference),
    }


def compare(workload, memory_efficient, steps):
    """Yields one result per work: both medians (seconds) and the reference's over ours."""
    from benchmarks import speed_reference

    ours = keras_steps(workload, memory_efficient)
    reference = speed_reference.reference_steps(workload)
    for work in WORKS:
        pair = (("keras_irevnet", ours[work]), ("reference", reference[work]))
        for _ in range(2):  # warm-up: compilation, the optimizer's variables
            for _, step in pair:
                step()
        seconds = {name: [] for name, _ in pair}
        for _ in range(steps):
            for name, step in pair:
                start = time.perf_counter()
                step()
                seconds[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        yield dict(
            model=workload.model,
            work=work,
            memory_efficient=memory_efficient,
            keras_seconds=medians["keras_irevnet"],
            reference_seconds=medians["reference"],
            x_reference=medians["reference"] / medians["keras_irevnet"],
        )


def _measure_here():
    import keras

    from benchmarks.speed_setup import workloads

    chosen = {w.model: w for w in workloads(quick=True)}
    for name in FLAGS.models:
        for result in compare(chosen[name], FLAGS.memory_efficient, FLAGS.steps):
            result["backend"] = keras.backend.backend()
            print("RESULT " + json.dumps(result), flush=True)


def _row(result):
    return (
        f"| {result['backend']} | {result['model']} | {result['work']} | "
        f"{result['memory_efficient']} | {result['keras_seconds']:.3f} | "
        f"{result['reference_seconds']:.3f} | {result['x_reference']:.2f}x |"
    )


def main(argv):
    del argv
    if FLAGS.steps < 1:
        raise app.UsageError(f"--steps: expected at least 1, got {FLAGS.steps}.")
    unknown = [name for name in FLAGS.models if name not in ("cifar", "bijective")]
    if unknown:
        # Checked here, before any worker starts, not in each backend's worker.
        raise app.UsageError(f"--models: expected cifar or bijective, got {unknown}.")
    if FLAGS.worker:
        _measure_here()
        return
    from keras_irevnet import atomic

    backends = FLAGS.backends or [os.environ.get("KERAS_BACKEND", "tensorflow")]
    print("| backend | model | work | memory_efficient | keras_irevnet s | reference s | x ref |")
    print("|---|---|---|---|---:|---:|---:|")
    results = []
    for backend in backends:
        command = [sys.executable, "-m", "benchmarks.interleaved", "--worker"]
        command += [f"--models={','.join(FLAGS.models)}", f"--steps={FLAGS.steps}"]
        command += [f"--memory_efficient={FLAGS.memory_efficient}"]
        worker = subprocess.run(
            command,
            env=dict(os.environ, KERAS_BACKEND=backend),
            capture_output=True,
            text=True,
        )
        lines = [line for line in worker.stdout.splitlines() if line.startswith("RESULT ")]
        if worker.returncode != 0 or not lines:
            print(f"| {backend} | failed: {worker.stderr.strip().splitlines()[-1:]} |")
            continue
        for line in lines:
            results.append(json.loads(line[len("RESULT ") :]))
            print(_row(results[-1]), flush=True)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    atomic.write_json(os.path.join(FLAGS.output_dir, "interleaved.json"), results)


if __name__ == "__main__":
    _define_flags()
    app.run(main)

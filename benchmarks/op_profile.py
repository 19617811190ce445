"""Where a step's time goes, by operation: keras_irevnet against the plain-torch reference.

    python -m benchmarks.op_profile --model=bijective --work=inference            # TensorFlow
    KERAS_BACKEND=torch python -m benchmarks.op_profile --work=train --memory_efficient

Profiles `--steps` `*_on_batch` steps of the Keras model (TensorFlow's profiler, or
torch.profiler) and as many steps of the reference (torch.profiler), after two warm-up steps
of each, and prints per operation type the milliseconds and calls per step, and the total of
the convolutions (with the matrix products TensorFlow runs the widest ones as) against that of
everything else. Times are the operations' own: on TensorFlow each kernel's time on the
executor, summed over its threads (so their total can exceed the wall time), on torch each
operator's self time (a Python `autograd.Function`'s self time is its Python, and the
profiler's own cost per operation inflates it). Python outside operations (Keras' layer
calls, the trainer) is in neither, so the wall time per step, measured without the profiler,
is printed beside them. Writes the tables and figures to `--output_dir`
(`op_profile_<backend>_<model>_<work>.md` and `.json`). TensorFlow and torch only: the two
backends whose figures the README explains with it.
"""

import collections
import glob
import os
import re
import tempfile

from absl import app, flags

from benchmarks.speed_setup import time_steps, workloads

FLAGS = flags.FLAGS
WORKS = ("train", "inference", "inverse")
# Operation types that are convolutions, or the matrix products standing in for them (and the
# classifier's, a few milliseconds).
CONVOLUTION = re.compile(r"conv|matmul|addmm|\bmm\b", re.IGNORECASE)
# TensorFlow's executor events that are not kernels (ParallelFor: a kernel's own work, inside
# its event).
_NOT_KERNELS = {
    "ParallelFor",
    "Process",
    "ExecutorDoneCallback",
    "StartRegion",
    "StopRegion",
    "Record",
    "MemoryAllocation",
    "MemoryDeallocation",
}


def _define_flags():
    flags.DEFINE_enum("model", "bijective", ["cifar", "bijective"], "The model.")
    flags.DEFINE_enum("work", "inference", list(WORKS), "What a step does.")
    flags.DEFINE_bool("memory_efficient", False, "Train with reversible backprop.")
    flags.DEFINE_bool("quick", True, "The quick benchmark's batches (ImageNet model: 4).")
    flags.DEFINE_integer("steps", 3, "Profiled steps of each, after two warm-up steps.")
    flags.DEFINE_integer("rows", 15, "Operation types listed per side.")
    flags.DEFINE_string("output_dir", "runs/benchmarks/op_profile", "Where the tables and JSON go.")


def torch_op_times(step, steps):
    """`{operation: (milliseconds, calls)}` per step of `step()`, torch.profiler's self times."""
    from torch.profiler import profile

    with profile() as profiler:
        for _ in range(steps):
            step()
    return {
        event.key: (event.self_cpu_time_total / 1e3 / steps, event.count / steps)
        for event in profiler.key_averages()
    }


def tensorflow_op_times(step, steps):
    """`{operation type: (milliseconds, calls)}` per step of `step()`: TensorFlow's profiler
    trace, each kernel's time on the executor's threads summed by its type."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals = collections.defaultdict(lambda: [0.0, 0])
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(steps):
                step()
        finally:
            tf.profiler.experimental.stop()
        (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    for plane in space.planes:
        names = {key: value.name for key, value in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                # Kernels are named "node:OpType"; the rest is the executor's bookkeeping.
                kind = names.get(event.metadata_id, "").rsplit(":", 1)[-1]
                if kind in _NOT_KERNELS:
                    continue
                total = totals[kind]
                total[0] += event.duration_ps / 1e9
                total[1] += 1
    return {name: (ms / steps, calls / steps) for name, (ms, calls) in totals.items()}


def split(op_times):
    """(convolution ms, other ms) per step of `op_times`."""
    convolution = sum(ms for name, (ms, _) in op_times.items() if CONVOLUTION.search(name))
    return convolution, sum(ms for ms, _ in op_times.values()) - convolution


def _steps():
    """(the Keras model's step, the reference's), on the chosen workload."""
    from benchmarks.interleaved import keras_work
    from benchmarks.speed_reference import reference_steps

    (workload,) = [w for w in workloads(FLAGS.quick) if w.model == FLAGS.model]
    ours = keras_work(workload, FLAGS.memory_efficient)[FLAGS.work]["on_batch"]
    return ours, reference_steps(workload)[FLAGS.work]


def _table(title, op_times, wall, rows):
    convolution, other = split(op_times)
    lines = [
        f"{title}: wall {wall * 1e3:.0f} ms per step; operations {convolution + other:.0f} ms: "
        f"convolutions {convolution:.0f}, the rest {other:.0f}",
        "",
        "| operation | ms / step | calls / step |",
        "|---|---:|---:|",
    ]
    ranked = sorted(op_times.items(), key=lambda item: -item[1][0])[:rows]
    lines += [f"| {name} | {ms:.1f} | {calls:.0f} |" for name, (ms, calls) in ranked]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if FLAGS.steps < 1:
        raise app.UsageError(f"--steps: expected at least 1, got {FLAGS.steps}.")
    if FLAGS.memory_efficient and FLAGS.work != "train":
        raise app.UsageError(
            f"--memory_efficient: only with --work=train, got --work={FLAGS.work}."
        )
    import keras

    from keras_irevnet import atomic

    backend = keras.backend.backend()
    profilers = {"tensorflow": tensorflow_op_times, "torch": torch_op_times}
    if backend not in profilers:
        raise app.UsageError(f"KERAS_BACKEND: expected tensorflow or torch, got {backend!r}.")
    ours, reference = _steps()
    results, tables = {}, []
    for name, step, profiler in (
        (f"keras_irevnet ({backend})", ours, profilers[backend]),
        ("reference (torch)", reference, torch_op_times),
    ):
        step()  # the first of two warm-up steps; `time_steps` runs the second
        wall = time_steps(step, FLAGS.steps)[1]
        results[name] = {"wall_seconds": wall, "op_times": profiler(step, FLAGS.steps)}
        tables.append(_table(name, results[name]["op_times"], wall, FLAGS.rows))
        print(tables[-1], flush=True)
    settings = {
        "backend": backend,
        "model": FLAGS.model,
        "work": FLAGS.work,
        "memory_efficient": FLAGS.memory_efficient,
        "quick": FLAGS.quick,
        "steps": FLAGS.steps,
    }
    stem = "_".join(["op_profile", backend, FLAGS.model, FLAGS.work])
    stem += "_memory_efficient" if FLAGS.memory_efficient else ""
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    path = os.path.join(FLAGS.output_dir, stem)
    atomic.write_json(path + ".json", {**settings, "results": results})
    with atomic.atomic_open(path + ".md") as f:
        f.write(f"{settings}\n\n" + "\n".join(tables))


if __name__ == "__main__":
    _define_flags()
    app.run(main)

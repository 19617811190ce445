"""Where a step's time goes, by operation: keras_irevnet against the plain-torch reference.

    python -m benchmarks.op_profile --model=bijective --work=inference            # TensorFlow
    KERAS_BACKEND=torch python -m benchmarks.op_profile --work=train --memory_efficient
    KERAS_BACKEND=torch python -m benchmarks.op_profile --model=cifar --work=train  # on a GPU

Profiles `--steps` `*_on_batch` steps of the Keras model (TensorFlow's profiler, or
torch.profiler) and as many steps of the reference (torch.profiler), after two warm-up steps
of each, and prints per operation type the milliseconds and calls per step, and the total of
the convolutions (with the matrix products TensorFlow runs the widest ones as) against that of
everything else. Times are the operations' own: on TensorFlow each kernel's time on the
executor, summed over its threads (so their total can exceed the wall time), on torch each
operator's self time (a Python `autograd.Function`'s self time is its Python, and the
profiler's own cost per operation inflates it). Python outside operations (Keras' layer
calls, the trainer) is in neither, so the wall time per step, measured without the profiler,
is printed beside them, and, on torch, the `Tensor.item()` calls per step (each one makes
the host wait for the device). Writes the tables and figures to `--output_dir`
(`op_profile_<backend>_<model>_<work>[_memory_efficient][_bfloat16][_cuda].md` and `.json`).
TensorFlow on the CPU and torch only: the backends whose figures the README explains with it.

On a GPU (torch sees CUDA: Keras then puts the model there, and the reference goes there
too) the batches are `benchmarks.gpu`'s (CIFAR 128, the ImageNet model 64 at 224x224), cuDNN
picks its algorithms by timing them (`cudnn.benchmark`, as there), every step ends with
`torch.cuda.synchronize()`, and the profile adds the GPU's side: each operator's kernel time
and the kernels' total per step. A step whose kernels take much less than its wall time is
bound by the host launching them; the operators' host times then say where that goes.
"""

import collections
import dataclasses
import glob
import os
import re
import tempfile

from absl import app, flags

from benchmarks.speed_setup import GPU_WORKLOADS, time_steps, workloads

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
    flags.DEFINE_enum(
        "precision", "float32", ["float32", "bfloat16"], "bfloat16: Keras' mixed_bfloat16."
    )
    flags.DEFINE_bool("quick", True, "The quick benchmark's batches (ImageNet model: 4); CPU only.")
    flags.DEFINE_integer("steps", 3, "Profiled steps of each, after two warm-up steps.")
    flags.DEFINE_integer("rows", 15, "Operation types listed per side.")
    flags.DEFINE_string("output_dir", "runs/benchmarks/op_profile", "Where the tables and JSON go.")


@dataclasses.dataclass
class Profile:
    """One side's profile, per step: `host` maps each operation (type) to `(milliseconds,
    calls)` of its own time on the host. On a GPU also `device`, the milliseconds of the GPU
    kernels each host event launched itself (an operator, or the runtime call that the
    profiler ties the kernel to), and `kernels`, each kernel's milliseconds by name."""

    host: dict
    device: dict = dataclasses.field(default_factory=dict)
    kernels: dict = dataclasses.field(default_factory=dict)

    @property
    def device_total(self):
        return sum(self.kernels.values())

    @property
    def host_waits(self):
        """`Tensor.item()` calls per step: each waits for the device to catch up (on a GPU
        the host then stops running ahead of the kernels)."""
        return self.host.get("aten::_local_scalar_dense", (0.0, 0))[1]


def torch_op_times(step, steps, cuda=False):
    """`Profile` of `step()`: torch.profiler's self times per operator; with `cuda`, also
    the GPU's kernel times."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
    events = profiler.key_averages()
    host = {e.key: (e.self_cpu_time_total / 1e3 / steps, e.count / steps) for e in events}
    if not cuda:
        return Profile(host)
    on_device = torch.autograd.DeviceType.CUDA

    def per_step(chosen):
        return {e.key: e.self_device_time_total / 1e3 / steps for e in events if chosen(e)}

    return Profile(
        host,
        device=per_step(lambda e: e.device_type != on_device and e.self_device_time_total),
        kernels=per_step(lambda e: e.device_type == on_device),
    )


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
    return Profile({name: (ms / steps, calls / steps) for name, (ms, calls) in totals.items()})


def split(op_times):
    """(convolution ms, other ms) per step of `op_times`."""
    convolution = sum(ms for name, (ms, _) in op_times.items() if CONVOLUTION.search(name))
    return convolution, sum(ms for ms, _ in op_times.values()) - convolution


def _cuda():
    """Whether the profile runs on a GPU: on torch, where torch sees CUDA."""
    import keras

    if keras.backend.backend() != "torch":
        return False
    import torch

    return torch.cuda.is_available()


def _steps(cuda):
    """(the Keras model's step, the reference's), on the chosen workload; on a GPU each
    ends with `torch.cuda.synchronize()`."""
    import keras

    from benchmarks.interleaved import keras_work
    from benchmarks.speed_reference import reference_steps

    if cuda:
        import torch

        torch.backends.cudnn.benchmark = True
        workload = GPU_WORKLOADS[FLAGS.model]
    else:
        (workload,) = [w for w in workloads(FLAGS.quick) if w.model == FLAGS.model]
    if FLAGS.precision == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    ours = keras_work(workload, FLAGS.memory_efficient)[FLAGS.work]["on_batch"]
    device = "cuda" if cuda else "cpu"
    reference = reference_steps(workload, device, FLAGS.precision)[FLAGS.work]
    if not cuda:
        return ours, reference

    def synchronized(call):
        def step():
            call()
            torch.cuda.synchronize()

        return step

    return synchronized(ours), synchronized(reference)


def _table(title, profile, wall, rows):
    convolution, other = split(profile.host)
    lines = [
        f"{title}: wall {wall * 1e3:.0f} ms per step; operations {convolution + other:.0f} ms: "
        f"convolutions {convolution:.0f}, the rest {other:.0f}"
    ]
    if any(name.startswith("aten::") for name in profile.host):  # torch's
        lines.append(f"`Tensor.item()` calls per step: {profile.host_waits:.0f}")
    if profile.device_total:
        lines.append(
            f"GPU kernels {profile.device_total:.1f} ms per step "
            f"({profile.device_total / (wall * 1e3):.0%} of the wall time)"
        )
    ranked = sorted(profile.host.items(), key=lambda item: -item[1][0])[:rows]
    if profile.device_total:
        lines += ["", "| operation | host ms / step | GPU ms / step | calls / step |"]
        lines.append("|---|---:|---:|---:|")
        lines += [
            f"| {name} | {ms:.1f} | {profile.device.get(name, 0.0):.1f} | {calls:.0f} |"
            for name, (ms, calls) in ranked
        ]
        for title, times in (("operation", profile.device), ("GPU kernel", profile.kernels)):
            busiest = sorted(times.items(), key=lambda item: -item[1])[:rows]
            lines += ["", f"| {title} (by GPU time) | GPU ms / step |", "|---|---:|"]
            lines += [f"| {name[:120]} | {ms:.1f} |" for name, ms in busiest]
    else:
        lines += ["", "| operation | ms / step | calls / step |", "|---|---:|---:|"]
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
    cuda = _cuda()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            # The parser reads the CPU executor's threads; a GPU's kernels are elsewhere.
            raise app.UsageError("On TensorFlow op_profile profiles the CPU; hide the GPUs.")
    ours, reference = _steps(cuda)
    results, tables = {}, []
    for name, step, profiler in (
        (f"keras_irevnet ({backend})", ours, profilers[backend]),
        ("reference (torch)", reference, torch_op_times),
    ):
        step()  # the first of two warm-up steps; `time_steps` runs the second
        wall = time_steps(step, FLAGS.steps)[1]
        kwargs = {"cuda": True} if cuda else {}
        profile = profiler(step, FLAGS.steps, **kwargs)
        results[name] = {
            "wall_seconds": wall,
            "op_times": profile.host,
            "host_waits": profile.host_waits,
            "device_op_times": profile.device,
            "kernel_times": profile.kernels,
            "device_total_ms": profile.device_total,
        }
        tables.append(_table(name, profile, wall, FLAGS.rows))
        print(tables[-1], flush=True)
    settings = {
        "backend": backend,
        "device": "cuda" if cuda else "cpu",
        "model": FLAGS.model,
        "work": FLAGS.work,
        "memory_efficient": FLAGS.memory_efficient,
        "precision": FLAGS.precision,
        "quick": FLAGS.quick and not cuda,
        "steps": FLAGS.steps,
    }
    stem = "_".join(["op_profile", backend, FLAGS.model, FLAGS.work])
    stem += "_memory_efficient" if FLAGS.memory_efficient else ""
    stem += "_bfloat16" if FLAGS.precision == "bfloat16" else ""
    stem += "_cuda" if cuda else ""
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    path = os.path.join(FLAGS.output_dir, stem)
    atomic.write_json(path + ".json", {**settings, "results": results})
    with atomic.atomic_open(path + ".md") as f:
        f.write(f"{settings}\n\n" + "\n".join(tables))


if __name__ == "__main__":
    _define_flags()
    app.run(main)

"""Peak memory and time of one training step vs depth, plain vs memory-efficient backprop.

    python -m benchmarks.memory                                   # the issue's sizes
    python -m benchmarks.memory --depths=6,18 --batch_size=32 --backends=jax

The model is the CIFAR i-RevNet's width (channels 16, 64, 256; strides 1, 2, 2; dropout 0.1;
32x32x3 input, 10 classes) with `depth` blocks split evenly over its three stages
(54 blocks = IRevNetCIFAR). Every measurement runs in a fresh process, one backend each:

- JAX: the exact figure. XLA's memory analysis of the compiled gradient of the loss
  (`jax.jit(jax.value_and_grad(loss)).lower(...).compile().memory_analysis()`, compiled
  with the XLA options of the models' own train steps): its temporary buffers are the
  activations kept for the backward pass plus scratch space.
- torch: exact too. Every allocation and release of a tensor during one training step
  (`model.train_on_batch`, batch `batch_size`, after warm-up steps), from torch's profiler
  with `profile_memory=True`: the peak of the bytes allocated during the step and still
  alive, minus the bytes the step leaves allocated (its weight gradients, which plain and
  reversible backprop both keep for the optimizer, and which grow with depth because the
  weights do). Both parts are recorded.
- TensorFlow: exact as well. Every allocation and release of one call of the loss gradient
  (`tf.function`, GradientTape, the gradients w.r.t. the trainable weights returned, as in
  Keras' train step but without the optimizer's update, as on JAX), from TensorFlow's
  profiler, after warm-up calls with batches of 2, 3 and `batch_size` (TensorFlow traces
  once more for a second batch size, then the graph is batch-generic): the peak of the
  bytes the call's tensors requested, minus the bytes of the weight gradients, which both
  modes hold at the end and which grow with depth because the weights do (torch's figure
  leaves them out too; on JAX they are outputs, not temporaries). Both parts are recorded,
  and the allocator's own peak (`tf.config.experimental.get_memory_info`) beside them: it
  counts the chunks it handed out, and TensorFlow's BFC allocator gives a request a free
  chunk of up to twice its size rather than split it, so the weight gradients kept to the
  end of the backward pass counted 1.45x their bytes in its figure (54 blocks, batch 64,
  AMD EPYC without oneDNN: 34.6 MiB of chunks for 23.8 MiB of gradients), an excess that
  grows with depth in either mode.
  TensorFlow runs independent operations in no fixed order, so the peak varies from call
  to call: the figure is the median of `--tensorflow_calls` calls, their range recorded.
  (Earlier versions took the allocator's peak as the figure, and before that the growth of
  the process's peak resident set size over a `train_on_batch`, which varied by +-10 MB
  between runs.)

Time per step: the median of `--timed_steps` further steps after the measured one:
`train_on_batch` on TensorFlow and torch (forward, backward, SGD update); on JAX the
compiled gradient above (forward and backward, no optimizer update: compiling Keras' own
train step as well would double the compile time of deep models). Writes memory.json,
memory.md and memory.png to --output_dir.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

from benchmarks import memory_report
from benchmarks.allocations import (
    keep_tensorflow_cpu_statistics,
    tensorflow_loss_gradient,
    tensorflow_traced_step_bytes,
    torch_step_bytes,
    weight_gradient_bytes,
)
from keras_irevnet import atomic

FLAGS = flags.FLAGS
flags.DEFINE_list("backends", ["tensorflow", "jax", "torch"], "Keras backends to measure.")
flags.DEFINE_list("depths", ["6", "18", "54"], "Total blocks (a multiple of 3).")
flags.DEFINE_integer("batch_size", 128, "Batch of the measured training step.")
flags.DEFINE_integer("timed_steps", 2, "Steps timed after the measured one (median).")
flags.DEFINE_integer(
    "tensorflow_calls",
    5,
    "TensorFlow: calls measured; the figure is their median peak (the range is recorded).",
)
flags.DEFINE_integer(
    "tensorflow_inter_op_threads",
    0,
    "TensorFlow: threads running independent operations at once (0: TensorFlow's choice); "
    "the order they run in changes the peak.",
    lower_bound=0,
)
flags.DEFINE_list("modes", ["plain", "efficient"], "plain and/or efficient (reversible).")
flags.DEFINE_string("output_dir", "runs/benchmarks", "Where the JSON, table and plot go.")
flags.DEFINE_integer("timeout", 3600, "Seconds allowed to one measurement process.")
flags.DEFINE_string("worker", None, "Internal: 'backend,depth,mode': measure, print JSON.")

WARMUP_BATCHES = (2, 3)


def _model(depth, memory_efficient):
    import keras

    import keras_irevnet as kir
    from keras_irevnet.models import PRESETS

    keras.utils.set_random_seed(0)
    config = dict(PRESETS["cifar"].architecture, blocks=(depth // 3,) * 3)
    model = kir.IRevNet(
        **config,
        input_shape=(32, 32, 3),
        classes=10,
        classifier_activation=None,
        memory_efficient=memory_efficient,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _batch(size):
    import numpy as np

    rng = np.random.RandomState(0)
    return rng.randn(size, 32, 32, 3).astype("float32"), rng.randint(0, 10, size)


def _jax_step_bytes(model, x, y):
    """XLA's memory analysis of the compiled loss gradient (what one training step keeps)."""
    import jax
    import keras

    from keras_irevnet.models.xla_cpu_options import jax_compiler_options

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss(trainable, non_trainable, x, y):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, logits), non_trainable

    # Compiled as the models' own train steps are (see xla_cpu_options).
    compiled = (
        jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=jax_compiler_options())
        .lower(trainable, non_trainable, x, y)
        .compile()
    )
    analysis = compiled.memory_analysis()
    record = {
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
    }

    def step():
        (loss_value, _), _ = compiled(trainable, non_trainable, x, y)
        return loss_value

    return record, step


def measure(backend, depth, mode):
    """One measurement in this (fresh) process; the Keras backend is already `backend`."""
    import keras

    assert keras.backend.backend() == backend, (keras.backend.backend(), backend)
    model = _model(depth, memory_efficient=mode == "efficient")
    record = {"backend": backend, "depth": depth, "mode": mode, "batch_size": FLAGS.batch_size}
    x, y = _batch(FLAGS.batch_size)

    def step():  # TensorFlow and torch: Keras' train step (JAX: the compiled gradient)
        return model.train_on_batch(x, y)

    if backend == "jax":
        analysis, step = _jax_step_bytes(model, x, y)
        record.update(analysis)
        record["activation_bytes"] = record["temp_bytes"]
        record["method"] = "XLA memory_analysis().temp_size_in_bytes of the compiled gradient"
        step()  # the first call runs the compiled executable once (allocations, caches)
    elif backend == "torch":
        for size in WARMUP_BATCHES + (FLAGS.batch_size,):
            model.train_on_batch(*_batch(size))
        record.update(torch_step_bytes(step))
        record["activation_bytes"] = record["peak_tensor_bytes"] - record["left_allocated_bytes"]
        record["method"] = (
            "torch profiler: peak of the tensor bytes allocated during the step, minus those "
            "the step leaves allocated (weight gradients)"
        )
    else:
        # Two warm-up batch sizes: TensorFlow traces its train step again for a new batch
        # size, once; the second trace is batch-generic (reduce_retracing), so the measured
        # step builds no graph.
        gradient = tensorflow_loss_gradient(
            model, keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        for size in WARMUP_BATCHES + (FLAGS.batch_size,):
            gradient(*_batch(size))
            model.train_on_batch(*_batch(size))
        # TensorFlow runs independent operations in no fixed order, so the peak of one call
        # varies by several MiB (51-62 MiB over six calls of the 54-block memory-efficient
        # step, batch 64): the median of several calls, with their range.
        calls = [
            tensorflow_traced_step_bytes(lambda: gradient(x, y))
            for _ in range(FLAGS.tensorflow_calls)
        ]
        record.update(calls[-1])
        for key in ("peak_tensor_bytes", "allocator_peak_bytes"):
            peaks = [call[key] for call in calls]
            record[key] = int(statistics.median(peaks))
            record[key + "_range"] = [min(peaks), max(peaks)]
        record["weight_gradient_bytes"] = weight_gradient_bytes(model)
        # 0: TensorFlow's choice.
        record["inter_op_threads"] = FLAGS.tensorflow_inter_op_threads
        record["activation_bytes"] = record["peak_tensor_bytes"] - record["weight_gradient_bytes"]
        record["method"] = (
            "TensorFlow's profiler: peak of the bytes requested by the tensors allocated "
            "during the loss gradient (median of "
            f"{FLAGS.tensorflow_calls} calls), minus the bytes of the weight gradients"
        )
        if FLAGS.tensorflow_inter_op_threads:
            record["method"] += f"; {FLAGS.tensorflow_inter_op_threads} inter-op thread(s)"

    times = []
    for _ in range(FLAGS.timed_steps):
        start = time.perf_counter()
        float(step())  # waits for the result (JAX dispatches asynchronously)
        times.append(time.perf_counter() - start)
    record["seconds_per_step"] = statistics.median(times)
    return record


def _run_worker(backend, depth, mode):
    env = dict(os.environ, KERAS_BACKEND=backend)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [
        sys.executable,
        "-m",
        "benchmarks.memory",
        f"--worker={backend},{depth},{mode}",
        f"--batch_size={FLAGS.batch_size}",
        f"--timed_steps={FLAGS.timed_steps}",
        f"--tensorflow_calls={FLAGS.tensorflow_calls}",
        f"--tensorflow_inter_op_threads={FLAGS.tensorflow_inter_op_threads}",
    ]
    result = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=FLAGS.timeout
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"measurement {backend} depth {depth} {mode} failed:\n{result.stderr[-4000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv):
    del argv
    if FLAGS.worker:
        backend, depth, mode = FLAGS.worker.split(",")
        if backend == "tensorflow":
            keep_tensorflow_cpu_statistics()
            if FLAGS.tensorflow_inter_op_threads:
                import tensorflow as tf

                tf.config.threading.set_inter_op_parallelism_threads(
                    FLAGS.tensorflow_inter_op_threads
                )
        print("RESULT " + json.dumps(measure(backend, int(depth), mode)), flush=True)
        return
    depths = [int(d) for d in FLAGS.depths]
    if any(d % 3 or d < 3 for d in depths):
        raise app.UsageError(f"--depths must be positive multiples of 3, got {FLAGS.depths}.")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    records = []
    for backend in FLAGS.backends:
        for depth in depths:
            for mode in FLAGS.modes:
                record = _run_worker(backend, depth, mode)
                print(json.dumps(record), flush=True)
                records.append(record)
                # Rewrite after every measurement: a long run leaves usable partial results.
                atomic.write_json(os.path.join(FLAGS.output_dir, "memory.json"), records, indent=1)
    table = memory_report.markdown(records, FLAGS.backends)
    with atomic.atomic_open(os.path.join(FLAGS.output_dir, "memory.md")) as f:
        f.write(table)
    with atomic.atomic_path(os.path.join(FLAGS.output_dir, "memory.png")) as temporary:
        memory_report.plot(records, FLAGS.backends, temporary)
    print(table)


if __name__ == "__main__":
    app.run(main)

"""Where TensorFlow's own convolution beats oneDNN's in prediction, by output positions.

    python -m benchmarks.small_convolutions                     # every stage shape, batches
    python -m benchmarks.small_convolutions --shapes=14x384x4,7x1536x4 --repeats=12

On a CPU where TensorFlow runs without oneDNN, keras_irevnet's predict and test steps give a
convolution with fewer than `tensorflow_kernels._FEW_OUTPUT_POSITIONS` output positions over
the batch (batch x height x width) TensorFlow's own kernel, which its graph optimiser fuses
with the BatchNorm and ReLU after it, and oneDNN's to the larger ones; the 7x7 stage's matrix
products give way to TensorFlow's convolution below the same count. This measures what that
line rests on: for each shape HxCxB (image size, channels of the block's half, batch), a
chain of four i-RevNet bottlenecks (x + F(x), F: 3x3 convolutions C -> C/4 -> C/4 -> C with
BatchNorm and ReLU, as in the models) in a `tf.function` traced as the models' predict step,
once with every convolution on oneDNN's kernel (on the 7x7 stage: the matrix products) and
once on TensorFlow's own, the two called in turn. Prints and writes small_convolutions.md and
.json to --output_dir: the median milliseconds of each and oneDNN's over TensorFlow's own
(above 1: TensorFlow's own is faster).
"""

import os
import time

from absl import app, flags

FLAGS = flags.FLAGS
# The stage shapes of IRevNetBijective (56x56 to 7x7) and IRevNetCIFAR (32x32 to 8x8) at
# batches on both sides of the line.
DEFAULT_SHAPES = (
    "56x24x1,56x24x4,28x96x1,28x96x4,28x96x16,14x384x1,14x384x4,14x384x16,14x384x32,"
    "7x1536x1,7x1536x4,7x1536x16,32x16x4,32x16x128,16x64x4,16x64x32,16x64x128,"
    "8x256x8,8x256x32,8x256x64,8x256x128"
).split(",")
flags.DEFINE_list("shapes", DEFAULT_SHAPES, "HxCxB: image size, channels, batch.")
flags.DEFINE_integer("repeats", 10, "Timed calls of each, in turn, after two warm-up calls.")
flags.DEFINE_string("output_dir", "runs/benchmarks/small_convolutions", "Where results go.")

BLOCKS = 4


def _parse(shape):
    try:
        size, channels, batch = (int(part) for part in shape.split("x"))
    except ValueError:
        raise app.UsageError(f"--shapes: expected HxCxB such as 14x384x4, got {shape!r}.") from None
    if min(size, channels, batch) < 1 or channels % 4:
        raise app.UsageError(
            f"--shapes: expected positive sizes and channels a multiple of 4, got {shape!r}."
        )
    return size, channels, batch


def chains(size, channels, batch):
    """The input and the chain as two `tf.function`s, {"onednn": ..., "tensorflow": ...}."""
    import numpy as np
    import tensorflow as tf

    from keras_irevnet.layers import tensorflow_kernels
    from keras_irevnet.layers.bottleneck import Bottleneck

    blocks = [Bottleneck(channels) for _ in range(BLOCKS)]
    x = tf.constant(np.random.default_rng(0).normal(size=(batch, size, size, channels)), "float32")
    for block in blocks:
        block(x)
        for weight in block.weights:  # BatchNorm statistics other than (0, 1)
            if "moving_variance" in weight.path:
                weight.assign(np.random.default_rng(1).uniform(0.5, 2.0, weight.shape))

    def chain(threshold):
        @tf.function
        def run(x):
            # The line is read when the step is traced; tracing here with it moved to 0 or
            # past any batch gives every convolution one kernel.
            kept = tensorflow_kernels._FEW_OUTPUT_POSITIONS
            tensorflow_kernels._FEW_OUTPUT_POSITIONS = threshold
            try:
                with tensorflow_kernels.keras_step():
                    for block in blocks:
                        x = x + block(x, training=False)
            finally:
                tensorflow_kernels._FEW_OUTPUT_POSITIONS = kept
            return x

        return run

    return x, {"onednn": chain(0), "tensorflow": chain(float("inf"))}


def measure(size, channels, batch, repeats):
    """Median seconds of the chain on oneDNN's kernels and on TensorFlow's own."""
    import numpy as np

    x, runs = chains(size, channels, batch)
    outputs = {name: run(x).numpy() for name, run in runs.items()}
    scale = np.abs(outputs["onednn"]).max()
    difference = np.abs(outputs["onednn"] - outputs["tensorflow"]).max() / scale
    if difference > 1e-4:
        raise RuntimeError(f"the two kernels disagree by {difference:.1e} of the output")
    for _ in range(2):
        for run in runs.values():
            run(x).numpy()
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(x).numpy()
            seconds[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in seconds.items()}


def main(argv):
    del argv
    shapes = [_parse(shape) for shape in FLAGS.shapes]
    if FLAGS.repeats < 1:
        raise app.UsageError(f"--repeats: expected at least 1, got {FLAGS.repeats}.")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    if keras.backend.backend() != "tensorflow":
        raise app.UsageError(f"KERAS_BACKEND: expected tensorflow, got {keras.backend.backend()}.")
    from keras_irevnet import atomic
    from keras_irevnet.layers import tensorflow_kernels

    if not tensorflow_kernels._cpu_without_onednn() or not tensorflow_kernels._onednn_kernels():
        raise app.UsageError(
            "This TensorFlow runs with oneDNN (or on a GPU, or has no oneDNN kernels): "
            "keras_irevnet's kernel choice does not apply here."
        )
    lines = [
        "| shape | output positions | oneDNN (7x7: products) ms | TensorFlow's own ms "
        "| oneDNN / own |",
        "|---|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    results = []
    for size, channels, batch in shapes:
        medians = measure(size, channels, batch, FLAGS.repeats)
        result = dict(
            size=size,
            channels=channels,
            batch=batch,
            positions=batch * size * size,
            onednn_seconds=medians["onednn"],
            tensorflow_seconds=medians["tensorflow"],
            ratio=medians["onednn"] / medians["tensorflow"],
        )
        results.append(result)
        lines.append(
            f"| {size}x{size}, {channels} -> {channels // 4} -> {channels}, batch {batch} | "
            f"{result['positions']} | {1e3 * medians['onednn']:.2f} | "
            f"{1e3 * medians['tensorflow']:.2f} | {result['ratio']:.2f}x |"
        )
        print(lines[-1], flush=True)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    atomic.write_json(os.path.join(FLAGS.output_dir, "small_convolutions.json"), results)
    with atomic.atomic_open(os.path.join(FLAGS.output_dir, "small_convolutions.md")) as file:
        file.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    app.run(main)

"""Host time per step on torch: keras_irevnet against the plain-torch reference, batch 1.

    python -m benchmarks.host_overhead                  # CIFAR, float32 and bfloat16
    python -m benchmarks.host_overhead --rounds=5 --threads=1
    python -m benchmarks.host_overhead --image_size=8     # kernels smaller still

On a GPU a torch step at the batch sizes people train with is mostly the host launching
kernels one by one from Python (benchmarks/results/gpu.md), and what keras_irevnet adds to
that is Python: Keras' per-layer bookkeeping, casts, the optimizer's loop. The same Python
runs on a CPU, where at batch 1 the kernels are small: this measures it without a GPU. Each
round times the Keras model's `train_on_batch` / `predict_on_batch` and the reference's
training step / forward pass in turn (the median of `--steps` steps each), so that the
machine's drift falls on both alike; the table gives each round's ratio. `--image_size=8`
runs the same layers on 8x8 images (2x2 in the last stage), where the kernels' arithmetic
is smaller still and the step is closer to pure host work. Denormal numbers are flushed to
zero on both sides: repeated steps on one tiny batch drive some weights and activations
into the denormal range, where the CPU's arithmetic is many times slower (the reference's
step went from 63 to 415 ms between two rounds at 8x8 without it).
"""

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("precisions", ["float32", "bfloat16"], "float32, bfloat16 (mixed).")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds of Keras, then reference, steps.")
flags.DEFINE_integer("steps", 5, "Timed steps per measurement (median), after 2 warm-up steps.")
flags.DEFINE_integer("threads", 1, "torch's intra-op threads (1: kernels small and steady).")
flags.DEFINE_integer("image_size", 32, "Image height and width, a multiple of 4.")


def _median_seconds(step, steps):
    from benchmarks.speed_setup import time_steps  # imports Keras: after the backend is set

    step()  # two warm-up steps in all: the first train_on_batch also builds the optimizer
    return time_steps(step, steps)[1]


def _keras_steps(precision):
    import keras
    import numpy as np

    import keras_irevnet

    size = FLAGS.image_size
    model = keras_irevnet.IRevNetCIFAR(
        input_shape=(size, size, 3),
        classifier_activation=None,
        dtype="mixed_bfloat16" if precision == "bfloat16" else None,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = np.random.default_rng(0).standard_normal((1, size, size, 3)).astype("float32")
    y = np.zeros(1, "int64")
    return {
        "train": lambda: model.train_on_batch(x, y),
        "inference": lambda: model.predict_on_batch(x),
    }


def _reference_steps(precision):
    from benchmarks.speed_reference import reference_steps
    from benchmarks.speed_setup import Workload

    return reference_steps(Workload("cifar", FLAGS.image_size, 1, 1, steps=1), precision=precision)


def main(argv):
    del argv
    if os.environ.get("KERAS_BACKEND", "torch") != "torch":
        raise app.UsageError("Run with KERAS_BACKEND=torch (or unset): this measures torch.")
    if FLAGS.image_size < 4 or FLAGS.image_size % 4:
        raise app.UsageError(f"--image_size: expected a multiple of 4, got {FLAGS.image_size}.")
    os.environ["KERAS_BACKEND"] = "torch"
    import torch

    torch.set_num_threads(FLAGS.threads)
    torch.set_flush_denormal(True)
    print("| precision | work | round | keras_irevnet ms | reference ms | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for precision in FLAGS.precisions:
        ours, reference = _keras_steps(precision), _reference_steps(precision)
        for work in ("train", "inference"):
            for number in range(1, FLAGS.rounds + 1):
                a = _median_seconds(ours[work], FLAGS.steps) * 1e3
                b = _median_seconds(reference[work], FLAGS.steps) * 1e3
                print(
                    f"| {precision} | {work} | {number} | {a:.1f} | {b:.1f} | {a / b:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    app.run(main)

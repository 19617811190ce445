"""The profiler's view of where the time goes: i-RevNet's 3x3 convolutions, kernel by kernel.

    python -m benchmarks.conv_kernels                  # both models' shapes, all kernels
    python -m benchmarks.conv_kernels --models=cifar

More than 90 % of an i-RevNet step is its 3x3 convolutions (the profiles of the speed
benchmark's models: torch.profiler, jax.profiler). This times each distinct convolution of
`IRevNetCIFAR` (training batch 64) and `IRevNetBijective` (batch 8, 224x224) alone, forward
and forward+backward (gradients w.r.t. input and kernel), in every library and mode the
speed benchmark uses: torch NCHW (the plain-torch reference's layout), torch channels_last
(keras_irevnet's torch path), TensorFlow graph and XLA, JAX jit with and without XLA's
YNNPACK fusions (without them is how keras_irevnet compiles its models' convolutions on
CPU). Each runs in its own process. The per-model totals weight each shape by how many
blocks use it, which is what the backends' step times follow.

Writes conv_kernels.json and conv_kernels.md to --output_dir.
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from benchmarks.speed_setup import time_steps
from keras_irevnet import atomic

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["cifar", "bijective"], "Whose convolution shapes to time.")
flags.DEFINE_list("kernels", None, "Only these kernels (see KERNELS).")
flags.DEFINE_integer("steps", 5, "Timed calls per shape after one warm-up call (median).")
flags.DEFINE_string("output_dir", "runs/benchmarks/speed", "Where the JSON and table go.")
flags.DEFINE_string("worker", None, "Internal: time one kernel, print JSON.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (library, environment)
KERNELS = {
    "torch NCHW": ("torch_nchw", {}),
    "torch channels_last": ("torch_cl", {}),
    "TF graph": ("tf", {}),
    "TF XLA": ("tf_xla", {}),
    "JAX jit": ("jax", {}),
    "JAX jit, YNN off": ("jax", {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}),
}


def shapes(model):
    """(batch, size, in, out, blocks using it) of the stride-1 3x3 convolutions of F."""
    if model == "cifar":
        stages = [(32, 16, 18), (16, 64, 17), (8, 256, 17)]  # (size, out_ch, stride-1 blocks)
        batch = 64
    else:
        stages = [(56, 24, 5), (28, 96, 15), (14, 384, 71), (7, 1536, 5)]
        batch = 8
    result = []
    for size, out, blocks in stages:
        hidden = out // 4
        for cin, cout in ((out, hidden), (hidden, hidden), (hidden, out)):
            result.append((batch, size, cin, cout, blocks))
    return result


def _functions(library, n, h, cin, cout):
    """(forward, forward+backward) callables for one shape in one library."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, h, cin)).astype("float32")
    k = rng.standard_normal((3, 3, cin, cout)).astype("float32") * 0.1
    if library.startswith("torch"):
        import torch

        xt = torch.tensor(x).permute(0, 3, 1, 2)  # channels_last memory format
        kt = torch.tensor(k).permute(3, 2, 0, 1)
        if library == "torch_nchw":
            xt, kt = xt.contiguous(), kt.contiguous()
        else:
            kt = kt.contiguous(memory_format=torch.channels_last)
        xg, kg = xt.clone().requires_grad_(), kt.clone().requires_grad_()

        def forward():
            with torch.no_grad():
                torch.nn.functional.conv2d(xt, kt, padding=1)

        def backward():
            y = torch.nn.functional.conv2d(xg, kg, padding=1)
            torch.autograd.grad(y, [xg, kg], torch.ones_like(y))

        return forward, backward
    if library.startswith("tf"):
        import tensorflow as tf

        xt, kt = tf.constant(x), tf.constant(k)
        jit = library == "tf_xla"

        @tf.function(jit_compile=jit)
        def forward_fn(x, k):
            return tf.nn.conv2d(x, k, 1, "SAME")

        @tf.function(jit_compile=jit)
        def backward_fn(x, k):
            with tf.GradientTape() as tape:
                tape.watch([x, k])
                y = tf.nn.conv2d(x, k, 1, "SAME")
            # y is returned too: the gradients of a linear map do not need it, and a graph
            # that drops it would time the backward pass alone.
            return y, tape.gradient(y, [x, k])

        return (
            lambda: forward_fn(xt, kt)[0, 0, 0, 0].numpy(),
            lambda: [t[0, 0, 0, 0].numpy() for t in tf.nest.flatten(backward_fn(xt, kt))],
        )
    import jax

    xj, kj = jax.numpy.asarray(x), jax.numpy.asarray(k)

    def conv(x, k):
        return jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def forward_and_backward(x, k):
        # The output is returned with the gradients, as for TensorFlow: XLA would otherwise
        # drop the forward convolution, which the gradients of a linear map do not need.
        y, pullback = jax.vjp(conv, x, k)
        return y, pullback(jax.numpy.ones_like(y))

    forward_fn = jax.jit(conv)
    backward_fn = jax.jit(forward_and_backward)
    return (
        lambda: jax.block_until_ready(forward_fn(xj, kj)),
        lambda: jax.block_until_ready(backward_fn(xj, kj)),
    )


def worker(library):
    for model in FLAGS.models:
        for n, h, cin, cout, blocks in shapes(model):
            forward, backward = _functions(library, n, h, cin, cout)
            flops = 2 * n * h * h * cin * cout * 9
            t_forward, t_backward = (time_steps(f, FLAGS.steps)[1] for f in (forward, backward))
            print(
                "RESULT "
                + json.dumps(
                    dict(
                        model=model,
                        shape=[n, h, cin, cout],
                        blocks=blocks,
                        forward_seconds=t_forward,
                        backward_seconds=t_backward,
                        forward_gflops=flops / t_forward / 1e9,
                        backward_gflops=3 * flops / t_backward / 1e9,
                    )
                ),
                flush=True,
            )


def markdown(results):
    names = [n for n in KERNELS if n in results]
    lines = []
    for model in FLAGS.models:
        lines += [
            f"### {model}: GFLOP/s of each 3x3 convolution, forward / forward+backward",
            "",
            "| batch, size, in -> out | blocks | " + " | ".join(names) + " |",
            "|---|---:|" + "---:|" * len(names),
        ]
        rows = {}
        for name in names:
            for r in results[name]:
                if r["model"] == model:
                    rows.setdefault(tuple(r["shape"]), {"blocks": r["blocks"]})[name] = r
        totals = {name: [0.0, 0.0] for name in names}
        for shape, row in rows.items():
            cells = []
            for name in names:
                r = row.get(name)
                if r:
                    cells.append(f"{r['forward_gflops']:.0f} / {r['backward_gflops']:.0f}")
                    totals[name][0] += row["blocks"] * r["forward_seconds"]
                    totals[name][1] += row["blocks"] * r["backward_seconds"]
                else:
                    cells.append("")
            n, h, cin, cout = shape
            lines.append(
                f"| {n}, {h}x{h}, {cin} -> {cout} | {row['blocks']} | " + " | ".join(cells) + " |"
            )
        lines.append(
            "| **all blocks, seconds** | | "
            + " | ".join(f"**{t[0]:.2f} / {t[1]:.2f}**" for t in totals.values())
            + " |"
        )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if FLAGS.worker:
        worker(FLAGS.worker)
        return
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    results = {}
    for name, (library, env) in KERNELS.items():
        if FLAGS.kernels and name not in FLAGS.kernels:
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        command = [
            sys.executable,
            "-m",
            "benchmarks.conv_kernels",
            f"--worker={library}",
            f"--models={','.join(FLAGS.models)}",
            f"--steps={FLAGS.steps}",
        ]
        env = dict(os.environ, **env)
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        results[name] = [
            json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")
        ]
        if done.returncode:
            print(f"  failed: {done.stderr.strip()[-1000:]}", flush=True)
    atomic.write_json(os.path.join(FLAGS.output_dir, "conv_kernels.json"), results, indent=1)
    table = markdown(results)
    with atomic.atomic_open(os.path.join(FLAGS.output_dir, "conv_kernels.md")) as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    app.run(main)

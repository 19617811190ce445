"""Inversion error of the reference models, per backend and dtype, on real photos and noise.

    python -m benchmarks.inversion                       # all three backends, all models
    python -m benchmarks.inversion --models=cifar --backends=torch

Each backend runs in its own process (Keras picks its backend at import). Models are at
random initialisation (PyTorch's scheme) in inference mode.
Writes <output_dir>/inversion.json and inversion.md.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

from keras_irevnet import atomic

FLAGS = flags.FLAGS
flags.DEFINE_list("backends", ["tensorflow", "jax", "torch"], "Keras backends to measure.")
flags.DEFINE_list("models", ["cifar", "bijective", "injective"], "Models to measure.")
flags.DEFINE_list("dtypes", ["float32", "float64"], "Variable/compute dtypes.")
flags.DEFINE_integer("images", 2, "Photos (and as many noise images) per measurement.")
flags.DEFINE_string("output_dir", "runs/benchmarks", "Where the JSON and table go.")
flags.DEFINE_string("worker_output", None, "Internal: run one backend, write JSON here.")

CONSTRUCTORS = {
    "cifar": "IRevNetCIFAR",
    "bijective": "IRevNetBijective",
    "injective": "IRevNetInjective",
}


def measure_current_backend():
    import keras
    import numpy as np

    import keras_irevnet as kir
    from tests.helpers import photos, relative_error

    rows = []
    for name in FLAGS.models:
        for dtype in FLAGS.dtypes:
            keras.utils.set_random_seed(0)
            model = getattr(kir, CONSTRUCTORS[name])(dtype=dtype)
            size = model.image_shape[0]
            real = kir.preprocess_input(photos(size, FLAGS.images)).astype(dtype)
            noise = np.random.default_rng(0).uniform(-2, 2, real.shape).astype(dtype)
            for source, x in (("photos", real), ("uniform noise", noise)):
                error = relative_error(model.inverse(model.features(x)), x)
                rows.append(
                    dict(
                        backend=keras.backend.backend(),
                        model=name,
                        dtype=dtype,
                        input=source,
                        rel_error=error,
                    )
                )
                print(f"{rows[-1]}", flush=True)
            del model
    return rows


def main(argv):
    del argv
    if FLAGS.worker_output:
        with open(FLAGS.worker_output, "w") as f:
            json.dump(measure_current_backend(), f)
        return
    rows = []
    for backend in FLAGS.backends:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            env = dict(os.environ, KERAS_BACKEND=backend, JAX_ENABLE_X64="1")
            args = [
                sys.executable,
                "-m",
                "benchmarks.inversion",
                f"--worker_output={out.name}",
                f"--models={','.join(FLAGS.models)}",
                f"--dtypes={','.join(FLAGS.dtypes)}",
                f"--images={FLAGS.images}",
            ]
            subprocess.run(args, env=env, check=True)
            rows += json.load(open(out.name))
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    atomic.write_json(os.path.join(FLAGS.output_dir, "inversion.json"), rows)
    table = ["| backend | model | dtype | input | relative error |", "|---|---|---|---|---|"]
    table += [
        f"| {r['backend']} | {r['model']} | {r['dtype']} | {r['input']} | {r['rel_error']:.1e} |"
        for r in rows
    ]
    with atomic.atomic_open(os.path.join(FLAGS.output_dir, "inversion.md")) as f:
        f.write("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    app.run(main)

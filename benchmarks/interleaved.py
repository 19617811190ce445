"""keras_irevnet against the plain-torch reference in one process, their steps interleaved.

    python -m benchmarks.interleaved                               # CIFAR, every backend
    python -m benchmarks.interleaved --models=cifar,bijective --memory_efficient=true
    KERAS_BACKEND=jax python -m benchmarks.interleaved --backends=  # the current backend only

`benchmarks.run` measures each backend in a process of its own and compares it with
reference runs before and after it; on a shared machine whose speed drifts by 10-25 %
within minutes, single ratios still move by 10-15 % between runs. Here the reference
(`benchmarks/torch_irevnet.py`, eager, as the authors' training script runs it) lives in the
same process as the Keras model, and each timed step of one is followed by a step of the
other: a slow spell falls on both alike.

Each work (training, inference, the inverse of Phi(x)) is measured as both of Keras' calls
run it, with the library's defaults otherwise (Keras' default compilation):

- `on_batch`: whole `train_on_batch` / `predict_on_batch` calls (result on the host),
  alternated with the reference's training step, forward pass or inverse;
- `fit`: one `fit` / `predict` call over the batches, each step timed by a callback from its
  batch-begin to its batch-end (after its outputs exist), which then runs the reference's
  step: the data pipeline and `fit`'s per-call set-up are not counted, as in a long run.

Two warm-up steps of each come first. With `--memory_efficient=true` training is also
measured with reversible backprop, its steps taking turns with plain training's (each step
followed by a reference step; `fit` calls of two steps each in turn), and its median time
over plain training's is reported. Prints one table row per measurement and writes
`interleaved.json` to `--output_dir`.
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
    flags.DEFINE_list("calls", list(CALLS), "on_batch (train_on_batch, predict_on_batch), fit.")
    flags.DEFINE_bool(
        "memory_efficient", False, "Also train with reversible backprop, and compare with plain."
    )
    flags.DEFINE_integer("steps", 6, "Timed steps of each, interleaved, after two warm-up steps.")
    flags.DEFINE_string("output_dir", "runs/benchmarks/interleaved", "Where the JSON goes.")
    flags.DEFINE_bool("worker", False, "Internal: measure the current backend, print JSON lines.")


WORKS = ("train", "inference", "inverse")
CALLS = ("on_batch", "fit")
WARMUP_STEPS = 2  # compilation, the optimizer's variables
FIT_ROUND_STEPS = 2  # timed steps per `fit` call where plain and reversible take turns


def keras_work(workload, memory_efficient):
    """The Keras model's work on `workload`'s batches, as each of Keras' calls runs it.

    Returns `{work: {"on_batch": step, "fit": run}}`: `step()` is one `train_on_batch` or
    `predict_on_batch` call, `run(callback, steps)` one `fit` or `predict` call over `steps`
    batches with `callback`. The model is compiled as `benchmarks.run` compiles it, with
    Keras' default compilation. A memory-efficient model has training only: its inference
    is the plain model's.
    """
    import keras
    import numpy as np

    from benchmarks.speed_keras import _compiled
    from benchmarks.speed_setup import MODELS

    model = _compiled(workload, "auto", memory_efficient)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((workload.train_batch,) + workload.image_shape).astype("float32")
    y = rng.integers(0, MODELS[workload.model]["classes"], workload.train_batch)
    x_inference = rng.standard_normal((workload.infer_batch,) + workload.image_shape)
    x_inference = x_inference.astype("float32")

    def fit(callback, steps):
        model.fit(
            np.concatenate([x] * steps),
            np.concatenate([y] * steps),
            batch_size=workload.train_batch,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[callback],
        )

    work = {"train": {"on_batch": lambda: model.train_on_batch(x, y), "fit": fit}}
    if memory_efficient:
        return work
    phi = keras.ops.convert_to_numpy(model.features(x_inference))
    for name, target, inputs in (
        ("inference", model, x_inference),
        ("inverse", model.inverse_model(), phi),
    ):

        def predict(callback, steps, target=target, inputs=inputs):
            target.predict(
                np.concatenate([inputs] * steps),
                batch_size=workload.infer_batch,
                verbose=0,
                callbacks=[callback],
            )

        work[name] = {
            "on_batch": lambda target=target, inputs=inputs: target.predict_on_batch(inputs),
            "fit": predict,
        }
    return work


def keras_method(work, call):
    """The Keras method a work's call is: `train_on_batch`, `fit`, `predict_on_batch`,
    `predict`."""
    if call == "on_batch":
        return "train_on_batch" if work == "train" else "predict_on_batch"
    return "fit" if work == "train" else "predict"


def alternate(variants, reference, steps):
    """`*_on_batch` steps of each variant (`{name: step}`), each followed by a reference
    step, in rounds, after `WARMUP_STEPS` untimed rounds. Returns `{name: (ours, the
    reference's)}`, `steps` seconds each."""
    seconds = {name: ([], []) for name in variants}
    for round_ in range(WARMUP_STEPS + steps):
        for name, step in variants.items():
            for run, times in zip((step, reference), seconds[name]):
                start = time.perf_counter()
                run()
                if round_ >= WARMUP_STEPS:
                    times.append(time.perf_counter() - start)
    return seconds


def within_calls(variants, reference, steps):
    """Steps of `fit` / `predict` calls (`{name: run}`, `run(callback, steps)`), each step
    timed by a callback that then runs a reference step. One variant: one call, its first
    `WARMUP_STEPS` steps untimed. Several: calls of `FIT_ROUND_STEPS` timed steps each in
    turn, so that the machine's drift falls on all alike; each call's first step (the first
    call's `WARMUP_STEPS`) untimed. Returns `{name: (ours, the reference's)}`."""
    from benchmarks.speed_keras import StepTimer

    per_call = steps if len(variants) == 1 else FIT_ROUND_STEPS
    seconds = {name: ([], []) for name in variants}
    while any(len(ours) < steps for ours, _ in seconds.values()):
        for name, run in variants.items():
            ours, references = seconds[name]
            untimed = 1 if ours else WARMUP_STEPS
            timer = StepTimer(between_steps=reference)
            batches = untimed + min(per_call, steps - len(ours))
            run(timer, batches)
            if len(timer.seconds) <= untimed:  # would loop forever
                raise RuntimeError(
                    f"a call over {batches} batches reported {len(timer.seconds)} steps to its "
                    f"callback, expected {batches}"
                )
            ours += timer.seconds[untimed:]
            references += timer.between_seconds[untimed:]
    return seconds


def compare(workload, memory_efficient, steps, calls=CALLS):
    """Yields one result per work and call (training also with reversible backprop where
    `memory_efficient`): both medians (seconds) and the reference's over ours. The two
    trainings are measured in turn, each step followed by a reference step, and a
    memory-efficient result has its median over plain training's (`time_over_plain`)."""
    from benchmarks import speed_reference

    reference = speed_reference.reference_steps(workload)
    plain = keras_work(workload, False)
    reversible = keras_work(workload, True) if memory_efficient else {}
    for work in plain:
        for call in calls:
            variants = {False: plain[work][call]}
            if work in reversible:
                variants[True] = reversible[work][call]
            measure = alternate if call == "on_batch" else within_calls
            seconds = measure(variants, reference[work], steps)
            medians = {name: tuple(map(statistics.median, pair)) for name, pair in seconds.items()}
            for variant, (keras_seconds, reference_seconds) in medians.items():
                result = dict(
                    model=workload.model,
                    work=work,
                    call=keras_method(work, call),
                    memory_efficient=variant,
                    keras_seconds=keras_seconds,
                    reference_seconds=reference_seconds,
                    x_reference=reference_seconds / keras_seconds,
                )
                if variant:
                    result["time_over_plain"] = keras_seconds / medians[False][0]
                yield result


def _measure_here():
    import keras

    from benchmarks.speed_setup import workloads

    chosen = {w.model: w for w in workloads(quick=True)}
    for name in FLAGS.models:
        for result in compare(chosen[name], FLAGS.memory_efficient, FLAGS.steps, FLAGS.calls):
            result["backend"] = keras.backend.backend()
            print("RESULT " + json.dumps(result), flush=True)


HEADER = (
    "| backend | model | work | call | memory_efficient | keras_irevnet s | reference s "
    "| x ref | time / plain |\n|---|---|---|---|---|---:|---:|---:|---:|"
)


def _row(result):
    over_plain = result.get("time_over_plain")
    return (
        f"| {result['backend']} | {result['model']} | {result['work']} | {result['call']} | "
        f"{result['memory_efficient']} | {result['keras_seconds']:.3f} | "
        f"{result['reference_seconds']:.3f} | {result['x_reference']:.2f}x | "
        f"{'' if over_plain is None else f'{over_plain:.2f}x'} |"
    )


def main(argv):
    del argv
    if FLAGS.steps < 1:
        raise app.UsageError(f"--steps: expected at least 1, got {FLAGS.steps}.")
    unknown = [name for name in FLAGS.models if name not in ("cifar", "bijective")]
    if unknown:
        # Checked here, before any worker starts, not in each backend's worker.
        raise app.UsageError(f"--models: expected cifar or bijective, got {unknown}.")
    unknown = [call for call in FLAGS.calls if call not in CALLS]
    if unknown or not FLAGS.calls:
        raise app.UsageError(f"--calls: expected some of {', '.join(CALLS)}, got {FLAGS.calls}.")
    if FLAGS.worker:
        _measure_here()
        return
    from keras_irevnet import atomic

    backends = FLAGS.backends or [os.environ.get("KERAS_BACKEND", "tensorflow")]
    print(HEADER)
    results, failures = [], []
    for backend in backends:
        command = [sys.executable, "-m", "benchmarks.interleaved", "--worker"]
        command += [f"--models={','.join(FLAGS.models)}", f"--steps={FLAGS.steps}"]
        command += [f"--memory_efficient={FLAGS.memory_efficient}"]
        command += [f"--calls={','.join(FLAGS.calls)}"]
        worker = subprocess.run(
            command,
            env=dict(os.environ, KERAS_BACKEND=backend),
            capture_output=True,
            text=True,
        )
        lines = [line for line in worker.stdout.splitlines() if line.startswith("RESULT ")]
        if worker.returncode != 0 or not lines:
            last = worker.stderr.strip().splitlines()[-1:] or [f"exit status {worker.returncode}"]
            print(f"| {backend} | failed: {last[0]} |", flush=True)
            failures.append(
                f"{backend} (exit status {worker.returncode}):\n{worker.stderr[-3000:]}"
            )
            continue
        for line in lines:
            results.append(json.loads(line[len("RESULT ") :]))
            print(_row(results[-1]), flush=True)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    # The other backends' results are kept; the run still fails, so that a script or
    # `benchmarks.before_after` does not mistake a table with missing rows for a full one.
    atomic.write_json(os.path.join(FLAGS.output_dir, "interleaved.json"), results)
    if failures:
        sys.exit("benchmarks.interleaved: a backend's worker failed:\n" + "\n".join(failures))


if __name__ == "__main__":
    _define_flags()
    app.run(main)

"""Throughput of keras_irevnet on the current Keras backend, as users run it.

Training: `model.fit` (Keras' compiled train step: forward, backward, SGD with momentum)
and `model.train_on_batch`, with and without `memory_efficient`. Inference: `model.predict`
and `model.predict_on_batch`. Inverse: `model.inverse_model()`'s `predict` and
`predict_on_batch` on Phi(x). Each with every compilation the backend offers
(`jit_compile`): TensorFlow's graph (`tf.function`) and XLA, JAX's `jax.jit` (JAX has no
compiled non-XLA mode), torch eager and `torch.compile`.

One `fit` / `predict` call runs the warm-up step and the timed steps; a callback times each
step from its batch-begin to its batch-end, after the step's outputs are ready (JAX
dispatches asynchronously: the callback waits for them), so the data pipeline and the
per-call set-up of `fit` are not counted, as they are not in a long training run. The
`*_on_batch` figures time whole calls on the same model afterwards (its step is compiled):
what a user who loops or serves by hand pays, per-call set-up included.
"""

import gc
import statistics
import time

import keras
import numpy as np

import keras_irevnet
from benchmarks.speed_setup import MODELS, rates, time_steps

# jit_compile value -> how the backend runs it.
JIT_MODES = {
    "tensorflow": {False: "tf.function", True: "XLA"},
    "jax": {True: "jax.jit"},
    "torch": {False: "eager", True: "torch.compile"},
}


class StepTimer(keras.callbacks.Callback):
    """Seconds of each train / predict step, measured once its outputs exist.

    `between_steps`, where given, is called after each step is timed (and timed apart, in
    `between_seconds`): `benchmarks.interleaved` runs the reference's step there, so that a
    `fit` call's steps alternate with the reference's."""

    def __init__(self, between_steps=None):
        super().__init__()
        self.seconds = []
        self.between_steps = between_steps
        self.between_seconds = []
        self._start = None

    def _begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def _end(self, batch, logs=None):
        for value in keras.tree.flatten(logs or {}):
            keras.ops.convert_to_numpy(value)  # waits for asynchronous dispatch
        self.seconds.append(time.perf_counter() - self._start)
        if self.between_steps is not None:
            start = time.perf_counter()
            self.between_steps()
            self.between_seconds.append(time.perf_counter() - start)

    on_train_batch_begin = on_predict_batch_begin = _begin
    on_train_batch_end = on_predict_batch_end = _end

    def result(self, batch):
        return rates(batch, self.seconds[0], statistics.median(self.seconds[1:]))


def _model(workload, memory_efficient):
    constructor = getattr(keras_irevnet, MODELS[workload.model]["constructor"])
    keras.utils.set_random_seed(0)
    return constructor(
        input_shape=workload.image_shape,
        classifier_activation=None,
        memory_efficient=memory_efficient,
    )


def measure(workload, jit_modes=None):
    """Yields one result dict per measurement (or per failed measurement, with `error`)."""
    backend = keras.backend.backend()
    modes = JIT_MODES[backend]
    jit_values = [j for j in modes if jit_modes is None or modes[j] in jit_modes]
    rng = np.random.default_rng(0)
    classes = MODELS[workload.model]["classes"]
    n_train = workload.train_batch * (1 + workload.steps)
    x_train = rng.standard_normal((n_train,) + workload.image_shape).astype("float32")
    y_train = rng.integers(0, classes, n_train)
    n_infer = workload.infer_batch * (1 + workload.steps)
    x_infer = rng.standard_normal((n_infer,) + workload.image_shape).astype("float32")

    for jit in jit_values:
        for memory_efficient in (False, True):
            fields = dict(
                work="train",
                batch=workload.train_batch,
                jit=modes[jit],
                memory_efficient=memory_efficient,
            )
            yield from _train(workload, jit, memory_efficient, x_train, y_train, fields)
            gc.collect()

    for jit in jit_values:
        model = _model(workload, memory_efficient=False)
        model.compile(jit_compile=jit)
        phi = keras.ops.convert_to_numpy(model.features(x_infer[: workload.infer_batch]))
        phi = np.concatenate([phi] * (1 + workload.steps))
        for work, target, inputs in (
            ("inference", model, x_infer),
            ("inverse", model.inverse_model(jit_compile=jit), phi),
        ):
            fields = dict(
                work=work, batch=workload.infer_batch, jit=modes[jit], memory_efficient=False
            )
            yield _guarded(
                lambda target=target, inputs=inputs: _predict(target, inputs, workload.infer_batch),
                dict(fields, call="predict"),
            )
            batch = inputs[: workload.infer_batch]
            yield _guarded(
                lambda target=target, batch=batch: _on_batch(
                    lambda: target.predict_on_batch(batch), workload.infer_batch, workload.steps
                ),
                dict(fields, call="predict_on_batch"),
            )
        del model
        gc.collect()


def _failed(fields, error):
    return {**fields, "error": f"{type(error).__name__}: {error}"[:500]}


def _guarded(measurement, fields):
    try:
        return {**fields, **measurement()}
    except Exception as error:  # a failed mode is reported, the others still run
        return _failed(fields, error)


def _compiled(workload, jit, memory_efficient):
    model = _model(workload, memory_efficient)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def _train(workload, jit, memory_efficient, x, y, fields):
    """`fit`, then `train_on_batch` on the same compiled model."""
    try:
        model = _compiled(workload, jit, memory_efficient)
    except Exception as error:
        yield _failed(dict(fields, call="fit"), error)
        return
    batch = workload.train_batch
    yield _guarded(lambda: _fit(model, batch, x, y), dict(fields, call="fit"))
    yield _guarded(
        lambda: _on_batch(
            lambda: model.train_on_batch(x[:batch], y[:batch]), batch, workload.steps
        ),
        dict(fields, call="train_on_batch"),
    )


def _fit(model, batch, x, y):
    timer = StepTimer()
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    return timer.result(batch)


def _on_batch(call, batch, steps):
    """Whole `*_on_batch` calls, each until its result is on the host (as a user reads it)."""

    def step():
        for value in keras.tree.flatten(call()):
            keras.ops.convert_to_numpy(value)

    first, seconds = time_steps(step, steps)
    return rates(batch, first, seconds)


def _predict(model, inputs, batch):
    timer = StepTimer()
    model.predict(inputs, batch_size=batch, verbose=0, callbacks=[timer])
    return timer.result(batch)

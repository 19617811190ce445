"""Keras' predict and test steps of i-RevNet models, marked for TensorFlow's kernel choice.

Where TensorFlow runs without oneDNN, `keras_irevnet.layers.tensorflow_kernels` builds
oneDNN's kernels into the graphs it may: graphs that are run in this process, never saved.
Training graphs are known by their recording gradient tape; a prediction's graph looks like
an export's (no tape), and an export must hold TensorFlow's public ops only, to load where
oneDNN's do not exist. Keras' own `predict_step` and `test_step` are only ever traced by
`predict`, `predict_on_batch`, `evaluate` and `test_on_batch`, so the models trace them inside
`tensorflow_kernels.keras_step()`; `model.export`, `tf.saved_model.save` and ONNX conversion
trace the model's `call` and get Keras' ops.
"""

import contextlib

import keras


def _keras_step():
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    from keras_irevnet.layers import tensorflow_kernels

    return tensorflow_kernels.keras_step()


class StepKernels:
    """Mixin for a `keras.Model`: its predict and test steps traced in `_keras_step()`.

    (Arguments passed through: JAX's steps take `(state, data)`, the others `(data)`.)"""

    def predict_step(self, *args, **kwargs):
        with _keras_step():
            return super().predict_step(*args, **kwargs)

    def test_step(self, *args, **kwargs):
        with _keras_step():
            return super().test_step(*args, **kwargs)

"""A Keras model whose forward pass is an i-RevNet's inverse, for compiled batched inversion."""

import keras

from keras_irevnet.models.step_kernels import StepKernels
from keras_irevnet.models.xla_cpu_options import XlaCpuOptions


class InverseModel(StepKernels, XlaCpuOptions, keras.Model):
    """Phi(x) -> x as a Keras model, sharing its variables with the i-RevNet it inverts.

    `IRevNet.inverse` is a plain method: called eagerly, every operation is dispatched one
    by one. Wrapped in a model it gets Keras' compiled prediction loop on every backend
    (`tf.function` / XLA, `jax.jit`, or torch eager or `torch.compile`, per
    `compile(jit_compile=...)`), batching and a progress bar: `predict` runs the inverse about
    as fast as `IRevNet.predict` runs the forward pass.

    Build it with `IRevNet.inverse_model()` (or get one as a layer of a functional model from
    `IRevNet.inverse` applied to a `keras.Input`); it has no weights of its own, so it sees every
    later change to the i-RevNet's weights. It is for inference only (no `fit`).
    """

    def __init__(self, irevnet, **kwargs):
        super().__init__(name=kwargs.pop("name", f"{irevnet.name}_inverse"), **kwargs)
        self.irevnet = irevnet

    def call(self, inputs):
        return self.irevnet.inverse(inputs)

    def build(self, input_shape):
        self.built = True

    def compute_output_shape(self, input_shape):
        # From the input where the model's own image size is unknown (input_shape=(None,
        # None, C)): the inverse undoes `total_downsampling` on both sides.
        factor = self.irevnet.total_downsampling
        height, width, channels = self.irevnet.image_shape
        if height is None and input_shape[1] is not None:
            height = input_shape[1] * factor
        if width is None and input_shape[2] is not None:
            width = input_shape[2] * factor
        return (input_shape[0], height, width, channels)

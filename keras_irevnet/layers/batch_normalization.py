"""BatchNormalization that stays in float64 when the layer is float64, on every backend."""

import keras
from keras import ops

from keras_irevnet import _compat


@keras.saving.register_keras_serializable(package="keras_irevnet")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization, normalising float64 in float64 and fused on TensorFlow.

    Keras 3.15 upcasts the inputs with `result_type(dtype, "float32")`, which is float64 on
    TensorFlow but float32 on JAX and torch: a float64 i-RevNet would run every BatchNorm in
    float32 there. The inverse x1 = y1 - F(x2) then sees F jump by float32 rounding steps
    wherever the reconstructed x2 differs from the original in the last float64 bits, and
    float64 models invert to about 1e-12 instead of 1e-16.

    On TensorFlow, training-mode float32 batches go through TensorFlow's fused kernel
    (`FusedBatchNormV3` and its fused gradient), where Keras computes the moments and the
    normalisation in separate ops: faster training steps. Not under XLA (`jit_compile=True`),
    whose CPU lowering of the fused op is slower than Keras' ops. Its batch variance is
    Bessel-corrected; the moving variance is updated with the biased one, as Keras does.
    Outputs, gradients and moving statistics agree with Keras' path to float32 rounding
    (tested). The measurements: benchmarks/results/optimisations.md.

    Every other case takes Keras' own path unchanged.
    """

    def call(self, inputs, training=None, mask=None):
        if self._fuses(inputs, training, mask):
            return self._fused_training_call(inputs)
        if mask is not None or keras.backend.standardize_dtype(inputs.dtype) != "float64":
            return super().call(inputs, training=training, mask=mask)
        if training and self.trainable:
            rank = len(inputs.shape)
            axes = [i for i in range(rank) if i != self.axis % rank]
            mean, variance = ops.moments(inputs, axes, synchronized=self.synchronized)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            mean, variance = self.moving_mean, self.moving_variance
        return ops.batch_normalization(
            inputs,
            ops.cast(mean, "float64"),
            ops.cast(variance, "float64"),
            axis=self.axis,
            offset=ops.cast(self.beta, "float64") if self.center else None,
            scale=ops.cast(self.gamma, "float64") if self.scale else None,
            epsilon=self.epsilon,
        )

    def _fuses(self, inputs, training, mask):
        return (
            keras.backend.backend() == "tensorflow"
            and training is True
            and self.trainable
            and mask is None
            and self.axis in (-1, len(inputs.shape) - 1)
            and self.center
            and self.scale
            and not self.synchronized
            and not self.renorm
            and keras.backend.standardize_dtype(inputs.dtype) == "float32"
            and keras.backend.standardize_dtype(self.moving_mean.dtype) == "float32"
            and not _compat.tensorflow_in_xla_context()
        )

    def _fused_training_call(self, inputs):
        import tensorflow as tf

        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            ops.convert_to_tensor(self.gamma),
            ops.convert_to_tensor(self.beta),
            epsilon=self.epsilon,
            is_training=True,
        )
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], variance.dtype)
        variance = variance * ((count - 1.0) / count)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        return outputs

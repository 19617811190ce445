"""Dropout with a cheaper mask on torch."""

import keras

from keras_irevnet.layers import torch_fast_path


@keras.saving.register_keras_serializable(package="keras_irevnet")
class Dropout(keras.layers.Dropout):
    """`keras.layers.Dropout`, drawing an unseeded layer's torch mask at half the cost.

    Keras' torch dropout for a layer without a seed is `torch.nn.functional.dropout`, whose
    mask comes from `bernoulli_` followed by a division: on the CPU about 1.7 ms for a
    64x32x32x4 batch, 6 % of the CIFAR model's training step, twice that with reversible
    backprop (which replays the mask). Here the mask is `rand >= rate`, scaled in place by
    1 / (1 - rate): the same distribution (each element kept with probability 1 - rate, to
    float32 resolution) and the same scaling, from the same global generator, so
    `torch.manual_seed` and the replayed generator state of reversible backprop govern it
    as they govern Keras' path. Measurements: benchmarks/results/optimisations.md.

    A seeded layer, a `noise_shape`, `torch.compile` and every other backend take Keras'
    own path.
    """

    def call(self, inputs, training=False):
        if (
            training
            and 0.0 < self.rate < 1.0
            and self.seed is None
            and self.noise_shape is None
            and keras.backend.backend() == "torch"
        ):
            import torch

            if not torch.compiler.is_compiling():
                x = torch_fast_path.torch_tensor(inputs)
                # Drawn in float32 whatever the compute dtype: a bfloat16 uniform would
                # quantise the keep probability.
                keep = torch.rand(x.shape, dtype=torch.float32, device=x.device)
                keep = keep.ge_(self.rate).mul_(1.0 / (1.0 - self.rate))
                return x * keep.to(x.dtype)
        return super().call(inputs, training=training)

"""Initialisers that reproduce PyTorch's defaults for convolutions and dense layers.

PyTorch draws conv and linear kernels from U(-1/sqrt(fan_in), 1/sqrt(fan_in)). This matters for
more than parity with the authors' code: with Keras' default Glorot init, activations grow
through the additive couplings of a deep i-RevNet and cancellation in the inverse loses about
two more digits (docs/reference.md, "Initialisation").
"""

import math

import keras


def torch_kernel_initializer(seed=None):
    """Kernel initialiser equal to PyTorch's default: U(+-1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform", seed=seed
    )


def torch_bias_initializer(fan_in, seed=None):
    """Bias initialiser equal to PyTorch's default for a layer with `fan_in` inputs."""
    limit = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-limit, limit, seed=seed)

"""The residual function F of an i-RevNet block (not invertible itself, and need not be)."""

import keras

from keras_irevnet import _compat
from keras_irevnet.layers import direct_call
from keras_irevnet.layers.batch_normalization import BatchNormalization
from keras_irevnet.layers.convolution import Conv2D
from keras_irevnet.layers.dropout import Dropout
from keras_irevnet.layers.initializers import torch_kernel_initializer

# The reference's BatchNorm: PyTorch's defaults (momentum 0.1 there is 0.9 here, eps 1e-5).
BLOCK_BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="keras_irevnet")
class Bottleneck(direct_call.DirectlyCallable, keras.layers.Layer):
    """[BN -> ReLU ->] Conv3x3(stride) -> BN -> ReLU -> Conv3x3 -> Dropout -> BN -> ReLU -> Conv3x3.

    The order of the authors' code. All convolutions are 3x3 without bias; the hidden width is
    `filters // mult`. A stride-2 convolution pads one pixel on every side, as PyTorch's
    `padding=1` does (Keras' "same" would pad 0 before and 1 after and shift the output).

    Args:
        filters: output channels.
        strides: 1 or 2, the stride of the first convolution.
        preactivation: whether F starts with BN -> ReLU (False only in the network's first
            block).
        dropout: dropout rate between the second and third convolutions.
        mult: bottleneck factor; the hidden width is `filters // mult`.
    """

    def __init__(self, filters, strides=1, preactivation=True, dropout=0.0, mult=4, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.preactivation = preactivation
        self.dropout = dropout
        self.mult = mult
        hidden = filters // mult
        if hidden < 1:
            raise ValueError(
                f"{self.name}: the hidden width filters // mult = {filters} // {mult} is 0; "
                f"use filters >= mult."
            )

        def conv(width, strides=1):
            return Conv2D(
                width,
                3,
                strides=strides,
                padding="same" if strides == 1 else "valid",
                use_bias=False,
                kernel_initializer=torch_kernel_initializer(),
                dtype=self.dtype_policy,
            )

        def batch_norm():
            return BatchNormalization(
                momentum=BLOCK_BN_MOMENTUM, epsilon=BN_EPSILON, dtype=self.dtype_policy
            )

        self.input_norm = batch_norm() if preactivation else None
        self.conv1 = conv(hidden, strides)
        self.norm1 = batch_norm()
        self.conv2 = conv(hidden)
        self.drop = Dropout(dropout, dtype=self.dtype_policy)
        self.norm2 = batch_norm()
        self.conv3 = conv(filters)

    def _padded(self, x):
        if self.strides == 1:
            return x
        return _compat.pad_with_zeros(x, [[0, 0], [1, 1], [1, 1], [0, 0]])

    def _padded_shape(self, shape):
        if self.strides == 1:
            return shape
        n, h, w, c = shape
        return (n, None if h is None else h + 2, None if w is None else w + 2, c)

    def build(self, input_shape):
        shape = tuple(input_shape)
        if self.input_norm is not None:
            self.input_norm.build(shape)
        self.conv1.build(self._padded_shape(shape))
        shape = self.conv1.compute_output_shape(self._padded_shape(shape))
        for layer in (self.norm1, self.conv2, self.drop, self.norm2, self.conv3):
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def call(self, inputs, training=None):
        # The sublayers' `call`, not `__call__`: this layer's `__call__` has already cast the
        # input and entered the autocast scope of the same dtype policy, and the sublayers
        # were built in `build`. Keras' per-call bookkeeping, six times per block, was a
        # large share of eager inference (benchmarks/results/optimisations.md).
        x = inputs
        if self.input_norm is not None:
            x = self.input_norm.relu_of_call(x, training=training)
        x = self.conv1.call(self._padded(x))
        x = self.norm1.relu_of_call(x, training=training)
        x = self.conv2.call(x)
        x = self.drop.call(x, training=training)
        x = self.norm2.relu_of_call(x, training=training)
        return self.conv3.call(x)

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        s = self.strides
        return (n, None if h is None else h // s, None if w is None else w // s, self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "preactivation": self.preactivation,
            "dropout": self.dropout,
            "mult": self.mult,
        }

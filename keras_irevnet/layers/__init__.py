"""Invertible layers (`InvertibleLayer`: `call` and `inverse` side by side) and the pieces
of the residual function F."""

from keras_irevnet.layers.additive_coupling import AdditiveCoupling, block_padding
from keras_irevnet.layers.batch_normalization import BatchNormalization
from keras_irevnet.layers.bottleneck import Bottleneck
from keras_irevnet.layers.channels import merge_channels, split_channels
from keras_irevnet.layers.convolution import Conv2D
from keras_irevnet.layers.dropout import Dropout
from keras_irevnet.layers.injective_padding import InjectivePadding
from keras_irevnet.layers.invertible import InvertibleLayer
from keras_irevnet.layers.invertible_downsampling import InvertibleDownsampling
from keras_irevnet.layers.irevnet_block import IRevNetBlock

__all__ = [
    "AdditiveCoupling",
    "BatchNormalization",
    "Bottleneck",
    "Conv2D",
    "Dropout",
    "IRevNetBlock",
    "InjectivePadding",
    "InvertibleDownsampling",
    "InvertibleLayer",
    "block_padding",
    "merge_channels",
    "split_channels",
]

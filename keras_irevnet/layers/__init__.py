"""Invertible layers: each has `call` and `inverse` side by side."""

from keras_irevnet.layers.batch_normalization import BatchNormalization
from keras_irevnet.layers.bottleneck import Bottleneck
from keras_irevnet.layers.convolution import Conv2D
from keras_irevnet.layers.channels import merge_channels, split_channels
from keras_irevnet.layers.injective_padding import InjectivePadding
from keras_irevnet.layers.invertible_downsampling import InvertibleDownsampling
from keras_irevnet.layers.irevnet_block import IRevNetBlock, block_padding

__all__ = [
    "BatchNormalization",
    "Bottleneck",
    "Conv2D",
    "IRevNetBlock",
    "InjectivePadding",
    "InvertibleDownsampling",
    "block_padding",
    "merge_channels",
    "split_channels",
]

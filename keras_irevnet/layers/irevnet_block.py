"""The i-RevNet block: an additive coupling whose F is the bottleneck of the authors' code."""

import keras

from keras_irevnet.layers import direct_call
from keras_irevnet.layers.additive_coupling import AdditiveCoupling, block_padding
from keras_irevnet.layers.bottleneck import Bottleneck
from keras_irevnet.layers.invertible import InvertibleLayer

__all__ = ["IRevNetBlock", "block_padding"]


@keras.saving.register_keras_serializable(package="keras_irevnet")
class IRevNetBlock(direct_call.DirectlyCallable, AdditiveCoupling):
    """(x1, x2) -> (x2', F(x2) + psi(x1)): one i-RevNet block, with its exact inverse.

    Exactly the block of the authors' code (docs/reference.md, "The block"): an
    `AdditiveCoupling` whose F is a `Bottleneck`. When the stride is 2, both halves go through
    invertible downsampling (psi) and F's first convolution has stride 2; when the block is
    wider than its input at stride 1, the merged input is first padded with zero channels
    (the block is then injective and `inverse` is a left inverse). Note the swap: the output
    pair is (x2', y1).

    Args:
        filters: channels of each output half (`out_ch` of the reference).
        strides: 1 or 2.
        first: True for the network's first block, whose F has no leading BN -> ReLU.
        dropout: dropout rate inside F.
        mult: bottleneck factor of F.

    Call arguments:
        inputs: a pair (x1, x2) of channels-last tensors.
        training: BatchNorm / dropout mode.

    Returns the pair (x2', y1), each of shape (batch, H/strides, W/strides, filters).
    """

    def __init__(self, filters, strides=1, first=False, dropout=0.0, mult=4, **kwargs):
        dtype = kwargs.get("dtype")
        bottleneck = Bottleneck(
            filters,
            strides=strides,
            preactivation=not first,
            dropout=dropout,
            mult=mult,
            dtype=dtype,
            name="bottleneck",
        )
        super().__init__(bottleneck, strides=strides, filters=filters, **kwargs)
        # Its own name in saved files (`.../bottleneck/...`), as since version 0.1.
        self.bottleneck = bottleneck
        self.first = first
        self.dropout = dropout
        self.mult = mult

    def get_config(self):
        # The block's own arguments: F is rebuilt from them, not serialised.
        return {
            **InvertibleLayer.get_config(self),
            "filters": self.filters,
            "strides": self.strides,
            "first": self.first,
            "dropout": self.dropout,
            "mult": self.mult,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

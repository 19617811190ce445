"""The invertible body of an i-RevNet: split into halves, the blocks, merge."""

import keras
from keras import ops

from keras_irevnet import _compat
from keras_irevnet.layers import direct_call
from keras_irevnet.layers.additive_coupling import final, walk
from keras_irevnet.layers.channels import merge_channels, split_channels, split_shape
from keras_irevnet.layers.invertible import InvertibleLayer
from keras_irevnet.layers.irevnet_block import IRevNetBlock
from keras_irevnet.models.checks import check_stage_config, check_stage_widths
from keras_irevnet.reversible import reversible_blocks


@keras.saving.register_keras_serializable(package="keras_irevnet")
class BlockStack(InvertibleLayer):
    """split -> i-RevNet blocks -> merge, with `inverse` walking the blocks backwards.

    Stage k has `blocks[k]` blocks of width `channels[k]`; its first block has stride
    `strides[k]`, the others stride 1. The first block of the stack has no leading BN-ReLU.

    Args:
        blocks, strides, channels: one value per stage.
        dropout: dropout rate inside every block's F.
        mult: bottleneck factor of every block's F.
        memory_efficient: in training mode, run the blocks with reversible backprop
            (`keras_irevnet.reversible`): the backward pass reconstructs each block's input
            from its output instead of storing activations, so activation memory stays flat
            in depth at the cost of one more evaluation of each F. Gradients and state
            updates are those of plain autodiff. Inference-mode calls are unaffected;
            a training-mode call on a backend other than tensorflow, jax or torch raises
            NotImplementedError.
    """

    def __init__(
        self, blocks, strides, channels, dropout=0.0, mult=4, memory_efficient=False, **kwargs
    ):
        # The stack reads its blocks' variables for reversible backprop in their own dtype
        # (float32 under a mixed policy): no autocasting at this level. The blocks, called
        # as layers, still compute in the policy's compute dtype.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        blocks, strides, channels = tuple(blocks), tuple(strides), tuple(channels)
        check_stage_config(blocks, strides, channels)
        self.stage_blocks = blocks
        self.stage_strides = strides
        self.stage_channels = channels
        self.dropout = dropout
        self.mult = mult
        self.memory_efficient = memory_efficient
        self.blocks = []
        for stage, (n, s, c) in enumerate(zip(blocks, strides, channels)):
            for j in range(n):
                self.blocks.append(
                    IRevNetBlock(
                        c,
                        strides=s if j == 0 else 1,
                        first=not self.blocks,
                        dropout=dropout,
                        mult=mult,
                        dtype=self.dtype_policy,
                        name=f"stage{stage}_block{j}",
                    )
                )

    def build(self, input_shape):
        check_stage_widths(input_shape[-1], self.stage_strides, self.stage_channels)
        shape = split_shape(input_shape)
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)

    def walk(self, inputs, training=None):
        """Yields (block, pair) after each block: the stack's forward pass, one block at a time.

        The one place that runs split -> blocks; `call`, `IRevNet.block_outputs` and the
        analyses are built on it. Works on eager, traced and symbolic (`keras.Input`) tensors.
        """

        # Each block's `call` directly where its `__call__` would only add Keras' per-call
        # bookkeeping (about 5 % of torch's eager CIFAR inference).
        def step(block, pair):
            return direct_call.call(block, pair, training=training)

        yield from walk(self.blocks, split_channels(inputs), step)

    def call(self, inputs, training=None):
        if self.memory_efficient and training and not _compat.in_symbolic_scope():
            return self._reversible_call(inputs, training)
        _, pair = final(self.walk(inputs, training=training))
        return merge_channels(*pair)

    def _reversible_call(self, inputs, training):
        # Only in training mode: that is where backprop stores activations. Inference-mode
        # calls (features(), analyses) take the plain path, which stores nothing unless it
        # is differentiated and which also supports forward-mode autodiff (jax.jvp).
        # Under a mixed policy the halves are carried in the variables' dtype (float32), so
        # the backward pass reconstructs each block's input to float32 precision.
        x = split_channels(ops.cast(inputs, self.variable_dtype))
        x = reversible_blocks(self.blocks, x, training=training)
        return ops.cast(merge_channels(*x), self.compute_dtype)

    def inverse(self, outputs):
        """Phi -> the stack's input, through each block's inverse in reverse order."""
        x = split_channels(outputs)
        for block in reversed(self.blocks):
            x = block.inverse(x)
        return merge_channels(*x)

    def compute_output_shape(self, input_shape):
        check_stage_widths(input_shape[-1], self.stage_strides, self.stage_channels)
        shape = split_shape(input_shape)
        for block in self.blocks:
            shape = block.compute_output_shape(shape)
        return shape[0][:-1] + (shape[0][-1] + shape[1][-1],)

    def compute_inverse_shape(self, output_shape):
        shape = split_shape(output_shape)
        for block in reversed(self.blocks):
            shape = block.compute_inverse_shape(shape)
        return shape[0][:-1] + (shape[0][-1] + shape[1][-1],)

    def get_config(self):
        config = {
            **super().get_config(),
            "blocks": self.stage_blocks,
            "strides": self.stage_strides,
            "channels": self.stage_channels,
            "dropout": self.dropout,
            "mult": self.mult,
            "memory_efficient": self.memory_efficient,
        }
        config.pop("autocast", None)  # always False: not a choice
        return config

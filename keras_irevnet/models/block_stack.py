"""The invertible body of an i-RevNet: split into halves, the blocks, merge."""

import keras
from keras import ops
from keras.src.backend.common.symbolic_scope import in_symbolic_scope

from keras_irevnet.layers.channels import merge_channels, split_channels, split_shape
from keras_irevnet.layers.irevnet_block import IRevNetBlock, block_padding
from keras_irevnet.reversible import reversible_blocks


def _check_stage_config(blocks, strides, channels):
    for arg, values in (("blocks", blocks), ("strides", strides), ("channels", channels)):
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"`{arg}` must be a non-empty list or tuple, got {values!r}.")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            raise ValueError(f"`{arg}` must hold positive integers, got {values!r}.")
    if not len(blocks) == len(strides) == len(channels):
        raise ValueError(
            "`blocks`, `strides` and `channels` give one value per stage and must have the "
            f"same length; got {len(blocks)} blocks {tuple(blocks)}, {len(strides)} strides "
            f"{tuple(strides)} and {len(channels)} channels {tuple(channels)}."
        )
    for i, s in enumerate(strides):
        if s not in (1, 2):
            raise ValueError(f"strides[{i}] must be 1 or 2, got {s}.")


def check_stage_widths(in_channels, strides, channels):
    """Raises a ValueError naming the first stage whose width cannot follow its input."""
    for i, (s, c) in enumerate(zip(strides, channels)):
        try:
            block_padding(in_channels, c, s)
        except ValueError as error:
            raise ValueError(
                f"channels[{i}]={c} does not fit stage {i} (strides[{i}]={s}, "
                f"{in_channels} channels entering): {error}"
            ) from None
        in_channels = 2 * c


@keras.saving.register_keras_serializable(package="keras_irevnet")
class BlockStack(keras.layers.Layer):
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
        super().__init__(**kwargs)
        blocks, strides, channels = tuple(blocks), tuple(strides), tuple(channels)
        _check_stage_config(blocks, strides, channels)
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

    def call(self, inputs, training=None):
        if self.memory_efficient and training and not in_symbolic_scope():
            return self._reversible_call(inputs, training)
        x = split_channels(inputs)
        for block in self.blocks:
            x = block(x, training=training)
        return merge_channels(*x)

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

    def get_config(self):
        return {
            **super().get_config(),
            "blocks": self.stage_blocks,
            "strides": self.stage_strides,
            "channels": self.stage_channels,
            "dropout": self.dropout,
            "mult": self.mult,
            "memory_efficient": self.memory_efficient,
        }

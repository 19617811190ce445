"""The i-RevNet block: an additive coupling of two halves, invertible by construction."""

import keras
from keras import ops

from keras_irevnet.layers.bottleneck import Bottleneck
from keras_irevnet.layers.channels import merge_channels, split_channels, split_shape
from keras_irevnet.layers.injective_padding import InjectivePadding
from keras_irevnet.layers.invertible_downsampling import InvertibleDownsampling


def block_padding(in_channels, filters, strides):
    """Zero channels a block appends to its input, or a ValueError saying what would fit.

    A stride-1 block whose output (2 * filters channels) is wider than its input pads the
    input first (an injective block). A stride-2 block folds each half's pixels into 4x the
    channels, so it fits only when `filters == 2 * in_channels` (and the halves are equal).
    """
    if strides not in (1, 2):
        raise ValueError(f"strides must be 1 or 2, got {strides!r}.")
    if strides == 2:
        if in_channels % 2:
            raise ValueError(
                f"a stride-2 block needs an even number of input channels to split into "
                f"equal halves, got {in_channels}."
            )
        if filters != 2 * in_channels:
            raise ValueError(
                f"a stride-2 block with {in_channels} input channels needs "
                f"channels = 2 * {in_channels} = {2 * in_channels}, got {filters}."
            )
        return 0
    if 2 * filters < in_channels:
        raise ValueError(
            f"a stride-1 block cannot narrow its input: 2 * channels = {2 * filters} is less "
            f"than the {in_channels} input channels; use channels >= {-(-in_channels // 2)}."
        )
    return 2 * filters - in_channels


@keras.saving.register_keras_serializable(package="keras_irevnet")
class IRevNetBlock(keras.layers.Layer):
    """(x1, x2) -> (x2', F(x2) + psi(x1)): one i-RevNet block, with its exact inverse.

    Exactly the block of the authors' code: when the stride is 2, both halves go through
    invertible downsampling (psi) and F's first convolution has stride 2; when the block is
    wider than its input at stride 1, the merged input is first padded with zero channels
    (the block is then injective and `inverse` is a left-inverse). Note the swap: the output
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
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"{self.name}: strides must be 1 or 2, got {strides!r}.")
        self.filters = filters
        self.strides = strides
        self.first = first
        self.dropout = dropout
        self.mult = mult
        self.bottleneck = Bottleneck(
            filters,
            strides=strides,
            preactivation=not first,
            dropout=dropout,
            mult=mult,
            dtype=self.dtype_policy,
            name="bottleneck",
        )
        self.downsampling = InvertibleDownsampling(strides, dtype=self.dtype_policy, name="psi")
        self.padding = None

    def _input_padding(self, input_shape):
        (_, _, _, c1), (_, _, _, c2) = input_shape
        try:
            return block_padding(c1 + c2, self.filters, self.strides)
        except ValueError as error:
            raise ValueError(f"{self.name}: {error}") from None

    def build(self, input_shape):
        input_shape = tuple(tuple(s) for s in input_shape)
        pad = self._input_padding(input_shape)
        if pad:
            self.padding = InjectivePadding(pad, dtype=self.dtype_policy, name="injective_padding")
            merged = input_shape[0][:-1] + (input_shape[0][-1] + input_shape[1][-1],)
            self.padding.build(merged)
            input_shape = split_shape(self.padding.compute_output_shape(merged))
        self.bottleneck.build(input_shape[1])
        if self.strides == 2:
            self.downsampling.build(input_shape[1])

    @property
    def injective(self):
        """Whether the block pads its input (a left-inverse rather than a bijection)."""
        return self.padding is not None

    def call(self, inputs, training=None):
        x1, x2 = inputs
        if self.padding is not None:
            x1, x2 = split_channels(self.padding(merge_channels(x1, x2)))
        fx2 = self.bottleneck(x2, training=training)
        if self.strides == 2:
            x1 = self.downsampling(x1)
            x2 = self.downsampling(x2)
        return x2, fx2 + x1

    def inverse(self, outputs):
        """(x2', y1) -> (x1, x2), with F in inference mode.

        In an injective block the padded channels of x2 are set to the zeros they were,
        rather than reconstructed: after training, F's BatchNorm has learned a variance of ~0
        on them and would amplify the rounding noise of a reconstruction by 1/sqrt(eps).
        """
        x2, y1 = outputs
        if self.strides == 2:
            x2 = self.downsampling.inverse(x2)
        x2 = self._project(x2)
        x1 = y1 - self.bottleneck(x2, training=False)
        if self.strides == 2:
            x1 = self.downsampling.inverse(x1)
        if self.padding is not None:
            x1, x2 = split_channels(self.padding.inverse(merge_channels(x1, x2)))
        return x1, x2

    # --- The reversible path (keras_irevnet.reversible) ---
    # Forward and backward side by side. The linear steps (padding, psi) go through `.call` /
    # `.inverse` rather than `__call__`, so that under a mixed policy they do not cast the
    # halves down: the reversible path carries them in the variables' dtype (float32) and
    # only F runs in the compute dtype, which keeps the reconstruction x1 = y1 - F(x2) exact up
    # to float32 rounding. In float32 / float64 this is exactly `call`.

    def _pad(self, x1, x2):
        if self.padding is None:
            return x1, x2
        return split_channels(self.padding.call(merge_channels(x1, x2)))

    def _unpad(self, a1, a2):
        # The left-inverse of `_pad`, and also its transpose (pad's adjoint drops the zeros).
        if self.padding is None:
            return a1, a2
        return split_channels(self.padding.inverse(merge_channels(a1, a2)))

    def _project(self, a2):
        # In an injective block the padded channels of a2 were exact zeros in the forward
        # pass; a reconstruction carries rounding noise there, which F's BatchNorm blows up
        # (a constant-zero channel has variance 0 in the batch, and ~0 in the moving
        # statistics once trained: the noise is divided by sqrt(epsilon)). Put the exact
        # zeros back: they are known, not guessed.
        if self.padding is None:
            return a2
        kept = max(a2.shape[-1] - self.padding.padding, 0)
        return ops.concatenate([a2[..., :kept], ops.zeros_like(a2[..., kept:])], axis=-1)

    def _fold(self, x):
        return self.downsampling.call(x) if self.strides == 2 else x

    def _unfold(self, x):
        # psi permutes numbers, so its inverse is also its transpose (used on gradients).
        return self.downsampling.inverse(x) if self.strides == 2 else x

    def coupling_forward(self, inputs, training=None):
        """`call` for the reversible path: (x1, x2) -> (x2', y1) with the halves in their dtype.

        Only F (the bottleneck) runs in the compute dtype; its output is cast to the halves'
        dtype before the addition.
        """
        a1, a2 = self._pad(*inputs)
        fx2 = self.bottleneck(a2, training=training)
        return self._fold(a2), ops.cast(fx2, a1.dtype) + self._fold(a1)

    def coupling_backward(self, outputs, output_grads, bottleneck_vjp):
        """One step of reversible backprop: rebuild this block's input and pull grads through.

        Args:
            outputs: the pair (x2', y1) this block returned.
            output_grads: the gradients of the loss w.r.t. (x2', y1).
            bottleneck_vjp: `a2 -> (F(a2), vjp)`, supplied by the backend: F recomputed in
                the forward's mode (same batch statistics, same dropout mask, no second
                update of moving statistics), and `vjp(cotangent) -> (grad w.r.t. a2,
                [(variable, grad), ...])` for F's trainable variables.

        Returns:
            ((x1, x2), (grad x1, grad x2), [(variable, grad), ...]): the block's input
            reconstructed from its output, the gradients w.r.t. it, and F's weight gradients.
            F is evaluated once: y1 = F(a2) + psi(a1) gives d/da1 = psi^T(dy1) and
            d/da2 = psi^T(dx2') + (dF/da2)^T dy1.
        """
        out2, out1 = outputs
        grad2, grad1 = output_grads
        a2 = self._project(self._unfold(out2))
        fa2, vjp = bottleneck_vjp(a2)
        a1 = self._unfold(out1 - ops.cast(fa2, out1.dtype))
        grad_a2_f, weight_grads = vjp(ops.cast(grad1, fa2.dtype))
        grad_a1 = self._unfold(grad1)
        grad_a2 = self._unfold(grad2) + ops.cast(grad_a2_f, grad2.dtype)
        return self._unpad(a1, a2), self._unpad(grad_a1, grad_a2), weight_grads

    def compute_output_shape(self, input_shape):
        self._input_padding(input_shape)
        n, h, w, _ = input_shape[0]
        s = self.strides
        shape = (n, None if h is None else h // s, None if w is None else w // s, self.filters)
        return shape, shape

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "first": self.first,
            "dropout": self.dropout,
            "mult": self.mult,
        }

"""The additive coupling: a pair of halves mixed by any function F, invertible by construction.

This is the one place where the algebra of an i-RevNet block is written. `call`, `inverse`
and the two steps of reversible backprop (`coupling_forward`, `coupling_backward`, used by
`keras_irevnet.reversible`) are built from the same pieces: zero padding of the input and its
transpose, invertible downsampling S and its transpose, and F. See docs/reference.md, "The
block".
"""

import collections

import keras
from keras import ops

from keras_irevnet.layers import direct_call
from keras_irevnet.layers.channels import merge_channels, split_channels, split_shape
from keras_irevnet.layers.fusion_boundary import fusion_boundary
from keras_irevnet.layers.injective_padding import InjectivePadding
from keras_irevnet.layers.invertible import InvertibleLayer
from keras_irevnet.layers.invertible_downsampling import InvertibleDownsampling


def block_padding(in_channels, filters, strides):
    """Zero channels a coupling appends to its input, or a ValueError saying what would fit.

    A stride-1 coupling whose output (2 * filters channels) is wider than its input pads the
    input first (it is then injective). A stride-2 coupling folds each half's pixels into 4x
    the channels, so it fits only when `filters == 2 * in_channels` (and the halves are
    equal).
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


def walk(couplings, pair, step):
    """Yields (coupling, pair) after each coupling: `pair = step(coupling, pair)` in order.

    The walk over a stack of couplings, shared by the plain forward pass (`step` calls the
    layer) and reversible backprop (`step` calls `coupling_forward` and records what it
    needs).
    """
    for coupling in couplings:
        pair = step(coupling, pair)
        yield coupling, pair


def final(walked):
    """The last (coupling, pair) of a walk, holding no earlier pair."""
    return collections.deque(walked, maxlen=1)[0]


@keras.saving.register_keras_serializable(package="keras_irevnet")
class AdditiveCoupling(InvertibleLayer):
    """(x1, x2) -> (S(x2), S(x1) + F(x2)): invertible whatever the residual function F is.

    The state is a pair of halves (channels-last). F sees the second half and its output is
    added to the first; the halves swap places. With `strides=2` both halves go through
    invertible downsampling S = psi(2), and F must itself halve the resolution and give 4x
    the channels of its input half. With `filters` wider than the input at stride 1, the
    merged input pair is first padded with zero channels (the coupling is then injective and
    `inverse` a left inverse).

    Inverse: x2 = S^-1(y2), x1 = S^-1(y1 - F(x2)), F in inference mode. In an injective
    coupling the padded channels of x2 are put back as the zeros they were instead of being
    reconstructed: once trained, F's BatchNorm has a variance of about 0 on them and would
    amplify the rounding noise of a reconstruction by 1/sqrt(epsilon).

    One dtype rule everywhere: the halves stay in the dtype they arrive in, F runs in its
    compute dtype, and F's output is cast to the halves' dtype before the addition. Under a
    mixed policy `call` receives compute-dtype halves (Keras casts a layer's inputs), while
    reversible backprop carries the halves in float32, which keeps its reconstructions exact
    to float32 rounding.

    Args:
        residual: the layer F, called as `residual(x2, training=...)`; any layer, with or
            without weights.
        strides: 1, or 2 to downsample both halves.
        filters: channels of each output half; None keeps the input's (stride 1) or takes
            4x it (stride 2).

    Call arguments:
        inputs: the pair (x1, x2).
        training: passed to F.

    Returns the pair (S(x2), S(x1) + F(x2)).
    """

    def __init__(self, residual, strides=1, filters=None, **kwargs):
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"{self.name}: strides must be 1 or 2, got {strides!r}.")
        self._residual = residual
        self.strides = strides
        self.filters = filters
        self.downsampling = InvertibleDownsampling(strides, dtype=self.dtype_policy, name="psi")
        self.padding = None

    @property
    def residual(self):
        """The layer F."""
        return self._residual

    @property
    def injective(self):
        """Whether the coupling pads its input with zeros (a left inverse, not a bijection)."""
        return self.padding is not None

    def _output_filters(self, input_shape):
        (*_, c1), (*_, c2) = input_shape
        if self.filters is not None:
            return self.filters
        return (c1 + c2) // 2 * (4 if self.strides == 2 else 1)

    def _input_padding(self, input_shape):
        (*_, c1), (*_, c2) = input_shape
        try:
            return block_padding(c1 + c2, self._output_filters(input_shape), self.strides)
        except ValueError as error:
            raise ValueError(f"{self.name}: {error}") from None

    def build(self, input_shape):
        input_shape = tuple(tuple(s) for s in input_shape)
        self._input_halves = (input_shape[0][-1], input_shape[1][-1])
        pad = self._input_padding(input_shape)
        if pad:
            self.padding = InjectivePadding(pad, dtype=self.dtype_policy, name="injective_padding")
            merged = input_shape[0][:-1] + (input_shape[0][-1] + input_shape[1][-1],)
            self.padding.build(merged)
            input_shape = split_shape(self.padding.compute_output_shape(merged))
        if not self.residual.built:
            self.residual.build(input_shape[1])
        # Built at stride 1 too (an identity then): Keras re-runs a model's symbolic build
        # before every `predict_on_batch` while any sublayer is unbuilt.
        self.downsampling.build(input_shape[1])

    # --- The pieces: linear maps that are their own transposes' inverses, and F ---

    def _pad(self, x1, x2):
        if self.padding is None:
            return x1, x2
        return split_channels(self.padding.call(merge_channels(x1, x2)))

    def _unpad(self, a1, a2):
        # The left inverse of `_pad`, and also its transpose (pad's adjoint drops the zeros).
        if self.padding is None:
            return a1, a2
        return split_channels(self.padding.inverse(merge_channels(a1, a2)))

    def _project(self, a2):
        # The padded channels of a2 were exact zeros in the forward pass: put them back.
        if self.padding is None:
            return a2
        kept = max(a2.shape[-1] - self.padding.padding, 0)
        return ops.concatenate([a2[..., :kept], ops.zeros_like(a2[..., kept:])], axis=-1)

    def _fold(self, x):
        return self.downsampling.call(x) if self.strides == 2 else x

    def _unfold(self, x):
        # psi permutes numbers, so its inverse is also its transpose (used on gradients).
        return self.downsampling.inverse(x) if self.strides == 2 else x

    def _reconstruct(self, outputs, residual_of):
        """(a1, a2, F(a2)): the padded input pair from the output pair, F from `residual_of`."""
        y2, y1 = outputs
        a2 = self._project(self._unfold(y2))
        f = residual_of(a2)
        return self._unfold(y1 - ops.cast(f, y1.dtype)), a2, f

    # --- The three uses ---

    def call(self, inputs, training=None):
        # Reversible backprop walks the blocks itself and does not need the boundary.
        return fusion_boundary(self.coupling_forward(inputs, training=training))

    def residual_call(self, a2, training=None):
        """F(a2): `self.residual(a2, training=training)`, without Keras' per-call bookkeeping
        where it changes nothing (see `keras_irevnet.layers.direct_call`)."""
        return direct_call.call(self.residual, a2, training=training)

    # Not `forward` / `backward`: on the torch backend a Keras layer is a torch Module, whose
    # `forward` Keras itself defines.
    def coupling_forward(self, inputs, training=None):
        """(x1, x2) -> (S(a2), S(a1) + F(a2)) with (a1, a2) the padded input, halves in their
        own dtype. This is `call`; reversible backprop calls it directly."""
        a1, a2 = self._pad(*inputs)
        f = self.residual_call(a2, training=training)
        return self._fold(a2), ops.cast(f, a1.dtype) + self._fold(a1)

    def inverse(self, outputs):
        """(S(x2), y1) -> (x1, x2), with F in inference mode."""
        a1, a2, _ = self._reconstruct(outputs, lambda a: self.residual_call(a, training=False))
        return self._unpad(a1, a2)

    def coupling_backward(self, outputs, output_grads, residual_vjp):
        """One step of reversible backprop: rebuild this coupling's input, pull grads through.

        Args:
            outputs: the pair `coupling_forward` returned.
            output_grads: the gradients of the loss w.r.t. that pair.
            residual_vjp: `a2 -> (F(a2), vjp)`, supplied by the backend: F recomputed in the
                forward's mode (same batch statistics, same dropout mask, no second update of
                moving statistics), and `vjp(cotangent) -> (grad w.r.t. a2, [(variable,
                grad), ...])` for F's trainable variables.

        Returns:
            ((x1, x2), (grad x1, grad x2), [(variable, grad), ...]): the input reconstructed
            from the output, the gradients w.r.t. it, and F's weight gradients. F is
            evaluated once: y1 = F(a2) + S(a1) gives d/da1 = S^T(dy1) and
            d/da2 = S^T(dy2) + (dF/da2)^T dy1.
        """
        grad2, grad1 = output_grads
        pullback = []

        def residual_of(a2):
            f, vjp = residual_vjp(a2)
            pullback.append(vjp)
            return f

        a1, a2, f = self._reconstruct(outputs, residual_of)
        grad_a2_f, weight_grads = pullback[0](ops.cast(grad1, f.dtype))
        grad_a1 = self._unfold(grad1)
        grad_a2 = self._unfold(grad2) + ops.cast(grad_a2_f, grad2.dtype)
        return self._unpad(a1, a2), self._unpad(grad_a1, grad_a2), weight_grads

    # --- Shapes and config ---

    def compute_output_shape(self, input_shape):
        input_shape = tuple(tuple(s) for s in input_shape)
        self._input_padding(input_shape)
        n, h, w, _ = input_shape[0]
        s = self.strides
        filters = self._output_filters(input_shape)
        shape = (n, None if h is None else h // s, None if w is None else w // s, filters)
        return shape, shape

    def compute_inverse_shape(self, output_shape):
        (n, h, w, _), _ = output_shape
        s = self.strides
        if not self.built:  # the widths of the input halves are known from `build` only
            raise ValueError(f"{self.name} must be built to know the shape its inverse gives.")
        c1, c2 = self._input_halves
        size = (None if h is None else h * s, None if w is None else w * s)
        return (n, *size, c1), (n, *size, c2)

    def get_config(self):
        return {
            **super().get_config(),
            "residual": keras.saving.serialize_keras_object(self.residual),
            "strides": self.strides,
            "filters": self.filters,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["residual"] = keras.saving.deserialize_keras_object(config["residual"])
        return cls(**config)

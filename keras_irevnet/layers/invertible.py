"""The contract of an invertible layer: `call` and `inverse` side by side, with their shapes."""

import keras


class InvertibleLayer(keras.layers.Layer):
    """A Keras layer that can be undone: `inverse(call(x))` gives `x` back.

    Every invertible piece of an i-RevNet is one (invertible downsampling, injective padding,
    the additive coupling of a block, the stack of blocks), and the pieces compose: the
    inverse of a chain is the chain of inverses in reverse order. A subclass implements, next
    to each other:

    - `call(inputs)` and `compute_output_shape(input_shape)`, as for any layer;
    - `inverse(outputs)`, exact up to float rounding on every output of `call` (a left
      inverse where `call` is injective: it widens the input with zeros), evaluated in
      inference mode;
    - `compute_inverse_shape(output_shape)`, the shape `inverse` returns.

    `inverse` is a method, not a layer call: it runs eagerly or inside a traced function, on
    the layer's own weights.
    """

    def inverse(self, outputs):
        """The input `call` maps to `outputs`."""
        raise NotImplementedError(f"{type(self).__name__} must implement `inverse`.")

    def compute_inverse_shape(self, output_shape):
        """The shape `inverse` returns for outputs of shape `output_shape`."""
        raise NotImplementedError(f"{type(self).__name__} must implement `compute_inverse_shape`.")

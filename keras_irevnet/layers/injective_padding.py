"""Injective channel padding: zeros appended at the end of the channel axis."""

import keras

from keras_irevnet import _compat
from keras_irevnet.layers.invertible import InvertibleLayer


@keras.saving.register_keras_serializable(package="keras_irevnet")
class InjectivePadding(InvertibleLayer):
    """Appends `padding` zero channels at the end of the channel axis.

    This is how an i-RevNet widens its state without losing information: the map is
    injective, and `inverse` (a left-inverse) drops the last `padding` channels again.

    Args:
        padding: number of zero channels to append (>= 0).

    Input shape: (batch, H, W, C). Output shape: (batch, H, W, C + padding).
    """

    def __init__(self, padding, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"`padding` must be a non-negative integer, got {padding!r}.")
        self.padding = padding

    def call(self, inputs):
        if not self.padding:
            return inputs
        rank = len(inputs.shape)
        return _compat.pad_with_zeros(inputs, [[0, 0]] * (rank - 1) + [[0, self.padding]])

    def inverse(self, outputs):
        """Drops the padded channels (left-inverse: exact on the image of `call`)."""
        if not self.padding:
            return outputs
        return outputs[..., : outputs.shape[-1] - self.padding]

    def compute_output_shape(self, input_shape):
        c = input_shape[-1]
        return tuple(input_shape[:-1]) + (None if c is None else c + self.padding,)

    def compute_inverse_shape(self, output_shape):
        c = output_shape[-1]
        return tuple(output_shape[:-1]) + (None if c is None else c - self.padding,)

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}

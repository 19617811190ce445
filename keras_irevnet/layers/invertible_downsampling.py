"""Invertible downsampling (the paper's psi): space to depth in the reference channel order."""

import keras
from keras import ops

from keras_irevnet.layers.invertible import InvertibleLayer


@keras.saving.register_keras_serializable(package="keras_irevnet")
class InvertibleDownsampling(InvertibleLayer):
    """Moves each `block_size` x `block_size` patch of pixels into the channel axis.

    Input pixel (h*b + dh, w*b + dw, c) lands in channel `(dh*b + dw)*C + c` of output pixel
    (h, w): offset-major, channel-minor, the order of the authors' psi and of
    `tf.nn.space_to_depth` (not `torch.nn.PixelUnshuffle`'s). No information is lost:
    `inverse` puts every number back where it came from.

    Args:
        block_size: side of the patch folded into channels (2 halves the resolution).

    Input shape: (batch, H, W, C) with H and W divisible by `block_size`.
    Output shape: (batch, H/b, W/b, C*b*b).
    """

    def __init__(self, block_size=2, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"`block_size` must be a positive integer, got {block_size!r}.")
        self.block_size = block_size

    def _check_spatial(self, shape):
        b = self.block_size
        for axis, size in (("height", shape[1]), ("width", shape[2])):
            if size is not None and size % b:
                raise ValueError(
                    f"{self.name}: input {axis} {size} is not divisible by the block size {b}."
                )

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{self.name} expects a 4D channels-last input (batch, H, W, C), "
                f"got shape {tuple(input_shape)}."
            )
        self._check_spatial(input_shape)

    def call(self, inputs):
        b = self.block_size
        if b == 1:
            return inputs
        h, w, c = _spatial_sizes(inputs)
        x = ops.reshape(inputs, (-1, h // b, b, w // b, b, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, h // b, w // b, b * b * c))

    def inverse(self, outputs):
        """Depth to space: the exact inverse of `call`."""
        b = self.block_size
        if b == 1:
            return outputs
        h, w, c = _spatial_sizes(outputs)
        x = ops.reshape(outputs, (-1, h, w, b, b, c // (b * b)))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, h * b, w * b, c // (b * b)))

    def compute_output_shape(self, input_shape):
        self._check_spatial(input_shape)
        n, h, w, c = input_shape
        b = self.block_size
        return (
            n,
            None if h is None else h // b,
            None if w is None else w // b,
            None if c is None else c * b * b,
        )

    def compute_inverse_shape(self, output_shape):
        n, h, w, c = output_shape
        b = self.block_size
        return (
            n,
            None if h is None else h * b,
            None if w is None else w * b,
            None if c is None else c // (b * b),
        )

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size}


def _spatial_sizes(x):
    """(height, width, channels) of a channels-last batch, as Python ints where known.

    A model built with input_shape=(None, None, C) is traced by TensorFlow with unknown
    height and width (after the first image size, `predict` retraces with relaxed shapes);
    only then are the sizes read from the run-time shape. Static sizes keep the reshapes
    fully static, which XLA and the other backends prefer.
    """
    _, h, w, c = x.shape
    if h is None or w is None:
        dynamic = ops.shape(x)
        h = dynamic[1] if h is None else h
        w = dynamic[2] if w is None else w
    return h, w, c

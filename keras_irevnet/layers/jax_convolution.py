"""A stride-1 "same" convolution for JAX on CPU whose kernel gradient XLA computes fast.

The gradient of conv(x, kernel) w.r.t. the kernel, at an output cotangent g, is
sum over (n, h, w) of the padded input's shifted views times g. XLA computes it as a
convolution over the batch and the image, and on CPU that convolution is slow when the
input has more channels than the output: 10.2 ms for 64 -> 16 channels at 16x16, batch 64.
The same numbers are the kernel gradient of the convolution that maps g back onto x's
channels (cotangent x), spatially flipped, with in and out swapped: 5.1 ms there (all
XLA's, same process). CIFAR's and the ImageNet model's narrowing convolutions (384 -> 96,
96 -> 24, 24 -> 6, 256 -> 64, 16 -> 4 channels) run 1.3-2.9x faster that way; widening
ones, and the ImageNet models' 7x7 stage (kernels large against the image: 1536 -> 384
13.7 against 18.5 ms), are slower and keep XLA's form (`keras_irevnet.layers.Conv2D`
chooses). Those that keep their channel count ran 1.0-1.5x faster alone but made the CIFAR
model's step slower (1.05x faster with them, 1.10x without).

JAX has no custom transpose, so the convolution is a `jax.custom_jvp` whose kernel tangent
conv(x, dkernel) is written as the transpose of that kernel gradient
(`jax.linear_transpose`): reverse mode, which transposes the tangent map, then computes the
kernel gradient in the fast form. Forward values are Keras' own (the same
`conv_general_dilated`); the input tangent and gradient are XLA's usual ones. Forward-mode
autodiff w.r.t. the kernel works but evaluates the transposed form, which XLA runs many
times slower than the convolution (the analyses differentiate w.r.t. inputs only; an
undifferentiated kernel costs nothing there).
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _convolution(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DIMENSIONS)


def _kernel_gradient(x, cotangent, kernel_shape):
    """The gradient w.r.t. the kernel of `_convolution(x, kernel)` at `cotangent`, as the
    kernel gradient of the convolution of `cotangent` onto x's channels, flipped and
    transposed. (Padding p = k // 2 either side: entry (a, b) of the swapped gradient pairs
    x with the cotangent shifted by (a - p, b - p), entry (k - 1 - a, k - 1 - b) of the
    kernel's.)"""
    height, width, channels_in, channels_out = kernel_shape
    swapped = jnp.zeros((height, width, channels_out, channels_in), x.dtype)
    _, pullback = jax.vjp(lambda k: _convolution(cotangent, k), swapped)
    return pullback(x)[0][::-1, ::-1].transpose(0, 1, 3, 2)


@jax.custom_jvp
def convolution(x, kernel):
    """`conv_general_dilated(x, kernel)`, stride 1, "same", NHWC / HWIO, odd kernel sizes."""
    return _convolution(x, kernel)


def _convolution_jvp(primals, tangents):
    x, kernel = primals
    x_tangent, kernel_tangent = tangents
    y = _convolution(x, kernel)
    tangent = None
    if not isinstance(x_tangent, SymbolicZero):
        tangent = _convolution(x_tangent, kernel)
    if not isinstance(kernel_tangent, SymbolicZero):

        def kernel_gradient(cotangent):
            return _kernel_gradient(x, cotangent, kernel.shape)

        output = jax.ShapeDtypeStruct(y.shape, y.dtype)
        (term,) = jax.linear_transpose(kernel_gradient, output)(kernel_tangent)
        tangent = term if tangent is None else tangent + term
    return y, jnp.zeros_like(y) if tangent is None else tangent


convolution.defjvp(_convolution_jvp, symbolic_zeros=True)

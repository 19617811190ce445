"""Stride-1 "same" convolutions for JAX on CPU in the forms XLA computes fastest.

`convolution`: narrowing convolutions, whose kernel gradient XLA computes slowly.
`few_channel_convolution`: convolutions of few input channels, whose forward pass XLA
computes slowly (below).

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

On few input channels XLA's CPU convolution runs at a fraction of its speed elsewhere (CIFAR's
first stage, 32x32, batch 128, forward: 4 -> 4 channels 3.75 ms, 4 -> 16 3.76 ms, where 16 ->
16 takes 3.97 ms for four times the arithmetic). Written out as the sum of the kernel's
kh * kw * in terms, each a shifted view of the padded input's channel times that channel's
row of the kernel, XLA fuses the whole sum into one pass over the output: 1.01 and 1.87 ms;
the ImageNet models' 56x56 stage at batch 4, 6 -> 6 channels 0.60 -> 0.25 ms, 6 -> 24 0.67
-> 0.54. With more terms the convolution wins (8 -> 32 channels: 3.48 against 9.48 ms;
16 -> 16 3.97 against 15.3; `FEW_CHANNELS` draws the line), and on narrowing convolutions
(16 -> 4: 5.87 against 5.90 ms) the sum is no faster. Only the forward values take the sum:
`few_channel_convolution` is a `jax.custom_jvp` whose tangents are XLA's convolutions, so
gradients (and forward-mode products) are XLA's usual ones; the sum, differentiated as
written, made the gradient 9-16 times slower (110 times on 16 -> 4). In the CIFAR model,
two models in one process, steps interleaved: `predict_on_batch` at batch 128 0.712 ->
0.636 s (1.12x), `train_on_batch` at batch 64 1.477 -> 1.452 s (1.02x, the forward pass
only); the ImageNet model unchanged (inference 0.98x, training 1.00x, batch 4). All on 2
cores of an Intel Xeon with AVX-512.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from keras_irevnet.layers import fusion_boundary

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


# 3x3 kernels on at most this many input channels (54 terms per output); measured on 3x3
# kernels only, so other sizes keep XLA's convolution.
FEW_CHANNELS = 6


def has_few_channels(kernel_size, channels_in, channels_out):
    """Whether `few_channel_convolution` is the faster forward pass: a 3x3 kernel on at most
    `FEW_CHANNELS` input channels, and no fewer output channels than input ones."""
    return tuple(kernel_size) == (3, 3) and channels_in <= min(FEW_CHANNELS, channels_out)


def _sum_of_shifted_terms(x, kernel):
    height, width, channels_in, _ = kernel.shape
    rows, columns = x.shape[1], x.shape[2]
    padded = jnp.pad(x, ((0, 0), (height // 2,) * 2, (width // 2,) * 2, (0, 0)))
    total = None
    for i in range(height):
        for j in range(width):
            for c in range(channels_in):
                term = padded[:, i : i + rows, j : j + columns, c : c + 1] * kernel[i, j, c]
                total = term if total is None else total + term
    # Stored once: left to XLA, the sum was fused into each of its consumers (the
    # coupling's sum and what reads it), all 36 terms again in each, and the CIFAR model's
    # inference ran 1.13x slower than with XLA's convolution instead of 1.12x faster.
    return fusion_boundary.stored(total)


@jax.custom_jvp
def few_channel_convolution(x, kernel):
    """`conv_general_dilated(x, kernel)`, stride 1, "same", NHWC / HWIO, odd kernel sizes,
    its values computed as a sum of shifted views times kernel rows (equal to the
    convolution to float32 rounding), its derivatives XLA's convolutions'."""
    return _sum_of_shifted_terms(x, kernel)


def _few_channel_convolution_jvp(primals, tangents):
    x, kernel = primals
    x_tangent, kernel_tangent = tangents
    y = _sum_of_shifted_terms(x, kernel)
    tangent = None
    if not isinstance(x_tangent, SymbolicZero):
        tangent = _convolution(x_tangent, kernel)
    if not isinstance(kernel_tangent, SymbolicZero):
        term = _convolution(x, kernel_tangent)
        tangent = term if tangent is None else tangent + term
    return y, jnp.zeros_like(y) if tangent is None else tangent


few_channel_convolution.defjvp(_few_channel_convolution_jvp, symbolic_zeros=True)

"""Training-mode batch normalisation for JAX on CPU, with its gradient written out.

XLA's CPU backend lowers the reductions of batch normalisation over (N, H, W), in Keras'
ops and in their automatic derivative alike, to `reduce-window` loops that run at a few
GB/s, and the derivative of Keras' formula makes several of them per call. Here every
reduction is a product with a vector of ones (XLA hands it to Eigen's matrix kernels), in
groups of rows for accuracy, and the gradient is the textbook one: two column sums and one
elementwise pass. The output and the input gradient are stored through
`fusion_boundary.stored`: XLA otherwise recomputed the normalisation inside the transposing
copies that feed the next convolution's kernel gradient, at a fifth of the speed.

BatchNorm + ReLU, forward and backward, alone (one process, `jax.jit`, the models' compile
options): 64x32x32x4 1.9 -> 0.6 ms, 64x32x32x16 3.9 -> 1.7 ms, 64x8x8x256 6.8 -> 1.3 ms;
the CIFAR model's training step 1.13x faster (benchmarks/results/optimisations.md).
"""

import functools

import jax
import jax.numpy as jnp

from keras_irevnet.layers import fusion_boundary


def batch_norm_training(x, gamma, beta, epsilon, relu=False):
    """Normalises channels-last `x` with its batch statistics over all but the last axis.

    Returns `(outputs, mean, variance)`: `outputs = gamma * (x - mean) / sqrt(variance +
    epsilon) + beta`, then ReLU if `relu`; `variance` is the biased batch variance,
    computed about the mean (as `jnp.var`). Differentiable in every argument and for every
    output (the statistics' own gradients included, though Keras uses them only to update
    the moving statistics).
    """
    return _batch_norm(x, gamma, beta, epsilon, relu)


# Rows summed by one matrix-vector product before XLA's pairwise reduction takes over.
_GROUP = 256


def _column_sums(rows):
    """`rows.sum(axis=0)` in two levels: a product with ones over groups of at most
    `_GROUP` rows, then XLA's own (pairwise) reduction of the partial sums.

    Eigen's matrix-vector product accumulates sequentially; over all of a batch's rows
    (65,536 on the CIFAR model) its error was 10-50x that of Keras' mean, and the model's
    gradients, sensitive to its BatchNorm statistics, moved with it. Over groups of 256 rows
    it is within float32's rounding of XLA's reduction (tested).
    """
    count, channels = rows.shape
    group = next(g for g in range(min(count, _GROUP), 0, -1) if count % g == 0)
    ones = jnp.ones((group,), rows.dtype)
    partial = jnp.dot(ones, rows.reshape(group, -1), precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(partial.reshape(-1, channels), axis=0)


def _statistics(x):
    rows = x.reshape(-1, x.shape[-1])
    count = rows.shape[0]
    mean = _column_sums(rows) / count
    centred = rows - mean
    return centred, mean, _column_sums(jnp.square(centred)) / count


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm(x, gamma, beta, epsilon, relu):
    return _forward(x, gamma, beta, epsilon, relu)[0]


def _forward(x, gamma, beta, epsilon, relu):
    centred, mean, variance = _statistics(x)
    inverse_std = jax.lax.rsqrt(variance + epsilon)
    outputs = centred * (inverse_std * gamma) + beta
    if relu:
        outputs = jnp.maximum(outputs, 0)
    outputs = fusion_boundary.stored(outputs.reshape(x.shape))
    return (outputs, mean, variance), (x, gamma, beta, mean, inverse_std)


def _backward(epsilon, relu, residuals, cotangents):
    del epsilon  # inverse_std carries it
    x, gamma, beta, mean, inverse_std = residuals
    d_outputs, d_mean, d_variance = cotangents
    channels = x.shape[-1]
    rows = x.reshape(-1, channels)
    count = rows.shape[0]
    centred = rows - mean
    normalised = centred * inverse_std
    d_rows = d_outputs.reshape(-1, channels)
    if relu:
        # The forward's ReLU mask, recomputed as the forward computes it (keeping the output
        # made XLA keep it beside the next convolution's transposed copy of it).
        d_rows = jnp.where(centred * (inverse_std * gamma) + beta > 0, d_rows, 0)
    d_beta = _column_sums(d_rows)
    d_gamma = _column_sums(d_rows * normalised)
    d_x = (gamma * inverse_std) * (d_rows - (d_beta + normalised * d_gamma) / count)
    # The statistics as outputs: d mean / dx = 1 / count, d variance / dx = 2 (x - mean) /
    # count (the mean's own dependence on x cancels in the variance's derivative).
    d_x = d_x + (d_mean + 2.0 * d_variance * centred) / count
    return fusion_boundary.stored(d_x.reshape(x.shape)), d_gamma, d_beta


_batch_norm.defvjp(_forward, _backward)

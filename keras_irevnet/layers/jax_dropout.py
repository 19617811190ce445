"""JAX's dropout mask, bit for bit, in a form XLA's CPU compiler fuses into one loop.

Keras' JAX dropout keeps each element where `jax.random.bernoulli(seed, keep, shape)` is
true. Those bits come from the Threefry-2x32 hash of each element's index under the seed,
and JAX lowers that hash for the CPU as a loop of five steps (`fori_loop`, to keep
compilation short) that XLA runs step by step, copying the whole state through each
iteration: 3.6-3.8 ms for one 64x32x32x4 mask, against 0.5 ms for the same 20 rounds
written out elementwise, which XLA fuses with the comparison into a single pass. The CIFAR
model draws 54 such masks per training step (and memory-efficient training draws them
twice).

`keep_mask` is that hash written out: the same counters (each element's row-major index,
high word zero), rounds, key schedule and the same conversion of the bits to a uniform
float, so it returns exactly the mask `jax.random.bernoulli` returns for the same raw seed
(checked in the tests). It applies where JAX would draw that way: the default PRNG is
Threefry-2x32 with partitionable counters (JAX's defaults), a 32-bit uniform (64-bit JAX
draws float64 uniforms for a Python-float probability) and fewer than 2**32 elements.
`applies` says whether it does. `dropout` applies the mask as Keras does, with the mask
computed and stored once (`fusion_boundary.stored`): left to XLA, the hash was fused into
the ten or so consumers of the mask in a training step (the forward and backward selects,
the transposing copies of the kernel gradients) and computed in each of them.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from keras_irevnet.layers import fusion_boundary

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = 0x1BD11BDA
_MANTISSA_BITS = 23  # float32


def applies(shape):
    """Whether `keep_mask` equals `jax.random.bernoulli`'s mask for a raw seed here."""
    return (
        jax.config.jax_default_prng_impl == "threefry2x32"
        and jax.config.jax_threefry_partitionable
        and not jax.config.jax_enable_x64
        and 0 < math.prod(shape) < 2**32
    )


def _rotate_left(v, distance):
    return lax.shift_left(v, np.uint32(distance)) | lax.shift_right_logical(
        v, np.uint32(32 - distance)
    )


def _threefry_2x32(key0, key1, count0, count1):
    """The Threefry-2x32 hash with 20 rounds (Salmon et al., 2011), as JAX computes it."""
    keys = (key0, key1, key0 ^ key1 ^ np.uint32(_KEY_PARITY))
    x0, x1 = count0 + keys[0], count1 + keys[1]
    for step in range(5):
        for rotation in _ROTATIONS[step % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, rotation) ^ x0
        x0 = x0 + keys[(step + 1) % 3]
        x1 = x1 + keys[(step + 2) % 3] + np.uint32(step + 1)
    return x0, x1


def _row_major_index(shape):
    # One iota per axis times its stride, as JAX builds its counters: elementwise, so XLA
    # fuses it (and a partitioner can shard it) like any other broadcast.
    strides = np.cumprod((1,) + tuple(shape[:0:-1]))[::-1]
    index = jnp.zeros(shape, jnp.uint32)
    for axis, stride in enumerate(strides):
        index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
    return index


# Compiled as one function: run op by op (a training-mode call outside `jax.jit`), the
# hash's ~100 elementwise operations were dispatched one by one, twice the time of JAX's own
# single call. Inside a compiled step it is inlined. (Only the mask: the division and the
# select stay Keras' own operations, so op by op the values are Keras' to the bit too.)
@functools.partial(jax.jit, static_argnums=(1, 2))
def keep_mask(seed, keep, shape):
    """`jax.random.bernoulli(seed, keep, shape)` for a raw uint32[2] seed, where `applies`.

    Args:
        seed: the raw key, uint32 of shape (2,) (what a Keras `SeedGenerator` draws).
        keep: the probability of True, a Python float.
        shape: the mask's shape.
    """
    seed = jnp.asarray(seed, jnp.uint32)
    high, low = _threefry_2x32(
        seed[0], seed[1], jnp.zeros(shape, jnp.uint32), _row_major_index(shape)
    )
    bits = high ^ low
    # JAX's uniform: the top 23 bits as the mantissa of a float in [1, 2), minus 1.
    one = np.array(1.0, np.float32).view(np.uint32)
    mantissa = lax.shift_right_logical(bits, np.uint32(32 - _MANTISSA_BITS)) | one
    uniform = lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1.0)
    return jnp.maximum(np.float32(0.0), uniform) < np.float32(keep)


def dropout(inputs, rate, seed):
    """Keras' JAX `dropout(inputs, rate, seed=seed)` for a raw seed, where `applies`."""
    keep = 1.0 - rate
    mask = fusion_boundary.stored(keep_mask(seed, keep, tuple(inputs.shape)))
    return lax.select(mask, inputs / keep, jnp.zeros_like(inputs))

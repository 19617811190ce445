"""An identity whose derivatives XLA on CPU must compute in full before going on (JAX only).

Backpropagating through a stack of additive couplings sums the gradient of each block's
input from the gradient of the block above it and F's pullback, and everything between two
convolutions (the sum, ReLU masks, BatchNorm's backward) is elementwise. XLA's CPU compiler
fuses such elementwise chains into their consumers and duplicates a cheap chain into every
consumer rather than storing it once, so each block's backward fusion recomputed the
gradients of all the blocks above it: quadratic in depth. In the CIFAR model's training step
the fusions that did it had up to 256 operands and took about half of the step
(benchmarks/results/optimisations.md).

XLA removes `jax.lax.optimization_barrier` before it fuses, so it does not help here. Its
fusion passes cannot cross a conditional, though: the derivative goes through a
`jax.lax.cond` whose predicate is always true and whose other branch is never taken, and is
stored once per block. The identity has a custom JVP (not VJP), so forward-mode autodiff
(`jax.jvp`, used by the analyses) works as well as reverse mode; the predicate depends on the
primal only, which is what transposing a `cond` requires.

Other backends, and JAX on GPU and TPU (whose fusion heuristics do not duplicate this way),
get the tensors back unchanged.
"""

import functools

import keras


def fusion_boundary(tensors):
    """`tensors` (a tuple of arrays) unchanged; on JAX on CPU, a boundary for XLA's fusion of
    their derivatives."""
    if keras.backend.backend() != "jax":
        return tensors
    import jax

    if jax.default_backend() != "cpu" or any(t.size == 0 for t in tensors):
        return tensors
    return _jax_boundary()(tuple(tensors))


@functools.cache
def _jax_boundary():
    import jax

    @jax.custom_jvp
    def boundary(primals):
        return primals

    @boundary.defjvp
    def boundary_jvp(primals, tangents):
        (primals,), (tangents,) = primals, tangents
        # Always true (an integer with its lowest bit set is not 0), but XLA cannot prove it
        # and keeps the conditional.
        first = jax.numpy.ravel(primals[0])[0].astype("float32")
        bits = jax.lax.bitcast_convert_type(first, jax.numpy.uint32)
        taken = (bits | 1) != 0
        tangents = jax.lax.cond(
            taken,
            lambda t: t,
            lambda t: tuple(2 * x for x in t),  # never runs; differs so it is not merged
            tangents,
        )
        return primals, tangents

    return boundary

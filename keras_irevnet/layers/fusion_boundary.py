"""Identities that constrain XLA's CPU compiler where its heuristics go wrong (JAX only).

`fusion_boundary` (on every coupling's output) and `after` (in reversible backprop: each
block's dropout seeds tied to its input) rest on the same device: a `jax.lax.cond` whose
predicate is always true, which XLA can neither remove nor fuse nor schedule across.

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

Other backends, and JAX on GPU and TPU, get the tensors back unchanged (not measured there:
no GPU was available to this project; a conditional there waits for its predicate on the
host).
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


def after(values, anchor):
    """`values` (a list of JAX arrays) unchanged; on CPU, not computable before `anchor` is.

    XLA removes `jax.lax.optimization_barrier` before it schedules, and is free to compute
    anything that depends only on the step's inputs (dropout masks drawn from seed state) at
    the very start, keeping the results until their use. A conditional whose predicate reads
    `anchor` cannot run before `anchor`, nor be removed: its untaken branch differs. Off CPU
    (where a conditional would wait for its predicate on the host) the values come back
    as they are.
    """
    import jax

    if jax.default_backend() != "cpu" or anchor.size == 0:
        return list(values)
    return _kept(list(values), anchor, _each_plus_one)


def stored(value):
    """`value` (a JAX array) unchanged, computed and stored once, not fused into its users.

    XLA's CPU compiler duplicates a cheap elementwise producer into each consumer fusion,
    including the transposing copies that feed a convolution's kernel gradient; such a fused
    transpose of a BatchNorm's output ran at a fifth of the speed of the elementwise pass and
    the plain transpose together (and a dropout mask's hash, fused into ten consumers, cost
    ten times over). Inside code that is not differentiated by JAX itself (a `custom_vjp`'s
    rules), or for a value without a derivative (a boolean mask): the conditional has no
    derivative rule of its own here. Off CPU the value comes back as it is.
    """
    import jax

    if jax.default_backend() != "cpu" or value.size == 0:
        return value
    return _kept(value, value, _negated if value.dtype == bool else _plus_one)


def _kept(values, anchor, other):
    """`values` through a conditional on `_always_true(anchor)` whose untaken branch is
    `other` (never runs; it differs from the identity so that XLA does not merge the two).

    Compiled once per shape as a function of its own: run op by op (outside `jax.jit`, or
    under `jax.grad` outside it) a bare conditional, and its derivative's transpose, were
    traced and compiled again on every call (9 s per training-mode call of the CIFAR
    model on 4 photos). Inside a compiled program the call is inlined.
    """
    return _jitted_conditional()(values, anchor, other)


@functools.cache
def _jitted_conditional():
    import jax

    @functools.partial(jax.jit, static_argnums=2)
    def conditional(values, anchor, other):
        return jax.lax.cond(_always_true(anchor), _identity, other, values)

    return conditional


def _identity(values):
    return values


def _plus_one(value):
    return value + 1


def _negated(mask):
    import jax

    return jax.numpy.logical_not(mask)


def _each_plus_one(values):
    return [x + 1 for x in values]


def _each_doubled(values):
    return tuple(2 * x for x in values)


def _always_true(anchor):
    # Always true (an integer with its lowest bit set is not 0), but XLA cannot prove it.
    import jax

    first = jax.numpy.ravel(anchor)[0].astype("float32")
    return (jax.lax.bitcast_convert_type(first, jax.numpy.uint32) | 1) != 0


@functools.cache
def _jax_boundary():
    import jax

    @jax.custom_jvp
    def boundary(primals):
        return primals

    @boundary.defjvp
    def boundary_jvp(primals, tangents):
        (primals,), (tangents,) = primals, tangents
        # The predicate reads the primal only, as transposing a `cond` requires.
        tangents = _kept(tangents, primals[0], _each_doubled)
        return primals, tangents

    return boundary

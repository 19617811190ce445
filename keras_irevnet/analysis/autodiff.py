"""Jacobian-vector and vector-Jacobian products: the one place that knows the backend.

Keras 3 has no backend-neutral forward-mode (jvp) or reverse-mode-with-cotangent (vjp)
primitive, and the spectrum of a Jacobian needs both: J v for a matrix-free product, J^T u for
its transpose. Everything else in `keras_irevnet.analysis` is written with `keras.ops` and
calls the three functions below, so adding a backend means adding a branch here only.

All functions take a function `fn` from one tensor to one tensor (e.g. `model.features`) and
backend tensors (or NumPy arrays) of the right shape and dtype.
"""

import contextlib
import functools

import keras

from keras_irevnet.models import xla_cpu_options


def _backend():
    name = keras.backend.backend()
    if name not in ("tensorflow", "jax", "torch"):
        raise NotImplementedError(
            f"keras_irevnet.analysis needs Jacobian-vector products, implemented for the "
            f"tensorflow, jax and torch backends; the Keras backend is {name!r}."
        )
    return name


def jvp(fn, x, tangent):
    """(fn(x), J_fn(x) @ tangent): one forward-mode product.

    `tangent` has the shape of `x`; the result has the shape of `fn(x)`. A batch of inputs
    with a batch of tangents gives one product per example, provided `fn` treats examples
    independently (true of `IRevNet.features` in inference mode).
    """
    backend = _backend()
    x = keras.ops.convert_to_tensor(x)
    tangent = keras.ops.convert_to_tensor(tangent, dtype=x.dtype)
    if backend == "tensorflow":
        import tensorflow as tf

        # ForwardAccumulator is TensorFlow's forward mode; it works op by op, eagerly or
        # inside a tf.function.
        with tf.autodiff.ForwardAccumulator(primals=x, tangents=tangent) as accumulator:
            y = fn(x)
        return y, accumulator.jvp(y)
    if backend == "jax":
        import jax

        y, jy = jax.jvp(fn, (x,), (tangent,))
        return y, jy
    import torch

    # torch.func.jvp is true forward mode (dual numbers); it does not build a backward graph.
    with torch.no_grad():
        y, jy = torch.func.jvp(fn, (x,), (tangent,))
    return y, jy


def vjp(fn, x, cotangent):
    """J_fn(x)^T @ cotangent: one reverse-mode product, with the shape of `x`.

    `cotangent` has the shape of `fn(x)`. As for `jvp`, a batch gives one product per example
    when `fn` treats examples independently.
    """
    backend = _backend()
    x = keras.ops.convert_to_tensor(x)
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        cotangent = tf.cast(cotangent, y.dtype)
        return tape.gradient(y, x, output_gradients=cotangent)
    if backend == "jax":
        import jax

        y, pullback = jax.vjp(fn, x)
        (result,) = pullback(keras.ops.cast(cotangent, y.dtype))
        return result
    import torch

    # Only the input needs a gradient; the weights' requires_grad flags are left as they are,
    # but torch.autograd.grad(inputs=x) does not accumulate anything into them.
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = fn(x)
        cotangent = keras.ops.convert_to_tensor(cotangent, dtype=y.dtype)
        (result,) = torch.autograd.grad(y, x, grad_outputs=cotangent)
    return result.detach()


def products(fn, variables=()):
    """(jvp(x, tangent), vjp(x, cotangent)) for one function, to be called many times.

    The same products as `jvp` (which returns only the J v part here) and `vjp`, prepared
    once: on JAX they are compiled with `jax.jit`, the model's `variables` passed as
    arguments through a `keras.StatelessScope` (so the weights are not baked into the
    compiled program as constants); eager op-by-op JAX would otherwise compile every
    primitive on first use and dominate the cost of a Jacobian. Elsewhere they are the plain
    functions above.
    """
    if _backend() != "jax":
        return (lambda x, t: jvp(fn, x, t)[1]), (lambda x, u: vjp(fn, x, u))
    import jax

    variables = list(variables)

    def pure(values, x):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(x)

    # The models' own compiler options (XLA's CPU convolutions: models/xla_cpu_options.py).
    jit = functools.partial(jax.jit, compiler_options=xla_cpu_options.jax_compiler_options())

    @jit
    def jvp_compiled(values, x, tangent):
        return jax.jvp(lambda a: pure(values, a), (x,), (tangent,))[1]

    @jit
    def vjp_compiled(values, x, cotangent):
        return jax.vjp(lambda a: pure(values, a), x)[1](cotangent)[0]

    def current():
        # Read the weights at call time, so a model changed between calls is seen.
        return [v.value for v in variables]

    def jvp_fn(x, tangent):
        x = keras.ops.convert_to_tensor(x)
        return jvp_compiled(current(), x, keras.ops.convert_to_tensor(tangent, dtype=x.dtype))

    def vjp_fn(x, cotangent):
        x = keras.ops.convert_to_tensor(x)
        return vjp_compiled(current(), x, keras.ops.convert_to_tensor(cotangent, dtype=x.dtype))

    return jvp_fn, vjp_fn


def no_grad():
    """A context in which forward passes record no gradient graph (inference only).

    On torch, Keras layers called eagerly record an autograd graph because the weights require
    gradients; that graph would hold every activation of a batch alive. TensorFlow (no tape)
    and JAX (functional) record nothing, so this is a no-op there.
    """
    if _backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()

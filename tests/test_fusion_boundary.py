"""keras_irevnet.layers.fusion_boundary: an identity that stops XLA (CPU) from fusing the
backward pass of a block stack into fusions that grow with depth."""

import re

import keras
import numpy as np
import pytest

from keras_irevnet.layers import additive_coupling, batch_normalization
from keras_irevnet.layers.fusion_boundary import fusion_boundary
from tests.helpers import compiled_jax_gradient, narrow_stack, to_numpy

BACKEND = keras.backend.backend()


def test_values_pass_unchanged():
    rng = np.random.default_rng(0)
    pair = tuple(keras.ops.convert_to_tensor(rng.standard_normal((2, 4, 4, 3))) for _ in "ab")
    out = fusion_boundary(pair)
    assert len(out) == 2
    for a, b in zip(pair, out):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_jax_derivatives_are_the_identitys_in_both_modes():
    if BACKEND != "jax":
        pytest.skip("the boundary does something only on JAX")
    import jax

    rng = np.random.default_rng(0)
    x = tuple(jax.numpy.asarray(rng.standard_normal((2, 4, 4, 3)), "float32") for _ in "ab")
    v = tuple(jax.numpy.asarray(rng.standard_normal((2, 4, 4, 3)), "float32") for _ in "ab")

    def f(pair):
        a, b = fusion_boundary(pair)
        return jax.numpy.sin(a) * b

    def g(pair):
        a, b = pair
        return jax.numpy.sin(a) * b

    # Forward mode (the analyses use jax.jvp) and reverse mode, under jit too.
    for transform in (lambda h: h, jax.jit):
        _, jf = transform(lambda p, t: jax.jvp(f, (p,), (t,)))(x, v)
        _, jg = jax.jvp(g, (x,), (v,))
        np.testing.assert_allclose(jf, jg, rtol=1e-6)
        cot = jax.numpy.asarray(rng.standard_normal((2, 4, 4, 3)), "float32")
        (gf,) = transform(lambda p, cot=cot: jax.vjp(f, p)[1](cot))(x)
        (gg,) = jax.vjp(g, x)[1](cot)
        for a, b in zip(gf, gg):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    # A NaN or an infinity in the primal does not change which branch runs.
    for bad in (np.nan, np.inf, -0.0):
        y = (x[0].at[0, 0, 0, 0].set(bad), x[1])
        (gf,) = jax.vjp(f, y)[1](cot)
        (gg,) = jax.vjp(g, y)[1](cot)
        np.testing.assert_array_equal(gf[1], gg[1])


def _largest_backward_fusion(blocks):
    """The most operands of any fusion in the compiled gradient of a plain block stack."""
    text = compiled_jax_gradient(narrow_stack(blocks), batch=8).as_text()
    entry = text[text.index("ENTRY") :]
    counts = [
        call.group(1).count("%") for call in re.finditer(r"= \S+ fusion\((.*?)\), kind", entry)
    ]
    return max(counts)


@pytest.fixture
def without_boundary(monkeypatch):
    monkeypatch.setattr(additive_coupling, "fusion_boundary", lambda tensors: tensors)
    # With Keras' own BatchNorm: keras_irevnet's JAX kernel (a hand-written gradient whose
    # reductions are matrix products) also ends the elementwise chains, which would hide
    # what the boundary is for in blocks built of other layers.
    monkeypatch.setattr(batch_normalization.BatchNormalization, "_fused_kernel", _keras_path)


def _keras_path(layer, inputs, training, mask):
    return None


def test_jax_cpu_backward_fusions_do_not_grow_with_depth():
    if BACKEND != "jax":
        pytest.skip("XLA's fusion of a compiled gradient is JAX's")
    import jax

    if jax.default_backend() != "cpu":
        pytest.skip("the boundary is for XLA's CPU compiler")
    shallow, deep = _largest_backward_fusion(4), _largest_backward_fusion(12)
    assert deep <= shallow, (shallow, deep)


def test_jax_cpu_without_the_boundary_backward_fusions_grow(without_boundary):
    # Shows what the boundary is for. If this fails after an XLA upgrade, XLA no longer
    # duplicates the gradient chain and the boundary can go (check the speed benchmark).
    if BACKEND != "jax":
        pytest.skip("XLA's fusion of a compiled gradient is JAX's")
    import jax

    if jax.default_backend() != "cpu":
        pytest.skip("the boundary is for XLA's CPU compiler")
    shallow, deep = _largest_backward_fusion(4), _largest_backward_fusion(12)
    assert deep > 2 * shallow, (shallow, deep)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_jax_eager_training_calls_compile_once(memory_efficient, caplog):
    # Outside `jax.jit` JAX runs op by op and caches each op's executable; a conditional
    # built from fresh functions on every call would miss that cache and compile again on
    # every call (9 s per training-mode call of the CIFAR model).
    if BACKEND != "jax":
        pytest.skip("JAX's op-by-op dispatch")
    import logging

    import jax

    from tests.helpers import jax_training_loss, preprocessed_photos, tiny_model

    model = tiny_model(memory_efficient=memory_efficient)
    x = preprocessed_photos(32, 2)
    loss, trainable = jax_training_loss(model)

    def training_call_and_gradient():
        # The gradient too: reversible backprop's walk runs op by op here.
        return jax.grad(loss)(trainable, x)

    for call in (lambda: model(x, training=True), training_call_and_gradient):
        call()  # compiles each op once
        caplog.clear()
        with caplog.at_level(logging.WARNING), jax.log_compiles():
            call()
        compiled = [r.getMessage() for r in caplog.records]
        compiled = [m for m in compiled if m.startswith("Compiling")]
        assert not compiled, compiled[:3]

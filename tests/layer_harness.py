"""The checks every invertible layer passes: `run_invertible_layer_test`.

The contract of `keras_irevnet.layers.InvertibleLayer`, checked the way Keras' own layer tests
check layers: shapes, an exact inverse in float32 and float64, config and serialization round
trips, symbolic use in a functional model, and a mixed-precision forward pass.
"""

import keras
import numpy as np

from keras_irevnet.layers import merge_channels
from tests.helpers import float64_mode, relative_error, to_numpy

TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def _as_tuple(x):
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


def _merged(x):
    parts = [to_numpy(p) for p in _as_tuple(x)]
    return parts[0] if len(parts) == 1 else to_numpy(merge_channels(*parts))


def _shapes(x):
    shapes = tuple(tuple(p.shape) for p in _as_tuple(x))
    return shapes[0] if len(shapes) == 1 else shapes


def _norm(shape):
    """A shape, or a pair of shapes, as tuples (compute_*_shape may return lists)."""
    if shape and isinstance(shape[0], (tuple, list)):
        return tuple(tuple(s) for s in shape)
    return tuple(shape)


def _cast(x, dtype):
    parts = tuple(np.asarray(p, dtype=dtype) for p in _as_tuple(x))
    return parts[0] if len(parts) == 1 else parts


def _warm_up(layer, x, steps):
    """A few training-mode calls: BatchNorm moving statistics away from (0, 1), so the
    inverse is tested in a non-trivial inference mode."""
    for _ in range(steps):
        layer(x, training=True)


def _check_exact_inverse(make_layer, inputs, dtype, warm_up_steps):
    layer = make_layer(dtype)
    x = _cast(inputs, dtype)
    _warm_up(layer, x, warm_up_steps)
    y = layer(x, training=False)
    assert _norm(layer.compute_output_shape(_shapes(x))) == _shapes(y), (
        f"{layer.name}: output shape {_shapes(y)} differs from compute_output_shape"
    )
    restored = layer.inverse(y)
    assert _shapes(restored) == _shapes(x)
    assert _norm(layer.compute_inverse_shape(_shapes(y))) == _shapes(x), (
        f"{layer.name}: compute_inverse_shape differs from the shape inverse returns"
    )
    error = relative_error(_merged(restored), _merged(x))
    assert error <= TOLERANCE[dtype], f"{layer.name} ({dtype}): inverse error {error:.2e}"
    assert str(_merged(y).dtype) == dtype
    return layer


def _check_config_round_trip(layer, inputs):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config, f"{layer.name}: from_config(get_config()) differs"
    revived = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(revived) is type(layer) and revived.get_config() == config
    revived(inputs)  # builds the same weights
    assert [tuple(w.shape) for w in revived.weights] == [tuple(w.shape) for w in layer.weights]
    revived.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        _merged(revived(inputs, training=False)),
        _merged(layer(inputs, training=False)),
        rtol=1e-6,
        atol=1e-6,
    )


def _check_symbolic_use(make_layer, inputs):
    layer = make_layer("float32")
    symbolic = tuple(keras.Input(tuple(p.shape[1:])) for p in _as_tuple(inputs))
    single = len(symbolic) == 1
    outputs = layer(symbolic[0] if single else symbolic)
    expected = layer.compute_output_shape(_shapes(symbolic[0] if single else symbolic))
    assert _shapes(outputs) == _norm(expected), f"{layer.name}: symbolic output shapes"
    model = keras.Model(list(symbolic), list(_as_tuple(outputs)))
    eager = layer(inputs, training=False)
    functional = model(list(_as_tuple(inputs)), training=False)
    np.testing.assert_allclose(_merged(functional), _merged(eager), rtol=1e-6, atol=1e-6)


def _check_mixed_precision(make_layer, inputs):
    for policy in ("mixed_float16", "mixed_bfloat16"):
        layer = make_layer(policy)
        y = layer(inputs, training=False)
        merged = _merged(y)
        assert np.all(np.isfinite(merged.astype("float32"))), f"{layer.name} ({policy})"
        assert str(merged.dtype) == keras.dtype_policies.get(policy).compute_dtype


def run_invertible_layer_test(make_layer, inputs, warm_up_steps=3):
    """Checks the `InvertibleLayer` contract of the layers `make_layer(dtype)` builds.

    Args:
        make_layer: `dtype -> layer`, a new layer of that dtype policy each call (the same
            configuration every time).
        inputs: a float32 batch, or a pair of them for layers on (x1, x2) pairs; real data
            where it matters (photos).
        warm_up_steps: training-mode calls before the inverse is checked.

    Checks:
        output shape == compute_output_shape; compute_inverse_shape == the input's shape;
        inverse(call(x)) == x to 1e-5 (float32) and 1e-12 (float64) relative; get_config /
        from_config and serialize / deserialize round trips (the clone computes the same);
        use on `keras.Input`s inside a functional model; a mixed_float16 and a
        mixed_bfloat16 forward pass in the compute dtype.
    """
    layer = _check_exact_inverse(make_layer, inputs, "float32", warm_up_steps)
    with float64_mode():
        _check_exact_inverse(make_layer, inputs, "float64", warm_up_steps)
    _check_config_round_trip(layer, _cast(inputs, "float32"))
    _check_symbolic_use(make_layer, _cast(inputs, "float32"))
    _check_mixed_precision(make_layer, _cast(inputs, "float32"))

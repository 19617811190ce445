"""Calling a built layer's `call` directly where Keras' `__call__` would only add bookkeeping.

Keras' `Layer.__call__` wraps every call in a call context, binds and checks the arguments,
maps over the input structure, enters name and autocast scopes and tracks losses. On torch,
where each batch runs eagerly from Python, that is about 0.2 ms per call: for the ImageNet
model's 100 blocks, two such calls each, a tenth of an inference batch of one small image.
"""

import keras

from keras_irevnet import _compat


class DirectlyCallable:
    """Marks a layer whose `call(inputs, training=None)` needs nothing from `__call__` once
    the layer is built: it calls its own sublayers' `call` and handles `training` itself."""


def call(layer, inputs, training=None):
    """`layer(inputs, training=training)`, through `layer.call` where that is the same.

    That is where the layer is `DirectlyCallable` and built and the inputs are tensors (not
    the functional API's symbolic ones, which need `__call__` to record the graph). Under a
    mixed dtype policy (float32 variables, 16-bit computation) this does what `__call__`
    does for such a layer, and only that: floating-point inputs cast to the compute dtype,
    and `call` run in Keras' autocast scope of that dtype, where variables are read cast
    to it. (Under mixed precision on torch, Keras' per-call work was about 40 % of the CIFAR
    model's inference host time: benchmarks/host_overhead.py.)
    """
    first = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
    if (
        not isinstance(layer, DirectlyCallable)
        or not layer.built
        or isinstance(first, keras.KerasTensor)
    ):
        return layer(inputs, training=training)
    compute_dtype = layer.compute_dtype
    if compute_dtype != layer.variable_dtype:
        if not layer.autocast:
            return layer(inputs, training=training)
        inputs = keras.tree.map_structure(lambda x: _to_compute_dtype(x, compute_dtype), inputs)
        if _compat.autocast_scope_dtype() == compute_dtype:
            return layer.call(inputs, training=training)
        with _compat.autocast_scope(compute_dtype):
            return layer.call(inputs, training=training)
    if _compat.autocast_scope_dtype() not in (None, compute_dtype):
        return layer(inputs, training=training)  # `__call__` would stop the scope's casting
    return layer.call(inputs, training=training)


def _to_compute_dtype(x, dtype):
    if keras.backend.is_float_dtype(x.dtype) and keras.backend.standardize_dtype(x.dtype) != dtype:
        return keras.ops.cast(x, dtype)
    return x

"""Calling a built layer's `call` directly where Keras' `__call__` would only add bookkeeping.

Keras' `Layer.__call__` wraps every call in a call context, binds and checks the arguments,
maps over the input structure, enters name and autocast scopes and tracks losses. On torch,
where each batch runs eagerly from Python, that is about 0.2 ms per call: for the ImageNet
model's 100 blocks, two such calls each, a tenth of an inference batch of one small image.
"""

import keras


class DirectlyCallable:
    """Marks a layer whose `call(inputs, training=None)` needs nothing from `__call__` once
    the layer is built: it calls its own sublayers' `call` and handles `training` itself."""


def call(layer, inputs, training=None):
    """`layer(inputs, training=training)`, through `layer.call` where that is the same.

    That is where the layer is `DirectlyCallable` and built, the inputs are tensors (not the
    functional API's symbolic ones, which need `__call__` to record the graph), and no mixed
    dtype policy needs `__call__`'s casting and autocast scope.
    """
    first = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
    if (
        isinstance(layer, DirectlyCallable)
        and layer.built
        and layer.compute_dtype == layer.variable_dtype
        and not isinstance(first, keras.KerasTensor)
    ):
        return layer.call(inputs, training=training)
    return layer(inputs, training=training)

"""The one entry point of reversible backprop; the backend dispatch lives here only."""

import importlib

import keras

from keras_irevnet import _compat

SUPPORTED_BACKENDS = ("tensorflow", "jax", "torch")

# Keras has no backend-neutral custom vector-Jacobian product (and `ops.custom_gradient`
# supports neither tuple outputs nor, on torch, gradients for variables), so each backend
# gets its own small module with the same function `reversible_blocks`.
_MODULES = {
    "tensorflow": "keras_irevnet.reversible._tensorflow",
    "jax": "keras_irevnet.reversible._jax",
    "torch": "keras_irevnet.reversible._torch",
}


def reversible_blocks(blocks, inputs, training=True):
    """Runs `blocks` one after the other on the pair `inputs`, storing no activations.

    The result equals `for block in blocks: x = block.coupling_forward(x, training)` (which is
    `block(x)` in float32 / float64), and so do its gradients w.r.t. the inputs and every
    trainable weight of the blocks, up to float rounding. The difference is memory: the
    backward pass keeps only the chain's output; each block's input is reconstructed from
    its output (`AdditiveCoupling.coupling_backward`) and the block recomputed locally, so
    activation memory does not grow with depth. The price is one extra evaluation of each F.

    State is handled as a training step expects: BatchNorm moving statistics are updated once,
    in the forward pass (the recompute runs in a `keras.StatelessScope` whose updates are
    dropped), and the recompute replays the forward's dropout masks (it restores each
    dropout seed to its value before the forward). Under a mixed dtype policy the halves are
    carried in the variables' dtype (float32) and only F runs in the compute dtype.

    Args:
        blocks: a list of built `AdditiveCoupling` layers (e.g. `IRevNetBlock`s), each
            consuming the previous one's output. Call it where variables are not autocast
            (from a layer built with `autocast=False`, as `BlockStack` is, or outside any
            layer call): under a mixed policy the chain carries its halves and reads its
            weights in float32.
        inputs: the pair (x1, x2) for the first block.
        training: BatchNorm / dropout mode of the forward pass and of the recompute.

    Returns:
        The last block's output pair (x2', y1).

    Raises:
        NotImplementedError: on a Keras backend other than tensorflow, jax or torch.
        ValueError: if a block is not built, or if a block adds losses in `call` (an activity
            regulariser): those would be computed outside the differentiated graph.
    """
    backend = keras.backend.backend()
    if backend not in _MODULES:
        raise NotImplementedError(
            f"memory-efficient (reversible) backprop is implemented for the "
            f"{', '.join(SUPPORTED_BACKENDS)} backends; the Keras backend is {backend!r}. "
            "Use memory_efficient=False."
        )
    blocks = list(blocks)
    for block in blocks:
        if not block.built:
            raise ValueError(f"{block.name} must be built before reversible_blocks runs it.")
        for layer in _compat.flatten_layers(block):
            if getattr(layer, "activity_regularizer", None) is not None:
                raise ValueError(
                    f"{layer.name} (in {block.name}) has an activity regulariser; its loss "
                    "would be computed in the forward pass, which reversible backprop does "
                    "not differentiate. Remove it or use memory_efficient=False."
                )
    x1, x2 = inputs
    return importlib.import_module(_MODULES[backend]).reversible_blocks(
        blocks, (x1, x2), bool(training)
    )

"""Memory-efficient (reversible) backprop for a chain of i-RevNet blocks.

`reversible_blocks(blocks, (x1, x2), training)` computes what calling the blocks one after
the other computes, but keeps only the chain's output for the backward pass: the backward
pass walks the blocks in reverse, rebuilds each block's input from its output with the
block's inverse, recomputes the block locally and pulls the gradients through it. One API
(`api.py`) and one small module per backend (`_tensorflow.py`, `_jax.py`, `_torch.py`); the
backend-neutral walk is in `_walk.py` and the algebra of one block in
`IRevNetBlock.coupling_forward` / `coupling_backward`.
"""

from keras_irevnet.reversible.api import SUPPORTED_BACKENDS, reversible_blocks

__all__ = ["SUPPORTED_BACKENDS", "reversible_blocks"]

"""Memory-efficient (reversible) backprop for a chain of additive couplings.

`reversible_blocks(couplings, (x1, x2), training)` computes what calling the couplings one
after the other computes, but keeps only the chain's output for the backward pass: the
backward pass walks the chain in reverse, rebuilds each coupling's input from its output,
recomputes its F locally and pulls the gradients through it. It needs nothing but the
additive-coupling contract (`keras_irevnet.layers.AdditiveCoupling.coupling_forward` /
`coupling_backward` /
`residual`), so it runs i-RevNet blocks and any other additive coupling alike. One API
(`api.py`) and one small module per backend (`_tensorflow.py`, `_jax.py`, `_torch.py`); the
backend-neutral walk is in `_walk.py`.
"""

from keras_irevnet.reversible.api import SUPPORTED_BACKENDS, reversible_blocks

__all__ = ["SUPPORTED_BACKENDS", "reversible_blocks"]

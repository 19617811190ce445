"""What the layers' torch fast paths share: tensors without Keras' conversion cost, and
tensors derived from weights, kept while the weights are unchanged.

On torch every operation runs eagerly from Python, so per-call work that is not arithmetic
(Keras' `convert_to_tensor` checks, about 10 us each; the scale and shift of an
inference-mode BatchNorm) is paid on every call of every layer: hundreds of
times per batch of the ImageNet model.
"""

import keras

from keras_irevnet import _compat


def torch_tensor(x):
    """`keras.ops.convert_to_tensor(x)` on torch, free where `x` already is a torch tensor."""
    import torch

    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, keras.Variable):
        return _compat.torch_variable_value(x)
    return keras.ops.convert_to_tensor(x)


def needs_autograd(tensor):
    """Whether a result computed from `tensor` now must carry its gradient."""
    import torch

    return torch.is_grad_enabled() and tensor.requires_grad


class UnchangedTensorCache:
    """`derive(*sources)`, kept once it has been asked for twice with unchanged sources.

    In-place writes (optimizer steps, `assign`) bump torch's version counter of a tensor;
    holding the sources keeps a replaced tensor from being mistaken for the old one. A
    result computed for the first time is not kept: reversible training runs its forward
    pass without autograd once per step, with weights that change every step, and a result
    held from one step to the next would be memory growing with depth for nothing.
    """

    def __init__(self):
        self.sources = ()
        self.versions = None
        self.result = None

    def get(self, sources, derive):
        sources = tuple(sources)
        versions = tuple(_compat.torch_version_counter(s) for s in sources)
        same = len(sources) == len(self.sources) and all(
            a is b for a, b in zip(sources, self.sources)
        )
        if not same or versions != self.versions:
            self.sources, self.versions, self.result = sources, versions, None
            return derive(*sources)
        if self.result is None:
            self.result = derive(*sources)
        return self.result

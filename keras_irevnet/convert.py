"""Weights from the authors' PyTorch checkpoints (github.com/jhjacobsen/pytorch-i-revnet).

The state dict layout is described in ../shared/REFERENCE.md: block i of the whole stack holds
an `nn.Sequential` named `stack.{i}.bottleneck_block` whose indices differ for the first block
(no leading BN-ReLU); the head is `bn1` and `linear`; DataParallel adds a `module.` prefix.
"""

import os
from collections.abc import Mapping

import numpy as np

# nn.Sequential index -> our Bottleneck attribute (ReLU and Dropout have no weights).
_FIRST_BLOCK_LAYOUT = {0: "conv1", 1: "norm1", 3: "conv2", 5: "norm2", 7: "conv3"}
_BLOCK_LAYOUT = {0: "input_norm", 2: "conv1", 3: "norm1", 5: "conv2", 7: "norm2", 9: "conv3"}
_BN_VARIABLES = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
# PyTorch's BatchNorm step counter: used only when momentum=None, which the reference never
# sets; it has no Keras counterpart and is consumed without being stored.
_IGNORED_SUFFIX = ".num_batches_tracked"


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def read_state_dict(checkpoint):
    """A {name: np.ndarray} state dict from a checkpoint path or mapping, prefix removed.

    Files are read with `torch.load(weights_only=True)`, which refuses to unpickle anything
    but tensors and plain containers.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        path = os.fspath(checkpoint)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file not found: {path!r}.")
        try:
            import torch
        except ImportError:
            raise ImportError(
                "Reading a PyTorch checkpoint file needs torch (pip install torch); without "
                "it, pass a mapping of names to arrays instead."
            ) from None
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            "`checkpoint` must be a file path or a mapping of names to arrays, got "
            f"{type(checkpoint).__name__}."
        )
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        checkpoint = checkpoint["state_dict"]
    state = {}
    for name, value in checkpoint.items():
        name = name[len("module.") :] if name.startswith("module.") else name
        state[name] = _to_numpy(value)
    return state


def _conv_kernel(value):
    return np.transpose(value, (2, 3, 1, 0))  # (out, in, kh, kw) -> (kh, kw, in, out)


def _weight_plan(model):
    """[(checkpoint name, Keras variable, transform to Keras layout)] for every model weight."""
    plan = []

    def add_batch_norm(prefix, layer):
        for torch_name, attr in _BN_VARIABLES.items():
            plan.append((f"{prefix}.{torch_name}", getattr(layer, attr), None))

    for i, block in enumerate(model.block_stack.blocks):
        layout = _FIRST_BLOCK_LAYOUT if block.first else _BLOCK_LAYOUT
        for index, attr in layout.items():
            prefix = f"stack.{i}.bottleneck_block.{index}"
            layer = getattr(block.bottleneck, attr)
            if attr.startswith("conv"):
                plan.append((f"{prefix}.weight", layer.kernel, _conv_kernel))
            else:
                add_batch_norm(prefix, layer)
    if model.include_top:
        add_batch_norm("bn1", model.get_layer("head_norm"))
        dense = model.get_layer("predictions")
        plan.append(("linear.weight", dense.kernel, np.transpose))
        plan.append(("linear.bias", dense.bias, None))
    return plan


def load_official_weights(model, checkpoint):
    """Loads the authors' PyTorch i-RevNet weights into `model`.

    Args:
        model: an `IRevNet` with the checkpoint's architecture (e.g. `IRevNetCIFAR()` for the
            CIFAR-10 checkpoint, `IRevNetBijective()` for the ImageNet one).
        checkpoint: the path of a checkpoint saved by the authors' code
            (`{'state_dict': ...}`, `module.` prefixes), a state dict, or any mapping of the
            state dict's names to arrays or tensors (no torch needed then).

    Every checkpoint entry must be used and every model weight set. Nothing is assigned
    unless the whole checkpoint fits.

    Raises:
        ValueError: naming each missing, unexpected or mis-shaped entry (with both shapes).
    """
    state = read_state_dict(checkpoint)
    plan = _weight_plan(model)
    planned = {name for name, _, _ in plan}
    missing = [name for name, _, _ in plan if name not in state]
    unexpected = [
        name
        for name in state
        if name not in planned
        and not (name.endswith(_IGNORED_SUFFIX) and name[: -len(_IGNORED_SUFFIX)] + ".weight" in planned)
    ]
    problems = []
    if missing:
        problems.append(f"missing entries: {_listing(missing)}")
    if unexpected:
        hint = ""
        if not model.include_top and any(n.startswith(("bn1.", "linear.")) for n in unexpected):
            hint = " (the checkpoint has a classifier head: build the model with include_top=True)"
        problems.append(f"unexpected entries{hint}: {_listing(unexpected)}")
    values = []
    for name, variable, transform in plan:
        if name not in state:
            continue
        value = state[name] if transform is None else transform(state[name])
        if tuple(value.shape) != tuple(variable.shape):
            problems.append(
                f"entry {name!r} has shape {tuple(state[name].shape)} (as {tuple(value.shape)} "
                f"in Keras layout), but {variable.path} has shape {tuple(variable.shape)}"
            )
        values.append((variable, value))
    if problems:
        raise ValueError(
            f"The checkpoint does not fit the model {model.name!r}:\n- " + "\n- ".join(problems)
        )
    for variable, value in values:
        variable.assign(value.astype(variable.dtype))
    return model


def _listing(names, limit=8):
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{shown}{more} ({len(names)} in all)"

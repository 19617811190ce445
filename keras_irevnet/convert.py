"""Weights from the authors' PyTorch checkpoints (github.com/jhjacobsen/pytorch-i-revnet).

The state dict layout of the authors' code: block i of the whole stack holds
an `nn.Sequential` named `stack.{i}.bottleneck_block` whose indices differ for the first block
(no leading BN-ReLU); the head is `bn1` and `linear`; DataParallel adds a `module.` prefix.
"""

import os
import re
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


_EXPECTED_FILE = (
    "expected a PyTorch checkpoint saved with torch.save holding a state dict (the authors' "
    "{'state_dict': {name: tensor}} or a plain {name: tensor})"
)


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def _load_checkpoint_file(path):
    """The object in a torch checkpoint file; a one-line ValueError naming it otherwise."""
    if not os.path.isfile(path):
        state = "is a directory, not a file" if os.path.isdir(path) else "not found"
        raise ValueError(f"checkpoint file {state}: {path!r}; {_EXPECTED_FILE}.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint file {path!r} is empty; {_EXPECTED_FILE}.")
    try:
        import torch
    except ImportError:
        raise ImportError(
            "Reading a PyTorch checkpoint file needs torch (pip install torch); without "
            "it, pass a mapping of names to arrays instead."
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as error:  # torch, pickle and zip raise many types for a bad file
        raise ValueError(
            f"checkpoint file {path!r}: {_load_failure(error)}; {_EXPECTED_FILE}."
        ) from None


def _load_failure(error):
    """Why torch.load failed, in one line."""
    refused = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    if refused and "Unsupported global" in refused.group(1):
        found = re.search(r"GLOBAL\s+([\w.]+)", refused.group(1))
        what = f" ({found.group(1)})" if found else ""
        return (
            f"it holds Python objects{what} other than tensors and plain containers, which "
            "torch.load(weights_only=True) refuses to unpickle"
        )
    detail = refused.group(1) if refused else f"{type(error).__name__}: {_first_line(error)}"
    return f"not a PyTorch checkpoint, or a truncated or damaged one ({detail.strip()})"


def read_state_dict(checkpoint):
    """A {name: np.ndarray} state dict from a checkpoint path or mapping, prefix removed.

    Files are read with `torch.load(weights_only=True)`, which refuses to unpickle anything
    but tensors and plain containers.

    Raises:
        ValueError: a missing, empty, truncated or foreign file, or one that holds something
            other than a state dict (the message names the file and what was expected).
    """
    source = ""
    if isinstance(checkpoint, (str, os.PathLike)):
        path = os.fspath(checkpoint)
        source = f"checkpoint file {path!r}"
        checkpoint = _load_checkpoint_file(path)
    if not isinstance(checkpoint, Mapping):
        what = source or "`checkpoint`"
        raise ValueError(
            f"{what} holds a {type(checkpoint).__name__}, not a state dict; "
            + (_EXPECTED_FILE if source else "expected a file path or a mapping of names to arrays")
            + "."
        )
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        checkpoint = checkpoint["state_dict"]
    state = {}
    for name, value in checkpoint.items():
        name = str(name)
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

    Every checkpoint entry must be used and every model weight set. Every value is converted
    to the Keras layout and its variable's dtype and checked (shape, finite numbers) before
    the first one is assigned, so nothing is assigned unless the whole checkpoint fits.

    Returns:
        `model`.

    Raises:
        ValueError: for a missing, empty, truncated or foreign file, or one that does not hold
            a state dict (naming the file and what was expected); naming each missing,
            unexpected or mis-shaped entry (with both shapes); naming the entries holding
            NaN or infinity (the first few, and their count).
    """
    source = f" {os.fspath(checkpoint)!r}" if isinstance(checkpoint, (str, os.PathLike)) else ""
    state = read_state_dict(checkpoint)
    plan = _weight_plan(model)
    problems = _entry_problems(model, state, plan)
    values, conversion_problems = _converted_values(state, plan)
    problems += conversion_problems
    if problems:
        raise ValueError(
            f"The checkpoint{source} does not fit the model {model.name!r}:\n- "
            + "\n- ".join(problems)
        )
    for variable, value in values:
        variable.assign(value)
    return model


def _entry_problems(model, state, plan):
    """Missing and unexpected checkpoint entries, as messages."""
    planned = {name for name, _, _ in plan}
    missing = [name for name, _, _ in plan if name not in state]
    unexpected = [
        name
        for name in state
        if name not in planned
        and not (
            name.endswith(_IGNORED_SUFFIX) and name[: -len(_IGNORED_SUFFIX)] + ".weight" in planned
        )
    ]
    problems = []
    if missing:
        problems.append(f"missing entries: {_listing(missing)}")
    if unexpected:
        hint = ""
        if not model.include_top and any(n.startswith(("bn1.", "linear.")) for n in unexpected):
            hint = " (the checkpoint has a classifier head: build the model with include_top=True)"
        problems.append(f"unexpected entries{hint}: {_listing(unexpected)}")
    return problems


def _converted_values(state, plan):
    """([(variable, value in Keras layout and the variable's dtype)], problems as messages).

    Everything is converted here, before anything is assigned: a failure on the last entry
    must not leave the model with all the others already overwritten.
    """
    values, problems, not_numeric, not_finite = [], [], [], []
    for name, variable, transform in plan:
        if name not in state:
            continue
        raw = state[name]
        if raw.dtype.kind not in "biuf":
            not_numeric.append(f"{name!r} ({raw.dtype})")
            continue
        value = raw if transform is None else transform(raw)
        if tuple(value.shape) != tuple(variable.shape):
            problems.append(
                f"entry {name!r} has shape {tuple(raw.shape)} (as {tuple(value.shape)} "
                f"in Keras layout), but {variable.path} has shape {tuple(variable.shape)}"
            )
            continue
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
            value = np.ascontiguousarray(value.astype(_numpy_dtype(variable.dtype)))
        if not _all_finite(value):
            not_finite.append(name)
        values.append((variable, value))
    if not_numeric:
        problems.append(
            f"entries that are not numeric arrays: {_listing(not_numeric, quote=False)}"
        )
    if not_finite:
        problems.append(
            "entries with non-finite values (NaN or infinity, in the checkpoint or after "
            f"conversion to the variables' dtype): {_listing(not_finite)}"
        )
    return values, problems


def _all_finite(value):
    try:
        return bool(np.isfinite(value).all())
    except TypeError:  # a dtype without a NumPy isfinite loop
        return bool(np.isfinite(value.astype("float32")).all())


def _numpy_dtype(name):
    if name == "bfloat16":  # not a NumPy dtype; ml_dtypes (a Keras dependency) provides it
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def _listing(names, limit=8, quote=True):
    shown = ", ".join(repr(n) if quote else n for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{shown}{more} ({len(names)} in all)"

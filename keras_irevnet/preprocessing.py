"""The input normalisation the reference models were trained with, and its inverse."""

import numpy as np
from keras import ops

# Per-channel (RGB) statistics of ../shared/REFERENCE.md, for pixels scaled to [0, 1].
NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}


def _statistics(mode):
    if mode not in NORMALIZATION:
        raise ValueError(f"`mode` must be one of {sorted(NORMALIZATION)}, got {mode!r}.")
    mean, std = NORMALIZATION[mode]
    return np.asarray(mean), np.asarray(std)


def preprocess_input(x, mode="imagenet"):
    """Maps RGB pixels in [0, 255] to the normalised inputs of the models.

    `(x / 255 - mean) / std` per channel, channels-last, with the ImageNet statistics
    (`mode="imagenet"`) or the CIFAR-10 ones (`mode="cifar"`) of the authors' training code.
    Works on NumPy arrays and backend tensors of any batch shape (..., 3).
    """
    mean, std = _statistics(mode)
    if x.shape[-1] != 3:
        raise ValueError(
            f"preprocess_input expects RGB images with 3 channels last, got shape {x.shape}."
        )
    if isinstance(x, np.ndarray):
        return ((x / 255.0 - mean) / std).astype(x.dtype if x.dtype.kind == "f" else "float32")
    x = ops.cast(x, "float32") if "float" not in str(x.dtype) else x
    return (x / 255.0 - ops.cast(mean, x.dtype)) / ops.cast(std, x.dtype)


def deprocess_input(x, mode="imagenet"):
    """The inverse of `preprocess_input`: normalised inputs back to pixels in [0, 255].

    Useful to view what `model.inverse` reconstructs. No clipping or rounding is applied.
    """
    mean, std = _statistics(mode)
    if isinstance(x, np.ndarray):
        return ((x * std + mean) * 255.0).astype(x.dtype)
    return (x * ops.cast(std, x.dtype) + ops.cast(mean, x.dtype)) * 255.0

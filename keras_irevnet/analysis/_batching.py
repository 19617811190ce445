"""Helpers shared by the analyses: checking the model, batching inputs, tensors to NumPy."""

import keras
import numpy as np


def check_model(model, what):
    """Raises a TypeError unless `model` has the i-RevNet interface the analyses need."""
    missing = [
        name
        for name in ("features", "inverse", "image_shape", "feature_shape", "block_outputs")
        if not hasattr(model, name)
    ]
    if missing:
        raise TypeError(
            f"{what} needs an i-RevNet (keras_irevnet.IRevNet or one of its constructors, "
            f"or a .keras file saved from one); got {type(model).__name__}, which lacks "
            f"{', '.join(missing)}."
        )


def as_image_batch(model, images, what, name="images"):
    """`images` as a NumPy batch of the model's image shape (a single image gets a batch axis).

    NumPy arrays (including memory maps) are returned without copying so that big datasets
    can stay on disk; tensors are converted.
    """
    if not isinstance(images, np.ndarray):
        images = keras.ops.convert_to_numpy(images)
    expected = tuple(model.image_shape)
    if images.shape == expected:
        images = images[None]
    if images.ndim != len(expected) + 1 or any(
        e is not None and g != e for g, e in zip(images.shape[1:], expected)
    ):
        raise ValueError(
            f"{what}: `{name}` must be one image of shape {expected} or a batch of shape "
            f"(batch,) + {expected} (preprocessed as for training), got shape {images.shape}."
        )
    if len(images) == 0:
        raise ValueError(f"{what}: `{name}` is empty.")
    return images


def check_positive_int(value, argument, what):
    """ValueError naming `what` and `argument` unless `value` is a positive integer."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what}: `{argument}` must be a positive integer, got {value!r}.")


def batches(array, batch_size, dtype):
    """Yields consecutive slices of `array` as backend tensors of `dtype`."""
    for start in range(0, len(array), batch_size):
        chunk = np.asarray(array[start : start + batch_size], dtype=dtype)
        yield start, keras.ops.convert_to_tensor(chunk)


def progbar(target, verbose, unit_name="step"):
    """A keras Progbar, or None when `verbose` is 0 (the analyses are silent in tests)."""
    if not verbose:
        return None
    return keras.utils.Progbar(target, verbose=verbose, unit_name=unit_name)

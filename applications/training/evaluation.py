"""The end-of-training measurements: accuracy on the validation split and inversion error."""

import numpy as np


def inverse_relative_error(model, dataset, max_images):
    """||x - Phi^-1(Phi(x))|| / ||x|| over up to `max_images` images of `dataset`
    (batches of (images, labels)), in inference mode, accumulated in float64.

    Returns (error, images measured).
    """
    squared_error = squared_norm = 0.0
    count = 0
    for images, _ in dataset:
        images = np.asarray(images)[: max_images - count]
        restored = np.asarray(
            _to_numpy(model.inverse(model.features(images, training=False)))
        ).astype("float64")
        original = images.astype("float64")
        squared_error += float(np.sum((restored - original) ** 2))
        squared_norm += float(np.sum(original**2))
        count += len(images)
        if count >= max_images:
            break
    if not count:
        raise ValueError("The validation split is empty: no images to invert.")
    return float(np.sqrt(squared_error / squared_norm)), count


def _to_numpy(x):
    import keras

    return keras.ops.convert_to_numpy(x)

"""Analyses 1 and 2 of the paper: exact inversion, and interpolation in feature space."""

import keras
import numpy as np

from keras_irevnet.analysis import autodiff
from keras_irevnet.analysis._batching import (
    as_image_batch,
    batches,
    check_model,
    check_positive_int,
    progbar,
)


def reconstruct(model, images, batch_size=32, verbose=0):
    """Phi^-1(Phi(x)) for a batch of images, computed in batches (inference mode).

    Args:
        model: an `IRevNet`.
        images: an image of `model.image_shape` or a batch of them, preprocessed as for
            training (NumPy array, memory map or tensor).
        batch_size: images per forward/inverse pass.
        verbose: 0 silent, 1 a progress bar.

    Returns:
        The reconstructions as a NumPy array of the batch's shape.
    """
    check_model(model, "reconstruct")
    check_positive_int(batch_size, "batch_size", "reconstruct")
    images = as_image_batch(model, images, "reconstruct")
    out = np.empty(images.shape, dtype=model.compute_dtype)
    bar = progbar(len(images), verbose, unit_name="image")
    with autodiff.no_grad():
        for start, x in batches(images, batch_size, model.compute_dtype):
            out[start : start + len(x)] = keras.ops.convert_to_numpy(
                model.inverse(model.features(x))
            )
            if bar:
                bar.add(len(x))
    return out


def reconstruction_error(model, images, batch_size=32, verbose=0):
    """Relative reconstruction error ||x - Phi^-1(Phi(x))|| / ||x||, per image and overall.

    The paper's first claim: the i-RevNet loses no information, so the inverse reproduces the
    input up to floating-point rounding, for natural images and for noise alike. Norms are
    taken in float64 so that the measurement does not add rounding of its own.

    Args:
        model: an `IRevNet`.
        images: an image or a batch, preprocessed as for training.
        batch_size: images per pass.
        verbose: 0 silent, 1 a progress bar.

    Returns:
        A dict with `rel_error` (||X - X_hat|| / ||X|| over the whole batch, a float),
        `per_image` (a float64 array, one error per image), `max` and `mean` of `per_image`.
    """
    check_model(model, "reconstruction_error")
    images = as_image_batch(model, images, "reconstruction_error")
    reconstructions = reconstruct(model, images, batch_size=batch_size, verbose=verbose)
    x = np.asarray(images, dtype="float64").reshape(len(images), -1)
    diff = x - reconstructions.astype("float64").reshape(len(images), -1)
    norms = np.linalg.norm(x, axis=1)
    if np.any(norms == 0):
        raise ValueError(
            "reconstruction_error: some images are all zeros, so their relative error is "
            "undefined; remove them or measure the absolute error with `reconstruct`."
        )
    per_image = np.linalg.norm(diff, axis=1) / norms
    return {
        "rel_error": float(np.linalg.norm(diff) / np.linalg.norm(x)),
        "per_image": per_image,
        "max": float(per_image.max()),
        "mean": float(per_image.mean()),
    }


def interpolate(model, x_a, x_b, steps=8, batch_size=32):
    """Images along the straight line from Phi(x_a) to Phi(x_b), mapped back by Phi^-1.

    z_t = (1 - t) Phi(x_a) + t Phi(x_b) for `steps` values of t evenly spaced in [0, 1], and
    the image Phi^-1(z_t) of each. At t = 0 and t = 1 the mixture is Phi(x_a) (resp. Phi(x_b))
    bit for bit, so the ends reproduce x_a and x_b up to the rounding of the inverse itself.

    For an injective model, a point of the line between two features need not be the feature
    of any image; Phi^-1 is then the left inverse (it drops the padded channels).

    Args:
        model: an `IRevNet`.
        x_a, x_b: two images of `model.image_shape`, or two batches of the same length (one
            interpolation per pair), preprocessed as for training.
        steps: number of points on the line, ends included (>= 2).
        batch_size: images per inverse pass.

    Returns:
        A NumPy array of shape (steps,) + image_shape for two images, or
        (pairs, steps) + image_shape for two batches.
    """
    check_model(model, "interpolate")
    check_positive_int(batch_size, "batch_size", "interpolate")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise ValueError(f"interpolate: `steps` must be an integer >= 2, got {steps!r}.")
    # (len(shape), not np.ndim: a tensor on an accelerator cannot become a NumPy array as is.)
    single = len(x_a.shape if hasattr(x_a, "shape") else np.shape(x_a)) == len(model.image_shape)
    x_a = as_image_batch(model, x_a, "interpolate", "x_a")
    x_b = as_image_batch(model, x_b, "interpolate", "x_b")
    if len(x_a) != len(x_b):
        raise ValueError(
            f"interpolate: `x_a` and `x_b` must hold as many images, got {len(x_a)} and {len(x_b)}."
        )
    dtype = model.compute_dtype
    with autodiff.no_grad():
        z_a = keras.ops.convert_to_numpy(model.features(np.asarray(x_a, dtype=dtype)))
        z_b = keras.ops.convert_to_numpy(model.features(np.asarray(x_b, dtype=dtype)))
        # t = 0 and t = 1 exactly, so the ends are (1 * z_a + 0 * z_b) = z_a and z_b exactly.
        t = np.linspace(0.0, 1.0, steps).astype(dtype)
        t = t.reshape((1, steps) + (1,) * (z_a.ndim - 1))
        z = (1 - t) * z_a[:, None] + t * z_b[:, None]
        z = z.reshape((-1,) + z.shape[2:])
        images = np.empty((len(z),) + tuple(model.image_shape), dtype=dtype)
        for start, chunk in batches(z, batch_size, dtype):
            images[start : start + len(chunk)] = keras.ops.convert_to_numpy(model.inverse(chunk))
    images = images.reshape((len(x_a), steps) + tuple(model.image_shape))
    return images[0] if single else images

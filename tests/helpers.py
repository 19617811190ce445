"""Shared test utilities: relative errors and real photos."""

import functools

import keras
import numpy as np


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def relative_error(a, b):
    """||a - b|| / ||b||, computed in float64."""
    a = to_numpy(a).astype("float64")
    b = to_numpy(b).astype("float64")
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@functools.lru_cache(maxsize=None)
def _photo_batch(size):
    from skimage import data, transform

    images = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    resized = [
        transform.resize(image, (size, size), anti_aliasing=True, preserve_range=True)
        for image in images
    ]
    return np.stack(resized).astype("float32")


def photos(size, count=4):
    """`count` real RGB photos from scikit-image, resized to size x size, pixels in [0, 255]."""
    return _photo_batch(size)[:count].copy()


def preprocessed_photos(size, count=4, dtype="float32"):
    import keras_irevnet as kir

    return kir.preprocess_input(photos(size, count)).astype(dtype)


def once_in(backend, why):
    """Runs a test in one backend's suite only: it exercises a program or file format whose
    behaviour does not depend on the Keras backend of the test process (`make test` runs the
    suite once per backend; such tests are spread over the three suites)."""
    import pytest

    return pytest.mark.skipif(
        keras.backend.backend() != backend, reason=f"runs once, in the {backend} suite: {why}"
    )

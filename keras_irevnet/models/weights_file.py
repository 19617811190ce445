"""Loading a `.weights.h5` or `.keras` file into a model, with errors that say what differs."""

import io
import os
import zipfile

import h5py


def _classifier_classes(path):
    """The class count of the classifier saved in `path`, or None if it holds no classifier.

    An i-RevNet file has exactly one 2-D array, the Dense kernel (convolutions are 4-D and
    BatchNorm vectors 1-D), so its last dimension is the number of classes.
    """

    def find(h5):
        shapes = []
        h5.visititems(
            lambda _, obj: shapes.append(obj.shape)
            if isinstance(obj, h5py.Dataset) and len(obj.shape) == 2
            else None
        )
        return shapes[0][1] if shapes else None

    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            data = archive.read("model.weights.h5")
        with h5py.File(io.BytesIO(data), "r") as h5:
            return find(h5)
    with h5py.File(path, "r") as h5:
        return find(h5)


def check_weights_argument(weights):
    """Validates a constructor's `weights` argument before any work is done."""
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "`weights` must be None or the path of a `.weights.h5` or `.keras` file, "
            f"got {weights!r}."
        )
    path = os.fspath(weights)
    if not (path.endswith(".weights.h5") or path.endswith(".keras")):
        raise ValueError(
            f"`weights` must be a `.weights.h5` or `.keras` file, got {path!r} "
            "(there are no downloadable pretrained weights; the authors' PyTorch "
            "checkpoints load with `keras_irevnet.load_official_weights`)."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`weights` file not found: {path!r}.")


def load_weights_file(model, path, include_top, classes):
    """Loads `path` into `model`, first checking that its classifier matches the model's."""
    path = os.fspath(path)
    saved_classes = _classifier_classes(path)
    if include_top and saved_classes is None:
        raise ValueError(
            f"The weights file {path!r} has no classifier (it was saved with "
            "include_top=False); build the model with include_top=False to load it."
        )
    if not include_top and saved_classes is not None:
        raise ValueError(
            f"The weights file {path!r} has a classifier for {saved_classes} classes; build "
            f"the model with include_top=True, classes={saved_classes} to load it."
        )
    if include_top and saved_classes != classes:
        raise ValueError(
            f"The weights file {path!r} has a classifier for {saved_classes} classes, but "
            f"the model was built with classes={classes}; pass classes={saved_classes}."
        )
    try:
        model.load_weights(path)
    except ValueError as error:
        raise ValueError(
            f"The weights file {path!r} does not fit the model {model.name!r} "
            f"(a different architecture?): {error}"
        ) from None

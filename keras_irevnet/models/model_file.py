"""Loading an i-RevNet saved as a `.keras` file, with errors that name the file."""

import os

import keras

from keras_irevnet.models.irevnet import IRevNet
from keras_irevnet.models.weights_file import check_file_exists, read_saved_architecture


def load_irevnet(path, compile=False):
    """The `IRevNet` saved in the `.keras` file `path` (`keras.saving.load_model`, checked).

    Args:
        path: a `.keras` file written by `model.save` (e.g. the training program's
            `model.keras`).
        compile: whether to restore the compile state too (the programs do not need it).

    Raises:
        ValueError: one line naming `path` when it is missing, not a `.keras` archive (a
            truncated or foreign file), cannot be deserialised, or holds a model other than
            an i-RevNet.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"{path!r} is not a `.keras` file (the format `model.save` writes).")
    check_file_exists(path, "model")
    read_saved_architecture(path)  # a damaged archive is named here, not as "not found"
    try:
        model = keras.saving.load_model(path, compile=compile)
    except Exception as error:  # deserialisation: whatever Keras or the archive raises
        text = str(error).strip().splitlines()
        raise ValueError(
            f"{path!r} could not be loaded as a Keras model: {type(error).__name__}: "
            f"{text[0] if text else ''}"
        ) from None
    if not isinstance(model, IRevNet):
        raise ValueError(
            f"{path!r} holds a {type(model).__name__}, not an i-RevNet "
            "(keras_irevnet.IRevNet): it has no features or inverse."
        )
    return model

"""The input normalisation the reference models were trained with, and its inverse."""

import numpy as np
from keras import ops

# Per-channel (RGB) statistics of the authors' training code (docs/reference.md, "Training
# recipes"), for pixels scaled to [0, 1].
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


def decode_predictions(preds, top=5):
    """The `top` classes of each ImageNet prediction, as Keras Applications decode them.

    This is `keras.applications.imagenet_utils.decode_predictions` (the function every Keras
    ImageNet model's `decode_predictions` is): a list per image of (WordNet id, class name,
    score) tuples, best first. Keras downloads its class list (`imagenet_class_index.json`)
    once into the Keras cache. Offline, without that file, the names are unknown: each tuple
    is then (WordNet id, WordNet id, score), the ids taken from tensorflow-datasets' own
    imagenet2012 label file (the same class order), with a warning.

    Args:
        preds: class scores of shape (batch, 1000) (probabilities or logits).
        top: how many classes per image.

    Raises:
        ValueError: `preds` is not (batch, 1000) or `top` is not in [1, 1000].
    """
    import keras

    preds = np.asarray(keras.ops.convert_to_numpy(preds))
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "decode_predictions expects the scores of a batch of images over the 1000 "
            f"ImageNet classes, shape (batch, 1000); got shape {preds.shape}."
        )
    if not isinstance(top, int) or not 1 <= top <= 1000:
        raise ValueError(f"decode_predictions: `top` must be in [1, 1000], got {top!r}.")
    try:
        return keras.applications.imagenet_utils.decode_predictions(preds, top=top)
    except Exception as error:  # no network and no cached class list: Keras' URL error
        import warnings

        warnings.warn(
            f"ImageNet class names are not available ({error}); decode_predictions gives "
            "WordNet ids instead. Keras downloads them once "
            "(keras.applications.imagenet_utils.decode_predictions) on a connected machine.",
            stacklevel=2,
        )
    ids = _wordnet_ids()
    decoded = []
    for scores in preds:
        best = np.argsort(scores)[::-1][:top]
        decoded.append([(ids[i], ids[i], scores[i]) for i in best])
    return decoded


def _wordnet_ids():
    """The 1000 ImageNet WordNet ids in class order, from tensorflow-datasets (offline)."""
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

    with open(imagenet_common.label_names_file()) as stream:
        return stream.read().split()

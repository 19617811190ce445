"""Pretrained ImageNet weights the Keras Applications way: `IRevNetBijective(weights="imagenet")`.

The authors published one ImageNet checkpoint, of the bijective model (their README: 74.018 %
top-1 and 91.590 % top-5 on the ILSVRC-2012 validation set, resize 256 and centre crop 224).
The first use downloads it with `keras.utils.get_file` into the Keras cache
(`$KERAS_HOME`, default `~/.keras`, folder `keras_irevnet/`), checks that it is that
checkpoint, converts it once with `load_official_weights` (which needs torch) and caches the
converted `.weights.h5` beside it. Later uses read the converted file: neither the network
nor torch is needed again.

The environment variable `KERAS_IREVNET_WEIGHTS_URL` replaces the source URL (a mirror, a file
on an offline machine: `file:///data/i-revnet-301.pth.tar`). The default URL has not been
tested from the machines this package is developed on (they cannot reach it); docs/reference.md
and the README say how to check the result.
"""

import os
import urllib.parse

from keras_irevnet import _compat, atomic

URL_VARIABLE = "KERAS_IREVNET_WEIGHTS_URL"
# The authors' Google Drive file (their README's link, id 1eQtZIpmtVM0-JDv_2nx3xMuGKjA1beLF),
# through Drive's direct-download endpoint (a large file otherwise gets a confirmation page).
IMAGENET_URL = (
    "https://drive.usercontent.google.com/download?"
    "id=1eQtZIpmtVM0-JDv_2nx3xMuGKjA1beLF&export=download&confirm=t"
)
CHECKPOINT_FILE = "i-revnet-301.pth.tar"
CONVERTED_FILES = {
    True: "irevnet_bijective_imagenet.weights.h5",
    False: "irevnet_bijective_imagenet_notop.weights.h5",
}
CACHE_SUBDIR = "keras_irevnet"
# The presets with published weights, by `weights` name.
PUBLISHED = {"bijective": ("imagenet",)}
WEIGHT_NAMES = ("imagenet",)


def cache_directory():
    """Where the checkpoint and its conversions are kept: `$KERAS_HOME/keras_irevnet`."""
    return os.path.join(_compat.keras_home(), CACHE_SUBDIR)


def source_url():
    """The checkpoint's URL: `$KERAS_IREVNET_WEIGHTS_URL` if set, else the authors' file."""
    return os.environ.get(URL_VARIABLE) or IMAGENET_URL


def check_weights_request(preset, weights, include_top, classes, input_shape):
    """The Keras Applications rules for `weights="imagenet"`, before anything is built."""
    if weights not in PUBLISHED.get(preset, ()):
        published = ", ".join(f"{name} ({', '.join(w)})" for name, w in PUBLISHED.items())
        raise ValueError(
            f"`weights={weights!r}`: the {preset!r} i-RevNet has no published weights (the "
            f"authors released weights for: {published}). Pass weights=None, the path of a "
            "`.weights.h5` / `.keras` file, or load an authors' checkpoint with "
            "`keras_irevnet.load_official_weights`."
        )
    if include_top and classes != 1000:
        raise ValueError(
            f'`weights="{weights}"` with `include_top=True` needs `classes=1000` (the '
            f"ImageNet classes), got classes={classes!r}."
        )
    if input_shape is not None:
        shape = tuple(input_shape)
        if include_top and shape != (224, 224, 3):
            raise ValueError(
                f'`weights="{weights}"` with `include_top=True` needs `input_shape=(224, 224, '
                f"3)`, the size the classifier was trained at; got {shape}. Other sizes work "
                "with include_top=False."
            )
        if len(shape) != 3 or shape[-1] != 3:
            raise ValueError(
                f'`weights="{weights}"` needs RGB images: `input_shape` must end in 3 '
                f"channels, got {shape}."
            )


def imagenet_weights_file(include_top=True):
    """The converted ImageNet weights (with or without the classifier), made on first use.

    Returns:
        The path of a `.weights.h5` file for `IRevNetBijective(include_top=include_top)`.

    Raises:
        ValueError: the download is not the authors' checkpoint (an HTML page, a truncated
            or foreign file); nothing is cached then.
        ImportError: the checkpoint must be converted and torch is not installed.
    """
    directory = cache_directory()
    converted = os.path.join(directory, CONVERTED_FILES[include_top])
    if os.path.isfile(converted):
        return converted
    full = os.path.join(directory, CONVERTED_FILES[True])
    if not os.path.isfile(full):
        _convert(_checkpoint(directory), full)
    if not include_top:
        _drop_the_classifier(full, converted)
    return converted


def _checkpoint(directory):
    """The authors' checkpoint in the cache: downloaded (under a temporary name, checked,
    then renamed) unless it is there already."""
    import keras

    path = os.path.join(directory, CHECKPOINT_FILE)
    if os.path.isfile(path):
        return path
    url = source_url()
    atomic.remove_partials(directory, name=CHECKPOINT_FILE)
    with atomic.atomic_path(path) as temporary:
        keras.utils.get_file(
            fname=os.path.basename(temporary),
            origin=url,
            cache_dir=directory,
            cache_subdir="",
            force_download=True,
        )
        _check_download(temporary, url)
    return path


def _check_download(path, url):
    """ValueError unless `path` is a PyTorch checkpoint holding a state dict."""
    from keras_irevnet.convert import read_state_dict

    with open(path, "rb") as stream:
        start = stream.read(512).lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html")):
        raise ValueError(
            f"The download from {_shown(url)} is an HTML page, not the i-RevNet checkpoint "
            "(a sign-in or confirmation page?); nothing was cached. Download the file by "
            f"hand and point {URL_VARIABLE} at it (file:///path/to/{CHECKPOINT_FILE})."
        )
    try:
        read_state_dict(path)
    except ValueError as error:
        raise ValueError(
            f"The download from {_shown(url)} is not the authors' i-RevNet checkpoint "
            f"({error}); nothing was cached."
        ) from None


def _shown(url):
    parsed = urllib.parse.urlsplit(url)
    return url if parsed.scheme == "file" else f"{parsed.scheme}://{parsed.netloc}{parsed.path}"


def _convert(checkpoint, converted):
    """`load_official_weights` into a full bijective model, saved as `converted`."""
    import keras_irevnet as kir

    try:
        import torch  # noqa: F401  (read_state_dict needs it; checked first for the message)
    except ImportError:
        raise ImportError(
            "IRevNetBijective(weights='imagenet') converts the authors' checkpoint once, which "
            "needs torch (pip install torch). Or convert it where torch is installed "
            "(python -m applications.convert --official_checkpoint="
            f"{checkpoint} --model=bijective --output=...) and copy the result to {converted}."
        ) from None
    model = kir.IRevNetBijective(weights=None)
    kir.load_official_weights(model, checkpoint)
    model.save_weights(converted)


def _drop_the_classifier(full, converted):
    """The weights of `full` without the classifier (for include_top=False models)."""
    import keras

    import keras_irevnet as kir
    from keras_irevnet.models.weights_file import reading_errors

    headless = kir.IRevNetBijective(include_top=False, weights=None)
    # Keras' own loading, with its shape checks: each of the headless model's layers from
    # the group of the same name in `full`, the classifier's groups left unread. (The
    # model's `load_weights` would refuse the file for its classifier.) Building the full
    # model as well, to copy its block stack over, cost TensorFlow another 12-16 s.
    with reading_errors(full, headless.name):
        keras.Model.load_weights(headless, full)
    headless.save_weights(converted)

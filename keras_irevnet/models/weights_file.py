"""Writing `.weights.h5` files with an architecture record; reading and checking
`.weights.h5` and `.keras` files, where every problem is a ValueError naming the file.

Shapes alone do not identify an i-RevNet: a model with psi(2) on 3-channel images and one
without psi on 12-channel images of half the size have the same weight shapes, so Keras would
load one's weights into the other without a word. `IRevNet.save_weights` therefore writes an
architecture record (JSON, attribute `ARCHITECTURE_ATTRIBUTE` on the HDF5 root) into the file,
and loading compares it with the model; a `.keras` file carries the same facts in its
`config.json`. Files without a record (plain Keras, keras_irevnet 0.1) get Keras' own checks.
"""

import contextlib
import io
import json
import os
import zipfile

import h5py

from keras_irevnet import _compat
from keras_irevnet.atomic import atomic_path

ARCHITECTURE_ATTRIBUTE = "keras_irevnet_architecture"
RECORD_VERSION = 1
# What fixes the meaning of the weights. Not the spatial input size (the network is fully
# convolutional: weights trained at 32x32 are valid at 64x64), nor dropout rate or dtype.
ARCHITECTURE_FIELDS = (
    "blocks",
    "strides",
    "channels",
    "init_ds",
    "mult",
    "input_channels",
    "include_top",
    "classes",
)
_FIELD_LABELS = {"input_channels": "input channels"}
# The entry of a `.keras` archive that holds the weights (Keras' own name).
_KERAS_ARCHIVE_WEIGHTS = "model.weights.h5"
_KERAS_ARCHIVE_CONFIG = "config.json"


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def is_local_path(filepath):
    """Whether `filepath` is a path on this machine (not gs://, hf://, ...)."""
    return isinstance(filepath, (str, os.PathLike)) and "://" not in os.fspath(filepath)


# --- the architecture record ---------------------------------------------------------------


def architecture_record(model):
    """The facts about `model` (an IRevNet) that decide which weights file fits it."""
    return _normalized(
        {
            "version": RECORD_VERSION,
            "blocks": model.stage_blocks,
            "strides": model.stage_strides,
            "channels": model.stage_channels,
            "init_ds": model.init_ds,
            "mult": model.mult,
            "input_channels": model.image_shape[-1],
            "include_top": model.include_top,
            "classes": model.classes if model.include_top else None,
        }
    )


def record_from_config(config):
    """The architecture record of an IRevNet config (`get_config()`), or None if `config`
    is not one."""
    needed = ("blocks", "strides", "channels", "init_ds", "input_shape")
    if not isinstance(config, dict) or not all(key in config for key in needed):
        return None
    include_top = config.get("include_top", True)
    return _normalized(
        {
            "version": RECORD_VERSION,
            "blocks": config["blocks"],
            "strides": config["strides"],
            "channels": config["channels"],
            "init_ds": config["init_ds"],
            "mult": config.get("mult", 4),
            "input_channels": config["input_shape"][-1],
            "include_top": include_top,
            "classes": config.get("classes", 1000) if include_top else None,
        }
    )


def _normalized(record):
    # Tuples and lists compare equal only after the same JSON round trip.
    return json.loads(json.dumps(record))


def write_weights_file(model, path, record, add_to_file=None):
    """Writes `model`'s weights, with the architecture `record`, as a `.weights.h5` file.

    The HDF5 file is built in memory (as Keras builds the weights of a `.keras` file) and
    written with one plain file write: when a write fails (full disk, file-size limit), HDF5's
    own file driver can crash the process on close, leaving the temporary behind, while a
    plain write raises an OSError that `atomic_path` answers by removing it.

    `add_to_file(h5_file)`, if given, adds more to the file before it is written (the
    training program's checkpoints add their training state).
    """

    def add_record(h5_file):
        h5_file.attrs[ARCHITECTURE_ATTRIBUTE] = json.dumps(record)
        if add_to_file is not None:
            add_to_file(h5_file)

    data = _compat.weights_h5_bytes(model, add_to_file=add_record)
    with open(path, "wb") as stream:
        stream.write(data)


def _parse_record(text, path):
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        record = json.loads(text)
    except (TypeError, ValueError):
        record = None
    if not isinstance(record, dict):
        raise ValueError(
            f"The weights file {path!r} has a damaged architecture record "
            f"({ARCHITECTURE_ATTRIBUTE!r} is not a JSON object)."
        )
    return record


def check_same_architecture(model_record, saved_record, path, model_name):
    """Raises a ValueError naming every field in which the file's network differs."""
    different = [
        field
        for field in ARCHITECTURE_FIELDS
        if field in saved_record and saved_record[field] != model_record[field]
    ]
    if "include_top" in different or not model_record["include_top"]:
        different = [field for field in different if field != "classes"]
    if not different:
        return
    details = "; ".join(
        f"{_FIELD_LABELS.get(field, field)} {_show(saved_record[field])} in the file vs "
        f"{_show(model_record[field])} in the model"
        for field in different
    )
    raise ValueError(
        f"The weights file {path!r} holds a different i-RevNet than the model "
        f"{model_name!r}: {details}. Build the model with the file's values to load it."
    )


def _show(value):
    return tuple(value) if isinstance(value, list) else value


# --- reading files -------------------------------------------------------------------------


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
    if path == "imagenet":
        raise ValueError(
            '`weights="imagenet"` is a preset\'s published weights: use '
            'IRevNetBijective(weights="imagenet") or IRevNet.from_preset("bijective", '
            'weights="imagenet").'
        )
    if not (path.endswith(".weights.h5") or path.endswith(".keras")):
        raise ValueError(
            f"`weights` must be None, 'imagenet' (with a preset that has published weights) or "
            f"a `.weights.h5` or `.keras` file, got {path!r} (the authors' PyTorch "
            "checkpoints load with `keras_irevnet.load_official_weights`)."
        )
    check_file_exists(path, "`weights`")


def check_file_exists(path, what="weights"):
    """A ValueError (the type Keras Applications raise) when `path` is not a file."""
    if not os.path.isfile(path):
        state = "is a directory, not a file" if os.path.isdir(path) else "not found"
        raise ValueError(f"{what} file {state}: {path!r}.")


def _unreadable(path, error, expected):
    return ValueError(f"{path!r} is not a readable {expected}: {_first_line(error)}.")


@contextlib.contextmanager
def _opened_archive(path):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise _unreadable(path, error, "`.keras` file (a zip archive)") from None
    with archive:
        yield archive


def _archive_member(archive, name, path):
    try:
        return archive.read(name)
    except KeyError:
        raise ValueError(
            f"{path!r} is not a Keras model file: the archive has no {name!r}."
        ) from None
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as error:
        raise _unreadable(path, error, "`.keras` file") from None


@contextlib.contextmanager
def open_weights_h5(path):
    """The HDF5 weights of a `.weights.h5` file, or of a `.keras` archive, opened for reading.

    Raises a one-line ValueError naming `path` if it is missing, not HDF5 (or not a zip
    archive for `.keras`), truncated, or holds no Keras weights; every object header is read
    once, so damaged metadata shows here rather than halfway through loading.
    """
    path = os.fspath(path)
    check_file_exists(path)
    if path.endswith(".keras"):
        with _opened_archive(path) as archive:
            source = io.BytesIO(_archive_member(archive, _KERAS_ARCHIVE_WEIGHTS, path))
    else:
        source = path
    expected = "Keras weights file (HDF5, as `save_weights` writes)"
    try:
        h5 = h5py.File(source, "r")
    except (OSError, ValueError, RuntimeError) as error:
        raise _unreadable(path, error, expected) from None
    with h5:
        try:
            h5.visit(lambda name: _touch(h5, name))
        except (OSError, KeyError, ValueError, RuntimeError) as error:
            raise _unreadable(path, error, expected) from None
        if not any(group in h5 for group in ("layers", "vars")):
            hint = " (a Keras 2 `.h5` file?)" if "layer_names" in h5.attrs else ""
            raise ValueError(
                f"{path!r} holds no Keras weights{hint}: expected the `layers` / `vars` "
                "groups that `model.save_weights` writes."
            )
        yield h5


def _touch(h5, name):
    h5[name].attrs.keys()  # reads the object header; returns None so that visit goes on


def read_saved_architecture(path):
    """The architecture record of a `.weights.h5` or `.keras` file, or None if it has none.

    For a `.weights.h5` file this also checks that it is readable (see `open_weights_h5`);
    a `.keras` file's record comes from its `config.json`, without reading the weights.
    """
    path = os.fspath(path)
    if path.endswith(".keras"):
        check_file_exists(path)
        with _opened_archive(path) as archive:
            config = _archive_member(archive, _KERAS_ARCHIVE_CONFIG, path)
        try:
            config = json.loads(config)
        except ValueError as error:
            raise _unreadable(path, error, "`.keras` file (its config.json)") from None
        return record_from_config(config.get("config") if isinstance(config, dict) else None)
    with open_weights_h5(path) as h5:
        text = h5.attrs.get(ARCHITECTURE_ATTRIBUTE)
    return None if text is None else _parse_record(text, path)


def _classifier_classes(h5):
    """The class count of the classifier saved in `h5`, or None if it holds no classifier.

    An i-RevNet file has exactly one 2-D array, the Dense kernel (convolutions are 4-D and
    BatchNorm vectors 1-D), so its last dimension is the number of classes.
    """
    shapes = []
    h5.visititems(
        lambda _, obj: (
            shapes.append(obj.shape)
            if isinstance(obj, h5py.Dataset) and len(obj.shape) == 2
            else None
        )
    )
    return shapes[0][1] if shapes else None


def load_weights_file(model, path, include_top, classes):
    """Loads `path` into `model`, first checking that its classifier matches the model's.

    Every problem (missing or unreadable file, other classifier, other architecture, other
    shapes) is a ValueError naming the file.
    """
    path = os.fspath(path)
    with open_weights_h5(path) as h5:
        saved_classes = _classifier_classes(h5)
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
    model.load_weights(path)


@contextlib.contextmanager
def reading_errors(path, model_name):
    """Turns what Keras and h5py raise while loading `path` into a ValueError naming it."""
    try:
        yield
    except ValueError as error:
        raise ValueError(
            f"The weights file {path!r} does not fit the model {model_name!r} "
            f"(a different architecture?): {error}"
        ) from None
    except (OSError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise _unreadable(path, error, "Keras weights file") from None


# --- the model's saving methods ------------------------------------------------------------


class SafeWeightsFiles:
    """`save`, `save_weights` and `load_weights` of `IRevNet`: atomic, recorded, checked.

    A mixin for a `keras.Model` with the IRevNet attributes `architecture_record` reads.
    Targets Keras handles differently (sharded, remote, unzipped, legacy `.h5`) keep Keras'
    own behaviour.
    """

    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        """Saves the model as a `.keras` file (see `keras.Model.save`), atomically.

        A local `.keras` file is written under a temporary name in the same directory and
        renamed into place once complete: a failed or interrupted write never leaves a
        partial file, nor replaces a good one.
        """
        path = os.fspath(filepath) if is_local_path(filepath) else None
        if path is None or zipped is False or not path.endswith(".keras"):
            return super().save(filepath, overwrite=overwrite, zipped=zipped, **kwargs)
        if _may_write(path, overwrite):
            with atomic_path(path) as temporary:
                super().save(temporary, overwrite=True, zipped=zipped, **kwargs)

    def save_weights(self, filepath, overwrite=True, max_shard_size=None):
        """Saves the weights to a `.weights.h5` file (see `keras.Model.save_weights`).

        The file also holds this model's architecture record (blocks, strides, channels,
        init_ds, mult, input channels, include_top, classes), which `load_weights` compares
        with the model it loads into. It is written atomically: under a temporary name in the
        same directory, renamed into place once complete.
        """
        path = os.fspath(filepath) if is_local_path(filepath) else None
        if path is None or max_shard_size is not None or not path.endswith(".weights.h5"):
            return super().save_weights(
                filepath, overwrite=overwrite, max_shard_size=max_shard_size
            )
        if _may_write(path, overwrite):
            with atomic_path(path) as temporary:
                write_weights_file(self, temporary, architecture_record(self))

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Loads weights from a `.weights.h5` or `.keras` file (see `keras.Model.load_weights`).

        Before anything is assigned, the file's architecture record (or, in a `.keras` file,
        its model config) is compared with this model; files saved by plain Keras or
        keras_irevnet 0.1 have none and get Keras' shape checks only. With
        `skip_mismatch=True` the comparison is skipped (partial loading is then the point).

        Raises:
            ValueError: the file is missing or unreadable (not HDF5, truncated, damaged), or
                holds a different i-RevNet (every differing field is named, with the file's
                and the model's values), or its weights do not fit the model.
        """
        path = os.fspath(filepath) if is_local_path(filepath) else None
        if path is None or not path.endswith((".weights.h5", ".keras")):
            if path is not None and path.endswith(".weights.json"):
                check_file_exists(path)
            return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        saved = read_saved_architecture(path)
        if saved is not None and not skip_mismatch:
            check_same_architecture(architecture_record(self), saved, path, self.name)
        with reading_errors(path, self.name):
            super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)


def _may_write(path, overwrite):
    """Keras' rule: an existing file is replaced if `overwrite`, else only if the user agrees."""
    return overwrite or not os.path.exists(path) or _compat.ask_to_proceed_with_overwrite(path)

"""Atomic writes: a file or a directory appears complete under its name, or not at all.

Every file the package and its programs write (model files, weights, checkpoints, JSON,
histories, exports) goes through this module. Each is written to a hidden temporary sibling
(same directory, hence the same file system) and renamed into place once complete, so a
process killed at any moment, a full disk or a file-size limit never leaves a truncated file
under the real name, and never replaces a good file with a bad one. Temporaries carry
`.partial-` in their name; `remove_partials` clears what a killed writer left behind.
"""

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import uuid

import numpy as np

PARTIAL_MARK = ".partial-"
_PARTIAL_NAME = re.compile(r"^\..+\.partial-[A-Za-z0-9_]+")


def _split_extension(name):
    """("model", ".keras"), ("epoch-0001", ".weights.h5"): writers such as Keras' `save`
    check the whole extension, so a temporary name must keep it."""
    hidden = name[: len(name) - len(name.lstrip("."))]
    stem, dot, extension = name[len(hidden) :].partition(".")
    return hidden + stem, dot + extension


def _fsync_directory(directory):
    # The rename itself must survive a power cut, not only the file's bytes.
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _read_umask():
    # Setting and restoring the umask is the only portable way to read it; done once, at
    # import, so no other thread creates files in the moment it is 0.
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _default_mode(directory):
    # mkstemp / mkdtemp create private (0600 / 0700) entries; a finished file gets the
    # permissions `open` would have given it under the process' umask.
    return (0o777 if directory else 0o666) & ~_UMASK


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def atomic_path(path, *, directory=False):
    """Yields a temporary path to write `path` through; it becomes `path` if the block succeeds.

    For writers that take a path (`model.save`, `model.save_weights`, `np.save`, an exporter).
    The temporary keeps `path`'s extension and sits in the same directory, which is created if
    needed. On success the file is flushed to disk and renamed over `path` in one step; on any
    error (or interruption) the temporary is removed and `path` keeps its previous content.

    Args:
        path: the final file (or directory) path.
        directory: True when the writer creates a directory. `path` must then not exist or be
            an empty directory (a non-empty one cannot be replaced in one step).

    Yields:
        The temporary path (for a file, an empty file already exists there).
    """
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    stem, extension = _split_extension(name)
    if directory:
        temporary = tempfile.mkdtemp(prefix=f".{stem}{PARTIAL_MARK}", suffix=extension, dir=parent)
    else:
        handle, temporary = tempfile.mkstemp(
            prefix=f".{stem}{PARTIAL_MARK}", suffix=extension, dir=parent
        )
        os.close(handle)
    os.chmod(temporary, _default_mode(directory))
    try:
        yield temporary
        if directory:
            if os.path.isdir(path):
                os.rmdir(path)  # empty (os.rmdir refuses otherwise): a rename needs it gone
        else:
            with open(temporary, "rb+") as written:
                os.fsync(written.fileno())
        os.replace(temporary, path)
        _fsync_directory(parent)
    except BaseException:
        _remove(temporary)
        raise


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """`open(path, mode)` whose content replaces `path` only once the block completes."""
    if not any(flag in mode for flag in "wx"):
        raise ValueError(
            f"atomic_open writes a whole file: mode must be 'w' or 'wb', got {mode!r}."
        )
    with atomic_path(path) as temporary:
        with open(temporary, mode, **kwargs) as stream:
            yield stream


def finite_or_none(value):
    """`value` with every NaN and infinity (floats, NumPy scalars, nested) replaced by None.

    JSON has no NaN: Python's `json` writes a bare `NaN`, which other readers reject.
    """
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if isinstance(value, np.ndarray):
        return finite_or_none(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path, payload, indent=2):
    """Writes `payload` as standard JSON (NaN and infinities become null), atomically.

    Returns `path`.
    """
    text = json.dumps(finite_or_none(payload), indent=indent, allow_nan=False, sort_keys=False)
    with atomic_open(path, "w") as stream:
        stream.write(text + "\n")
    return path


def read_json(path, what=None):
    """The JSON object in `path`; a ValueError naming the file when it is not readable JSON.

    Args:
        path: the file.
        what: a phrase telling the user what to do about a broken file (appended to the error).
    """
    try:
        with open(path) as stream:
            return json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        hint = f" {what}" if what else ""
        raise ValueError(f"{path} is not valid JSON ({error}).{hint}") from None


def discard(path):
    """Removes the file or directory `path` so that a kill half-way leaves only a temporary.

    It is renamed to a temporary sibling name first (one rename: `path` is gone at once) and
    then deleted; what a kill during the deletion leaves is cleared by `remove_partials`.
    """
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    stem, extension = _split_extension(name)
    doomed = os.path.join(parent, f".{stem}{PARTIAL_MARK}{uuid.uuid4().hex}{extension}")
    os.rename(path, doomed)
    _remove(doomed)


def is_partial(name):
    """Whether a file name is a temporary of `atomic_path` (a leftover if its writer died)."""
    return bool(_PARTIAL_NAME.match(name))


def remove_partials(directory, name=None):
    """Removes what killed writers left in `directory`: temporaries of `atomic_path`.

    Args:
        directory: the directory to clean (nothing happens if it does not exist).
        name: only the temporaries of this final name (e.g. "model.keras"); all if None.
            Only one process should write a given path at a time: a temporary another
            process is still writing looks like a leftover.

    Returns:
        The removed paths.
    """
    if not os.path.isdir(directory):
        return []

    def of_name(entry):
        if name is None:
            return True
        stem, extension = _split_extension(os.path.basename(name))
        rest = entry[len(f".{stem}{PARTIAL_MARK}") :]
        return entry.startswith(f".{stem}{PARTIAL_MARK}") and (
            rest.endswith(extension) and "." not in rest[: len(rest) - len(extension)]
        )

    removed = []
    for entry in os.listdir(directory):
        if is_partial(entry) and of_name(entry):
            _remove(os.path.join(directory, entry))
            removed.append(os.path.join(directory, entry))
    return removed

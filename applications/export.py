r"""Exports an i-RevNet as a TensorFlow SavedModel (serve / features / inverse) and ONNX.

From a `.keras` file (for example the `model.keras` that applications/train.py writes):

    python -m applications.export --model_path=runs/cifar/model.keras \
        --saved_model_dir=export/cifar --onnx_path=export/cifar_onnx

From a `.weights.h5` file or the authors' PyTorch checkpoint, with the architecture:

    python -m applications.export --official_checkpoint=i-revnet-301.pth.tar \
        --model=bijective --saved_model_dir=export/bijective

The export always runs in a TensorFlow-backend process (Keras traces SavedModels and tf2onnx
graphs there), whatever KERAS_BACKEND says: a model trained on torch or JAX is saved as
`.keras` and exported from TensorFlow; the `.keras` format is backend-independent. When this
module's `run()` is called from a process on another backend, it starts a TensorFlow process
(in the caller's working directory: relative paths always mean the caller's).

Before anything is kept, the export is checked against Keras on a random batch (turn off with
--nocheck): relative errors of each endpoint are printed, and an export that disagrees by more
than --tolerance is not kept. Existing non-empty output directories are refused, except that
rerunning the command of a complete export says so and succeeds.

All or nothing. One run writes up to two directories (the SavedModel and the ONNX graphs),
which no single rename can install together. The commit protocol:

1. Stage: each part is written into a hidden `.NAME.partial-*` directory next to its target
   (`keras_irevnet.atomic.atomic_path`), and the check runs on the staged files.
2. Mark: each staged part receives a manifest, `keras_irevnet_export.json`: an export id
   shared by both parts, both target paths, the source file with its size, mtime and
   SHA-256, the model arguments, the endpoints and the check's errors.
3. Commit: the parts are renamed into place, the ONNX directory first and the SavedModel last.
   An export is complete when every target it names holds a manifest with its export id.

A kill during 1 or 2 leaves only partial directories; a kill between the two renames leaves
an ONNX directory whose SavedModel is missing: an incomplete export, identifiably ours. So
every run starts by repairing: it removes the partial directories next to its targets, and
removes a target whose manifest names exactly this run's targets but whose export is
incomplete (renamed to a partial name first, so that a kill while deleting it leaves nothing
but a partial directory). Then, if the targets hold a complete export of the same source file
(same SHA-256) and arguments, it prints that it is already exported and succeeds; any other
non-empty target is refused, and nothing of the user's is ever removed.
"""

import contextlib
import datetime
import hashlib
import json
import os
import subprocess
import sys
import uuid

if __name__ == "__main__":
    # Before Keras is imported: the backend is fixed at import time and only TensorFlow can
    # trace a SavedModel for every model (see the module docstring).
    os.environ["KERAS_BACKEND"] = "tensorflow"

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from applications.models import (  # noqa: E402
    define_model_flags,
    load_model,
    parse_model_arguments,
)
from keras_irevnet.atomic import discard  # noqa: E402

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The manifest each part of an export holds (see the module docstring).
MANIFEST_FILE = "keras_irevnet_export.json"
_MANIFEST_FORMAT = "keras_irevnet export"
_MANIFEST_VERSION = 1
# The parts of an export, in the order they are renamed into place. The SavedModel, which
# every export has, goes last: a SavedModel in place means that the whole export is.
COMMIT_ORDER = ("onnx", "saved_model")
_PART_FLAGS = {"saved_model": "--saved_model_dir", "onnx": "--onnx_path"}
_PART_NAMES = {"saved_model": "SavedModel", "onnx": "ONNX graphs"}


def _check_arguments(
    saved_model_dir, model_path, official_checkpoint, model, model_config, onnx_path
):
    """Checks every argument before any slow work; raises ValueError / FileNotFoundError /
    FileExistsError naming the flag. Occupied targets are refused later, by
    `_refuse_occupied_targets`, once what killed runs left there is cleared."""
    if not saved_model_dir:
        raise ValueError("--saved_model_dir is required: the directory to write the SavedModel to.")
    if bool(model_path) == bool(official_checkpoint):
        raise ValueError(
            "Give exactly one of --model_path (a .keras file, or a .weights.h5 file with "
            "--model) and --official_checkpoint (the authors' PyTorch checkpoint, with --model); "
            f"got model_path={model_path!r}, official_checkpoint={official_checkpoint!r}."
        )
    source = model_path or official_checkpoint
    flag = "--model_path" if model_path else "--official_checkpoint"
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{flag}: file not found: {source!r}.")
    if model_path and not model_path.endswith((".keras", ".weights.h5")):
        raise ValueError(
            f"--model_path must be a .keras file or a .weights.h5 file, got {model_path!r} "
            "(for the authors' PyTorch checkpoint use --official_checkpoint)."
        )
    if model_path and model_path.endswith(".keras"):
        if model is not None or model_config:
            raise ValueError(
                "--model and --model_config are not used with a .keras --model_path (the file "
                "holds its architecture); remove them."
            )
    else:
        parse_model_arguments(model, model_config)  # .weights.h5 / checkpoint: name needed
    if onnx_path:
        saved_model_dir, onnx_path = os.path.abspath(saved_model_dir), os.path.abspath(onnx_path)
        if os.path.commonpath([saved_model_dir, onnx_path]) in (saved_model_dir, onnx_path):
            # One inside the other: renaming one part into place would fill the other's target.
            raise ValueError(
                "--onnx_path and --saved_model_dir must be different directories, neither "
                f"inside the other; got {saved_model_dir!r} and {onnx_path!r}."
            )


def _relative_error(a, b):
    a = np.asarray(a, dtype="float64")
    b = np.asarray(b, dtype="float64")
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def check_export(keras_model, saved_model_dir, onnx_path=None, batch_size=2, seed=0):
    """Relative errors of the exported endpoints against Keras, on a random normal batch.

    Returns {(format, endpoint): error}; endpoints serve, features, inverse (of the Keras
    Phi(x)) and roundtrip (||x - inverse(features(x))|| / ||x|| through the export only).
    """
    import keras
    import tensorflow as tf

    images = (
        np.random.default_rng(seed)
        .standard_normal((batch_size,) + tuple(keras_model.image_shape))
        .astype(keras_model.inputs[0].dtype)
    )
    output = keras.ops.convert_to_numpy(keras_model(images, training=False))
    features = keras.ops.convert_to_numpy(keras_model.features(images))
    reconstruction = keras.ops.convert_to_numpy(keras_model.inverse(features))

    errors = {}
    loaded = tf.saved_model.load(saved_model_dir)
    errors["SavedModel", "serve"] = _relative_error(loaded.serve(images), output)
    errors["SavedModel", "features"] = _relative_error(loaded.features(images), features)
    errors["SavedModel", "inverse"] = _relative_error(loaded.inverse(features), reconstruction)
    errors["SavedModel", "roundtrip"] = _relative_error(
        loaded.inverse(loaded.features(images)), images
    )
    if onnx_path:
        try:
            import onnxruntime
        except ImportError:
            print("ONNX check not run: onnxruntime is not installed (pip install onnxruntime).")
            return errors
        from keras_irevnet.export import ONNX_FORWARD_FILE, ONNX_INVERSE_FILE

        forward = onnxruntime.InferenceSession(os.path.join(onnx_path, ONNX_FORWARD_FILE))
        inverse = onnxruntime.InferenceSession(os.path.join(onnx_path, ONNX_INVERSE_FILE))
        onnx_output, onnx_features = forward.run(["output", "features"], {"images": images})
        (onnx_inverse,) = inverse.run(["images"], {"features": features})
        (onnx_roundtrip,) = inverse.run(["images"], {"features": onnx_features})
        errors["ONNX", "serve"] = _relative_error(onnx_output, output)
        errors["ONNX", "features"] = _relative_error(onnx_features, features)
        errors["ONNX", "inverse"] = _relative_error(onnx_inverse, reconstruction)
        errors["ONNX", "roundtrip"] = _relative_error(onnx_roundtrip, images)
    return errors


def _print_errors(errors):
    print("Relative error against Keras (random normal batch of 2):")
    for (fmt, endpoint), error in errors.items():
        print(f"  {fmt:<10} {endpoint:<9} {error:.2e}")


def _raise_if_beyond(errors, tolerance):
    bad = {key: e for key, e in errors.items() if not e <= tolerance}
    if bad:
        raise RuntimeError(
            f"the export disagrees with Keras beyond --tolerance={tolerance}: "
            + ", ".join(f"{f} {n}: {e:.2e}" for (f, n), e in bad.items())
            + "; nothing was written."
        )


# --- Paths -----------------------------------------------------------------------------------


def _absolute(path):
    """`path` made absolute against this process's working directory (None / "" unchanged)."""
    return os.path.abspath(path) if path else path


def export_targets(saved_model_dir, onnx_path=None):
    """{part: absolute target directory} of one export: "saved_model", and "onnx" if given."""
    targets = {"saved_model": os.path.abspath(saved_model_dir)}
    if onnx_path:
        targets["onnx"] = os.path.abspath(onnx_path)
    return targets


# --- Manifests -------------------------------------------------------------------------------


def _fingerprint(path):
    """Size, modification time and SHA-256 of a file: what tells one source file from another.

    The SHA-256 decides (a copied or re-saved identical file is the same source); size and
    mtime are recorded for people reading the manifest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    status = os.stat(path)
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "sha256": digest.hexdigest()}


def export_identity(
    model_path=None, official_checkpoint=None, model=None, model_config=None, opset=None
):
    """What an export is an export of: the source file (path and fingerprint) and the
    arguments that shape the exported graphs. Reads the whole source file (its SHA-256)."""
    flag = "--model_path" if model_path else "--official_checkpoint"
    source = os.path.abspath(model_path or official_checkpoint)
    return {
        "source": {"flag": flag, "path": source, **_fingerprint(source)},
        "model": model,
        "model_config": json.loads(model_config) if model_config else None,
        "opset": opset,
    }


def _same_identity(recorded, identity):
    """Whether two identities describe the same export (the source path may differ)."""

    def essentials(entry):
        source = entry.get("source") or {}
        return (
            source.get("flag"),
            source.get("size"),
            source.get("sha256"),
            entry.get("model"),
            entry.get("model_config"),
            entry.get("opset"),
        )

    return essentials(recorded) == essentials(identity)


def new_manifest(targets, identity):
    """The manifest of a new export to `targets` (without its `part` and `check`)."""
    import keras

    return {
        "format": _MANIFEST_FORMAT,
        "version": _MANIFEST_VERSION,
        "export_id": uuid.uuid4().hex,
        "part": None,  # which of `parts` holds this copy: set by staged_export
        "parts": dict(targets),
        **identity,
        "endpoints": {
            "saved_model": ["serve", "features", "inverse"],
            "onnx": ["forward.onnx", "inverse.onnx"],
        },
        "check": None,
        "keras_version": keras.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def read_manifest(directory):
    """The export manifest in `directory`; None if it holds none (or none of ours)."""
    from keras_irevnet.atomic import read_json

    path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.isfile(path):
        return None
    try:
        manifest = read_json(path)
    except (ValueError, OSError):
        return None  # manifests are written atomically: a broken one was not written by us
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
        return None
    if not isinstance(manifest.get("parts"), dict) or not manifest.get("export_id"):
        return None
    return manifest


def is_complete(manifest):
    """Whether every part `manifest` names is in place, holding a manifest of the same export."""
    for part, path in manifest["parts"].items():
        found = read_manifest(path) if isinstance(path, str) else None
        if found is None or found.get("export_id") != manifest["export_id"]:
            return False
        if found.get("part") != part:
            return False
    return True


def recorded_errors(manifest):
    """The check's errors recorded in `manifest`, as `check_export` returns them ({} if none)."""
    check = manifest.get("check") or {}
    return {
        (fmt, endpoint): float("nan") if error is None else error
        for fmt, endpoints in (check.get("errors") or {}).items()
        for endpoint, error in endpoints.items()
    }


def _errors_for_manifest(errors, tolerance):
    nested = {}
    for (fmt, endpoint), error in errors.items():
        nested.setdefault(fmt, {})[endpoint] = error
    return {"tolerance": tolerance, "errors": nested}


# --- Repair, already-exported, refusal -------------------------------------------------------


def clear_interrupted(targets):
    """Removes what killed runs to `targets` left: the partial directories next to each target,
    and targets holding a part of an incomplete export to exactly these targets (a commit cut
    between its renames). Prints and returns the removed paths."""
    from keras_irevnet.export import remove_leftover_partials

    removed = []
    for path in targets.values():
        removed += remove_leftover_partials(path)
    for path in targets.values():
        manifest = read_manifest(path)
        # Only parts of an export to these very targets: an incomplete export that names
        # other directories may be something the user moved, and is refused, not deleted.
        if manifest is not None and manifest["parts"] == targets and not is_complete(manifest):
            discard(path)
            removed.append(path)
    for path in removed:
        print(f"Removed {path}: left by an interrupted export.")
    return removed


def _check_shortfall(manifest, tolerance):
    """Why a recorded export does not meet the check asked for now, and what would accept it
    as it is; None if it meets it."""
    if manifest.get("check") is None:
        return "it was exported with --nocheck", "pass --nocheck"
    worst = max(recorded_errors(manifest).values(), default=0.0)
    if not worst <= tolerance:
        return (
            f"its check found a relative error of {worst:.2e}, beyond --tolerance={tolerance}",
            f"pass --tolerance={worst:.2e} or more",
        )
    return None


def find_existing_export(targets, identity, check=True, tolerance=1e-4):
    """The manifest of the complete export of the same source at `targets`, or None.

    Args:
        targets: {part: absolute directory}, as `export_targets` returns.
        identity: a function returning `export_identity(...)` of this run; called only if the
            targets hold a complete export (it reads the whole source file).
        check, tolerance: this run's check; an export recorded without a check, or beyond
            `tolerance`, does not count as done.

    Raises:
        FileExistsError: the targets hold an export of the same source that does not meet
            this run's check (say what to do, rather than call it done or remove it).
    """
    manifest = read_manifest(targets["saved_model"])
    if manifest is None or manifest["parts"] != targets or not is_complete(manifest):
        return None
    if not _same_identity(manifest, identity()):
        return None
    shortfall = _check_shortfall(manifest, tolerance) if check else None
    if shortfall:
        reason, remedy = shortfall
        raise FileExistsError(
            f"{' and '.join(targets.values())} already hold{'' if len(targets) > 1 else 's'} "
            f"an export of {manifest['source']['path']}, but {reason}. Remove "
            f"{'them' if len(targets) > 1 else 'it'} to export and check again, or {remedy} "
            "to keep it."
        )
    return manifest


def _print_already_exported(manifest):
    errors = recorded_errors(manifest)
    checked = (
        f"checked against Keras: largest relative error {max(errors.values()):.2e}"
        if errors
        else "not checked"
    )
    print(
        f"Already exported: {' and '.join(manifest['parts'].values())} hold a complete export "
        f"of {manifest['source']['path']} (export {manifest['export_id']}, {checked}); nothing "
        "to do. Remove them to export again."
    )


def _refuse_occupied_targets(targets):
    """Raises FileExistsError naming the flag if a target exists and is not an empty
    directory (after the repair, so what is left there is not a leftover of ours)."""
    from keras_irevnet.export import _check_target

    for part, path in targets.items():
        try:
            _check_target(path, _PART_FLAGS[part])
        except FileExistsError as error:
            manifest = read_manifest(path)
            if manifest is None:
                raise
            raise FileExistsError(
                f"{error} It holds the {_PART_NAMES[part]} of an earlier export of "
                f"{manifest.get('source', {}).get('path')} (to "
                f"{' and '.join(manifest['parts'].values())}), which differs from this run's "
                "in its source file, model arguments or directories."
            ) from None


# --- Staging and commit ----------------------------------------------------------------------


@contextlib.contextmanager
def staged_export(targets, manifest):
    """Stages every part of an export next to its target, and commits them all together.

    Yields {part: staging directory}. When the block completes, `manifest` (with the `part`
    added) is written into every staged part (it is read only then, so the block may still add
    to it, e.g. the check's results), and the parts are renamed into place in COMMIT_ORDER: the
    ONNX directory first, the SavedModel last. If the block fails, or a rename does, the
    staging directories, any part already renamed into place and the parent directories
    created for the targets are removed: the exception leaves nothing behind.
    """
    from keras_irevnet.atomic import atomic_path, write_json
    from keras_irevnet.export import removing_created_parents

    with removing_created_parents(*targets.values()):
        try:
            with contextlib.ExitStack() as staging:
                # The ExitStack leaves its atomic paths (committing each) last-in first-out:
                # entered in the reverse of COMMIT_ORDER, they commit in COMMIT_ORDER.
                staged = {
                    part: staging.enter_context(atomic_path(targets[part], directory=True))
                    for part in reversed(COMMIT_ORDER)
                    if part in targets
                }
                yield staged
                for part, directory in staged.items():
                    write_json(os.path.join(directory, MANIFEST_FILE), {**manifest, "part": part})
        except BaseException:
            for path in targets.values():
                committed = read_manifest(path)
                if committed is not None and committed["export_id"] == manifest["export_id"]:
                    discard(path)
            raise


# --- The program -----------------------------------------------------------------------------


def _tensorflow_process_argv(**arguments):
    # -P (Python 3.11+): the caller's working directory, where the child runs, is not put on
    # sys.path, so nothing there can shadow applications/ or keras_irevnet/.
    argv = [
        sys.executable,
        *(["-P"] if sys.version_info >= (3, 11) else []),
        "-m",
        "applications.export",
    ]
    for name, value in arguments.items():
        if isinstance(value, bool):
            argv.append(f"--{'' if value else 'no'}{name}")
        elif value is not None:
            argv.append(f"--{name}={value}")
    return argv


def _export_in_tensorflow_process(targets, **arguments):
    """Runs the export in a TensorFlow-backend child process; returns the recorded errors.

    Every path in `arguments` is absolute already; the child runs in this process's working
    directory, finding this repository through PYTHONPATH.
    """
    # Only the TensorFlow backend can trace every endpoint into a SavedModel (torch cannot at
    # all) and tf2onnx needs TensorFlow graphs: hand over to a TF process.
    argv = _tensorflow_process_argv(
        saved_model_dir=targets["saved_model"], onnx_path=targets.get("onnx"), **arguments
    )
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO_ROOT, env.get("PYTHONPATH")]))
    result = subprocess.run(argv, env=env)
    if result.returncode:
        raise RuntimeError(
            f"the export in the TensorFlow-backend process failed (exit status "
            f"{result.returncode}); its error is printed above."
        )
    manifest = read_manifest(targets["saved_model"])
    return recorded_errors(manifest) if manifest else {}


def _export(keras_model, targets, identity, opset=None, check=True, tolerance=1e-4):
    """Writes, checks and commits the export of `keras_model` (in this TensorFlow process)."""
    from keras_irevnet.export import write_onnx, write_saved_model

    manifest = new_manifest(targets, identity)
    errors = {}
    with staged_export(targets, manifest) as staged:
        write_saved_model(keras_model, staged["saved_model"])
        if "onnx" in staged:
            write_onnx(keras_model, staged["onnx"], opset=opset)
        if check:  # on the staged files: an export that fails it is never in place
            errors = check_export(keras_model, staged["saved_model"], staged.get("onnx"))
            _print_errors(errors)
            _raise_if_beyond(errors, tolerance)
            manifest["check"] = _errors_for_manifest(errors, tolerance)
    print(
        f"SavedModel: {targets['saved_model']} (endpoints serve, features, inverse; "
        f"images {keras_model.image_shape} <-> features {keras_model.feature_shape})"
    )
    if "onnx" in targets:
        print(f"ONNX: {targets['onnx']}/forward.onnx, {targets['onnx']}/inverse.onnx")
    return errors


def run(
    saved_model_dir,
    model_path=None,
    official_checkpoint=None,
    model=None,
    model_config=None,
    onnx_path=None,
    opset=None,
    check=True,
    tolerance=1e-4,
):
    """Exports the model; see the module docstring. Returns the check's errors ({} if none).

    Relative paths are relative to this process's working directory. On a Keras backend other
    than TensorFlow, the export runs in a child process with KERAS_BACKEND=tensorflow (its
    output goes to this process's stdout / stderr). If the targets already hold the complete
    export of the same source, nothing is written and the recorded errors are returned.
    """
    import keras

    saved_model_dir, model_path, official_checkpoint, onnx_path = map(
        _absolute, (saved_model_dir, model_path, official_checkpoint, onnx_path)
    )
    _check_arguments(
        saved_model_dir, model_path, official_checkpoint, model, model_config, onnx_path
    )
    targets = export_targets(saved_model_dir, onnx_path)
    clear_interrupted(targets)

    def identity():
        # --opset shapes the ONNX graphs only: without them it does not tell exports apart.
        return export_identity(
            model_path, official_checkpoint, model, model_config, opset if onnx_path else None
        )

    existing = find_existing_export(targets, identity, check=check, tolerance=tolerance)
    if existing is not None:
        _print_already_exported(existing)
        return recorded_errors(existing)
    _refuse_occupied_targets(targets)

    if keras.backend.backend() != "tensorflow":
        return _export_in_tensorflow_process(
            targets,
            model_path=model_path,
            official_checkpoint=official_checkpoint,
            model=model,
            model_config=model_config,
            opset=opset,
            check=check,
            tolerance=tolerance,
        )
    source_identity = identity()  # before loading: the fingerprint of what is exported
    keras_model = load_model(model_path, official_checkpoint, model, model_config)
    return _export(
        keras_model, targets, source_identity, opset=opset, check=check, tolerance=tolerance
    )


FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string(
        "model_path",
        None,
        "A .keras file (holds the architecture), or a .weights.h5 file together with --model.",
    )
    flags.DEFINE_string(
        "official_checkpoint",
        None,
        "The authors' PyTorch checkpoint (.pth.tar), together with --model.",
    )
    define_model_flags()
    # Defined in applications/models.py; declared here so that --help lists them.
    flags.declare_key_flag("model")
    flags.declare_key_flag("model_config")
    flags.DEFINE_string(
        "saved_model_dir",
        None,
        "Directory to write the SavedModel to; must not exist or be empty (relative paths: "
        "to the working directory).",
    )
    flags.DEFINE_string(
        "onnx_path",
        None,
        "Optional directory to write forward.onnx and inverse.onnx to; must not exist or be empty.",
    )
    flags.DEFINE_integer("opset", None, "ONNX opset (default: tf2onnx's).")
    flags.DEFINE_bool("check", True, "Compare the export with Keras before keeping it.")
    flags.DEFINE_float("tolerance", 1e-4, "Largest relative error the check accepts.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        run(
            FLAGS.saved_model_dir,
            model_path=FLAGS.model_path,
            official_checkpoint=FLAGS.official_checkpoint,
            model=FLAGS.model,
            model_config=FLAGS.model_config,
            onnx_path=FLAGS.onnx_path,
            opset=FLAGS.opset,
            check=FLAGS.check,
            tolerance=FLAGS.tolerance,
        )
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        sys.exit(f"export: error: {error}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)

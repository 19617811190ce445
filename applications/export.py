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
module's `run()` is called from a process on another backend, it starts a TensorFlow process.

After writing, the export is checked against Keras on a random batch (turn off with
--nocheck): relative errors of each endpoint are printed, and an export that disagrees by
more than --tolerance is removed again. Existing non-empty output directories are refused;
nothing is left behind on failure.
"""

import os
import subprocess
import sys

if __name__ == "__main__":
    # Before Keras is imported: the backend is fixed at import time and only TensorFlow can
    # trace a SavedModel for every model (see the module docstring).
    os.environ["KERAS_BACKEND"] = "tensorflow"

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from applications.convert import (  # noqa: E402
    build_model,
    define_model_flags,
    parse_model_arguments,
)

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check_arguments(saved_model_dir, model_path, official_checkpoint, model, model_config,
                     onnx_path):
    """Checks every argument before any slow work; raises ValueError / FileNotFoundError /
    FileExistsError naming the flag."""
    from keras_irevnet.export import _check_target

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
    _check_target(saved_model_dir, "--saved_model_dir")
    if onnx_path:
        _check_target(onnx_path, "--onnx_path")
        if os.path.abspath(onnx_path) == os.path.abspath(saved_model_dir):
            raise ValueError("--onnx_path and --saved_model_dir must be different directories.")


def load_model(model_path=None, official_checkpoint=None, model=None, model_config=None):
    """The Keras model from a .keras file, a .weights.h5 file or the authors' checkpoint."""
    import keras

    import keras_irevnet as kir

    if model_path and model_path.endswith(".keras"):
        loaded = keras.saving.load_model(model_path, compile=False)
        if not isinstance(loaded, kir.IRevNet):
            raise ValueError(
                f"--model_path: {model_path!r} holds a {type(loaded).__name__}, not an i-RevNet "
                "(keras_irevnet.IRevNet); only i-RevNets have features and inverse."
            )
        return loaded
    if model_path:  # .weights.h5: the constructor checks that it fits
        return build_model(model, model_config, weights=model_path)
    keras_model = build_model(model, model_config)
    kir.load_official_weights(keras_model, official_checkpoint)
    return keras_model


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

    images = np.random.default_rng(seed).standard_normal(
        (batch_size,) + tuple(keras_model.image_shape)
    ).astype(keras_model.inputs[0].dtype)
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


def _tensorflow_process_argv(**arguments):
    argv = [sys.executable, "-m", "applications.export"]
    for name, value in arguments.items():
        if isinstance(value, bool):
            argv.append(f"--{'' if value else 'no'}{name}")
        elif value is not None:
            argv.append(f"--{name}={value}")
    return argv


def run(saved_model_dir, model_path=None, official_checkpoint=None, model=None,
        model_config=None, onnx_path=None, opset=None, check=True, tolerance=1e-4):
    """Exports the model; see the module docstring. Returns the check's errors ({} if none).

    On a Keras backend other than TensorFlow, the export runs in a child process with
    KERAS_BACKEND=tensorflow (its output goes to this process's stdout / stderr).
    """
    import keras

    import keras_irevnet as kir

    _check_arguments(saved_model_dir, model_path, official_checkpoint, model, model_config,
                     onnx_path)
    if keras.backend.backend() != "tensorflow":
        # Only the TensorFlow backend can trace every endpoint into a SavedModel (torch
        # cannot at all) and tf2onnx needs TensorFlow graphs: hand over to a TF process.
        argv = _tensorflow_process_argv(
            saved_model_dir=saved_model_dir, model_path=model_path,
            official_checkpoint=official_checkpoint, model=model, model_config=model_config,
            onnx_path=onnx_path, opset=opset, check=check, tolerance=tolerance,
        )
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO_ROOT, env.get("PYTHONPATH")]))
        result = subprocess.run(argv, env=env, cwd=_REPO_ROOT)
        if result.returncode:
            raise RuntimeError(
                f"the export in the TensorFlow-backend process failed (exit status "
                f"{result.returncode}); its error is printed above."
            )
        return {}

    keras_model = load_model(model_path, official_checkpoint, model, model_config)
    written = []
    try:
        written.append(kir.export_saved_model(keras_model, saved_model_dir))
        print(f"SavedModel: {saved_model_dir} (endpoints serve, features, inverse; "
              f"images {keras_model.image_shape} <-> features {keras_model.feature_shape})")
        if onnx_path:
            written.append(kir.export_onnx(keras_model, onnx_path, opset=opset))
            print(f"ONNX: {onnx_path}/forward.onnx, {onnx_path}/inverse.onnx")
        errors = {}
        if check:
            errors = check_export(keras_model, saved_model_dir, onnx_path)
            print("Relative error against Keras (random normal batch of 2):")
            for (fmt, endpoint), error in errors.items():
                print(f"  {fmt:<10} {endpoint:<9} {error:.2e}")
            bad = {key: e for key, e in errors.items() if not e <= tolerance}
            if bad:
                raise RuntimeError(
                    f"the export disagrees with Keras beyond --tolerance={tolerance}: "
                    + ", ".join(f"{f} {n}: {e:.2e}" for (f, n), e in bad.items())
                    + "; it was removed."
                )
        return errors
    except BaseException:
        # Both exports or none: the SavedModel alone would look like a finished export.
        import shutil

        for directory in written:
            shutil.rmtree(directory, ignore_errors=True)
        raise


FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string(
        "model_path", None,
        "A .keras file (holds the architecture), or a .weights.h5 file together with --model.",
    )
    flags.DEFINE_string(
        "official_checkpoint", None,
        "The authors' PyTorch checkpoint (.pth.tar), together with --model.",
    )
    define_model_flags()
    # Defined in applications/convert.py; declared here so that --help lists them.
    flags.declare_key_flag("model")
    flags.declare_key_flag("model_config")
    flags.DEFINE_string(
        "saved_model_dir", None,
        "Directory to write the SavedModel to; must not exist or be empty.",
    )
    flags.DEFINE_string(
        "onnx_path", None,
        "Optional directory to write forward.onnx and inverse.onnx to; must not exist or be "
        "empty.",
    )
    flags.DEFINE_integer("opset", None, "ONNX opset (default: tf2onnx's).")
    flags.DEFINE_bool("check", True, "Compare the export with Keras after writing it.")
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

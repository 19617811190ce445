"""Export of an i-RevNet with both directions: a TensorFlow SavedModel and ONNX graphs.

An i-RevNet is only useful outside Keras if its inverse leaves with it, so every export here
carries the forward map *and* the inverse:

- `export_saved_model(model, path)`: a SavedModel with the endpoints `serve` (what `model(x)`
  returns), `features` (Phi(x)) and `inverse` (x from Phi(x)); each is also a serving
  signature, and the batch dimension is dynamic. Works from the TensorFlow and JAX backends.
- `export_onnx(model, path)`: a directory with `forward.onnx` (outputs `output` and
  `features`) and `inverse.onnx`. Works from the TensorFlow backend.

From any other backend, `python -m applications.export` does the same from a `.keras` file
(or an authors' checkpoint) in a TensorFlow-backend process.

Both functions write through `keras_irevnet.atomic`: into a hidden `.partial-` directory next
to `path`, renamed into place only once everything is written, so a failed or killed export
never leaves a half-written directory under `path` (a killed one's leftover partial directory
is removed by the next export to the same path). `write_saved_model` and `write_onnx` are the
same writers without the staging, for callers that stage several directories together
(`applications/export.py` commits a SavedModel and its ONNX graphs as one export).
"""

import contextlib
import logging
import os

import keras

from keras_irevnet.atomic import atomic_path, remove_partials

# Names shared by the SavedModel and the ONNX graphs (and documented in the README).
SAVED_MODEL_ENDPOINTS = ("serve", "features", "inverse")
ONNX_FORWARD_FILE = "forward.onnx"
ONNX_INVERSE_FILE = "inverse.onnx"

_EXPORT_APP = "python -m applications.export --model_path=MODEL.keras --saved_model_dir=DIR"


def _check_model(model, function):
    # Imported here, not at module level: keras_irevnet/__init__ imports this module, and the
    # models package must not depend on the export code.
    from keras_irevnet.models.irevnet import IRevNet

    if not isinstance(model, IRevNet):
        raise TypeError(
            f"{function}: `model` must be a keras_irevnet IRevNet (e.g. from "
            f"kir.IRevNetCIFAR(), kir.IRevNet(...) or keras.saving.load_model on a .keras file "
            f"saved from one), got {type(model).__name__}: it needs `features` and `inverse`."
        )


def _check_backend(function, supported):
    backend = keras.backend.backend()
    if backend not in supported:
        raise RuntimeError(
            f"{function} cannot run on the {backend!r} Keras backend: Keras traces "
            f"{'SavedModels' if 'saved_model' in function else 'these ONNX graphs'} only from "
            f"the {' and '.join(repr(b) for b in supported)} backend"
            f"{'s' if len(supported) > 1 else ''}. Save the model "
            f"(model.save('model.keras')) and run the export application, which loads it in "
            f"a TensorFlow-backend process: {_EXPORT_APP} [--onnx_path=ONNX_DIR]."
        )


def _check_target(path, argument):
    """Returns `path` as an absolute str after checking that an export may be written there.

    `argument` names it in errors: a parameter (`path`) or a command-line flag (`--...`).
    """
    if not argument.startswith("--"):
        argument = f"`{argument}`"
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"{argument} must be a directory path, got {path!r}.")
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise FileExistsError(
                f"{argument}: {path!r} exists and is not a directory; pass a new directory."
            )
        if os.listdir(path):
            raise FileExistsError(
                f"{argument}: the directory {path!r} already exists and is not empty; "
                "refusing to overwrite it. Remove it or pass a new directory."
            )
    return path


def _missing_directories(paths):
    """The directories that holding `paths` would create (those that do not exist), innermost
    first."""
    missing = []
    for path in paths:
        probe = os.path.dirname(os.path.abspath(path))
        while probe and not os.path.exists(probe) and probe not in missing:
            missing.append(probe)
            probe = os.path.dirname(probe)
    return sorted(missing, key=len, reverse=True)  # children before their parents


@contextlib.contextmanager
def removing_created_parents(*paths):
    """Removes, if the block fails, the parent directories of `paths` created during it.

    A failed export leaves nothing behind, not even the (empty) parent directories that
    staging next to its target created.
    """
    missing = _missing_directories(paths)
    try:
        yield
    except BaseException:
        for directory in missing:  # innermost first; os.rmdir keeps anything non-empty
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise


def remove_leftover_partials(path):
    """Removes the staging directories that killed writers of `path` left next to it.

    Returns the removed paths.
    """
    parent, name = os.path.split(os.path.abspath(path))
    return remove_partials(parent, name=name)


@contextlib.contextmanager
def _atomic_directory(path):
    """Yields a staging directory that becomes `path` (absolute) only if the block finishes."""
    remove_leftover_partials(path)
    with removing_created_parents(path), atomic_path(path, directory=True) as staging:
        yield staging


def _signatures(model):
    """(image spec, features spec): dynamic batch, the model's own shapes and dtypes."""
    image_dtype = model.inputs[0].dtype
    # `inverse` computes in the compute dtype; taking Phi(x) in that dtype lets the output of
    # the `features` endpoint go straight into `inverse` (they differ under mixed precision).
    feature_dtype = model.compute_dtype
    image = keras.InputSpec(shape=(None,) + tuple(model.image_shape), dtype=image_dtype)
    features = keras.InputSpec(shape=(None,) + tuple(model.feature_shape), dtype=feature_dtype)
    return image, features


def _build_archive(model, platforms=None):
    image_spec, feature_spec = _signatures(model)

    # Named functions, not lambdas: the parameter names become the input names of the
    # serving signatures (`images`, `features`).
    def serve(images):
        return model(images, training=False)

    def features(images):
        return model.features(images, training=False)

    def inverse(features):
        return model.inverse(features)

    kwargs = {}
    if keras.backend.backend() == "jax" and platforms is not None:
        # jax2tf lowers to StableHLO for the listed platforms only; Keras' default is the
        # platform exporting, so a SavedModel exported on a CPU would not run on a GPU.
        kwargs["jax2tf_kwargs"] = {"native_serialization_platforms": tuple(platforms)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, [image_spec], **kwargs)
    archive.add_endpoint("features", features, [image_spec], **kwargs)
    archive.add_endpoint("inverse", inverse, [feature_spec], **kwargs)
    return archive


def export_saved_model(model, path, platforms=None, verbose=False):
    """Exports `model` as a TensorFlow SavedModel that serves both directions.

    The SavedModel has three endpoints, each a `tf.function` on the loaded object and a
    serving signature of the same name (`serving_default` is `serve`):

    - `serve(images)`: what `model(images)` returns (class scores with a head, else Phi(x)
      or its pooled version);
    - `features(images)`: Phi(x), shape (batch,) + `model.feature_shape`;
    - `inverse(features)`: the images back from Phi(x), shape (batch,) + `model.image_shape`.

    The batch dimension is dynamic. BatchNorm and dropout run in inference mode (the mode in
    which `inverse` is the exact inverse of `features`). Loading needs TensorFlow only:

        loaded = tf.saved_model.load(path)
        z = loaded.features(images)
        x = loaded.inverse(z)                    # == images up to float rounding

    Args:
        model: a keras_irevnet `IRevNet` (any constructor, or a loaded `.keras` file).
        path: the export directory. It must not exist or be empty. The export is written to
            a hidden `.partial-` directory next to it and renamed into place once complete
            (partial directories that killed exports to `path` left are removed first).
        platforms: JAX backend only: the platforms to lower for, e.g. ("cpu", "cuda").
            Defaults to the platform exporting (Keras' default); a SavedModel exported from
            JAX runs only on the platforms it was lowered for. Ignored on TensorFlow, whose
            SavedModels run anywhere.
        verbose: print the endpoints after writing.

    Returns:
        The absolute path of the export directory.

    Raises:
        RuntimeError: on the torch backend (Keras cannot trace a SavedModel from torch); use
            `python -m applications.export`, which loads the model in a TensorFlow process.
        FileExistsError: if `path` exists and is not an empty directory.
        TypeError: if `model` is not an `IRevNet`.
    """
    _check_model(model, "export_saved_model")
    _check_backend("export_saved_model", ("tensorflow", "jax"))
    path = _check_target(path, "path")
    archive = _build_archive(model, platforms=platforms)
    with _atomic_directory(path) as staging:
        archive.write_out(staging, verbose=False)
    if verbose:
        endpoints = ", ".join(SAVED_MODEL_ENDPOINTS)
        print(f"Saved the SavedModel at {path!r} with endpoints {endpoints}.")
    return path


def write_saved_model(model, directory, platforms=None):
    """Writes the SavedModel of `export_saved_model` into the existing `directory`, in place.

    Not atomic: for callers that stage the directory themselves (`applications/export.py`
    commits a SavedModel and its ONNX graphs together). Use `export_saved_model` otherwise.
    Arguments and errors as `export_saved_model`'s; `directory` is not checked.
    """
    _check_model(model, "write_saved_model")
    _check_backend("write_saved_model", ("tensorflow", "jax"))
    _build_archive(model, platforms=platforms).write_out(os.fspath(directory), verbose=False)


def _name_batch_dimension(onnx_path):
    """Names the dynamic first axis `batch` in the ONNX graph's inputs and outputs.

    tf2onnx names unknown dimensions `unk__N`; a shared, readable name tells onnxruntime users
    which axis is free and that inputs and outputs share it.
    """
    import onnx

    graph_model = onnx.load(onnx_path)
    for value in list(graph_model.graph.input) + list(graph_model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, onnx_path)


def export_onnx(model, path, opset=None):
    """Exports the forward map and the inverse of `model` as two ONNX graphs.

    Writes the directory `path` with:

    - `forward.onnx`: input `images` (batch,) + `model.image_shape`; outputs `output` (what
      `model(images)` returns) and `features` (Phi(x), (batch,) + `model.feature_shape`);
    - `inverse.onnx`: input `features`; output `images`.

    The batch axis is dynamic (named `batch`); BatchNorm and dropout are in inference mode.
    With onnxruntime:

        forward = onnxruntime.InferenceSession(f"{path}/forward.onnx")
        inverse = onnxruntime.InferenceSession(f"{path}/inverse.onnx")
        output, features = forward.run(["output", "features"], {"images": images})
        (reconstruction,) = inverse.run(None, {"features": features})

    Args:
        model: a keras_irevnet `IRevNet`.
        path: the output directory; it must not exist or be empty. Written to a hidden
            `.partial-` directory next to it and renamed into place once both graphs are
            written (as `export_saved_model`'s `path`).
        opset: the ONNX opset; defaults to tf2onnx's default.

    Returns:
        The absolute path of the directory.

    Raises:
        RuntimeError: on a backend other than TensorFlow; use `python -m applications.export
            --onnx_path=...`, which exports in a TensorFlow process.
        ImportError: if tf2onnx or onnx is not installed.
        FileExistsError: if `path` exists and is not an empty directory.
    """
    _check_model(model, "export_onnx")
    _check_backend("export_onnx", ("tensorflow",))
    path = _check_target(path, "path")
    _import_onnx_converter("export_onnx")  # before anything is written
    with _atomic_directory(path) as staging:
        _write_onnx_graphs(model, staging, opset)
    return path


def write_onnx(model, directory, opset=None):
    """Writes the two ONNX graphs of `export_onnx` into the existing `directory`, in place.

    Not atomic: for callers that stage the directory themselves (`applications/export.py`
    commits a SavedModel and its ONNX graphs together). Use `export_onnx` otherwise.
    Arguments and errors as `export_onnx`'s; `directory` is not checked.
    """
    _check_model(model, "write_onnx")
    _check_backend("write_onnx", ("tensorflow",))
    _import_onnx_converter("write_onnx")
    _write_onnx_graphs(model, os.fspath(directory), opset)


def _import_onnx_converter(function):
    """Imports tf2onnx (and onnx, used by _name_batch_dimension); an ImportError saying what to
    install if either is missing."""
    try:
        import onnx  # noqa: F401
        import tf2onnx
    except ImportError as error:
        raise ImportError(
            f"{function} needs the packages tf2onnx and onnx (pip install tf2onnx onnx); "
            f"importing them failed: {error}"
        ) from None
    return tf2onnx


def _write_onnx_graphs(model, directory, opset):
    """Writes forward.onnx and inverse.onnx (see `export_onnx`) into `directory`."""
    import tensorflow as tf
    import tf2onnx  # its absence was reported by the caller (_import_onnx_converter)

    image_spec, feature_spec = _signatures(model)
    images_signature = [tf.TensorSpec(image_spec.shape, image_spec.dtype, name="images")]
    features_signature = [tf.TensorSpec(feature_spec.shape, feature_spec.dtype, name="features")]

    # One forward graph with both outputs, taken from the model's own functional graph, so
    # Phi(x) is computed once and the head reads it (two calls would trace it twice).
    two_outputs = keras.Model(model.inputs, [model.outputs[0], model.features_output])

    # Dict outputs: tf2onnx names the ONNX outputs after the keys.
    @tf.function(input_signature=images_signature, autograph=False)
    def forward(images):
        output, features = two_outputs(images, training=False)
        return {"output": output, "features": features}

    @tf.function(input_signature=features_signature, autograph=False)
    def inverse(features):
        return {"images": model.inverse(features)}

    # tf2onnx logs every conversion step at INFO level; keep the caller's output readable.
    tf2onnx_logger = logging.getLogger("tf2onnx")
    level = tf2onnx_logger.level
    tf2onnx_logger.setLevel(max(level, logging.WARNING))
    try:
        for function, signature, filename in (
            (forward, images_signature, ONNX_FORWARD_FILE),
            (inverse, features_signature, ONNX_INVERSE_FILE),
        ):
            onnx_path = os.path.join(directory, filename)
            tf2onnx.convert.from_function(
                function, input_signature=signature, opset=opset, output_path=onnx_path
            )
            _name_batch_dimension(onnx_path)
    finally:
        tf2onnx_logger.setLevel(level)

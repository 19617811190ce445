"""Export: the SavedModel (serve / features / inverse), the ONNX graphs, and the applications.

Exported artifacts are checked where users run them: in a child Python process that cannot
import keras or keras_irevnet (TensorFlow only for the SavedModel; onnxruntime only, not even
TensorFlow, for ONNX), against the Keras outputs of this process's backend on real photos.
"""

import json
import os
import subprocess
import sys
import textwrap
import uuid

import keras
import numpy as np
import pytest

import keras_irevnet as kir
from keras_irevnet.convert import _conv_kernel, _weight_plan
from tests.helpers import (
    IMPORT_BLOCKER,
    TINY,
    once_in,
    preprocessed_photos,
    relative_error,
    tiny_model,
    to_numpy,
)

BACKEND = keras.backend.backend()
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5
# The tests' tiny model (tests/helpers.py); the programs build it as the preset "tiny" with
# these arguments.
SMALL = TINY
SMALL_PRESET = "tiny"
SMALL_JSON = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()})

only_saved_model_backends = pytest.mark.skipif(
    BACKEND == "torch",
    reason="Keras cannot trace a SavedModel on torch; the torch route is applications/export.py "
    "(test_export_app_from_keras_file, test_export_saved_model_on_torch_says_what_to_do).",
)

# From JAX and torch, `applications/export.py` hands the export to a TensorFlow child process
# through the same code: the tests of that hand-over run in the TensorFlow suite (no child)
# and the JAX one (the child). A .keras file saved on torch goes through it in
# test_export_app_from_keras_file.
not_again_on_torch = pytest.mark.skipif(
    BACKEND == "torch",
    reason="the hand-over to the TensorFlow process is the same from JAX and torch: tested "
    "in the JAX suite",
)

_SAVED_MODEL_CHILD = """
import json
import numpy as np
import tensorflow as tf

export_dir, data_path, result_path = sys.argv[1:4]
data = np.load(data_path)
images, features = data["images"], data["features"]

def rel(a, b):
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))

loaded = tf.saved_model.load(export_dir)
signatures = loaded.signatures
result = {
    "signatures": sorted(signatures),
    "serve": rel(loaded.serve(images), data["serve"]),
    "features": rel(loaded.features(images), features),
    "inverse": rel(loaded.inverse(features), data["inverse"]),
    # The photos back from Phi(x), through the export alone.
    "reconstruction": rel(loaded.inverse(loaded.features(images)), images),
    # The serving signatures (what TF Serving calls), at another batch size (dynamic batch).
    "signature serve": rel(
        signatures["serve"](images=tf.constant(images[:1]))["output_0"], data["serve"][:1]),
    "signature features": rel(
        signatures["features"](images=tf.constant(images[:1]))["output_0"], features[:1]),
    "signature inverse": rel(
        signatures["inverse"](features=tf.constant(features[:1]))["output_0"],
        data["inverse"][:1]),
    "signature serving_default": rel(
        signatures["serving_default"](images=tf.constant(images[:3]))["output_0"],
        data["serve"][:3]),
    "input shapes": {
        name: signatures[name].structured_input_signature[1][key].shape.as_list()
        for name, key in (("serve", "images"), ("features", "images"), ("inverse", "features"))
    },
    "blocked modules loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
}
json.dump(result, open(result_path, "w"))
"""

_ONNX_CHILD = """
import json
import numpy as np
import onnxruntime

onnx_dir, data_path, result_path = sys.argv[1:4]
data = np.load(data_path)
images, features = data["images"], data["features"]

def rel(a, b):
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))

forward = onnxruntime.InferenceSession(onnx_dir + "/forward.onnx")
inverse = onnxruntime.InferenceSession(onnx_dir + "/inverse.onnx")
output, onnx_features = forward.run(["output", "features"], {"images": images})
(reconstruction,) = inverse.run(["images"], {"features": onnx_features})
(one,) = inverse.run(["images"], {"features": features[:1]})
result = {
    "serve": rel(output, data["serve"]),
    "features": rel(onnx_features, features),
    "inverse": rel(inverse.run(["images"], {"features": features})[0], data["inverse"]),
    "reconstruction": rel(reconstruction, images),
    "inverse batch 1": rel(one, data["inverse"][:1]),
    "inputs": {s.get_inputs()[0].name: s.get_inputs()[0].shape for s in (forward, inverse)},
    "blocked modules loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
}
json.dump(result, open(result_path, "w"))
"""


def _run_child(script, blocked, args, tmp_path):
    """Runs `script` in a fresh interpreter that cannot import `blocked`; returns its JSON."""
    result_path = tmp_path / f"result_{len(os.listdir(tmp_path))}.json"
    code = IMPORT_BLOCKER.format(blocked=tuple(blocked)) + textwrap.dedent(script)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    completed = subprocess.run(
        [sys.executable, "-c", code, *map(str, args), str(result_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(result_path.read_text())


def _check_in_tensorflow_only_process(export_dir, data_path, tmp_path):
    result = _run_child(
        _SAVED_MODEL_CHILD,
        ("keras", "keras_irevnet", "tf_keras", "jax", "torch"),
        (export_dir, data_path),
        tmp_path,
    )
    assert result["blocked modules loaded"] == []
    assert result["signatures"] == ["features", "inverse", "serve", "serving_default"]
    assert result["input shapes"] == {
        "serve": [None, 32, 32, 3],
        "features": [None, 32, 32, 3],
        "inverse": [None, 8, 8, 64],
    }
    errors = {k: v for k, v in result.items() if isinstance(v, float)}
    assert len(errors) == 8
    assert all(e <= TOLERANCE for e in errors.values()), errors
    return errors


def _check_in_onnxruntime_only_process(onnx_dir, data_path, tmp_path):
    pytest.importorskip("onnxruntime", reason="the ONNX checks need onnxruntime (test extra)")
    result = _run_child(
        _ONNX_CHILD,
        ("keras", "keras_irevnet", "tf_keras", "tensorflow", "jax", "torch"),
        (onnx_dir, data_path),
        tmp_path,
    )
    assert result["blocked modules loaded"] == []
    assert result["inputs"] == {"images": ["batch", 32, 32, 3], "features": ["batch", 8, 8, 64]}
    errors = {k: v for k, v in result.items() if isinstance(v, float)}
    assert len(errors) == 5
    assert all(e <= TOLERANCE for e in errors.values()), errors
    return errors


def _randomize_batch_norms(model, seed):
    """Non-trivial BatchNorm statistics, so that a wrongly mapped or training-mode BatchNorm
    in an export cannot agree with Keras by accident."""
    rng = np.random.default_rng(seed)
    for variable in model.variables:
        name = variable.path.rsplit("/", 1)[-1]
        if name in ("gamma", "moving_variance"):
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
        elif name in ("beta", "moving_mean"):
            variable.assign(rng.normal(0.0, 0.1, variable.shape).astype("float32"))


def _small_model(seed=0, **overrides):
    model = tiny_model(seed, **overrides)
    _randomize_batch_norms(model, seed)
    return model


def _keras_outputs(model, path):
    """Saves the photos and this backend's Keras outputs to `path` (.npz) for the children."""
    images = preprocessed_photos(32)
    features = to_numpy(model.features(images))
    np.savez(
        path,
        images=images,
        serve=to_numpy(model(images, training=False)),
        features=features,
        inverse=to_numpy(model.inverse(features)),
    )
    # Keras' own inverse is exact here too, so comparing the export with it means something.
    assert relative_error(model.inverse(features), images) < TOLERANCE
    return path


def _authors_checkpoint(model, path):
    """`model`'s weights as the authors' training script saves them (torch.save of a
    DataParallel state dict in PyTorch layout), written to `path`."""
    torch = pytest.importorskip("torch", reason="writing a PyTorch checkpoint needs torch")
    state = {}
    for name, variable, transform in _weight_plan(model):
        value = to_numpy(variable)
        if transform is _conv_kernel:
            value = np.transpose(value, (3, 2, 0, 1))  # (kh, kw, in, out) -> (out, in, kh, kw)
        elif transform is not None:
            value = np.transpose(value)  # dense kernel -> linear.weight (out, in)
        state[f"module.{name}"] = torch.from_numpy(np.ascontiguousarray(value))
        if name.endswith(".running_var"):
            state[f"module.{name[: -len('running_var')]}num_batches_tracked"] = torch.tensor(7)
    torch.save(
        {"epoch": 3, "arch": "irevnet", "state_dict": state, "best_prec1": 0.5, "optimizer": {}},
        path,
    )
    return path


def _leftovers(directory):
    """Entries a failed export might leave behind (staging directories are hidden)."""
    return sorted(os.listdir(directory))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(model, .npz of photos and Keras outputs) shared by the tests of this module."""
    model = _small_model()
    data_path = _keras_outputs(model, tmp_path_factory.mktemp("data") / "outputs.npz")
    return model, data_path


@only_saved_model_backends
def test_saved_model_serves_three_endpoints_without_keras(small, tmp_path):
    model, data_path = small
    export_dir = tmp_path / "export"
    export_dir.mkdir()  # an empty directory is accepted (and replaced by the export)
    # What a killed export to the same path left: removed by this one.
    (tmp_path / ".export.partial-killed" / "variables").mkdir(parents=True)
    returned = kir.export_saved_model(model, export_dir)
    assert returned == str(export_dir)
    assert _leftovers(tmp_path) == ["export"]
    assert "saved_model.pb" in os.listdir(export_dir)
    errors = _check_in_tensorflow_only_process(export_dir, data_path, tmp_path)
    print(f"\n[{BACKEND}] SavedModel relative errors:", json.dumps(errors))


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="export_onnx traces TensorFlow graphs; other backends export ONNX through "
    "applications/export.py (test_export_app_from_keras_file).",
)
def test_onnx_forward_and_inverse_run_in_onnxruntime(small, tmp_path):
    pytest.importorskip("tf2onnx", reason="ONNX export needs tf2onnx (test extra)")
    model, data_path = small
    onnx_dir = kir.export_onnx(model, tmp_path / "onnx")
    assert sorted(os.listdir(onnx_dir)) == ["forward.onnx", "inverse.onnx"]
    errors = _check_in_onnxruntime_only_process(onnx_dir, data_path, tmp_path)
    print(f"\n[{BACKEND}] ONNX relative errors:", json.dumps(errors))


@pytest.mark.slow
def test_export_app_from_keras_file(small, tmp_path):
    """A .keras file saved on this backend, exported by the application (in this process on
    TensorFlow, in a TensorFlow child process otherwise), checked without Keras."""
    from applications import export as export_app

    model, data_path = small
    model_path = tmp_path / "model.keras"
    model.save(model_path)
    saved_model_dir, onnx_dir = tmp_path / "saved_model", tmp_path / "onnx"
    export_app.run(str(saved_model_dir), model_path=str(model_path), onnx_path=str(onnx_dir))
    errors = _check_in_tensorflow_only_process(saved_model_dir, data_path, tmp_path)
    print(f"\n[{BACKEND} -> app] SavedModel relative errors:", json.dumps(errors))
    errors = _check_in_onnxruntime_only_process(onnx_dir, data_path, tmp_path)
    print(f"\n[{BACKEND} -> app] ONNX relative errors:", json.dumps(errors))


def _assert_written_here_not_in_repository(cwd, names):
    for name in names:
        assert (cwd / name).is_dir(), f"{name} is not under the working directory {cwd}"
        assert not os.path.exists(os.path.join(REPO_ROOT, name)), f"{name} written in the repo"


@not_again_on_torch
@pytest.mark.slow
def test_export_app_relative_paths_mean_the_callers_directory(small, tmp_path, monkeypatch):
    """run() with relative paths, as applications/train.py calls it: on JAX and torch the
    export runs in a TensorFlow child process, which must resolve them as the caller does."""
    from applications import export as export_app

    model, _ = small
    model.save(tmp_path / "model.keras")
    # Names that cannot exist in the repository, so finding them there means a wrong cwd.
    saved_model_dir, onnx_dir = (f"{kind}_{uuid.uuid4().hex}" for kind in ("sm", "onnx"))
    monkeypatch.chdir(tmp_path)
    errors = export_app.run(saved_model_dir, model_path="model.keras", onnx_path=onnx_dir)
    _assert_written_here_not_in_repository(tmp_path, (saved_model_dir, onnx_dir))
    assert len(errors) == 8 and all(e <= TOLERANCE for e in errors.values()), errors
    manifest = export_app.read_manifest(tmp_path / saved_model_dir)
    assert manifest["source"]["path"] == str(tmp_path / "model.keras")
    assert manifest["parts"] == {
        "saved_model": str(tmp_path / saved_model_dir),
        "onnx": str(tmp_path / onnx_dir),
    }


@once_in(
    "tensorflow",
    "the program exports in a TensorFlow process whatever the backend; run() with relative "
    "paths, which hands over to that process from JAX and torch, is tested in the TensorFlow "
    "and JAX suites",
)
@pytest.mark.slow
def test_export_program_relative_paths_mean_the_callers_directory(small, tmp_path):
    model, _ = small
    model.save(tmp_path / "model.keras")
    saved_model_dir, onnx_dir = (f"{kind}_{uuid.uuid4().hex}" for kind in ("sm", "onnx"))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "applications.export",
            "--model_path=model.keras",
            f"--saved_model_dir={saved_model_dir}",
            f"--onnx_path={onnx_dir}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    _assert_written_here_not_in_repository(tmp_path, (saved_model_dir, onnx_dir))
    assert f"SavedModel: {tmp_path / saved_model_dir}" in completed.stdout


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="the application loads the checkpoint in a TensorFlow process whatever the "
    "backend; the hand-off from other backends is covered by test_export_app_from_keras_file.",
)
def test_export_app_from_authors_checkpoint(small, tmp_path):
    from applications import export as export_app

    model, data_path = small
    checkpoint = _authors_checkpoint(model, tmp_path / "checkpoint.pth.tar")
    saved_model_dir = tmp_path / "saved_model"
    errors = export_app.run(
        str(saved_model_dir),
        official_checkpoint=str(checkpoint),
        model=SMALL_PRESET,
        model_config=SMALL_JSON,
    )
    assert errors and all(e <= TOLERANCE for e in errors.values()), errors
    _check_in_tensorflow_only_process(saved_model_dir, data_path, tmp_path)


@pytest.mark.skipif(BACKEND != "torch", reason="the error is specific to the torch backend.")
def test_export_saved_model_on_torch_says_what_to_do(small, tmp_path):
    model, _ = small
    with pytest.raises(RuntimeError, match=r"torch.*applications\.export"):
        kir.export_saved_model(model, tmp_path / "export")
    assert not (tmp_path / "export").exists()


@pytest.mark.skipif(BACKEND == "tensorflow", reason="export_onnx runs on TensorFlow.")
def test_export_onnx_off_tensorflow_says_what_to_do(small, tmp_path):
    model, _ = small
    with pytest.raises(RuntimeError, match=r"applications\.export.*--onnx_path"):
        kir.export_onnx(model, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


@only_saved_model_backends
def test_export_refuses_a_non_empty_directory(small, tmp_path):
    model, _ = small
    target = tmp_path / "export"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        kir.export_saved_model(model, target)
    assert _leftovers(tmp_path) == ["export"]
    assert _leftovers(target) == ["keep.txt"]
    (target / "keep.txt").unlink()
    target.rmdir()
    target.write_text("a file")
    with pytest.raises(FileExistsError, match="exists and is not a directory"):
        kir.export_saved_model(model, target)


@only_saved_model_backends
def test_failed_export_leaves_nothing_behind(small, tmp_path, monkeypatch):
    from keras_irevnet import export as export_module

    model, _ = small

    class HalfWritingArchive:  # stands in for the traced archive: writes part, then fails
        def write_out(self, filepath, **kwargs):
            with open(os.path.join(filepath, "saved_model.pb"), "wb") as f:
                f.write(b"half")
            raise OSError("disk full (simulated)")

    monkeypatch.setattr(export_module, "_build_archive", lambda *a, **k: HalfWritingArchive())
    with pytest.raises(OSError, match="simulated"):
        kir.export_saved_model(model, tmp_path / "new" / "export")
    assert _leftovers(tmp_path) == []  # neither the export, its staging copy, nor "new"


def test_export_model_type_is_checked(tmp_path):
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(TypeError, match="must be a keras_irevnet IRevNet.*got Sequential"):
        kir.export_saved_model(plain, tmp_path / "export")
    with pytest.raises(TypeError, match="must be a keras_irevnet IRevNet"):
        kir.export_onnx(plain, tmp_path / "onnx")
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            dict(official_checkpoint="CKPT", model="resnet50"),
            r"--model: unknown model 'resnet50'; expected one of tiny, cifar, bijective, injective",
        ),
        (dict(official_checkpoint="CKPT"), r"--model is required"),
        (dict(), r"exactly one of --model_path .* and --official_checkpoint"),
        (dict(model_path="CKPT", official_checkpoint="CKPT"), r"exactly one of"),
        (dict(official_checkpoint="missing.pth.tar", model="cifar"), r"file not found"),
        (
            dict(official_checkpoint="CKPT", model="cifar", target="non-empty"),
            r"--saved_model_dir: the directory .* already exists and is not empty",
        ),
        (
            dict(official_checkpoint="CKPT", model="cifar", onnx_path="export/onnx"),
            r"--onnx_path and --saved_model_dir must be different directories, neither inside",
        ),
    ],
)
def test_export_app_rejects_bad_arguments_before_any_work(tmp_path, arguments, message):
    from applications import export as export_app

    checkpoint = tmp_path / "ckpt.pth.tar"
    checkpoint.write_bytes(b"not read: the arguments are checked first")
    for key in ("model_path", "official_checkpoint", "onnx_path"):
        if key in arguments:  # "CKPT": a file that exists; anything else: a missing path
            value = arguments[key]
            arguments[key] = str(checkpoint if value == "CKPT" else tmp_path / value)
    saved_model_dir = tmp_path / "export"
    if arguments.pop("target", None):
        saved_model_dir.mkdir()
        (saved_model_dir / "variables").mkdir()
    before = _leftovers(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError, FileExistsError), match=message):
        export_app.run(str(saved_model_dir), **arguments)
    assert _leftovers(tmp_path) == before


@not_again_on_torch
@pytest.mark.slow
def test_export_app_rejects_a_checkpoint_of_another_model(small, tmp_path, capfd):
    from applications import export as export_app

    model, _ = small
    checkpoint = _authors_checkpoint(model, tmp_path / "checkpoint.pth.tar")
    other = json.dumps({**json.loads(SMALL_JSON), "classes": 7})
    saved_model_dir, onnx_dir = tmp_path / "export", tmp_path / "onnx"
    arguments = dict(
        official_checkpoint=str(checkpoint),
        model=SMALL_PRESET,
        model_config=other,
        onnx_path=str(onnx_dir),
    )
    if BACKEND == "tensorflow":  # loaded in this process
        expected = r"(?s)does not fit the model.*'linear.weight' has shape"
        with pytest.raises(ValueError, match=expected):
            export_app.run(str(saved_model_dir), **arguments)
    else:  # loaded in the TensorFlow child process, which prints the error and fails
        with pytest.raises(RuntimeError, match="TensorFlow-backend process failed"):
            export_app.run(str(saved_model_dir), **arguments)
        assert "does not fit the model" in capfd.readouterr().err
    assert _leftovers(tmp_path) == ["checkpoint.pth.tar"]


def test_convert_app_writes_weights_and_prints_top1(small, tmp_path, capsys):
    from applications import convert as convert_app
    from tests.helpers import photos

    model, data_path = small
    checkpoint = _authors_checkpoint(model, tmp_path / "checkpoint.pth.tar")
    np.save(tmp_path / "photos.npy", photos(32))
    output = tmp_path / "weights" / "small.weights.h5"
    output.parent.mkdir()
    # What a killed conversion to the same file left: removed by this one.
    (output.parent / ".small.partial-killed.weights.h5").write_bytes(b"half")
    results = convert_app.convert(
        str(checkpoint),
        SMALL_PRESET,
        str(output),
        model_config=SMALL_JSON,
        sanity_batch=str(tmp_path / "photos.npy"),
        preprocessing="imagenet",
    )
    printed = capsys.readouterr().out
    assert f"Wrote {output}" in printed

    # The file loads through the constructor and reproduces the original model.
    loaded = kir.IRevNet(**SMALL, weights=str(output))
    images = np.load(data_path)["images"]
    assert relative_error(loaded(images), model(images)) == 0.0
    expected = to_numpy(model(images)).argmax(-1)
    assert [index for _, index, _ in results] == expected.tolist()
    for i, index in enumerate(expected):
        assert f"photos.npy[{i}]: class {index}, p=" in printed
    assert _leftovers(output.parent) == ["small.weights.h5"]

    # It refuses to replace the file, and a checkpoint of another model leaves no file.
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_app.convert(str(checkpoint), SMALL_PRESET, str(output), model_config=SMALL_JSON)
    other = json.dumps({**json.loads(SMALL_JSON), "classes": 7})
    with pytest.raises(ValueError, match="does not fit the model"):
        convert_app.convert(
            str(checkpoint), SMALL_PRESET, str(tmp_path / "other.weights.h5"), model_config=other
        )
    assert not (tmp_path / "other.weights.h5").exists()
    with pytest.raises(ValueError, match="--model: unknown model 'vgg'"):
        convert_app.convert(str(checkpoint), "vgg", str(tmp_path / "x.weights.h5"))

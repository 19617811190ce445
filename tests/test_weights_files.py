"""`.weights.h5` and `.keras` files from outside: written atomically, checked on loading.

A file from another i-RevNet with the same weight shapes, or a damaged file, must be refused
with a ValueError naming the file and the difference, never loaded silently.
"""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import h5py
import keras
import numpy as np
import pytest

import keras_irevnet as kir
from keras_irevnet.models.weights_file import ARCHITECTURE_ATTRIBUTE
from tests.helpers import once_in, preprocessed_photos, tiny_model, to_numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


tiny = tiny_model


# A different network with exactly the same weight shapes: no psi(2), but 12-channel images
# at half the size, so the first block also sees 12 channels.
SAME_SHAPES_OTHER_NETWORK = dict(init_ds=0, input_shape=(16, 16, 12))


def trained(model, size=32):
    """`model` after a few training-mode passes (BatchNorm statistics not at (0, 1))."""
    x = preprocessed_photos(size, 2)
    for _ in range(2):
        model(x, training=True)
    return model


def weights_of(model):
    return [to_numpy(w) for w in model.weights]


def assert_same_weights(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def partials(directory):
    return [name for name in os.listdir(directory) if ".partial-" in name]


@pytest.fixture
def saved(tmp_path):
    """(model, path of its .weights.h5)."""
    model = trained(tiny())
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    return model, path


# --- the architecture record ---------------------------------------------------------------


def test_save_weights_writes_architecture_record_and_loads_back(saved):
    model, path = saved
    with h5py.File(path, "r") as h5:
        record = json.loads(h5.attrs[ARCHITECTURE_ATTRIBUTE])
    assert record == {
        "version": 1,
        "blocks": [1, 1],
        "strides": [1, 2],
        "channels": [8, 32],
        "init_ds": 2,
        "mult": 4,
        "input_channels": 3,
        "include_top": True,
        "classes": 5,
    }
    loaded = tiny()
    loaded.load_weights(path)
    assert_same_weights(weights_of(loaded), weights_of(model))
    x = preprocessed_photos(32, 2)
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))
    assert not partials(os.path.dirname(path))


def test_same_shapes_other_network_is_refused_naming_the_differences(saved):
    _, path = saved
    other = tiny(**SAME_SHAPES_OTHER_NETWORK)
    before = weights_of(other)
    # What made this dangerous: Keras alone compares shapes only, and they all agree.
    keras.Model.load_weights(tiny(**SAME_SHAPES_OTHER_NETWORK), path)
    with pytest.raises(ValueError) as error:
        other.load_weights(path)
    message = str(error.value)
    assert repr(path) in message and "\n" not in message
    assert "init_ds 2 in the file vs 0 in the model" in message
    assert "input channels 3 in the file vs 12 in the model" in message
    assert_same_weights(weights_of(other), before)  # nothing assigned
    with pytest.raises(ValueError, match="init_ds 2 in the file vs 0 in the model"):
        tiny(**SAME_SHAPES_OTHER_NETWORK, weights=path)


@pytest.mark.parametrize(
    "changes, difference",
    [
        (dict(classes=7), "classes 5 in the file vs 7 in the model"),
        (dict(include_top=False), "include_top True in the file vs False in the model"),
        (dict(mult=2), "mult 4 in the file vs 2 in the model"),
        (
            dict(channels=(8, 32), strides=(1, 2), blocks=(2, 1)),
            r"blocks \(1, 1\) in the file vs \(2, 1\) in the model",
        ),
    ],
)
def test_each_differing_field_is_named(saved, changes, difference):
    _, path = saved
    with pytest.raises(ValueError, match=difference):
        tiny(**changes).load_weights(path)


def test_image_size_dropout_and_dtype_are_not_compared(saved, tmp_path):
    # Fully convolutional: weights saved at 32x32 are the weights of the 64x64 network.
    model, path = saved
    for other in (
        tiny(input_shape=(64, 64, 3)),
        tiny(input_shape=(None, None, 3)),
        tiny(dropout=0.2),
        tiny(dtype="mixed_float16"),
    ):
        other.load_weights(path)
        assert_same_weights(weights_of(other), weights_of(model))


def test_keras_file_is_compared_through_its_config(tmp_path):
    model = trained(tiny())
    path = str(tmp_path / "model.keras")
    model.save(path)
    with pytest.raises(
        ValueError,
        match=r"model.keras.*init_ds 2 in the file vs 0 in the model; "
        r"input channels 3 in the file vs 12 in the model",
    ):
        tiny(**SAME_SHAPES_OTHER_NETWORK, weights=path)
    with pytest.raises(ValueError, match="input channels 3 in the file vs 12 in the model"):
        tiny(**SAME_SHAPES_OTHER_NETWORK).load_weights(path)
    assert_same_weights(weights_of(tiny(input_shape=(64, 64, 3), weights=path)), weights_of(model))


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_file_without_record_keeps_keras_checks(saved, tmp_path):
    # Files of plain Keras or keras_irevnet 0.1 have no record: loaded as before.
    model, _ = saved
    path = str(tmp_path / "plain.weights.h5")
    keras.Model.save_weights(model, path)
    with h5py.File(path, "r") as h5:
        assert ARCHITECTURE_ATTRIBUTE not in h5.attrs
    loaded = tiny(weights=path)
    assert_same_weights(weights_of(loaded), weights_of(model))
    with pytest.raises(ValueError, match=r"plain.weights.h5.*does not fit the model"):
        tiny(channels=(8, 16), strides=(1, 1)).load_weights(path)


def test_extra_groups_and_attributes_in_the_file_are_ignored(saved):
    # The training program adds its own state to its checkpoints before renaming them.
    model, path = saved
    with h5py.File(path, "a") as h5:
        h5.attrs["epoch"] = 7
        h5.attrs["run"] = json.dumps({"dataset": "digits"})
        h5.create_group("training_state").create_dataset("rng", data=np.arange(4))
    loaded = tiny()
    loaded.load_weights(path)
    assert_same_weights(weights_of(loaded), weights_of(model))
    assert_same_weights(weights_of(tiny(weights=path)), weights_of(model))


def test_optimizer_state_round_trips_with_the_record(tmp_path):
    x = preprocessed_photos(32, 4)
    y = np.array([0, 1, 2, 3])

    def compiled():
        model = tiny()
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return model

    model = compiled()
    model.fit(x, y, epochs=2, batch_size=2, verbose=0)
    path = str(tmp_path / "epoch-0002.weights.h5")
    model.save_weights(path)
    resumed = compiled()
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(path)
    assert int(to_numpy(resumed.optimizer.iterations)) == 4
    assert_same_weights(
        [to_numpy(v) for v in resumed.optimizer.variables],
        [to_numpy(v) for v in model.optimizer.variables],
    )


def test_skip_mismatch_and_sharded_files_are_left_to_keras(saved, tmp_path):
    model, path = saved
    other = tiny(**SAME_SHAPES_OTHER_NETWORK)
    other.load_weights(path, skip_mismatch=True)  # partial loading: no comparison wanted
    assert_same_weights(weights_of(other), weights_of(model))
    sharded = str(tmp_path / "sharded.weights.json")
    model.save_weights(sharded, max_shard_size=0.00005)
    assert os.path.isfile(sharded) and os.path.isfile(tmp_path / "sharded_00000.weights.h5")
    loaded = tiny()
    loaded.load_weights(sharded)
    assert_same_weights(weights_of(loaded), weights_of(model))
    with pytest.raises(ValueError, match="not found: .*nope.weights.json"):
        loaded.load_weights(str(tmp_path / "nope.weights.json"))


# --- damaged files -------------------------------------------------------------------------


def _truncated(good, path):
    data = open(good, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _foreign_hdf5(good, path):
    with h5py.File(path, "w") as h5:
        h5.create_dataset("table", data=np.arange(10))


def _damaged_record(good, path):
    data = open(good, "rb").read()
    open(path, "wb").write(data)
    with h5py.File(path, "a") as h5:
        h5.attrs[ARCHITECTURE_ATTRIBUTE] = "{not json"


BAD_WEIGHTS_FILES = {
    "missing": (None, r"not found"),
    "empty": (lambda good, path: open(path, "wb").close(), r"not a readable Keras weights file"),
    "text": (
        lambda good, path: open(path, "w").write("loss: 0.3\n"),
        r"not a readable Keras weights file",
    ),
    "random bytes": (
        lambda good, path: open(path, "wb").write(np.random.default_rng(0).bytes(4096)),
        r"not a readable Keras weights file",
    ),
    "truncated": (_truncated, r"not a readable Keras weights file.*truncated"),
    "foreign hdf5": (_foreign_hdf5, r"holds no Keras weights"),
    "damaged record": (_damaged_record, r"damaged architecture record"),
}


@pytest.mark.parametrize("kind", list(BAD_WEIGHTS_FILES))
def test_bad_weights_file_is_one_line_value_error_naming_it(saved, kind):
    model, good = saved
    make, reason = BAD_WEIGHTS_FILES[kind]
    path = os.path.join(os.path.dirname(good), "bad.weights.h5")
    if make is not None:
        make(good, path)
    target = tiny()
    before = weights_of(target)
    for load in (target.load_weights, lambda p: tiny(weights=p)):
        with pytest.raises(ValueError, match=reason) as error:
            load(path)
        assert repr(path) in str(error.value) and "\n" not in str(error.value)
    assert_same_weights(weights_of(target), before)


@pytest.mark.parametrize("cut", ["not a zip", "truncated"])
def test_bad_keras_file_is_one_line_value_error_naming_it(tmp_path, cut):
    path = str(tmp_path / "model.keras")
    tiny().save(path)
    data = open(path, "rb").read()
    with open(path, "wb") as stream:
        stream.write(b"plain text" if cut == "not a zip" else data[: len(data) // 2])
    for load in (tiny().load_weights, lambda p: tiny(weights=p)):
        with pytest.raises(
            ValueError, match=r"model.keras' is not a readable `.keras` file"
        ) as error:
            load(path)
        assert "\n" not in str(error.value)


def test_keras_file_without_weights_member_is_named(tmp_path):
    path = str(tmp_path / "model.keras")
    tiny().save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            if name != "model.weights.h5":
                archive.writestr(name, data)
    with pytest.raises(
        ValueError, match=r"model.keras' is not a Keras model file: .*'model.weights.h5'"
    ):
        tiny(weights=path)


# --- atomic writes -------------------------------------------------------------------------

_FAILED_SAVE = textwrap.dedent(
    """
    import os, resource, signal, sys
    import numpy as np
    import keras_irevnet as kir

    path = sys.argv[1]
    def tiny():
        return kir.IRevNet(blocks=(1, 1), strides=(1, 2), channels=(8, 32), init_ds=2,
                           input_shape=(16, 16, 3), classes=5)
    def save(model):
        model.save_weights(path) if path.endswith(".weights.h5") else model.save(path)

    model = tiny()
    save(model)
    good = model.get_weights()
    model.set_weights([w + 1.0 for w in good])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an OSError, not a killed process
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) // 2, hard))
    try:
        save(model)
    except OSError as error:
        print("save failed:", error.errno)
    else:
        sys.exit("the save past the size limit did not fail")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    reloaded = tiny()
    reloaded.load_weights(path)
    same = all(np.array_equal(a, b) for a, b in zip(reloaded.get_weights(), good))
    print("old weights intact:", same)
    """
)


@once_in("jax", "atomic saving does not depend on the backend")
@pytest.mark.parametrize("name", ["model.weights.h5", "model.keras"])
def test_failed_save_keeps_the_previous_file(tmp_path, name):
    path = tmp_path / name
    result = subprocess.run(
        [sys.executable, "-c", _FAILED_SAVE, str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "save failed: 27" in result.stdout  # EFBIG
    assert "old weights intact: True" in result.stdout
    assert sorted(os.listdir(tmp_path)) == [name]  # no temporary left behind


# --- Whole models from `.keras` files (the programs' --model_path) -------------------------


def test_load_irevnet_names_the_file_for_every_bad_model_file(tmp_path):
    good = tmp_path / "model.keras"
    tiny().save(good)
    assert isinstance(kir.models.load_irevnet(good), kir.IRevNet)
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    other = tmp_path / "other.keras"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(other)
    cases = {
        tmp_path / "missing.keras": "not found",
        truncated: "not a readable",
        other: "holds a Sequential, not an i-RevNet",
        tmp_path / "model.h5": "not a `.keras` file",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError) as error:
            kir.models.load_irevnet(path)
        assert str(path) in str(error.value) and message in str(error.value)
        assert "\n" not in str(error.value)


@once_in("jax", "the program reads the file the same way on every backend")
@pytest.mark.slow
def test_programs_report_a_damaged_model_file_in_one_line(tmp_path):
    damaged = tmp_path / "model.keras"
    damaged.write_bytes(b"PK\x03\x04 cut short")
    result = subprocess.run(
        [sys.executable, "-m", "applications.invert", f"--model_path={damaged}"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(damaged) in result.stderr.splitlines()[-1]

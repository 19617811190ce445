"""keras_irevnet.callbacks.InversionMonitor: the inversion error of every validation, in the
logs, the History and TensorBoard, on real digits."""

import keras
import numpy as np
import pytest

import keras_irevnet as kir
from keras_irevnet import data
from keras_irevnet.callbacks import InversionMonitor


def _digits(split, count):
    images, labels = next(
        data.make_dataset("digits", split, count, seed=0, repeat=False).dataset.as_numpy_iterator()
    )
    return images, labels


def _model(dtype=None):
    model = kir.IRevNet.from_preset("tiny", dtype=dtype)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    return model


def test_each_validation_logs_the_inversion_error():
    x, y = _digits("train", 64)
    x_val, y_val = _digits("validation", 32)
    history = _model().fit(
        x,
        y,
        batch_size=16,
        epochs=3,
        verbose=0,
        validation_data=(x_val, y_val),
        validation_freq=2,
        callbacks=[InversionMonitor(x_val[:8])],
    )
    errors = history.history["val_inverse_rel_error"]
    # Validated after epochs 2 only (validation_freq=2): measured then, not after epochs 1, 3.
    assert len(errors) == 1 and 0 < errors[0] < 1e-5


def test_every_epoch_without_validation():
    x, y = _digits("train", 32)
    history = _model().fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        verbose=0,
        callbacks=[InversionMonitor(x[:4], every_epoch=True)],
    )
    assert len(history.history["val_inverse_rel_error"]) == 2


def test_a_degraded_inverse_is_visible():
    """bfloat16 computation inverts to ~1e-2, float32 to ~1e-7: the monitor tells them apart."""
    x, y = _digits("train", 32)
    logged = {}
    for policy in ("float32", "mixed_bfloat16"):
        history = _model(policy).fit(
            x,
            y,
            batch_size=16,
            epochs=1,
            verbose=0,
            callbacks=[InversionMonitor(x[:8], every_epoch=True)],
        )
        logged[policy] = history.history["val_inverse_rel_error"][0]
    assert logged["float32"] < 1e-5 < 1e-3 < logged["mixed_bfloat16"], logged


def test_reconstructions_go_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    x, y = _digits("train", 32)
    _model().fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        verbose=0,
        callbacks=[InversionMonitor(x[:6], log_dir=str(tmp_path), num_shown=3, every_epoch=True)],
    )
    log = event_accumulator.EventAccumulator(
        str(tmp_path / "inversion"), size_guidance={"tensors": 0}
    )
    log.Reload()
    (tag,) = log.Tags()["tensors"]
    events = log.Tensors(tag)
    assert [e.step for e in events] == [0, 1]
    width, height, *pngs = events[0].tensor_proto.string_val
    # Three panels side by side (original, reconstruction, difference) of 16x16 images.
    assert (int(width), int(height)) == (48, 16) and len(pngs) == 3
    assert all(png.startswith(b"\x89PNG") for png in pngs)


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match=r"must be a non-empty batch \(N, H, W, C\)"):
        InversionMonitor(np.zeros((16, 16, 3), "float32"))
    with pytest.raises(ValueError, match="non-empty batch"):
        InversionMonitor(np.zeros((0, 16, 16, 3), "float32"))

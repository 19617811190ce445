"""ImageNet predictions in words (`decode_predictions`), `applications.evaluate` on the digits
and on a miniature ImageNet built by tfds from real-format archives, and
`applications.classify` on photos."""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import keras_irevnet as kir
from tests.helpers import once_in, photos, tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- decode_predictions ------------------------------------------------------------------------


def _scores(batch=2, seed=0):
    return np.random.default_rng(seed).random((batch, 1000)).astype("float32")


def test_decode_predictions_offline_gives_wordnet_ids_in_order():
    """No network here: Keras cannot fetch its class names, so WordNet ids stand in."""
    from keras.src.applications import imagenet_utils

    if imagenet_utils.CLASS_INDEX is not None:
        pytest.skip("Keras' class names are already loaded in this process")
    scores = _scores()
    scores[0, 0], scores[1, 999] = 2.0, 3.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded = kir.decode_predictions(scores, top=3)
    assert any("WordNet ids instead" in str(w.message) for w in caught)
    assert [len(d) for d in decoded] == [3, 3]
    assert decoded[0][0][:2] == ("n01440764", "n01440764")  # class 0: tench
    assert decoded[1][0][0] == "n15075141"  # class 999
    assert [s for _, _, s in decoded[0]] == sorted((s for _, _, s in decoded[0]), reverse=True)


def test_decode_predictions_uses_keras_class_names(monkeypatch):
    from keras.src.applications import imagenet_utils

    names = {str(i): [f"n{i:08d}", f"class {i}"] for i in range(1000)}
    monkeypatch.setattr(imagenet_utils, "CLASS_INDEX", names)
    scores = _scores()
    decoded = kir.decode_predictions(scores, top=2)
    best = int(np.argmax(scores[0]))
    assert decoded[0][0][:2] == (f"n{best:08d}", f"class {best}")


def test_decode_predictions_refuses_other_shapes():
    with pytest.raises(ValueError, match=r"shape \(batch, 1000\); got shape \(2, 10\)"):
        kir.decode_predictions(np.zeros((2, 10)))
    with pytest.raises(ValueError, match=r"`top` must be in \[1, 1000\], got 0"):
        kir.decode_predictions(np.zeros((1, 1000)), top=0)


# --- applications.evaluate ---------------------------------------------------------------------


def _evaluate(**flags):
    from applications import evaluate

    defaults = dict(
        model_path=None,
        weights=None,
        official_checkpoint=None,
        model=None,
        model_config=None,
        dataset="digits",
        split="validation",
        data_dir=None,
        manual_dir=None,
        batch_size=64,
        steps=None,
        inverse_images=32,
        output=None,
        verbose=0,
    )
    return evaluate.run({**defaults, **flags})


def _accuracy(scores, labels, k):
    top = np.argsort(-np.asarray(scores), axis=1)[:, :k]
    return float(np.mean([label in row for label, row in zip(labels, top)]))


def test_evaluate_on_the_digits(tmp_path):
    from keras_irevnet import data

    model = kir.IRevNet.from_preset("tiny")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    train = data.make_dataset("digits", "train", 64, seed=0)
    # shuffle=False: the pipeline shuffles; Keras warns that it cannot shuffle a dataset.
    model.fit(train.dataset, steps_per_epoch=train.steps, epochs=3, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)

    results = _evaluate(model_path=str(path))
    with open(tmp_path / "evaluation.json") as f:
        assert json.load(f) == {k: v for k, v in results.items() if k != "json"}
    validation = data.make_dataset("digits", "validation", 64, repeat=False)
    labels = np.concatenate([y for _, y in validation.dataset.as_numpy_iterator()])
    scores = model.predict(validation.dataset, verbose=0)
    assert results["images"] == 360 == len(labels)
    assert results["top1"] == pytest.approx(_accuracy(scores, labels, 1), abs=1e-6)
    assert results["top5"] == pytest.approx(_accuracy(scores, labels, 5), abs=1e-6)
    assert results["top1"] > 0.3  # trained: well above chance (0.1)
    assert 0 < results["inverse_rel_error"] < 1e-5


def test_evaluate_refuses_a_model_of_another_dataset(tmp_path):
    path = tmp_path / "model.keras"
    tiny_model(input_shape=(16, 16, 3), classes=5).save(path)
    with pytest.raises(ValueError, match="classifies 5 classes, digits has 10"):
        _evaluate(model_path=str(path))
    with pytest.raises(ValueError, match="exactly one of --model_path"):
        _evaluate(model_path=str(path), weights="imagenet", model="bijective")


@once_in("tensorflow", "tfds builds the dataset the same way for every backend")
@pytest.mark.slow
def test_evaluate_on_a_miniature_imagenet_built_from_the_archives(tmp_path):
    from tests.imagenet_fixture import write_manual_dir

    manual = tmp_path / "manual"
    written = write_manual_dir(str(manual))
    model = kir.IRevNet.from_preset("tiny", input_shape=(32, 32, 3), classes=1000)
    path = tmp_path / "model.keras"
    model.save(path)
    results = _evaluate(
        model_path=str(path),
        dataset="imagenet2012",
        data_dir=str(tmp_path / "tfds"),
        manual_dir=str(manual),
        batch_size=2,
    )
    assert results["images"] == len(written["validation"]) == 4
    from keras_irevnet import data

    validation = data.make_dataset(
        "imagenet2012",
        "validation",
        2,
        image_size=32,
        data_dir=str(tmp_path / "tfds"),
        repeat=False,
    )
    labels = np.concatenate([y for _, y in validation.dataset.as_numpy_iterator()])
    synsets = kir.preprocessing._wordnet_ids()
    assert sorted(synsets[label] for label in labels) == sorted(s for _, s in written["validation"])
    scores = model.predict(validation.dataset, verbose=0)
    assert results["top5"] == pytest.approx(_accuracy(scores, labels, 5), abs=1e-6)
    assert results["inverse_rel_error"] < 1e-5


# --- applications.classify ---------------------------------------------------------------------


@once_in("jax", "the program's output does not depend on the backend")
@pytest.mark.slow
def test_classify_prints_top5_and_writes_photo_beside_reconstruction(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, pixels in enumerate(photos(120, 2)):
        Image.fromarray(pixels.astype("uint8")).save(folder / f"photo{i}.jpg")
    model = kir.IRevNet.from_preset("tiny", input_shape=(224, 224, 3), classes=1000)
    model.save(tmp_path / "model.keras")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "applications.classify",
            f"--model_path={tmp_path}/model.keras",
            f"--output_dir={tmp_path / 'out'}",
            str(folder),
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    blocks = done.stdout.split("photo beside its reconstruction")
    assert len(blocks) == 3  # two photos
    assert all(
        len([line for line in b.splitlines() if "%" in line and "(n" in line]) == 5
        for b in blocks[:2]
    )
    pngs = sorted(os.listdir(tmp_path / "out"))
    assert pngs == ["photo0.reconstruction.png", "photo1.reconstruction.png"]
    assert (tmp_path / "out" / pngs[0]).read_bytes().startswith(b"\x89PNG")


def test_classify_refuses_missing_photos_and_non_imagenet_models(tmp_path):
    from PIL import Image

    from applications import classify

    path = tmp_path / "m.keras"
    tiny_model(input_shape=(32, 32, 3)).save(path)
    args = dict(
        model_path=str(path),
        weights=None,
        official_checkpoint=None,
        model=None,
        model_config=None,
        output_dir=str(tmp_path),
        top=5,
    )
    with pytest.raises(ValueError, match="missing.jpg'.*no such file or directory"):
        classify.run(args, [str(tmp_path / "missing.jpg")])
    photo = tmp_path / "p.png"
    Image.fromarray(photos(64, 1)[0].astype("uint8")).save(photo)
    with pytest.raises(ValueError, match="needs an ImageNet classifier.*5 classes"):
        classify.run(args, [str(photo)])

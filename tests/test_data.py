"""The tf.data pipelines: shapes, dtypes, ranges, seeded determinism, fit on every backend."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_irevnet as kir
from keras_irevnet import data
from keras_irevnet.data import digits
from keras_irevnet.preprocessing import NORMALIZATION


def _first_batch(split):
    images, labels = next(split.dataset.as_numpy_iterator())
    return images, labels


def _bounds(mode):
    mean, std = (np.asarray(v) for v in NORMALIZATION[mode])
    return (-mean / std).min() - 1e-5, ((1 - mean) / std).max() + 1e-5


@pytest.mark.parametrize(
    "name, size, mode, classes",
    [("imagenet2012", 32, "imagenet", 1000), ("cifar10", 32, "cifar", 10)],
)
@pytest.mark.parametrize("split", ["train", "validation"])
def test_tfds_pipelines_on_mock_data(name, size, mode, classes, split):
    with tfds.testing.mock_data(num_examples=12):
        made = data.make_dataset(name, split, 4, image_size=size, seed=3, prepare=False)
        images, labels = _first_batch(made)
        again, again_labels = _first_batch(
            data.make_dataset(name, split, 4, image_size=size, seed=3, prepare=False)
        )
        other, _ = _first_batch(
            data.make_dataset(name, split, 4, image_size=size, seed=4, prepare=False)
        )
    assert made.num_examples == 12 and made.classes == classes
    assert made.steps == 3  # 12 images in batches of 4 (full batches only when training)
    assert images.shape == (4, size, size, 3) and images.dtype == np.float32
    assert labels.shape == (4,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < classes
    low, high = _bounds(mode)
    assert low <= images.min() and images.max() <= high
    assert images.std() > 0.1  # real variation, not a constant image
    np.testing.assert_array_equal(images, again)  # same seed: same batch
    np.testing.assert_array_equal(labels, again_labels)
    if split == "train":  # another seed: another order / augmentation
        assert not np.array_equal(images, other)


def test_imagenet_train_batches_are_full_and_repeat():
    with tfds.testing.mock_data(num_examples=6):
        made = data.make_dataset("imagenet2012", "train", 4, image_size=32, seed=0, prepare=False)
        batches = list(made.dataset.take(5).as_numpy_iterator())
    # drop_remainder + repeat: every training batch is full, the pipeline never ends.
    assert [b[0].shape[0] for b in batches] == [4] * 5


def test_digits_split_is_fixed_and_upsampled():
    train = data.make_dataset("digits", "train", 64, seed=0)
    validation = data.make_dataset("digits", "validation", 64)
    assert (train.num_examples, validation.num_examples) == (1437, 360)
    assert (train.steps, validation.steps) == (22, 6)
    images, labels = _first_batch(validation)
    assert images.shape == (64, 16, 16, 3) and images.dtype == np.float32
    # Grey digits copied to RGB; the validation split is neither shuffled nor augmented.
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    second, second_labels = _first_batch(data.make_dataset("digits", "validation", 64))
    np.testing.assert_array_equal(images, second)
    np.testing.assert_array_equal(labels, second_labels)
    from keras_irevnet.data.digits import load_digits_split

    train_images, _ = load_digits_split("train")
    test_images, _ = load_digits_split("test")
    # The two splits are disjoint images of the 1797 (no image in both).
    train_rows = {row.tobytes() for row in train_images.reshape(len(train_images), -1)}
    assert not any(row.tobytes() in train_rows for row in test_images.reshape(360, -1))
    assert data.make_dataset("digits", "train", 8, image_size=32).image_size == 32


def test_unknown_dataset_and_bad_batch():
    with pytest.raises(ValueError, match="Unknown dataset 'mnist'.*cifar10.*digits"):
        data.make_dataset("mnist", "train", 8)
    with pytest.raises(ValueError, match="global batch.*3 replicas"):
        data.make_dataset("digits", "train", 8, num_replicas=3)


def test_missing_imagenet_archive_names_file_and_place(tmp_path):
    (tmp_path / "manual").mkdir()
    with pytest.raises(FileNotFoundError) as error:
        data.make_dataset(
            "imagenet2012",
            "train",
            8,
            data_dir=str(tmp_path / "tfds"),
            manual_dir=str(tmp_path / "manual"),
        )
    message = str(error.value)
    assert "ILSVRC2012_img_train.tar" in message
    assert str(tmp_path / "manual" / "ILSVRC2012_img_train.tar") in message
    # Without a manual_dir: tfds' default place, under the data_dir.
    with pytest.raises(FileNotFoundError, match="downloads/manual/ILSVRC2012_img_val.tar"):
        data.make_dataset("imagenet2012", "validation", 8, data_dir=str(tmp_path / "tfds"))


@pytest.mark.parametrize("name", ["imagenet2012", "cifar10", "digits"])
def test_fit_from_pipelines_on_this_backend(name):
    """model.fit / evaluate read the tf.data pipelines on TensorFlow, JAX and torch alike."""

    with tfds.testing.mock_data(num_examples=8):
        train = data.make_dataset(name, "train", 4, image_size=16, seed=0, prepare=False)
        validation = data.make_dataset(name, "validation", 4, image_size=16, prepare=False)
        model = kir.IRevNet.from_preset("tiny", classes=train.classes)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        history = model.fit(train.dataset, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
        results = model.evaluate(validation.dataset, steps=2, verbose=0, return_dict=True)
    assert np.isfinite(history.history["loss"][0])
    assert 0.0 <= results["accuracy"] <= 1.0


def _images(dataset, batches):
    return [x for x, _ in dataset.take(batches).as_numpy_iterator()]


def test_start_step_continues_where_a_run_stopped():
    """A pipeline started at step k yields exactly batch k onwards of one started at 0, across
    the end of a pass over the data (digits: 89 batches of 16 per pass)."""
    kwargs = dict(seed=5)
    whole = _images(data.make_dataset("digits", "train", 16, **kwargs).dataset, 92)
    resumed = _images(data.make_dataset("digits", "train", 16, start_step=87, **kwargs).dataset, 5)
    for expected, got in zip(whole[87:], resumed):
        np.testing.assert_array_equal(expected, got)
    with pytest.raises(ValueError, match="start_step must be a non-negative integer"):
        data.make_dataset("digits", "train", 16, start_step=-1)
    with pytest.raises(ValueError, match="repeated training pipelines only"):
        data.make_dataset("digits", "validation", 16, start_step=3)


@pytest.mark.parametrize("name", ["digits", "cifar10"])
def test_batches_do_not_depend_on_earlier_iterations(name):
    """Keras may open an iterator to peek at a batch before training: the batches a seeded
    pipeline yields must be the same whether or not it was iterated before, and each pass
    over the data must still be shuffled and augmented afresh."""
    with tfds.testing.mock_data(num_examples=24):

        def pipeline():
            return data.make_dataset(name, "train", 8, image_size=16, seed=3, prepare=False)

        peeked = pipeline().dataset
        next(iter(peeked))
        passes = pipeline().num_examples // 8
        fresh = _images(pipeline().dataset, 2 * passes)
        for expected, got in zip(fresh, _images(peeked, 2 * passes)):
            np.testing.assert_array_equal(expected, got)
    first_pass, second_pass = np.concatenate(fresh[:passes]), np.concatenate(fresh[passes:])
    assert not np.array_equal(first_pass, second_pass)


def test_keras_sees_training_as_endless_and_evaluation_as_its_steps():
    # Keras keeps one iterator over the epochs only for an infinite dataset, and sizes its
    # progress bars and evaluation from a finite one's cardinality.
    train = data.make_dataset("digits", "train", 16, seed=0)
    validation = data.make_dataset("digits", "validation", 16)
    assert int(train.dataset.cardinality()) == tf.data.INFINITE_CARDINALITY
    steps = -(-digits.NUM_VALIDATION // 16)
    assert int(validation.dataset.cardinality()) == validation.steps == steps


def test_worker_shares_make_up_the_global_batches():
    """Worker i of W gets the i-th contiguous W-th of every global batch (from step k too)."""
    kwargs = dict(seed=2, start_step=3)
    global_batches = _images(data.make_dataset("digits", "train", 16, **kwargs).dataset, 4)
    shares = [
        np.concatenate(
            _images(data.make_dataset("digits", "train", 16, shard=(i, 2), **kwargs).dataset, 2)
        )
        for i in range(2)
    ]
    for k, batch in enumerate(global_batches):
        for i in range(2):
            np.testing.assert_array_equal(
                shares[i][8 * k : 8 * (k + 1)], batch[8 * i : 8 * (i + 1)]
            )
    with pytest.raises(ValueError, match="must divide evenly over the 3 workers"):
        data.make_dataset("digits", "train", 16, shard=(0, 3))

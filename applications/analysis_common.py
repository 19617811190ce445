"""What `invert` and `analyze` share: loading a trained model and arrays of real images.

Importing it defines no absl flags (`define_shared_flags` does, when a program calls it), so
both programs and the tests can import this module freely.
"""

import os

import numpy as np

DEFAULT_MODEL_PATH = os.path.join("runs", "irevnet_tiny_digits", "model.keras")


def define_shared_flags(output_subdir):
    """Defines the flags invert and analyze share: model, data, output and figure sizes.

    Called by each program under `__main__` only, so importing the programs (as the tests do)
    defines no flags.
    """
    from absl import flags

    flags.DEFINE_string("model_path", DEFAULT_MODEL_PATH, "A .keras file from applications.train.")
    flags.DEFINE_string(
        "dataset",
        "digits",
        "digits (scikit-learn, offline), cifar10, cifar100 or imagenet2012 (tfds): the "
        "dataset the model was trained on.",
    )
    flags.DEFINE_string("data_dir", None, "tfds data directory (default ~/tensorflow_datasets).")
    flags.DEFINE_string(
        "output_dir",
        None,
        f"Where the figures and JSON go (default: <model dir>/{output_subdir}).",
    )
    flags.DEFINE_integer("num_images", 8, "Images shown in reconstructions.png.")
    flags.DEFINE_integer("num_pairs", 4, "Image pairs interpolated in interpolations.png.")
    flags.DEFINE_integer("steps", 8, "Points on each interpolation line, ends included.")
    flags.DEFINE_integer("batch_size", 64, "Images per forward / inverse pass.")
    flags.DEFINE_integer("verbose", 1, "1: progress bars; 0: silent.")


def load_model(model_path):
    """The i-RevNet saved by the training program (a `.keras` file), ready for inference."""
    if not model_path or not model_path.endswith(".keras"):
        raise ValueError(
            f"--model_path must be a .keras file written by applications.train, got {model_path!r}."
        )
    if not os.path.isfile(model_path):
        raise FileNotFoundError(
            f"--model_path {model_path} does not exist; train a model first "
            "(python -m applications.train writes runs/irevnet_tiny_digits/model.keras)."
        )
    from keras_irevnet.models import load_irevnet

    return load_irevnet(model_path)


def load_arrays(dataset, split, count, model, data_dir=None, batch_size=64):
    """Up to `count` (image, label) pairs of one split, preprocessed as for training.

    Uses the training program's own pipelines (`keras_irevnet.data.make_dataset`) in
    evaluation mode (no augmentation, no shuffling, fixed order), at the model's image size.

    Returns:
        (images float32 (N, H, W, C), labels int64 (N,)), N = min(count, split size).
    """
    from keras_irevnet import data

    height, width, channels = model.image_shape
    if height != width:
        raise ValueError(
            f"the model takes {height}x{width} images, but the data pipelines make square "
            "images; analyse it with arrays through keras_irevnet.analysis instead."
        )
    pipeline = data.make_dataset(
        dataset,
        split,
        batch_size,
        image_size=height,
        training=False,
        repeat=False,
        seed=0,
        data_dir=data_dir,
    )
    images, labels, held = [], [], 0
    for x, y in pipeline.dataset:
        images.append(np.asarray(x))
        labels.append(np.asarray(y))
        held += len(labels[-1])
        if held >= count:
            break
    if not images:
        raise ValueError(f"the {split} split of {dataset} is empty.")
    images = np.concatenate(images)[:count].astype("float32")
    labels = np.concatenate(labels)[:count].astype("int64")
    if images.shape[1:] != tuple(model.image_shape):
        raise ValueError(
            f"{dataset} gives images of shape {images.shape[1:]}, the model takes "
            f"{tuple(model.image_shape)}."
        )
    return images, labels


def uniform_noise(like, count, seed=0):
    """Uniform noise images over the value range of `like` (the paper inverts noise too)."""
    rng = np.random.default_rng(seed)
    low, high = float(np.min(like)), float(np.max(like))
    return rng.uniform(low, high, (count,) + like.shape[1:]).astype("float32")


def write_json(path, payload):
    """Standard JSON, written atomically (`keras_irevnet.atomic.write_json`); returns `path`."""
    from keras_irevnet import atomic

    return atomic.write_json(path, payload)


def default_output_dir(model_path, name):
    return os.path.join(os.path.dirname(os.path.abspath(model_path)), name)


def check_positive(args, *names):
    for name in names:
        if args[name] is None or args[name] < 1:
            raise ValueError(f"--{name} must be a positive integer, got {args[name]!r}.")

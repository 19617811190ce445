r"""Converts the authors' PyTorch i-RevNet checkpoint into a Keras `.weights.h5` file.

The checkpoints of github.com/jhjacobsen/pytorch-i-revnet (`torch.save({'state_dict': ...})`,
`module.` prefixes) load into the matching constructor; the result loads back with
`kir.IRevNetBijective(weights="irevnet_bijective.weights.h5")` (or `model.load_weights`).

    python -m applications.convert \
        --official_checkpoint=ckpt/i-revnet-301.pth.tar --model=bijective \
        --output=irevnet_bijective.weights.h5 --sanity_batch=some_photos/

With `--sanity_batch` (a directory of .jpg/.png files or a .npy array of RGB pixels in
[0, 255], shape (N, H, W, 3)) it prints the top-1 class of each image, a quick check that the
conversion is right (a wrong layout gives near-uniform, image-independent predictions).

Runs on any Keras backend; torch is needed to read the checkpoint file.
"""

import os
import sys

from absl import app, flags

from applications.images import IMAGE_EXTENSIONS, image_files, load_image
from applications.models import (
    build_model,
    define_model_flags,
    parse_model_arguments,
    preprocessing_mode,
)

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def load_sanity_batch(path, image_shape):
    """(names, pixels in [0, 255] of shape (N,) + image_shape) from a .npy file or a directory."""
    import numpy as np

    if path.endswith(".npy"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--sanity_batch: file not found: {path!r}.")
        pixels = np.load(path).astype("float32")
        if pixels.ndim == 3:
            pixels = pixels[None]
        if tuple(pixels.shape[1:]) != tuple(image_shape):
            raise ValueError(
                f"--sanity_batch: {path!r} holds images of shape {tuple(pixels.shape[1:])}, "
                f"but the model takes {tuple(image_shape)}."
            )
        return [f"{os.path.basename(path)}[{i}]" for i in range(len(pixels))], pixels
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"--sanity_batch must be a .npy file or a directory of images, got {path!r}."
        )
    names = [os.path.basename(p) for p in image_files(path)]
    if not names:
        raise ValueError(f"--sanity_batch: no images ({', '.join(IMAGE_EXTENSIONS)}) in {path!r}.")
    pixels = np.stack([load_image(os.path.join(path, n), image_shape[:2]) for n in names])
    return names, pixels


def top1(model, names, pixels, mode):
    """[(name, class index, probability)] of the model's top-1 class on each image."""
    import keras
    import numpy as np

    import keras_irevnet as kir

    scores = model.predict(kir.preprocess_input(pixels, mode), verbose=0)
    scores = keras.ops.convert_to_numpy(scores)
    if model.classifier_activation in (None, "linear"):  # logits: softmax for a probability
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
    classes = scores.argmax(-1)
    return [(n, int(c), float(scores[i, c])) for i, (n, c) in enumerate(zip(names, classes))]


def convert(
    official_checkpoint,
    model,
    output,
    model_config=None,
    sanity_batch=None,
    preprocessing=None,
    overwrite=False,
):
    """Loads the authors' checkpoint into `model`, writes `output`, and prints the sanity top-1.

    `output` is written through `keras_irevnet.atomic`, so a failed or killed conversion never
    leaves a partial `.weights.h5` under its name. Returns the sanity predictions (or []).
    """
    import keras_irevnet as kir

    # Every argument is checked before the (slow) model is built.
    parse_model_arguments(model, model_config)
    if not official_checkpoint or not os.path.isfile(official_checkpoint):
        raise FileNotFoundError(f"--official_checkpoint: file not found: {official_checkpoint!r}.")
    if not output or not output.endswith(".weights.h5"):
        raise ValueError(f"--output must be a path ending in .weights.h5, got {output!r}.")
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(
            f"--output: {output!r} already exists; pass --overwrite to replace it."
        )
    if sanity_batch:
        preprocessing_mode(model, preprocessing)  # raises if the preset has no mode

    keras_model = build_model(model, model_config)
    if sanity_batch and not keras_model.include_top:
        raise ValueError(
            "--sanity_batch needs a classifier: the model was built with include_top=False."
        )
    kir.load_official_weights(keras_model, official_checkpoint)

    _write_weights(keras_model, output)
    print(f"Wrote {output} ({keras_model.count_params():,} parameters of {keras_model.name}).")

    results = []
    if sanity_batch:
        mode = preprocessing_mode(model, preprocessing)
        names, pixels = load_sanity_batch(sanity_batch, keras_model.image_shape)
        results = top1(keras_model, names, pixels, mode)
        cifar = model == "cifar" and keras_model.classes == len(CIFAR10_CLASSES)
        print(f"Top-1 on the sanity batch ({len(names)} images, {mode} preprocessing):")
        for name, index, probability in results:
            label = f" ({CIFAR10_CLASSES[index]})" if cifar else ""
            print(f"  {name}: class {index}{label}, p={probability:.3f}")
    return results


def _write_weights(keras_model, output):
    """Saves the weights of `keras_model` to `output` atomically: a hidden temporary file next
    to it, renamed into place once complete. Temporaries of `output` that killed conversions
    left are removed first."""
    from keras_irevnet.atomic import atomic_path, remove_partials

    remove_partials(os.path.dirname(os.path.abspath(output)), name=os.path.basename(output))
    with atomic_path(output) as temporary:
        keras_model.save_weights(temporary, overwrite=True)


FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("official_checkpoint", None, "The authors' checkpoint (.pth.tar).")
    define_model_flags()
    flags.DEFINE_string("output", None, "The .weights.h5 file to write.")
    flags.DEFINE_string(
        "sanity_batch",
        None,
        "Optional: a directory of images or a .npy array (N, H, W, 3) of RGB pixels in "
        "[0, 255]; prints the top-1 class of each.",
    )
    flags.DEFINE_enum(
        "preprocessing",
        None,
        ["imagenet", "cifar"],
        "Normalisation of the sanity batch; defaults to the preset's (cifar for --model=cifar, "
        "imagenet for bijective and injective); required for --model=tiny.",
    )
    flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        convert(
            FLAGS.official_checkpoint,
            FLAGS.model,
            FLAGS.output,
            model_config=FLAGS.model_config,
            sanity_batch=FLAGS.sanity_batch,
            preprocessing=FLAGS.preprocessing,
            overwrite=FLAGS.overwrite,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        sys.exit(f"convert: error: {error}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)

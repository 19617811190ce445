r"""The two things an i-RevNet does, on your own photos: classify them, and invert them.

    python -m applications.classify --weights=imagenet --model=bijective cat.jpg dog.png
    python -m applications.classify --model_path=my_imagenet_model.keras photos/

For each photo (or each image in a directory) it prints the model's top-5 ImageNet classes
(`keras_irevnet.decode_predictions`) and writes a PNG of the photo, as the model sees it
(shorter side resized to 256 * size / 224, central crop), beside its reconstruction from
Phi(x), `inverse(features(x))`, into --output_dir (default: the working directory), with the
reconstruction error in the title. The model must classify the 1000 ImageNet classes.
"""

import os

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
    """The program's flags; returns their names."""
    from applications.models import define_model_source_flags

    before = set(FLAGS)
    define_model_source_flags()
    flags.DEFINE_string("output_dir", ".", "Where the PNGs go (PHOTO.reconstruction.png).")
    flags.DEFINE_integer("top", 5, "Classes shown per photo.")
    return tuple(sorted(set(FLAGS) - before))


def photo_paths(arguments):
    """The photos named on the command line: files, and the images inside directories."""
    from applications.images import image_files

    if not arguments:
        raise ValueError("name at least one photo (or a directory of photos) to classify.")
    paths = []
    for argument in arguments:
        if os.path.isdir(argument):
            found = image_files(argument)
            if not found:
                raise ValueError(f"{argument!r} holds no images (.jpg, .png, ...).")
            paths += found
        elif os.path.isfile(argument):
            paths.append(argument)
        else:
            raise ValueError(f"{argument!r}: no such file or directory.")
    return paths


def classify(model, paths, output_dir, top=5):
    """[(path, [(wordnet id, name, probability), ...], png path, reconstruction error)]."""
    import numpy as np

    import keras_irevnet as kir
    from applications import figures
    from applications.images import load_image
    from keras_irevnet import analysis

    pixels = np.stack([load_image(path, model.image_shape[:2]) for path in paths])
    x = kir.preprocess_input(pixels, mode="imagenet")
    scores = np.asarray(model.predict(x, verbose=0), dtype="float64")
    if model.classifier_activation in (None, "linear"):  # logits: probabilities to show
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
    decoded = kir.decode_predictions(scores, top=top)
    restored = kir.deprocess_input(analysis.reconstruct(model, x), mode="imagenet")
    results = []
    for path, original, back, classes in zip(paths, pixels, restored, decoded):
        error = float(np.linalg.norm(back - original) / np.linalg.norm(original))
        name = os.path.splitext(os.path.basename(path))[0]
        png = figures.plot_photo_and_reconstruction(
            original,
            back,
            os.path.join(output_dir, f"{name}.reconstruction.png"),
            title=f"{classes[0][1]} ({classes[0][2]:.1%}); reconstruction error {error:.1e}",
        )
        results.append((path, classes, png, error))
    return results


def run(args, photos):
    """Loads the model, classifies and inverts `photos`, prints and returns the results."""
    from applications.models import check_model_source, load_model_from

    check_model_source(args)
    paths = photo_paths(photos)
    if args["top"] < 1 or args["top"] > 1000:
        raise ValueError(f"--top must be in [1, 1000], got {args['top']}.")
    model = load_model_from(args)
    if not model.include_top or model.classes != 1000:
        raise ValueError(
            "classify needs an ImageNet classifier (include_top=True, 1000 classes); the "
            f"model has {'no classifier' if not model.include_top else f'{model.classes} classes'}."
        )
    results = classify(model, paths, args["output_dir"], top=args["top"])
    for path, classes, png, error in results:
        print(f"{path}:")
        for wordnet_id, name, probability in classes:
            print(f"  {probability:6.1%}  {name} ({wordnet_id})")
        print(
            f"  photo beside its reconstruction from Phi(x) (relative error {error:.1e}): {png}",
            flush=True,
        )
    return results


def main(argv):
    import sys

    try:
        run({name: FLAGS[name].value for name in FLAG_NAMES}, argv[1:])
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    FLAG_NAMES = define_flags()
    app.run(main)

r"""Top-1 / top-5 accuracy and the inversion error of an i-RevNet on a dataset split.

The authors' ImageNet checkpoint on the ILSVRC-2012 validation set (tfds builds imagenet2012
from the two archives in --manual_dir the first time), with their evaluation preprocessing
(shorter side resized to 256, central 224 x 224 crop, their normalisation):

    python -m applications.evaluate --weights=imagenet --model=bijective \
        --dataset=imagenet2012 --manual_dir=/data/ilsvrc2012 --data_dir=/data/tfds

(their README reports 74.018 % top-1 and 91.590 % top-5; the same from the checkpoint file:
--official_checkpoint=i-revnet-301.pth.tar --model=bijective). A model of your own:

    python -m applications.evaluate --model_path=runs/irevnet_tiny_digits/model.keras

Writes --output (default: evaluation.json beside --model_path, or in the working directory):
top1, top5, loss, inverse_rel_error (||x - inverse(features(x))|| / ||x|| over
--inverse_images images), the number of images and what was evaluated. Datasets: digits
(offline), cifar10, cifar100, imagenet2012; the split is the dataset's held-out one.
"""

import os
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
    """The program's flags; returns their names."""
    from applications.models import define_model_source_flags
    from keras_irevnet.data import SPECS

    before = set(FLAGS)
    define_model_source_flags()
    flags.DEFINE_string(
        "dataset",
        "digits",
        f"One of {', '.join(SPECS)}: the dataset the model classifies (digits is offline).",
    )
    flags.DEFINE_string("split", "validation", "The split: validation (held out) or train.")
    flags.DEFINE_string("data_dir", None, "tfds data directory (default ~/tensorflow_datasets).")
    flags.DEFINE_string(
        "manual_dir",
        None,
        "Directory with ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (imagenet2012).",
    )
    flags.DEFINE_integer("batch_size", 64, "Images per batch.")
    flags.DEFINE_integer("steps", None, "Evaluate this many batches only (default: all).")
    flags.DEFINE_integer(
        "inverse_images", 256, "Images of the split the inversion error is measured on."
    )
    flags.DEFINE_string("output", None, "The JSON file to write (see the module docstring).")
    flags.DEFINE_integer("verbose", 1, "1: a progress bar; 0: silent.")
    return tuple(sorted(set(FLAGS) - before))


def check_arguments(args):
    """ValueError / FileNotFoundError naming the flag, before any slow work."""
    from applications.models import check_model_source
    from keras_irevnet.data import dataset_spec

    check_model_source(args)
    try:
        dataset_spec(args["dataset"])
    except ValueError as error:
        raise ValueError(f"--dataset: {error}") from None
    for name in ("batch_size", "inverse_images"):
        if args[name] < 1:
            raise ValueError(f"--{name} must be positive, got {args[name]}.")
    if args["steps"] is not None and args["steps"] < 1:
        raise ValueError(f"--steps must be positive, got {args['steps']}.")


def run(args):
    """Evaluates as the module docstring says; writes and returns the results."""
    import keras

    from applications.models import load_model_from
    from applications.training.metrics import accuracy_metrics
    from keras_irevnet import analysis, atomic, data

    started = time.time()
    check_arguments(args)
    model = load_model_from(args)
    spec = data.dataset_spec(args["dataset"])
    _check_fit(model, spec)
    split = data.make_dataset(
        args["dataset"],
        args["split"],
        args["batch_size"],
        image_size=model.image_shape[0],
        training=False,
        repeat=False,
        data_dir=args["data_dir"],
        manual_dir=args["manual_dir"],
    )
    softmax = model.classifier_activation not in (None, "linear")
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax),
        metrics=accuracy_metrics(spec.classes),
    )
    steps = split.steps if args["steps"] is None else min(args["steps"], split.steps)
    scores = model.evaluate(split.dataset, steps=steps, verbose=args["verbose"], return_dict=True)
    images = data.first_images(split.dataset, args["inverse_images"])
    inversion = analysis.reconstruction_error(model, images, batch_size=args["batch_size"])
    results = {
        "top1": float(scores["top1"]),
        **({"top5": float(scores["top5"])} if "top5" in scores else {}),
        "loss": float(scores["loss"]),
        "inverse_rel_error": inversion["rel_error"],
        "inverse_images": len(images),
        "images": min(split.num_examples, steps * args["batch_size"]),
        "dataset": args["dataset"],
        "split": args["split"],
        "model": _described_source(args),
        "backend": keras.backend.backend(),
        "seconds": round(time.time() - started, 1),
    }
    output = args["output"] or _default_output(args)
    results["json"] = atomic.write_json(output, results)
    top5 = f", top-5 {100 * results['top5']:.3f} %" if "top5" in results else ""
    print(
        f"{results['model']} on {args['dataset']} {args['split']} ({results['images']} "
        f"images): top-1 {100 * results['top1']:.3f} %{top5}; inversion error "
        f"{results['inverse_rel_error']:.2e} on {len(images)} images.\n  results: {output}",
        flush=True,
    )
    return results


def _check_fit(model, spec):
    if not model.include_top:
        raise ValueError("the model has no classifier (include_top=False): nothing to score.")
    if model.classes != spec.classes:
        raise ValueError(
            f"the model classifies {model.classes} classes, {spec.name} has {spec.classes}: "
            "evaluate it on the dataset it was trained for (--dataset)."
        )
    height, width, _ = model.image_shape
    if height is None or height != width:
        raise ValueError(
            f"the data pipelines make square images of a fixed size; the model takes "
            f"{model.image_shape}."
        )


def _described_source(args):
    if args["model_path"]:
        return os.path.abspath(args["model_path"])
    if args["weights"]:
        return f"{args['model']} ({args['weights']} weights)"
    return f"{args['model']} ({os.path.abspath(args['official_checkpoint'])})"


def _default_output(args):
    if args["model_path"]:
        return os.path.join(os.path.dirname(os.path.abspath(args["model_path"])), "evaluation.json")
    return os.path.abspath("evaluation.json")


if __name__ == "__main__":
    from applications.cli import main_for

    app.run(main_for(run, define_flags(), errors=(ValueError, FileNotFoundError, ImportError)))

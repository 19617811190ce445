r"""Inverts a trained i-RevNet: reconstructions and feature-space interpolations as PNG.

The paper's analyses 1 and 2. With no flags it reads the model that `applications.train`
writes by default and the digits' validation images:

    python -m applications.invert
    python -m applications.invert --model_path=runs/cifar/model.keras --dataset=cifar10

Writes to --output_dir (default: an `inversion` folder beside the model):
  reconstructions.png  originals, Phi^-1(Phi(x)) and their difference
  interpolations.png   Phi^-1((1 - t) Phi(x_a) + t Phi(x_b)) for t from 0 to 1, one row per pair
  inversion.json       relative reconstruction errors on images and on uniform noise
"""

import os

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
    """The program's flags; returns their names."""
    from applications import analysis_common

    before = set(FLAGS)
    analysis_common.define_shared_flags("inversion")
    flags.adopt_module_key_flags(analysis_common)  # so --helpshort lists them too
    flags.DEFINE_integer(
        "num_eval", 256, "Validation images the reconstruction error is measured on."
    )
    return tuple(sorted(set(FLAGS) - before))


def inversion_analyses(
    model, images, labels, output_dir, num_images, num_pairs, steps, batch_size=64, verbose=1
):
    """Analyses 1 and 2 on validation images; writes the two figures, returns the results.

    Returns a dict with `reconstruction` (rel_error, max_rel_error, noise_rel_error, counts)
    and `interpolation` (pairs, steps, end_rel_error) and `figures` (name -> path).
    """
    import numpy as np

    from applications import figures
    from applications.analysis_common import uniform_noise
    from keras_irevnet import analysis

    if len(images) < max(num_images, 2 * num_pairs):
        raise ValueError(
            f"{len(images)} images are too few for {num_images} reconstructions and "
            f"{num_pairs} interpolation pairs."
        )
    if verbose:
        print(f"Inversion: {len(images)} images and as many uniform-noise images.", flush=True)
    error = analysis.reconstruction_error(model, images, batch_size=batch_size, verbose=verbose)
    noise = uniform_noise(images, len(images))
    noise_error = analysis.reconstruction_error(model, noise, batch_size=batch_size)
    shown = images[:num_images]
    reconstructions = analysis.reconstruct(model, shown, batch_size=batch_size)
    paths = {
        "reconstructions": figures.plot_reconstructions(
            shown,
            reconstructions,
            os.path.join(output_dir, "reconstructions.png"),
            rel_error=error["rel_error"],
        )
    }

    # Pairs of different classes where possible, so the line crosses between classes.
    first, second = _pairs(labels, num_pairs)
    strips = analysis.interpolate(
        model, images[first], images[second], steps=steps, batch_size=batch_size
    )
    ends = np.concatenate([strips[:, 0], strips[:, -1]])
    originals = np.concatenate([images[first], images[second]])
    end_error = float(
        np.linalg.norm((ends - originals).astype("float64"))
        / np.linalg.norm(originals.astype("float64"))
    )
    paths["interpolations"] = figures.plot_interpolations(
        strips, os.path.join(output_dir, "interpolations.png")
    )
    return {
        "reconstruction": {
            "rel_error": error["rel_error"],
            "max_rel_error": error["max"],
            "noise_rel_error": noise_error["rel_error"],
            "images": int(len(images)),
        },
        "interpolation": {
            "pairs": [[int(a), int(b)] for a, b in zip(first, second)],
            "steps": int(steps),
            "end_rel_error": end_error,
        },
        "figures": paths,
    }


def _pairs(labels, count):
    """Index pairs (a, b), each index used once, with different labels where possible."""
    unused = list(range(len(labels)))
    first, second = [], []
    while len(first) < count:
        a = unused.pop(0)
        b = next((j for j in unused if labels[j] != labels[a]), unused[0])
        unused.remove(b)
        first.append(a)
        second.append(b)
    return first, second


def run(args):
    """Loads the model and data, writes the figures and inversion.json; returns the results."""
    from applications.analysis_common import (
        check_positive,
        default_output_dir,
        load_arrays,
        load_model,
        write_json,
    )

    check_positive(args, "num_eval", "num_images", "num_pairs", "batch_size")
    if args["steps"] < 2:
        raise ValueError(f"--steps must be at least 2 (the two ends), got {args['steps']}.")
    model = load_model(args["model_path"])
    output_dir = args["output_dir"] or default_output_dir(args["model_path"], "inversion")
    images, labels = load_arrays(
        args["dataset"],
        "validation",
        max(args["num_eval"], args["num_images"], 2 * args["num_pairs"]),
        model,
        data_dir=args["data_dir"],
        batch_size=args["batch_size"],
    )
    results = inversion_analyses(
        model,
        images,
        labels,
        output_dir,
        args["num_images"],
        args["num_pairs"],
        args["steps"],
        batch_size=args["batch_size"],
        verbose=args["verbose"],
    )
    results = {"model_path": args["model_path"], "dataset": args["dataset"], **results}
    results["json"] = write_json(os.path.join(output_dir, "inversion.json"), results)
    rec = results["reconstruction"]
    print(
        f"Relative reconstruction error ||x - inverse(features(x))|| / ||x||: "
        f"{rec['rel_error']:.2e} on {rec['images']} {args['dataset']} images (max "
        f"{rec['max_rel_error']:.2e}), {rec['noise_rel_error']:.2e} on uniform noise.\n"
        + "\n".join(f"  {name}: {path}" for name, path in results["figures"].items())
        + f"\n  results: {results['json']}",
        flush=True,
    )
    return results


if __name__ == "__main__":
    from applications.cli import main_for

    app.run(main_for(run, define_flags()))

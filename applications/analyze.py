r"""The paper's five analyses of a trained i-RevNet, as PNG figures and one JSON file.

1. exact inversion (images and uniform noise), 2. interpolation in feature space, 3. local
stability (singular values of the Jacobian of Phi at a validation image), 4. progressive
separation (1-NN and linear SVM on the spatially averaged features of every block),
5. contraction (the same classifiers on the first d principal components of the final
representation). With no flags it analyses the model `applications.train` writes by default,
on the digits:

    python -m applications.analyze
    python -m applications.analyze --model_path=runs/cifar/model.keras --dataset=cifar10 \
        --num_train=10000 --num_test=2000 --jacobian_k=64

Writes to --output_dir (default: an `analysis` folder beside the model): reconstructions.png,
interpolations.png, singular_values.png, separation.png, pca.png and analysis.json with the
keys reconstruction {rel_error, ...}, separability [{block, nn, svm}], pca [{dims, nn, svm}],
jacobian_singular_values [decreasing], and more detail beside them.
"""

import os
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
    """The program's flags; returns their names."""
    from applications import analysis_common

    before = set(FLAGS)
    analysis_common.define_shared_flags("analysis")
    flags.adopt_module_key_flags(analysis_common)  # so --helpshort lists them too
    flags.DEFINE_integer(
        "num_train",
        2000,
        "Training images the classifiers (and PCA) are fitted on (at most the split's size).",
    )
    flags.DEFINE_integer(
        "num_test",
        1000,
        "Validation images the classifiers are scored on and inversion is measured on.",
    )
    flags.DEFINE_integer(
        "jacobian_k",
        0,
        "How many of the largest Jacobian singular values to compute by the matrix-free "
        "Lanczos method; 0: all of them (dense Jacobian) when the image has at most 4096 "
        "numbers, else the top 64.",
    )
    flags.DEFINE_integer(
        "jacobian_image", 0, "Index of the validation image the Jacobian is taken at."
    )
    flags.DEFINE_list(
        "pca_dims", [], "Numbers of principal components to try (default 1, 2, 4, ... and all)."
    )
    flags.DEFINE_float("svm_c", 1.0, "Regularisation parameter C of the linear SVM.")
    return tuple(sorted(set(FLAGS) - before))


def _check(args):
    from applications.analysis_common import check_positive

    check_positive(args, "num_train", "num_test", "num_images", "num_pairs", "batch_size")
    if args["steps"] < 2:
        raise ValueError(f"--steps must be at least 2 (the two ends), got {args['steps']}.")
    if args["jacobian_k"] < 0 or args["jacobian_image"] < 0:
        raise ValueError("--jacobian_k and --jacobian_image must not be negative.")
    if args["svm_c"] <= 0:
        raise ValueError(f"--svm_c must be positive, got {args['svm_c']}.")
    try:
        dims = [int(d) for d in args["pca_dims"] or []]
    except ValueError:
        raise ValueError(f"--pca_dims must be integers, got {args['pca_dims']!r}.") from None
    if any(d < 1 for d in dims):
        raise ValueError(f"--pca_dims must be positive, got {dims}.")
    return dims or None


def _stage(verbose, text):
    if verbose:
        print(text, flush=True)


def run(args):
    """Runs the five analyses, writes the figures and analysis.json; returns the results."""
    import keras

    from applications.analysis_common import default_output_dir, load_model, write_json
    from applications.invert import inversion_analyses

    started = time.time()
    pca_dims = _check(args)
    model = load_model(args["model_path"])
    output_dir = args["output_dir"] or default_output_dir(args["model_path"], "analysis")
    data = _load_data(args, model)
    chance = 1.0 / data["classes"]

    # 1 and 2: inversion and interpolation.
    inversion = inversion_analyses(
        model,
        data["x_test"],
        data["y_test"],
        output_dir,
        args["num_images"],
        args["num_pairs"],
        args["steps"],
        batch_size=args["batch_size"],
        verbose=args["verbose"],
    )
    paths = inversion.pop("figures")
    jacobian, paths["singular_values"] = _stability(args, model, data, output_dir)
    separability, features, paths["separation"] = _separation(args, model, data, output_dir, chance)
    pca, paths["pca"] = _contraction(args, data, features, pca_dims, output_dir, chance)

    results = {
        "model_path": args["model_path"],
        "dataset": args["dataset"],
        "backend": keras.backend.backend(),
        "image_shape": list(model.image_shape),
        "feature_shape": list(model.feature_shape),
        "blocks": len(model.block_outputs),
        "num_train": int(len(data["x_train"])),
        "num_test": int(len(data["x_test"])),
        "chance": chance,
        **inversion,
        "separability": separability,
        "pca": pca,
        "jacobian_singular_values": jacobian.pop("values"),
        "jacobian": jacobian,
        "figures": paths,
        "seconds": round(time.time() - started, 1),
    }
    results["json"] = write_json(os.path.join(output_dir, "analysis.json"), results)
    print(summary(results), flush=True)
    return results


def _load_data(args, model):
    """The validation and training images the analyses use, and the number of classes."""
    import numpy as np

    from applications.analysis_common import load_arrays

    needed = max(
        args["num_test"], args["num_images"], 2 * args["num_pairs"], args["jacobian_image"] + 1
    )
    common = dict(model=model, data_dir=args["data_dir"], batch_size=args["batch_size"])
    x_test, y_test = load_arrays(args["dataset"], "validation", needed, **common)
    x_train, y_train = load_arrays(args["dataset"], "train", args["num_train"], **common)
    classes = len(np.unique(np.concatenate([y_train, y_test])))
    _stage(
        args["verbose"],
        f"{args['dataset']}: {len(x_train)} training and {len(x_test)} "
        f"validation images of shape {x_test.shape[1:]}, {classes} classes.",
    )
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, classes=classes)


def _stability(args, model, data, output_dir):
    """3: the singular values of the Jacobian of Phi at one validation image."""
    import math

    from applications import figures
    from keras_irevnet import analysis
    from keras_irevnet.analysis.stability import MAX_DENSE_INPUTS

    n = math.prod(model.image_shape)
    k = args["jacobian_k"] or (None if n <= MAX_DENSE_INPUTS else 64)
    if k is not None and k >= min(n, math.prod(model.feature_shape)):
        k = None
    method = "all singular values (dense)" if k is None else f"top {k} (Lanczos)"
    _stage(args["verbose"], f"Jacobian of Phi at a validation image: {method}")
    image = data["x_test"][args["jacobian_image"]]
    values = analysis.jacobian_singular_values(model, image, k=k, verbose=args["verbose"])
    path = figures.plot_singular_values(
        values,
        os.path.join(output_dir, "singular_values.png"),
        title="Local stability: singular values of ∂Φ/∂x at a validation image"
        + ("" if k is None else f" (top {k})"),
    )
    summary = {
        "values": [float(v) for v in values],
        "image_index": args["jacobian_image"],
        "method": "dense" if k is None else "lanczos",
        "count": int(len(values)),
        "largest": float(values[0]),
        "smallest": float(values[-1]),
        "ratio_largest_to_smallest": float(values[0] / values[-1])
        if values[-1] > 0
        else float("inf"),
    }
    return summary, path


def _separation(args, model, data, output_dir, chance):
    """4: 1-NN and linear SVM on each block's averaged features; returns the features too."""
    from applications import figures
    from keras_irevnet import analysis

    verbose, batch_size = args["verbose"], args["batch_size"]
    _stage(verbose, "Features after every block (spatially averaged): training images")
    train = analysis.block_features(model, data["x_train"], batch_size=batch_size, verbose=verbose)
    _stage(verbose, "... and validation images")
    test = analysis.block_features(model, data["x_test"], batch_size=batch_size, verbose=verbose)
    _stage(verbose, "1-NN and linear SVM per block")
    separability = analysis.progressive_separation(
        train, data["y_train"], test, data["y_test"], svm_c=args["svm_c"], verbose=verbose
    )
    path = figures.plot_separation(
        separability, os.path.join(output_dir, "separation.png"), chance=chance
    )
    return separability, (train, test), path


def _contraction(args, data, features, pca_dims, output_dir, chance):
    """5: the same classifiers on the first d principal components of the last features."""
    from applications import figures
    from keras_irevnet import analysis

    train, test = (f[max(f)] for f in features)
    _stage(
        args["verbose"],
        "1-NN and linear SVM on the first d principal components of the final features",
    )
    if pca_dims is not None:
        limit = min(train.shape[1], len(train))
        too_big = [d for d in pca_dims if d > limit]
        if too_big:
            raise ValueError(
                f"--pca_dims {too_big} exceed the {limit} components available (final features "
                f"have {train.shape[1]} numbers, {len(train)} training images)."
            )
    pca = analysis.pca_contraction(
        train,
        data["y_train"],
        test,
        data["y_test"],
        dims=pca_dims,
        svm_c=args["svm_c"],
        verbose=args["verbose"],
    )
    return pca, figures.plot_pca(pca, os.path.join(output_dir, "pca.png"), chance=chance)


def summary(results):
    """A few lines a reader can compare with the paper."""
    rec = results["reconstruction"]
    sep, pca, jac = results["separability"], results["pca"], results["jacobian"]
    lines = [
        f"Inversion: relative error {rec['rel_error']:.2e} on {rec['images']} images, "
        f"{rec['noise_rel_error']:.2e} on uniform noise; interpolation ends "
        f"{results['interpolation']['end_rel_error']:.2e}.",
        f"Jacobian at one image ({jac['method']}, {jac['count']} values): sigma_1 = "
        f"{jac['largest']:.3g}, sigma_{jac['count']} = {jac['smallest']:.3g} (ratio "
        f"{jac['ratio_largest_to_smallest']:.3g}).",
        f"Separation (chance {100 * results['chance']:.0f} %), block: 1-NN / linear SVM",
        *(f"  {r['block']:3d}: {100 * r['nn']:5.1f} / {100 * r['svm']:5.1f} %" for r in sep),
        "Contraction, PCA dims: 1-NN / linear SVM",
        *(f"  {r['dims']:5d}: {100 * r['nn']:5.1f} / {100 * r['svm']:5.1f} %" for r in pca),
        *(f"  {name}: {path}" for name, path in results["figures"].items()),
        f"  results: {results['json']}  ({results['seconds']} s)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    from applications.cli import main_for

    app.run(main_for(run, define_flags()))

"""The figures of the paper's analyses, drawn with matplotlib into PNG files.

Plotting lives here, in the applications, so that `keras_irevnet.analysis` stays free of side
effects. Every function takes the NumPy results of an analysis and a path, writes one PNG and
returns the path.

Images are shown as they are, preprocessed, after one affine map per original image (or per
interpolated pair) to [0, 1]: the same map is applied to the reconstruction, so a
reconstruction that differs from its original also looks different.
"""

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed (or available on servers)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _display_map(reference):
    """The affine map taking `reference`'s value range to [0, 1]."""
    low, high = float(np.min(reference)), float(np.max(reference))
    scale = high - low if high > low else 1.0
    return lambda image: np.clip((np.asarray(image, "float64") - low) / scale, 0.0, 1.0)


def _show(axis, image):
    image = np.asarray(image)
    if image.shape[-1] == 1:
        axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    elif image.shape[-1] == 3:
        axis.imshow(image, interpolation="nearest")
    else:
        # Neither grey nor RGB: show the mean over channels, so the figure is still drawn.
        axis.imshow(image.mean(axis=-1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])


def _save(figure, path):
    from keras_irevnet.atomic import atomic_path

    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=120, bbox_inches="tight", format="png")
    finally:
        plt.close(figure)
    return path


def plot_reconstructions(originals, reconstructions, path, rel_error=None, title=None):
    """Originals (top row), Phi^-1(Phi(x)) (middle row) and |difference| (bottom row).

    The bottom row is scaled by the largest difference of the column, printed above it, so
    that a reader sees both that the images agree and by how little they differ.
    """
    originals, reconstructions = np.asarray(originals), np.asarray(reconstructions)
    if originals.shape != reconstructions.shape or originals.ndim != 4:
        raise ValueError(
            "plot_reconstructions: originals and reconstructions must be batches of images of "
            f"one shape, got {originals.shape} and {reconstructions.shape}."
        )
    count = len(originals)
    figure, axes = plt.subplots(3, count, figsize=(1.6 * count + 1.2, 5.4), squeeze=False)
    for i in range(count):
        to_display = _display_map(originals[i])
        _show(axes[0, i], to_display(originals[i]))
        _show(axes[1, i], to_display(reconstructions[i]))
        difference = np.abs(originals[i].astype("float64") - reconstructions[i])
        peak = float(difference.max())
        _show(axes[2, i], difference / peak if peak > 0 else difference)
        axes[2, i].set_title(f"max {peak:.1e}", fontsize=8)
    axes[0, 0].set_ylabel("original x")
    axes[1, 0].set_ylabel(r"$\Phi^{-1}(\Phi(x))$")
    axes[2, 0].set_ylabel("|difference|\n(rescaled)")
    heading = title or "Exact inversion: images and their reconstructions from Φ(x)"
    if rel_error is not None:
        heading += f"\nrelative error ‖x − Φ⁻¹(Φ(x))‖ / ‖x‖ = {rel_error:.2e}"
    figure.suptitle(heading)
    return _save(figure, path)


def plot_interpolations(strips, path, title=None):
    """One row per pair: Phi^-1((1 - t) Phi(x_a) + t Phi(x_b)) for t from 0 to 1."""
    strips = np.asarray(strips)
    if strips.ndim == 4:
        strips = strips[None]
    if strips.ndim != 5:
        raise ValueError(
            "plot_interpolations: expected (pairs, steps, height, width, channels) images, got "
            f"shape {strips.shape}."
        )
    pairs, steps = strips.shape[:2]
    figure, axes = plt.subplots(
        pairs, steps, figsize=(1.4 * steps + 1.0, 1.5 * pairs + 1.0), squeeze=False
    )
    for p in range(pairs):
        to_display = _display_map(np.stack([strips[p, 0], strips[p, -1]]))
        for s in range(steps):
            _show(axes[p, s], to_display(strips[p, s]))
        axes[p, 0].set_ylabel(f"pair {p + 1}")
    for s, t in enumerate(np.linspace(0.0, 1.0, steps)):
        axes[-1, s].set_xlabel(f"t = {t:.2f}")
    figure.suptitle(
        title
        or "Interpolation in feature space: Φ⁻¹((1 − t) Φ(x_a) + t Φ(x_b))\n"
        "(t = 0 and t = 1 are the reconstructions of x_a and x_b)"
    )
    return _save(figure, path)


def plot_singular_values(values, path, title=None, label=None):
    """The singular values sigma_i of dPhi/dx at an image, in decreasing order, log scale."""
    values = np.asarray(values, dtype="float64")
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"plot_singular_values: expected a 1-D array, got shape {values.shape}.")
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    index = np.arange(1, len(values) + 1)
    positive = values > 0
    condition = values[0] / values[-1] if values[-1] > 0 else float("inf")
    axis.semilogy(
        index[positive],
        values[positive],
        marker="." if len(values) <= 200 else None,
        label=label or f"σ_i of ∂Φ/∂x (σ_1 / σ_{len(values)} = {condition:.3g})",
    )
    axis.set_xlabel("index i (decreasing order)")
    axis.set_ylabel("singular value σ_i (log scale)")
    axis.set_title(title or "Local stability: singular values of the Jacobian of Φ at an image")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    return _save(figure, path)


def _accuracy_plot(x, results, xlabel, title, path, chance, log_x=False):
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    names = {"nn": "1-nearest neighbour", "svm": "linear SVM"}
    for key, name in names.items():
        if results and key in results[0]:
            axis.plot(x, [100 * r[key] for r in results], marker="o", label=name)
    if chance is not None:
        axis.axhline(
            100 * chance, color="grey", linestyle="--", label=f"chance ({100 * chance:.0f} %)"
        )
    if log_x:
        axis.set_xscale("log", base=2)
        # Plain numbers at the dimensions tried, rather than powers of two.
        axis.set_xticks(x)
        axis.set_xticklabels([str(v) for v in x])
        axis.minorticks_off()
    else:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel(xlabel)
    axis.set_ylabel("test accuracy (%)")
    axis.set_ylim(0, 100)
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend()
    return _save(figure, path)


def plot_separation(results, path, chance=None, title=None):
    """Accuracy of the 1-NN and the linear SVM on the features of each block."""
    if not results:
        raise ValueError("plot_separation: no results to plot.")
    return _accuracy_plot(
        [r["block"] for r in results],
        results,
        "block j (depth)",
        title or "Progressive separation: accuracy on spatially averaged features of block j",
        path,
        chance,
    )


def plot_pca(results, path, chance=None, title=None):
    """Accuracy of the same classifiers on the first d principal components of Phi(x)."""
    if not results:
        raise ValueError("plot_pca: no results to plot.")
    return _accuracy_plot(
        [r["dims"] for r in results],
        results,
        "number of principal components d (log scale)",
        title or "Contraction: accuracy on the first d principal components of the final features",
        path,
        chance,
        log_x=True,
    )


def plot_photo_and_reconstruction(photo, reconstruction, path, title=None):
    """A photo (RGB pixels in [0, 255]) beside its reconstruction inverse(features(x))."""
    photo, reconstruction = np.asarray(photo), np.asarray(reconstruction)
    if photo.shape != reconstruction.shape or photo.ndim != 3:
        raise ValueError(
            "plot_photo_and_reconstruction: two images of the same shape (H, W, C) are "
            f"needed, got {photo.shape} and {reconstruction.shape}."
        )
    figure, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    for axis, image, label in zip(
        axes, (photo, reconstruction), ("photo", "inverse(features(photo))")
    ):
        _show(axis, np.clip(image / 255.0, 0.0, 1.0))
        axis.set_title(label, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)

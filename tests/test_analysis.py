"""The paper's analyses (keras_irevnet.analysis) and their programs, on tiny models and real data.

Real data: scikit-learn's 8x8 digits (offline) and scikit-image's photos. The models are tiny
so that the whole file stays well under a minute and a half per backend on two CPU cores.
"""

import json
import math
import os

import keras
import numpy as np
import pytest

from keras_irevnet import analysis
from keras_irevnet.analysis import stability
from tests.helpers import preprocessed_photos, relative_error, tiny_model


def digits_arrays():
    """The 1797 digits as (N, 8, 8, 3) float32 (grey repeated, as the data pipeline does),
    standardized with one mean and std."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype("float32") / 16.0
    x = (x - x.mean()) / x.std()
    return np.repeat(x[..., None], 3, axis=-1).astype("float32"), digits.target.astype("int64")


@pytest.fixture(scope="module")
def digits_model():
    """A tiny bijective i-RevNet trained briefly (3 epochs, 1200 digits) on the digits.

    The photo tests use it too (one model per file: building a model is the slow part of
    these tests on JAX): trained weights and BatchNorm statistics give a non-trivial
    Jacobian, and Phi(x) has exactly as many numbers (192) as an 8x8 RGB image.
    """
    x, y = digits_arrays()
    model = tiny_model(
        blocks=(2, 1),
        channels=(6, 24),
        mult=2,
        input_shape=(8, 8, 3),
        classes=10,
        classifier_activation="softmax",
    )
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x[:1200], y[:1200], epochs=3, batch_size=64, verbose=0)
    return model


# --- 1. inversion ----------------------------------------------------------------------------


def test_reconstruction_error_photos_and_noise(digits_model):
    photos = preprocessed_photos(8)
    result = analysis.reconstruction_error(digits_model, photos, batch_size=3)
    assert result["per_image"].shape == (4,)
    assert 0 < result["rel_error"] < 1e-5  # not 0: the couplings round, but barely
    assert result["max"] >= result["rel_error"] / 2
    noise = np.random.default_rng(0).uniform(-2, 2, (4, 8, 8, 3)).astype("float32")
    assert analysis.reconstruction_error(digits_model, noise)["rel_error"] < 1e-5
    # One image without a batch axis is accepted.
    single = analysis.reconstruction_error(digits_model, photos[0])
    assert single["per_image"].shape == (1,)


def test_interpolation_ends_are_the_images(digits_model):
    photos = preprocessed_photos(8)
    strip = analysis.interpolate(digits_model, photos[0], photos[1], steps=5)
    assert strip.shape == (5, 8, 8, 3)
    assert relative_error(strip[0], photos[0]) < 1e-5
    assert relative_error(strip[-1], photos[1]) < 1e-5
    # The ends are the reconstructions of the images (Phi(x_a) is not perturbed); only the
    # batch size differs, which may change the last bit of a convolution.
    assert relative_error(strip[0], analysis.reconstruct(digits_model, photos[:1])[0]) < 1e-6
    # The middle is in between, neither end.
    assert relative_error(strip[2], photos[0]) > 0.1 and relative_error(strip[2], photos[1]) > 0.1
    # Features along the line are the linear mix of the ends' features (bijective model).
    z = keras.ops.convert_to_numpy(digits_model.features(strip))
    np.testing.assert_allclose(z[2], 0.5 * (z[0] + z[4]), atol=1e-4 * np.abs(z).max())

    pairs = analysis.interpolate(digits_model, photos[:2], photos[2:], steps=3, batch_size=2)
    assert pairs.shape == (2, 3, 8, 8, 3)
    assert relative_error(pairs[1, -1], photos[3]) < 1e-5


def test_inversion_argument_errors(digits_model):
    photos = preprocessed_photos(8)
    with pytest.raises(ValueError, match=r"shape \(8, 8, 3\)"):
        analysis.reconstruction_error(digits_model, photos[:, :4])
    with pytest.raises(ValueError, match="steps"):
        analysis.interpolate(digits_model, photos[0], photos[1], steps=1)
    with pytest.raises(ValueError, match="as many images"):
        analysis.interpolate(digits_model, photos[:2], photos[:3])
    with pytest.raises(TypeError, match="i-RevNet"):
        analysis.reconstruction_error(keras.Sequential([keras.layers.Dense(2)]), photos)


# --- 3. local stability ----------------------------------------------------------------------


def finite_difference_jacobian(model, x, h=1e-2):
    """Central differences: a rough estimate independent of any autodiff (float32, so only
    to a few percent; it catches a misplaced column or a transposed layout)."""
    n = x.size
    basis = np.eye(n, dtype=x.dtype).reshape((n,) + x.shape[1:])
    plus = keras.ops.convert_to_numpy(model.features(x + h * basis)).astype("float64")
    minus = keras.ops.convert_to_numpy(model.features(x - h * basis)).astype("float64")
    return ((plus - minus) / (2 * h)).reshape(n, -1).T


def reverse_mode_jacobian(model, x):
    """Row i is J^T e_i, by vector-Jacobian products: the other autodiff direction."""
    from keras_irevnet.analysis import autodiff

    m = math.prod(model.feature_shape)
    cotangents = np.eye(m, dtype=x.dtype).reshape((m,) + tuple(model.feature_shape))
    rows = autodiff.vjp(model.features, np.repeat(x, m, axis=0), cotangents)
    return keras.ops.convert_to_numpy(rows).reshape(m, -1).astype("float64")


def test_dense_jacobian_and_spectrum(digits_model):
    """Forward-mode columns against reverse-mode rows and central differences; singular
    values against NumPy's SVD of the reverse-mode Jacobian."""
    x = preprocessed_photos(8, 1)
    jacobian = analysis.dense_jacobian(digits_model, x, batch_size=50)
    assert jacobian.shape == (math.prod(digits_model.feature_shape), 8 * 8 * 3)
    reverse = reverse_mode_jacobian(digits_model, x)
    assert relative_error(jacobian, reverse) < 1e-5
    # Differences see the ReLU kinks and the curvature of a trained net: a few percent off,
    # while a misplaced or transposed column would be off by about 100 %.
    assert relative_error(jacobian, finite_difference_jacobian(digits_model, x)) < 0.1

    values = analysis.jacobian_singular_values(digits_model, x)
    expected = np.linalg.svd(reverse, compute_uv=False)
    assert values.shape == (192,)
    assert np.all(np.diff(values) <= 0)  # decreasing
    np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-5 * expected[0])
    assert values[0] / values[-1] > 10  # a non-trivial spectrum, not an identity
    # Additive couplings and psi preserve volume: |det J| = prod(sigma_i) = 1 exactly for a
    # bijective i-RevNet, a check on all 192 values at once.
    assert abs(np.sum(np.log(values))) < 1e-3


def test_matrix_free_top_k_matches_dense(digits_model):
    x = preprocessed_photos(8, 1)
    dense = analysis.jacobian_singular_values(digits_model, x, method="dense")
    assert dense.shape == (192,) and np.all(np.diff(dense) <= 0)
    top = analysis.jacobian_singular_values(digits_model, x, k=4, method="lanczos")
    assert top.shape == (4,) and np.all(np.diff(top) <= 0)
    np.testing.assert_allclose(top, dense[:4], rtol=1e-4)
    # "auto" without k, or with k at least the rank, is the dense method.
    np.testing.assert_array_equal(analysis.jacobian_singular_values(digits_model, x, k=192), dense)


def test_jacobian_argument_errors(digits_model, monkeypatch):
    x = preprocessed_photos(8, 2)
    with pytest.raises(ValueError, match="one image"):
        analysis.jacobian_singular_values(digits_model, x)
    with pytest.raises(ValueError, match="k"):
        analysis.jacobian_singular_values(digits_model, x[:1], k=0)
    with pytest.raises(ValueError, match="method"):
        analysis.jacobian_singular_values(digits_model, x[:1], method="svd")
    # Inputs too big for the dense Jacobian ask for k (the limit lowered, to keep this fast).
    monkeypatch.setattr(stability, "MAX_DENSE_INPUTS", 100)
    with pytest.raises(ValueError, match="pass k"):
        analysis.jacobian_singular_values(digits_model, x[:1])
    assert analysis.jacobian_singular_values(digits_model, x[:1], k=1).shape == (1,)


# --- 4 and 5. separation and contraction -----------------------------------------------------


def test_block_features_shapes_batches_and_iterables(digits_model):
    x, _ = digits_arrays()
    feats = analysis.block_features(digits_model, x[:10], batch_size=4)
    assert sorted(feats) == [1, 2, 3]
    assert [feats[j].shape for j in (1, 2, 3)] == [(10, 12), (10, 12), (10, 48)]
    # The last block's average is the spatially averaged Phi(x).
    phi = keras.ops.convert_to_numpy(digits_model.features(x[:10]))
    np.testing.assert_allclose(feats[3], phi.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    # Batching does not change anything; an iterable of (images, labels) batches works too.
    whole = analysis.block_features(digits_model, x[:10], blocks=[-1], batch_size=64)
    assert list(whole) == [3]
    np.testing.assert_allclose(whole[3], feats[3], rtol=1e-5, atol=1e-6)
    stream = ((x[i : min(i + 3, 10)], None) for i in range(0, 10, 3))
    np.testing.assert_allclose(
        analysis.block_features(digits_model, stream, blocks=2)[2], feats[2], rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="1 to 3"):
        analysis.block_features(digits_model, x[:2], blocks=[4])


def test_separation_and_pca_curves_beat_chance(digits_model):
    x, y = digits_arrays()
    train = analysis.block_features(digits_model, x[:600])
    test = analysis.block_features(digits_model, x[1200:1500])
    separation = analysis.progressive_separation(train, y[:600], test, y[1200:1500])
    assert [r["block"] for r in separation] == [1, 2, 3]
    assert all(set(r) == {"block", "nn", "svm"} for r in separation)
    assert all(0 <= r[k] <= 1 for r in separation for k in ("nn", "svm"))
    chance = 0.1
    assert separation[-1]["nn"] > 5 * chance and separation[-1]["svm"] > 5 * chance
    # The trained representation separates better at the end than at the first block.
    assert separation[-1]["svm"] > separation[0]["svm"]

    pca = analysis.pca_contraction(train[3], y[:600], test[3], y[1200:1500])
    assert [r["dims"] for r in pca] == [1, 2, 4, 8, 16, 32, 48]
    assert pca[-1]["nn"] > 5 * chance and pca[-1]["svm"] > 5 * chance
    assert pca[0]["svm"] < pca[-1]["svm"]  # one component is not enough for ten classes
    # With all components the 1-NN sees the same distances as on the standardized features.
    assert pca[-1]["nn"] == pytest.approx(separation[-1]["nn"], abs=0.02)

    only_nn = analysis.pca_contraction(
        train[3], y[:600], test[3], y[1200:1500], dims=[3, 5], classifiers=["nn"]
    )
    assert [set(r) for r in only_nn] == [{"dims", "nn"}] * 2
    with pytest.raises(ValueError, match="between 1 and 48"):
        analysis.pca_contraction(train[3], y[:600], test[3], y[1200:1500], dims=[49])
    with pytest.raises(ValueError, match="labels"):
        analysis.progressive_separation(train, y[:10], test, y[1200:1500])


# --- the programs and their figures ----------------------------------------------------------


def assert_png(path, min_side=100):
    """`path` is a PNG file that decodes to an image of a sensible size."""
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= min_side and image.std() > 0


def test_figures_are_valid_pngs(tmp_path, digits_model):
    from applications import figures

    photos = preprocessed_photos(8)
    strips = analysis.interpolate(digits_model, photos[:2], photos[2:], steps=4)
    grey = np.random.default_rng(0).normal(size=(3, 8, 8, 1))
    written = [
        figures.plot_reconstructions(
            photos,
            analysis.reconstruct(digits_model, photos),
            str(tmp_path / "rec.png"),
            rel_error=1e-7,
        ),
        figures.plot_reconstructions(grey, grey, str(tmp_path / "grey.png")),
        figures.plot_interpolations(strips, str(tmp_path / "sub" / "interp.png")),
        figures.plot_singular_values(np.logspace(1, -3, 50), str(tmp_path / "sv.png")),
        figures.plot_separation(
            [{"block": 1, "nn": 0.3, "svm": 0.4}, {"block": 2, "nn": 0.8, "svm": 0.9}],
            str(tmp_path / "sep.png"),
            chance=0.1,
        ),
        figures.plot_pca(
            [{"dims": 1, "nn": 0.3, "svm": 0.2}, {"dims": 4, "nn": 0.9, "svm": 0.9}],
            str(tmp_path / "pca.png"),
            chance=0.1,
        ),
    ]
    for path in written:
        assert_png(path)
    with pytest.raises(ValueError, match="one shape"):
        figures.plot_reconstructions(photos, photos[:2], str(tmp_path / "bad.png"))


def program_args(model_path, output_dir, **overrides):
    args = dict(
        model_path=model_path,
        dataset="digits",
        data_dir=None,
        output_dir=output_dir,
        num_train=300,
        num_test=100,
        jacobian_k=0,
        jacobian_image=0,
        pca_dims=[],
        svm_c=1.0,
        num_images=4,
        num_pairs=2,
        steps=4,
        batch_size=64,
        verbose=0,
    )
    args.update(overrides)
    return args


@pytest.mark.slow
def test_analyze_program_on_a_trained_model(tmp_path, digits_model):
    """The program end to end: the data pipeline's digits, a saved model, five figures."""
    from applications import analyze

    model_path = str(tmp_path / "model.keras")
    digits_model.save(model_path)
    output_dir = str(tmp_path / "analysis")
    results = analyze.run(program_args(model_path, output_dir))

    with open(os.path.join(output_dir, "analysis.json")) as f:
        saved = json.load(f)
    assert {"reconstruction", "separability", "pca", "jacobian_singular_values"} <= set(saved)
    assert saved["reconstruction"]["rel_error"] < 1e-5
    assert saved["reconstruction"]["noise_rel_error"] < 1e-5
    assert [r["block"] for r in saved["separability"]] == [1, 2, 3]
    assert saved["separability"][-1]["svm"] > 0.5 and saved["separability"][-1]["nn"] > 0.5
    assert [r["dims"] for r in saved["pca"]] == [1, 2, 4, 8, 16, 32, 48]
    values = np.asarray(saved["jacobian_singular_values"])
    assert values.shape == (8 * 8 * 3,) and np.all(np.diff(values) <= 0) and values[-1] > 0
    assert saved["interpolation"]["end_rel_error"] < 1e-5
    assert sorted(results["figures"]) == [
        "interpolations",
        "pca",
        "reconstructions",
        "separation",
        "singular_values",
    ]
    for path in results["figures"].values():
        assert os.path.dirname(path) == output_dir
        assert_png(path)

    # The matrix-free path of the program, and its argument checks.
    top = analyze.run(
        program_args(
            model_path,
            str(tmp_path / "top"),
            jacobian_k=3,
            pca_dims=["2", "8"],
            num_train=100,
            num_test=50,
        )
    )
    np.testing.assert_allclose(top["jacobian_singular_values"], values[:3], rtol=1e-4)
    assert [r["dims"] for r in top["pca"]] == [2, 8]
    with pytest.raises(ValueError, match="pca_dims"):
        analyze.run(program_args(model_path, str(tmp_path / "x"), pca_dims=["two"]))
    with pytest.raises(FileNotFoundError, match="train a model first"):
        analyze.run(program_args(str(tmp_path / "missing.keras"), str(tmp_path / "x")))


@pytest.mark.slow
def test_invert_program(tmp_path, digits_model):
    from applications import invert

    model_path = str(tmp_path / "model.keras")
    digits_model.save(model_path)
    results = invert.run(
        dict(
            model_path=model_path,
            dataset="digits",
            data_dir=None,
            output_dir=None,
            num_eval=40,
            num_images=3,
            num_pairs=2,
            steps=3,
            batch_size=32,
            verbose=0,
        )
    )
    # The default output folder sits beside the model.
    assert os.path.dirname(results["json"]) == str(tmp_path / "inversion")
    assert results["reconstruction"]["rel_error"] < 1e-5
    for path in results["figures"].values():
        assert_png(path)
    # Pairs are of different digits.
    assert len(results["interpolation"]["pairs"]) == 2

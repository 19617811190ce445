"""Analysis 3 of the paper: local stability, the singular values of the Jacobian of Phi."""

import math

import keras
import numpy as np

from keras_irevnet.analysis import autodiff
from keras_irevnet.analysis._batching import (
    as_image_batch,
    check_model,
    check_positive_int,
    progbar,
)

# Above this many input numbers the dense Jacobian (input size x feature size numbers) stops
# being a good idea: 4096 inputs (a 64x64 RGB image at most) and a 4x wider feature already
# take 0.5 GB in float64. Bigger inputs use the matrix-free method with `k`.
MAX_DENSE_INPUTS = 4096


def dense_jacobian(model, x, batch_size=64, verbose=0):
    """The Jacobian of Phi = `model.features` at one image, as a dense (m, n) float64 matrix.

    n is the number of input numbers (prod(image_shape)), m the number of feature numbers.
    Column j is the Jacobian-vector product with the j-th basis image; `batch_size` columns
    are computed per forward-mode pass by stacking copies of x (inference mode treats
    examples independently).
    """
    check_model(model, "dense_jacobian")
    check_positive_int(batch_size, "batch_size", "dense_jacobian")
    x = _single_image(model, x, "dense_jacobian")
    dtype = model.compute_dtype
    n = math.prod(model.image_shape)
    m = math.prod(model.feature_shape)
    jacobian = np.empty((m, n), dtype="float64")
    jvp, _ = autodiff.products(_features(model), model.variables)
    bar = progbar(n, verbose, unit_name="column")
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        tangents = np.zeros((count, n), dtype=dtype)
        tangents[np.arange(count), start + np.arange(count)] = 1
        primals = np.repeat(x, count, axis=0)
        columns = jvp(primals, tangents.reshape((count,) + tuple(model.image_shape)))
        jacobian[:, start : start + count] = keras.ops.convert_to_numpy(columns).reshape(count, m).T
        if bar:
            bar.add(count)
    return jacobian


def jacobian_singular_values(
    model, x, k=None, method="auto", batch_size=64, tol=1e-6, seed=0, verbose=0
):
    """Singular values of the Jacobian of Phi = `model.features` at the image x, decreasing.

    The paper's local-stability analysis: Phi is invertible, but its inverse is only as
    stable as the Jacobian is well conditioned; a fast decay of the singular values means a
    small change of the features can come from a large change of the image.

    Two methods:
      - "dense": the whole Jacobian, one basis image per column by forward-mode products,
        then an SVD: all min(m, n) singular values. For small inputs (at most
        `MAX_DENSE_INPUTS` numbers, e.g. CIFAR or the 8x8 digits).
      - "lanczos": the top k, matrix-free. ARPACK's implicitly restarted Lanczos
        (scipy.sparse.linalg.eigsh) on J^T J, each product computed as one Jacobian-vector
        product (forward mode) followed by one vector-Jacobian product (reverse mode); J is
        never formed, so this works at ImageNet size.
    "auto" picks "dense" when k is None (or k >= the input size), "lanczos" otherwise.

    The products run in the model's compute dtype (float32 usually), so singular values
    below about 1e-6 times the largest are dominated by rounding.

    Args:
        model: an `IRevNet`.
        x: one image of `model.image_shape` (or a batch holding one), preprocessed as for
            training.
        k: how many of the largest singular values to return; None for all.
        method: "auto", "dense" or "lanczos".
        batch_size: columns per forward-mode pass of the dense method.
        tol: relative accuracy asked of ARPACK (the Lanczos method).
        seed: seed of the Lanczos starting vector (results are then reproducible).
        verbose: 0 silent, 1 a progress bar (Jacobian columns, or Lanczos products).

    Returns:
        A float64 NumPy array of singular values in decreasing order: min(m, n) of them for
        the full spectrum, k for the top k.
    """
    check_model(model, "jacobian_singular_values")
    x = _single_image(model, x, "jacobian_singular_values")
    n = math.prod(model.image_shape)
    m = math.prod(model.feature_shape)
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ValueError(
            f"jacobian_singular_values: `k` must be None or a positive integer, got {k!r}."
        )
    if method not in ("auto", "dense", "lanczos"):
        raise ValueError(
            f"jacobian_singular_values: `method` must be 'auto', 'dense' or 'lanczos', "
            f"got {method!r}."
        )
    rank = min(m, n)
    if method == "auto":
        method = "dense" if k is None or k >= rank else "lanczos"
    if method == "dense":
        if n > MAX_DENSE_INPUTS:
            raise ValueError(
                f"jacobian_singular_values: the input has {n} numbers, too many for the dense "
                f"Jacobian (at most {MAX_DENSE_INPUTS}: it would hold {m} x {n} numbers); "
                f"pass k (e.g. k=64) for the top k by the matrix-free Lanczos method."
            )
        jacobian = dense_jacobian(model, x, batch_size=batch_size, verbose=verbose)
        values = np.linalg.svd(jacobian, compute_uv=False)
        return values if k is None else values[:k]
    if k is None:
        raise ValueError("jacobian_singular_values: method='lanczos' needs `k`.")
    if k >= n:
        raise ValueError(
            f"jacobian_singular_values: the Lanczos method finds k < n = {n} singular values "
            f"(got k={k}); use method='dense' for all of them."
        )
    return _lanczos_singular_values(model, x, k, tol=tol, seed=seed, verbose=verbose)


def _lanczos_singular_values(model, x, k, tol, seed, verbose):
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    dtype = model.compute_dtype
    shape = (1,) + tuple(model.image_shape)
    n = math.prod(model.image_shape)
    jvp, vjp = autodiff.products(_features(model), model.variables)
    bar = progbar(None, verbose, unit_name="product")

    def normal_matvec(v):
        # J^T J v: forward mode gives J v, reverse mode then gives J^T (J v).
        v = np.asarray(v, dtype=dtype).reshape(shape)
        jtjv = vjp(x, jvp(x, v))
        if bar:
            bar.add(1)
        return keras.ops.convert_to_numpy(jtjv).astype("float64").reshape(-1)

    operator = LinearOperator((n, n), matvec=normal_matvec, dtype="float64")
    v0 = np.random.default_rng(seed).standard_normal(n)
    # J^T J is symmetric positive semi-definite: its largest eigenvalues are the squares of
    # the largest singular values of J.
    try:
        eigenvalues = eigsh(operator, k=k, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    except ArpackNoConvergence as error:
        raise RuntimeError(
            f"jacobian_singular_values: Lanczos found only {len(error.eigenvalues)} of the "
            f"top {k} singular values to the relative accuracy tol={tol} (products in "
            f"{dtype} are noisy); pass a larger tol (e.g. 1e-4) or a smaller k."
        ) from None
    return np.sqrt(np.clip(np.sort(eigenvalues)[::-1], 0, None))


def _single_image(model, x, what):
    x = as_image_batch(model, x, what, name="x")
    if len(x) != 1:
        raise ValueError(
            f"{what}: the Jacobian is taken at one image; got a batch of {len(x)}. "
            f"Pass x[i] for the image you want."
        )
    return np.asarray(x, dtype=model.compute_dtype)


def _features(model):
    def phi(images):
        return model.features(images, training=False)

    return phi

"""Analyses 4 and 5 of the paper: progressive separation with depth, and contraction (PCA).

The features are those of the paper: after each block, the pair (x1, x2) merged back into one
tensor and averaged over space; then standardized. The classifiers are a 1-nearest-neighbour
and a linear SVM (scikit-learn), trained on training features, scored on test features.
"""

import warnings

import keras
import numpy as np

from keras_irevnet.analysis._batching import check_model, check_positive_int, progbar

CLASSIFIERS = ("nn", "svm")


def _block_indices(model, blocks, what):
    count = len(model.block_outputs)
    if blocks is None:
        return list(range(1, count + 1))
    if isinstance(blocks, int):
        blocks = [blocks]
    chosen = []
    for b in blocks:
        if not isinstance(b, (int, np.integer)) or isinstance(b, bool):
            raise ValueError(f"{what}: `blocks` must hold integers, got {b!r}.")
        # 1-based like the paper's "block j"; negative values count from the end (-1: last).
        index = int(b) + count + 1 if b < 0 else int(b)
        if not 1 <= index <= count:
            raise ValueError(
                f"{what}: block {b} does not exist; the model has {count} blocks, numbered "
                f"1 to {count} (or -1 to -{count} from the end)."
            )
        chosen.append(index)
    return sorted(set(chosen))


def block_features(model, images, blocks=None, batch_size=64, verbose=0):
    """The representation after each block, averaged over space, for a set of images.

    After block j the network's state is the pair (x1, x2); merged back into one tensor it is
    the representation at depth j (`model.block_outputs`), from which Phi(x) follows
    bijectively. Averaged over height and width it gives one vector of 2 * channels_j numbers
    per image. The chosen blocks' averages are computed by one Keras model built on
    `model.block_outputs` and run with `predict` (batched, compiled, inference mode), so only
    the averaged vectors are kept.

    Args:
        model: an `IRevNet`.
        images: a batch (NumPy array, memory map or tensor) of shape (N,) + image_shape,
            preprocessed as for training; or what `keras.Model.predict` takes besides (a
            `tf.data.Dataset` of batches, a generator, ...; (images, labels) pairs
            contribute their images).
        blocks: which blocks to return, numbered from 1 (the first block) to the number of
            blocks; negative numbers count from the end (-1: the last block, whose average is
            the spatially averaged Phi(x)). None: all blocks.
        batch_size: images per pass (for arrays).
        verbose: 0 silent, 1 a progress bar.

    Returns:
        A dict {block number: float32 array of shape (N, 2 * channels_of_that_block)}, in
        increasing block order.
    """
    check_model(model, "block_features")
    check_positive_int(batch_size, "batch_size", "block_features")
    wanted = _block_indices(model, blocks, "block_features")
    expected = tuple(model.image_shape)
    if isinstance(images, np.ndarray) or hasattr(images, "shape"):
        images = images if isinstance(images, np.ndarray) else keras.ops.convert_to_numpy(images)
        if images.ndim != len(expected) + 1 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"block_features: `images` must have shape (batch,) + {expected}, got "
                f"{tuple(images.shape)}."
            )
        if not len(images):
            raise ValueError("block_features: `images` is empty.")
    names = list(model.block_outputs)
    pooled = [
        keras.layers.GlobalAveragePooling2D()(model.block_outputs[names[j - 1]]) for j in wanted
    ]
    extractor = keras.Model(model.inputs, pooled)
    kwargs = {"batch_size": batch_size} if isinstance(images, np.ndarray) else {}
    try:
        with warnings.catch_warnings():
            # A finite iterable of batches ends by running out; Keras warns that this
            # "interrupts training" whenever it does.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            outputs = extractor.predict(images, verbose=verbose, **kwargs)
    except ValueError as error:
        if "empty" in str(error).lower() or "no data" in str(error).lower():
            raise ValueError("block_features: `images` yielded no batches.") from None
        raise
    outputs = outputs if isinstance(outputs, list) else [outputs]
    return {j: np.asarray(out, dtype="float32") for j, out in zip(wanted, outputs)}


def _classifier(kind, svm_c, max_iter):
    if kind == "nn":
        from sklearn.neighbors import KNeighborsClassifier

        return KNeighborsClassifier(n_neighbors=1)
    from sklearn.svm import LinearSVC

    return LinearSVC(C=svm_c, max_iter=max_iter)


def _check_classifiers(classifiers, what):
    classifiers = tuple(classifiers)
    unknown = [c for c in classifiers if c not in CLASSIFIERS]
    if unknown or not classifiers:
        raise ValueError(
            f"{what}: `classifiers` must be a non-empty subset of {CLASSIFIERS}, got "
            f"{classifiers!r}."
        )
    return classifiers


def _check_split(train, y_train, test, y_test, what):
    train, test = np.asarray(train), np.asarray(test)
    y_train, y_test = np.asarray(y_train).reshape(-1), np.asarray(y_test).reshape(-1)
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(
            f"{what}: features must be 2-D (examples, features) with the same width for train "
            f"and test, got {train.shape} and {test.shape}."
        )
    if len(train) != len(y_train) or len(test) != len(y_test):
        raise ValueError(
            f"{what}: {len(train)} training features but {len(y_train)} labels, {len(test)} "
            f"test features but {len(y_test)} labels."
        )
    if len(np.unique(y_train)) < 2:
        raise ValueError(f"{what}: the training labels hold fewer than two classes.")
    return train, y_train, test, y_test


def _scores(train, y_train, test, y_test, classifiers, svm_c, max_iter):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    scores = {}
    for kind in classifiers:
        classifier = _classifier(kind, svm_c, max_iter)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            classifier.fit(train, y_train)
        # A linear SVM that has not converged is still a linear classifier; say so once
        # rather than flooding the output, and keep its accuracy.
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            warnings.warn(
                f"the linear SVM did not converge in {max_iter} iterations on "
                f"{train.shape[1]}-dimensional features; its accuracy may be a little low.",
                RuntimeWarning,
                stacklevel=3,
            )
        scores[kind] = float(np.mean(classifier.predict(test) == y_test))
    return scores


def progressive_separation(
    train_features,
    y_train,
    test_features,
    y_test,
    classifiers=CLASSIFIERS,
    svm_c=1.0,
    max_iter=5000,
    verbose=0,
):
    """Accuracy of a 1-NN and a linear SVM on the features of each block.

    The paper's progressive separation: if the classes become more linearly separable (and
    closer to their own kind) with depth, both accuracies rise from block to block. For each
    block the features are standardized with the training set's mean and standard deviation
    (as the paper does), then each classifier is fitted on the training features and scored
    on the test features.

    Args:
        train_features, test_features: dicts {block: (N, C_block) array}, as returned by
            `block_features` for the training and test images (the same blocks in both).
        y_train, y_test: integer labels.
        classifiers: a subset of ("nn", "svm").
        svm_c: regularisation parameter C of the linear SVM.
        max_iter: iteration limit of the linear SVM.
        verbose: 0 silent, 1 a progress bar over blocks.

    Returns:
        A list, one entry per block in increasing order, of dicts
        {"block": j, "nn": accuracy, "svm": accuracy} (only the classifiers asked for).
    """
    from sklearn.preprocessing import StandardScaler

    what = "progressive_separation"
    classifiers = _check_classifiers(classifiers, what)
    if not isinstance(train_features, dict) or not isinstance(test_features, dict):
        raise ValueError(
            f"{what}: pass the dicts {{block: features}} that `block_features` returns, got "
            f"{type(train_features).__name__} and {type(test_features).__name__}."
        )
    if sorted(train_features) != sorted(test_features):
        raise ValueError(
            f"{what}: train and test features hold different blocks: {sorted(train_features)} "
            f"and {sorted(test_features)}."
        )
    results = []
    bar = progbar(len(train_features), verbose, unit_name="block")
    for block in sorted(train_features):
        train, labels, test, test_labels = _check_split(
            train_features[block], y_train, test_features[block], y_test, what
        )
        scaler = StandardScaler().fit(train)
        scores = _scores(
            scaler.transform(train),
            labels,
            scaler.transform(test),
            test_labels,
            classifiers,
            svm_c,
            max_iter,
        )
        results.append({"block": int(block), **scores})
        if bar:
            bar.add(1)
    return results


def default_pca_dims(features, n_train):
    """1, 2, 4, ... up to the largest usable dimension, which is always included."""
    limit = min(features, n_train)
    dims = [d for d in (2**i for i in range(32)) if d < limit]
    return dims + [limit]


def pca_contraction(
    train_features,
    y_train,
    test_features,
    y_test,
    dims=None,
    classifiers=CLASSIFIERS,
    svm_c=1.0,
    max_iter=5000,
    verbose=0,
):
    """Accuracy of the same classifiers on the first d principal components, for several d.

    The paper's contraction analysis: the final representation (Phi(x) averaged over space)
    is standardized, projected onto its first d principal components (fitted on the training
    set), and the 1-NN and linear SVM are trained and scored on that projection. If accuracy
    reaches its plateau at small d, the classes live near a low-dimensional subspace even
    though Phi itself discards nothing.

    Args:
        train_features, test_features: (N, C) arrays of final features, e.g.
            `block_features(model, images, blocks=-1)[last_block]`.
        y_train, y_test: integer labels.
        dims: the dimensions d to try (each between 1 and min(C, training examples)); None
            for 1, 2, 4, ... and the largest.
        classifiers, svm_c, max_iter, verbose: as for `progressive_separation`.

    Returns:
        A list, one entry per d in increasing order, of dicts {"dims": d, "nn": accuracy,
        "svm": accuracy}.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    what = "pca_contraction"
    classifiers = _check_classifiers(classifiers, what)
    train, y_train, test, y_test = _check_split(
        train_features, y_train, test_features, y_test, what
    )
    limit = min(train.shape[1], len(train))
    if dims is None:
        dims = default_pca_dims(train.shape[1], len(train))
    dims = sorted(set(int(d) for d in dims))
    bad = [d for d in dims if not 1 <= d <= limit]
    if bad:
        raise ValueError(
            f"{what}: dims {bad} are out of range; with {train.shape[1]} features and "
            f"{len(train)} training examples, d must be between 1 and {limit}."
        )
    scaler = StandardScaler().fit(train)
    train, test = scaler.transform(train), scaler.transform(test)
    # One PCA with the most components serves every d: the first d components of a PCA are
    # those of a PCA fitted with d components.
    pca = PCA(n_components=max(dims), svd_solver="full").fit(train)
    train_proj, test_proj = pca.transform(train), pca.transform(test)
    results = []
    bar = progbar(len(dims), verbose, unit_name="dimension")
    for d in dims:
        scores = _scores(
            train_proj[:, :d], y_train, test_proj[:, :d], y_test, classifiers, svm_c, max_iter
        )
        results.append({"dims": d, **scores})
        if bar:
            bar.add(1)
    return results

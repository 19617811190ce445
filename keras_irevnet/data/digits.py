"""scikit-learn's handwritten digits: the offline dataset (real scans, shipped with sklearn).

1797 grey 8x8 images of the digits 0-9 with pixel values 0..16 (UCI "optdigits" test set).
The split is fixed: a permutation drawn once from a constant seed, the first 1437 images for
training and the last 360 for validation, the same on every machine and every run.
"""

import numpy as np

NUM_TRAIN = 1437
NUM_VALIDATION = 360
_SPLIT_SEED = 20180430  # any constant: the split must never change between runs
# Mean and standard deviation of the training split's pixels scaled to [0, 1] (computed once
# from the fixed split above; constants so that every split is normalised identically).
MEAN = 0.30529
STD = 0.37600


def load_digits_split(split):
    """(images uint8 (N, 8, 8) with values 0..255, labels int64 (N,)) of "train" or "test"."""
    if split not in ("train", "test", "validation"):
        raise ValueError(f"digits has the splits 'train' and 'test', got {split!r}.")
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "The 'digits' dataset needs scikit-learn (pip install scikit-learn)."
        ) from error
    bunch = load_digits()
    order = np.random.RandomState(_SPLIT_SEED).permutation(len(bunch.target))
    chosen = order[:NUM_TRAIN] if split == "train" else order[NUM_TRAIN:]
    # 0..16 -> 0..255, so every pipeline starts from 8-bit pixels.
    images = np.round(bunch.images[chosen] * (255.0 / 16.0)).astype("uint8")
    return images, bunch.target[chosen].astype("int64")

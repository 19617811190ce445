"""The paper's analyses of an i-RevNet, as functions (no plotting, no files).

Jacobsen, Smeulders & Oyallon (ICLR 2018), sections on what the invertible representation
does with depth:

1. `reconstruction_error`: Phi^-1(Phi(x)) reproduces x up to rounding.
2. `interpolate`: images along the straight line between Phi(x_a) and Phi(x_b).
3. `jacobian_singular_values`: local stability of the inverse, the spectrum of dPhi/dx.
4. `block_features` + `progressive_separation`: 1-NN and linear-SVM accuracy per block.
5. `pca_contraction`: the same classifiers on the first d principal components of the final
   representation.

Inputs are preprocessed images (as the model was trained on) in NumPy or backend tensors;
outputs are NumPy arrays, floats and lists of dicts ready for JSON. The classifiers and PCA
need scikit-learn and the Lanczos method needs SciPy (the `analysis` extra).
"""

from keras_irevnet.analysis.inversion import interpolate, reconstruct, reconstruction_error
from keras_irevnet.analysis.separation import (
    block_features,
    default_pca_dims,
    pca_contraction,
    progressive_separation,
)
from keras_irevnet.analysis.stability import dense_jacobian, jacobian_singular_values

__all__ = [
    "block_features",
    "default_pca_dims",
    "dense_jacobian",
    "interpolate",
    "jacobian_singular_values",
    "pca_contraction",
    "progressive_separation",
    "reconstruct",
    "reconstruction_error",
]

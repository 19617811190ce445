"""XLA compiler options for i-RevNet's compiled steps on JAX's CPU backend.

XLA on CPU hands convolutions, matrix products and elementwise chains to YNNPACK by default
(its "YNN fusions"). On i-RevNet's 3x3 convolutions XLA's own kernels are faster: measured in
one process on the CIFAR model, batch 64 training step 2.76 -> 2.26 s and batch 128
inference 1.47 -> 1.05 s with all YNN fusions off; the ImageNet model's convolutions alone
3.7 s instead of 5.0 s forward and backward (benchmarks/results/conv_kernels.md). Keeping
YNNPACK for the matrix products only was slower than none (2.36-2.45 s).

XLA reads its flags once, when the backend starts, and they apply to everything in the
process. These options are passed to each compilation of the model's own steps instead
(`jax.jit(..., compiler_options=...)`), so nothing else in the user's process changes. A
choice the user made in `XLA_FLAGS` wins: if it names the YNN option, nothing is passed.
"""

import os

import keras

from keras_irevnet import _compat

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"


def jax_compiler_options():
    """The `compiler_options` for `jax.jit` of the models' steps, or None for XLA's own.

    None off JAX, on JAX's GPU or TPU backends, and where `XLA_FLAGS` sets the YNN option.
    """
    if keras.backend.backend() != "jax":
        return None
    import jax

    if jax.default_backend() != "cpu":
        return None
    if YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return None
    return {YNN_FUSION_OPTION: ""}


class XlaCpuOptions:
    """Mixin for a `keras.Model`: its train, test and predict steps compiled with
    `jax_compiler_options()` (JAX on CPU; elsewhere Keras' steps are unchanged)."""

    def make_train_function(self, force=False):
        with _compat.jax_trainer_compiler_options(jax_compiler_options()):
            return super().make_train_function(force=force)

    def make_test_function(self, force=False):
        with _compat.jax_trainer_compiler_options(jax_compiler_options()):
            return super().make_test_function(force=force)

    def make_predict_function(self, force=False):
        with _compat.jax_trainer_compiler_options(jax_compiler_options()):
            return super().make_predict_function(force=force)

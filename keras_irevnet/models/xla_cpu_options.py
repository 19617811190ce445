"""XLA compiler options for i-RevNet's compiled steps on JAX's CPU backend.

XLA on CPU hands convolutions, matrix products and elementwise chains to YNNPACK by default
(its "YNN fusions"). On i-RevNet's 3x3 convolutions XLA's own kernels are faster: measured in
one process on the CIFAR model, batch 64 training step 2.76 -> 2.26 s and batch 128
inference 1.47 -> 1.05 s with all YNN fusions off; the ImageNet model's convolutions alone
3.7 s instead of 5.0 s forward and backward (benchmarks/results/conv_kernels.md). Matrix
products are the other way round: the ImageNet models' 7x7 stage computes its convolutions
as one (`keras_irevnet.layers.Conv2D`), and YNNPACK runs that product and its gradients
faster than XLA (forward and backward, batch 4: 1536 -> 384 channels 36 against 56 ms, 384
-> 1536 31 against 51). So the steps keep YNNPACK for single matrix products only
(`INDIVIDUAL_DOT`): the ImageNet model's training step 1.06x faster than with no YNN fusion
at all, CIFAR's training and both models' inference unchanged (two models in one process,
steps interleaved).

XLA reads its flags once, when the backend starts, and they apply to everything in the
process. These options are passed to each compilation of the model's own steps instead
(`jax.jit(..., compiler_options=...)`), so nothing else in the user's process changes. A
choice the user made in `XLA_FLAGS` wins: if it names the YNN option, nothing is passed.
Older XLAs know fewer fusion types, or no YNN option at all (JAX 0.6): each choice is tried
once on a trivial program, and one the compiler refuses is not passed.
"""

import functools
import os

import keras

from keras_irevnet import _compat

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# The one kind of YNN fusion kept: a matrix product on its own, not convolutions.
YNN_FUSION_TYPES = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


def jax_compiler_options():
    """The `compiler_options` for `jax.jit` of the models' steps (YNNPACK for matrix
    products, not convolutions), or None for XLA's defaults.

    None off JAX, on JAX's GPU or TPU backends, where `XLA_FLAGS` sets the YNN option, and
    where this XLA has no such option; all YNN fusions off where it lacks `INDIVIDUAL_DOT`.
    """
    if keras.backend.backend() != "jax":
        return None
    import jax

    if jax.default_backend() != "cpu":
        return None
    if YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return None
    for fusion_types in (YNN_FUSION_TYPES, ""):
        if _accepted(YNN_FUSION_OPTION, fusion_types):
            return {YNN_FUSION_OPTION: fusion_types}
    return None


@functools.cache
def _accepted(name, value):
    """Whether this XLA compiles a trivial program with the compiler option `name=value`."""
    import jax

    try:
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(1.0).compile()
    except RuntimeError:  # XLA's "INVALID_ARGUMENT: No such compile option" and the like
        return False
    return True


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

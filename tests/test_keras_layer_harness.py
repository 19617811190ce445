"""Every public layer through Keras' own layer test harness (`run_layer_test`).

The checks Keras runs on its built-in layers: construction from its config, serialization
round trips, building, symbolic and eager calls that agree with `compute_output_shape`,
weight counts, training a model that contains the layer, and a mixed-precision call. The
invertible layers' own contract (exact inverse, float64) is `tests/layer_harness.py`.
"""

import pytest
from keras.src import testing

import keras_irevnet.layers as L

# (layer, constructor arguments, input shape, output shape, weight counts / masking)
CASES = {
    "InvertibleDownsampling": (
        L.InvertibleDownsampling,
        dict(block_size=2),
        (2, 8, 8, 3),
        (2, 4, 4, 12),
        dict(expected_num_trainable_weights=0),
    ),
    "InjectivePadding": (
        L.InjectivePadding,
        dict(padding=5),
        (2, 4, 4, 3),
        (2, 4, 4, 8),
        dict(expected_num_trainable_weights=0),
    ),
    "Conv2D": (
        L.Conv2D,
        dict(filters=4, kernel_size=3, padding="same", use_bias=False),
        (2, 8, 8, 3),
        (2, 8, 8, 4),
        dict(expected_num_trainable_weights=1),
    ),
    "BatchNormalization": (
        L.BatchNormalization,
        dict(),
        (2, 8, 8, 3),
        (2, 8, 8, 3),
        dict(
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=2,
            supports_masking=True,
        ),
    ),
    "Dropout": (
        L.Dropout,
        dict(rate=0.1),
        (2, 8, 8, 3),
        (2, 8, 8, 3),
        dict(expected_num_trainable_weights=0, supports_masking=True),
    ),
    "Bottleneck": (
        L.Bottleneck,
        dict(filters=8),
        (2, 8, 8, 4),
        (2, 8, 8, 8),
        dict(),
    ),
    "IRevNetBlock": (
        L.IRevNetBlock,
        dict(filters=4),
        ((2, 8, 8, 4), (2, 8, 8, 4)),
        ((2, 8, 8, 4), (2, 8, 8, 4)),
        dict(),
    ),
    "IRevNetBlock, stride 2": (
        L.IRevNetBlock,
        dict(filters=16, strides=2),
        ((2, 8, 8, 4), (2, 8, 8, 4)),
        ((2, 4, 4, 16), (2, 4, 4, 16)),
        dict(),
    ),
    "IRevNetBlock, first, injective": (
        L.IRevNetBlock,
        dict(filters=8, first=True),
        ((2, 8, 8, 4), (2, 8, 8, 4)),
        ((2, 8, 8, 8), (2, 8, 8, 8)),
        dict(),
    ),
}


class _Harness(testing.TestCase):
    __test__ = False  # a helper here, not a test case of its own

    def runTest(self):  # unittest wants one; the checks are run_layer_test's
        pass


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_passes_keras_run_layer_test(name):
    layer_class, arguments, input_shape, output_shape, expected = CASES[name]
    harness = _Harness()
    harness.setUp()
    try:
        harness.run_layer_test(
            layer_class,
            init_kwargs=arguments,
            input_shape=input_shape,
            expected_output_shape=output_shape,
            **{"supports_masking": False, **expected},
        )
    finally:
        harness.tearDown()

"""Each invertible layer passes the contract of `InvertibleLayer` (tests/layer_harness.py),
and what is particular to each: psi's channel order, the block's swap and widths."""

import functools

import keras
import numpy as np
import pytest

from keras_irevnet.layers import (
    AdditiveCoupling,
    InjectivePadding,
    InvertibleDownsampling,
    IRevNetBlock,
    merge_channels,
    split_channels,
)
from keras_irevnet.models import BlockStack
from tests.helpers import no_autograd, photos, preprocessed_photos, relative_error, to_numpy
from tests.layer_harness import TOLERANCE, run_invertible_layer_test


def psi_by_definition(x, b):
    """docs/reference.md's order, pixel by pixel: (h*b+dh, w*b+dw, c) -> channel (dh*b+dw)*C + c."""
    n, h, w, c = x.shape
    out = np.zeros((n, h // b, w // b, b * b * c), x.dtype)
    for dh in range(b):
        for dw in range(b):
            for ch in range(c):
                out[:, :, :, (dh * b + dw) * c + ch] = x[:, dh::b, dw::b, ch]
    return out


# --- The contract, layer by layer -------------------------------------------------------------


@pytest.mark.parametrize("block_size", [2, 4])
def test_invertible_downsampling_contract(block_size):
    run_invertible_layer_test(
        lambda dtype: InvertibleDownsampling(block_size, dtype=dtype),
        preprocessed_photos(32, 2),
    )


def test_injective_padding_contract():
    run_invertible_layer_test(
        lambda dtype: InjectivePadding(5, dtype=dtype), preprocessed_photos(16, 2)
    )


# (filters, strides, first) for 12 input channels: bijective stride 1, stride 2, injective.
BLOCK_CASES = {
    "stride1": (6, 1, False),
    "stride2": (24, 2, False),
    "injective": (16, 1, False),
    "first_injective": (16, 1, True),
}


def _block_input(dtype, real):
    if real:
        x = preprocessed_photos(32, 2, dtype)
    else:
        x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(dtype)
    return split_channels(to_numpy(InvertibleDownsampling(2, dtype=dtype)(x)))


@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_irevnet_block_contract(case):
    filters, strides, first = BLOCK_CASES[case]
    run_invertible_layer_test(
        lambda dtype: IRevNetBlock(filters, strides=strides, first=first, dropout=0.1, dtype=dtype),
        tuple(to_numpy(h) for h in _block_input("float32", True)),
    )


def _coupling(dtype, strides=1):
    """An additive coupling whose F is not the bottleneck: Conv -> BatchNorm -> tanh."""
    residual = keras.Sequential(
        [
            keras.layers.Conv2D(
                6 * strides * strides, 3, strides=strides, padding="same", dtype=dtype
            ),
            keras.layers.BatchNormalization(dtype=dtype),
            keras.layers.Activation("tanh", dtype=dtype),
        ]
    )
    return AdditiveCoupling(residual, strides=strides, dtype=dtype)


@pytest.mark.parametrize("strides", [1, 2])
def test_additive_coupling_with_another_residual_contract(strides):
    run_invertible_layer_test(
        lambda dtype: _coupling(dtype, strides),
        tuple(to_numpy(h) for h in _block_input("float32", True)),
    )


def test_block_stack_contract():
    run_invertible_layer_test(
        lambda dtype: BlockStack((2, 1), (1, 2), (8, 32), dropout=0.1, dtype=dtype),
        to_numpy(InvertibleDownsampling(2)(preprocessed_photos(32, 2))),
    )


# --- What is particular to each -----------------------------------------------------------------


@pytest.mark.parametrize("block_size", [2, 4])
def test_invertible_downsampling_order(block_size):
    x = photos(32, 2)
    y = to_numpy(InvertibleDownsampling(block_size)(x))
    np.testing.assert_array_equal(y, psi_by_definition(x, block_size))
    np.testing.assert_array_equal(  # a permutation: exact
        to_numpy(InvertibleDownsampling(block_size).inverse(y)), x
    )


def test_invertible_downsampling_is_not_pixel_unshuffle_order():
    # Guards the trap docs/reference.md names: torch's PixelUnshuffle is channel-major.
    x = np.arange(2 * 2 * 2, dtype="float32").reshape(1, 2, 2, 2)
    y = to_numpy(InvertibleDownsampling(2)(x))[0, 0, 0]
    np.testing.assert_array_equal(y, [0, 1, 2, 3, 4, 5, 6, 7])  # (dh,dw)-major, c-minor


def test_invertible_downsampling_rejects_indivisible_size():
    with pytest.raises(ValueError, match="height 30 is not divisible by the block size 4"):
        InvertibleDownsampling(4)(np.zeros((1, 30, 32, 3), "float32"))


def test_injective_padding_appends_zeros():
    x = preprocessed_photos(16, 2)
    y = to_numpy(InjectivePadding(5)(x))
    np.testing.assert_array_equal(y[..., :3], x)
    np.testing.assert_array_equal(y[..., 3:], 0.0)
    with pytest.raises(ValueError, match="non-negative integer"):
        InjectivePadding(-1)


def test_split_gives_first_half_the_floor():
    x = np.arange(5, dtype="float32").reshape(1, 1, 1, 5)
    x1, x2 = split_channels(x)
    assert x1.shape[-1] == 2 and x2.shape[-1] == 3
    np.testing.assert_array_equal(to_numpy(merge_channels(x1, x2)), x)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_block_inverts_noise_too(case, dtype, float64_enabled):
    """Photos are the contract tests' inputs; the inverse is as exact on noise."""
    filters, strides, first = BLOCK_CASES[case]
    block = IRevNetBlock(filters, strides=strides, first=first, dropout=0.1, dtype=dtype)
    x1, x2 = _block_input(dtype, real=False)
    # Moving statistics away from (0, 1) so the test exercises BatchNorm's inference mode.
    block((x1, x2), training=True)
    for _ in range(3):
        block((x1, x2), training=True)
    y = block((x1, x2), training=False)
    assert (
        tuple(y[0].shape)
        == tuple(y[1].shape)
        == block.compute_output_shape((x1.shape, x2.shape))[0]
    )
    assert block.injective == (case in ("injective", "first_injective"))
    r1, r2 = block.inverse(y)
    err = relative_error(merge_channels(r1, r2), merge_channels(x1, x2))
    assert err <= TOLERANCE[dtype], err
    assert str(to_numpy(y[0]).dtype) == dtype


def test_block_swaps_halves():
    block = IRevNetBlock(6)
    x1, x2 = _block_input("float32", True)
    y = block((x1, x2))
    np.testing.assert_array_equal(to_numpy(y[0]), x2)  # stride 1: x2 passes through


def test_block_first_has_no_input_batchnorm():
    assert IRevNetBlock(16, first=True).bottleneck.input_norm is None
    assert IRevNetBlock(16).bottleneck.input_norm is not None


def test_block_width_errors_say_what_fits():
    x = _block_input("float32", False)
    with pytest.raises(ValueError, match=r"needs channels = 2 \* 12 = 24, got 20"):
        IRevNetBlock(20, strides=2)(x)
    with pytest.raises(ValueError, match="cannot narrow.*use channels >= 6"):
        IRevNetBlock(4)(x)


def test_layers_compose_symbolically_in_a_functional_model():
    inputs = keras.Input((32, 32, 3))
    psi = InvertibleDownsampling(2)
    x1, x2 = split_channels(psi(inputs))
    block = IRevNetBlock(16)
    y1, y2 = block((x1, x2))
    outputs = InjectivePadding(2)(merge_channels(y1, y2))
    model = keras.Model(inputs, outputs)
    assert model.output_shape == (None, 16, 16, 34)
    x = preprocessed_photos(32, 2)
    eager = InjectivePadding(2)(merge_channels(*block((split_channels(psi(x))))))
    np.testing.assert_allclose(to_numpy(model(x)), to_numpy(eager), rtol=1e-6, atol=1e-6)


def test_batch_normalization_keeps_float64(float64_enabled):
    # Keras' own layer computes float64 BatchNorm in float32 on JAX and torch (3.15).
    from keras_irevnet.layers import BatchNormalization

    x = preprocessed_photos(16, 2, "float64")
    for training in (False, True):
        layer = BatchNormalization(epsilon=1e-5, dtype="float64")
        step = 1e-12 * np.abs(x).max()
        y1, y2 = (
            to_numpy(layer(x, training=training)),
            to_numpy(layer(x + step, training=training)),
        )
        if not training:  # a shift moves inference-mode outputs by step / sqrt(1 + eps)
            np.testing.assert_allclose(y2 - y1, step / np.sqrt(1 + 1e-5), rtol=1e-3)
        assert str(y1.dtype) == "float64"
    x32 = x.astype("float32")
    keras_layer = keras.layers.BatchNormalization(epsilon=1e-5)
    ours = BatchNormalization(epsilon=1e-5)
    # float32 is Keras' path (fused on TensorFlow, to rounding: see the test below).
    np.testing.assert_allclose(
        to_numpy(ours(x32, training=True)),
        to_numpy(keras_layer(x32, training=True)),
        rtol=1e-5,
        atol=1e-5,
    )


def _wide_photos():
    """Photos as 4x4 images of 192 channels: a convolution's kernel is large against them,
    as in the ImageNet models' 7x7 stage (torch takes the NCHW path there)."""
    x = preprocessed_photos(32, 2)
    return x.reshape(2, 4, 8, 4, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 4, 4, 192)


@pytest.mark.parametrize(
    "strides, padding, wide, filters",
    [
        (1, "same", False, 8),
        (1, "same", False, 4),
        (2, "valid", False, 8),
        (2, "same", False, 8),
        (1, "same", True, 64),
    ],
)
def test_conv2d_equals_keras_conv2d_forward_and_gradient(strides, padding, wide, filters):
    # keras_irevnet's Conv2D only changes how torch is called (no layout copies, or NCHW
    # copies where the kernel is wide), how TensorFlow and JAX compute wide kernels and how
    # JAX differentiates narrowing convolutions: outputs and input gradients must be Keras'
    # own, bit for bit, on every backend; on torch's NCHW path (Keras' runs channels_last)
    # and TensorFlow's and JAX's matrix product of shifted views to float32 rounding.
    # (2, "same") takes the fallback to Keras' path on torch.
    from keras_irevnet.layers import Conv2D

    if wide:
        x = _wide_photos()
    else:
        x = preprocessed_photos(32, 2)
        x = np.concatenate([x, x[:, ::-1]], axis=-1)  # 6 channels
    ours = Conv2D(filters, 3, strides=strides, padding=padding, use_bias=False)
    keras_own = keras.layers.Conv2D(filters, 3, strides=strides, padding=padding, use_bias=False)
    ours.build(x.shape)
    keras_own.build(x.shape)
    assert ours._torch_nchw == wide
    # (JAX's test runs are on CPU)
    shifted = wide and padding == "same" and strides == 1
    assert ours._shifted_products == (shifted and keras.backend.backend() != "torch")
    narrowing = strides == 1 and padding == "same" and not wide and filters < x.shape[-1]
    assert ours._jax_narrowing == (narrowing and keras.backend.backend() == "jax")
    keras_own.set_weights(ours.get_weights())
    assert_equal = np.testing.assert_array_equal
    if wide:
        assert_equal = functools.partial(assert_relative_error_below, bound=1e-6)
    assert_equal(to_numpy(ours(x)), to_numpy(keras_own(x)))
    assert tuple(ours(x).shape) == ours.compute_output_shape(x.shape)

    from keras_irevnet.analysis.autodiff import jvp, vjp

    cotangent = to_numpy(keras_own(x)) ** 2
    assert_equal(to_numpy(vjp(ours, x, cotangent)), to_numpy(vjp(keras_own, x, cotangent)))

    # The kernel's gradient (the layouts of torch's paths, TensorFlow's matrix product) and
    # forward mode (the analyses' Jacobian products), to float32 rounding on every path.
    def kernel_gradient(layer):
        def output(kernel):
            return layer.stateless_call([kernel], [], x)[0]

        return to_numpy(vjp(output, layer.kernel.value, cotangent))

    assert_relative_error_below(kernel_gradient(ours), kernel_gradient(keras_own), 1e-6)
    tangent = np.flip(x, axis=1).copy()
    assert_relative_error_below(
        to_numpy(jvp(ours, x, tangent)[1]), to_numpy(jvp(keras_own, x, tangent)[1]), 1e-6
    )

    # Forward mode w.r.t. the kernel (JAX's narrowing path writes that tangent as the
    # transpose of its kernel gradient).
    def output_of_kernel(layer):
        return lambda kernel: layer.stateless_call([kernel], [], x)[0]

    kernel_tangent = np.cos(to_numpy(ours.kernel))
    assert_relative_error_below(
        to_numpy(jvp(output_of_kernel(ours), ours.kernel.value, kernel_tangent)[1]),
        to_numpy(jvp(output_of_kernel(keras_own), keras_own.kernel.value, kernel_tangent)[1]),
        1e-6,
    )


def assert_relative_error_below(got, want, bound):
    assert got.shape == want.shape
    assert relative_error(got, want) < bound, relative_error(got, want)


def test_conv2d_config_roundtrip():
    from keras_irevnet.layers import Conv2D

    layer = Conv2D(4, 3, strides=2, padding="valid", use_bias=False)
    assert Conv2D.from_config(layer.get_config()).get_config() == layer.get_config()


def _photo_channels(size, count, channels):
    """Photos with `channels` channels: the RGB channels, then functions of them.

    torch's BatchNorm takes two paths by channel count (below 8, statistics and gradient of
    its own; from 8, torch's fused kernel), and 3-channel photos exercise only the first.
    """
    x = preprocessed_photos(size, count)
    maps = [x, 0.5 * x[..., ::-1] + 0.2, np.sin(3 * x), x * x - 0.3, np.cos(x) * x, np.tanh(2 * x)]
    return np.concatenate(maps, axis=-1)[..., :channels].astype("float32")


def _batch_norm_pair(x, gamma, moving_mean=None, moving_variance=None):
    """keras_irevnet's BatchNormalization and Keras' own, built for `x`, same weights."""
    from keras_irevnet.layers import BatchNormalization

    ours = BatchNormalization(momentum=0.9, epsilon=1e-5)
    keras_own = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    for layer in (ours, keras_own):
        layer.build(x.shape)
        layer.gamma.assign(np.asarray(gamma, "float32"))
        layer.beta.assign(np.resize(np.array([0.1, -0.2, 0.3], "float32"), x.shape[-1]))
        if moving_mean is not None:
            layer.moving_mean.assign(np.asarray(moving_mean, "float32"))
            layer.moving_variance.assign(np.asarray(moving_variance, "float32"))
    return ours, keras_own


@pytest.mark.parametrize("channels", [3, 16])
def test_batch_normalization_training_matches_keras(channels):
    # On TensorFlow the training mode runs the fused kernel; on every backend the outputs,
    # moving statistics and gradients must be those of Keras' own layer, to float32 rounding.
    from keras_irevnet.analysis.autodiff import vjp

    x = _photo_channels(32, 4, channels)
    ours, keras_own = _batch_norm_pair(x, gamma=np.linspace(0.5, 2.0, channels))
    for _ in range(2):  # the second step starts from updated moving statistics
        y_ours, y_keras = ours(x, training=True), keras_own(x, training=True)
        np.testing.assert_allclose(to_numpy(y_ours), to_numpy(y_keras), rtol=1e-5, atol=1e-5)
    for a, b in (
        (ours.moving_mean, keras_own.moving_mean),
        (ours.moving_variance, keras_own.moving_variance),
    ):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-5, atol=1e-6)
    assert np.abs(to_numpy(ours.moving_mean)).max() > 1e-2  # the statistics did move
    # Inference mode (fused on TensorFlow and torch) normalises with the moving statistics,
    # as Keras does.
    np.testing.assert_allclose(
        to_numpy(ours(x, training=False)),
        to_numpy(keras_own(x, training=False)),
        rtol=1e-5,
        atol=1e-5,
    )
    cotangent = np.cos(x)
    # Inference mode first: a training-mode call inside JAX's vjp assigns traced moving
    # statistics to the variables, which a later call could not read.
    for training in (False, True):
        np.testing.assert_allclose(
            to_numpy(vjp(lambda t, training=training: ours(t, training=training), x, cotangent)),
            to_numpy(
                vjp(lambda t, training=training: keras_own(t, training=training), x, cotangent)
            ),
            rtol=1e-4,
            atol=1e-5,
        )


def test_batch_normalization_relu_of_call_is_relu_of_keras_layer():
    # The bottleneck's BN -> ReLU in one call (on torch the ReLU runs in place on the kernel's
    # output): values and input gradients are those of ReLU after Keras' own layer.
    from keras_irevnet.analysis.autodiff import vjp

    x = preprocessed_photos(32, 4)
    ours, keras_own = _batch_norm_pair(
        x, gamma=[0.5, 1.0, 2.0], moving_mean=[0.2, -0.1, 0.0], moving_variance=[0.5, 2.0, 1.0]
    )
    cotangent = np.cos(x)
    for training in (False, True):  # inference first, as in the test above

        def theirs(t, training=training):
            return keras.ops.relu(keras_own(t, training=training))

        def relu_ours(t, training=training):
            return ours.relu_of_call(t, training=training)

        y = to_numpy(relu_ours(x))
        assert 0.1 < (y == 0).mean() < 0.9  # the ReLU does cut
        np.testing.assert_allclose(y, to_numpy(theirs(x)), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            to_numpy(vjp(relu_ours, x, cotangent)),
            to_numpy(vjp(theirs, x, cotangent)),
            rtol=1e-4,
            atol=1e-5,
        )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_batch_normalization_mixed_precision_matches_keras(dtype):
    # Under mixed precision BatchNorm gets 16-bit inputs; both layers compute in float32 and
    # round the result to the compute dtype once (on torch through the fused kernel), so
    # outputs, ReLU'd outputs, input gradients and moving statistics agree to that rounding.
    from keras_irevnet.analysis.autodiff import vjp
    from keras_irevnet.layers import BatchNormalization

    x = keras.ops.cast(preprocessed_photos(32, 4), dtype)
    cotangent = keras.ops.cast(np.cos(preprocessed_photos(32, 4)), dtype)
    pair = []
    for layer_class in (BatchNormalization, keras.layers.BatchNormalization):
        layer = layer_class(momentum=0.9, epsilon=1e-5, dtype=f"mixed_{dtype}")
        layer.build(x.shape)
        layer.gamma.assign(np.array([0.5, 1.0, 2.0], "float32"))
        layer.beta.assign(np.array([0.1, -0.2, 0.3], "float32"))
        pair.append(layer)
    ours, keras_own = pair
    unit = 2.0**-8 if dtype == "bfloat16" else 2.0**-11  # half a step of the 16-bit format

    def theirs(t, relu, training):
        y = keras_own(t, training=training)
        return keras.ops.relu(y) if relu else y

    def ours_(t, relu, training):
        return ours.relu_of_call(t, training=training) if relu else ours(t, training=training)

    def as_float32(t):
        return to_numpy(keras.ops.cast(t, "float32"))

    for training, relu in ((True, False), (True, True), (False, False), (False, True)):
        y, expected = ours_(x, relu, training), theirs(x, relu, training)
        assert keras.backend.standardize_dtype(y.dtype) == dtype
        np.testing.assert_allclose(as_float32(y), as_float32(expected), rtol=2 * unit, atol=1e-3)
    for a, b in (
        (ours.moving_mean, keras_own.moving_mean),
        (ours.moving_variance, keras_own.moving_variance),
    ):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-5, atol=1e-6)
    assert np.abs(to_numpy(ours.moving_mean)).max() > 1e-2  # the statistics did move
    # Inference mode first, training last: a training-mode call inside JAX's vjp assigns
    # traced moving statistics to the variables, which a later call could not read.
    for training, relu in ((False, False), (False, True), (True, True)):
        grads = [
            as_float32(vjp(lambda t, f=f, r=relu, m=training: f(t, r, m), x, cotangent))
            for f in (ours_, theirs)
        ]
        np.testing.assert_allclose(*grads, rtol=4 * unit, atol=4 * unit)


def test_batch_normalization_inference_follows_every_change_of_its_weights():
    # On torch the inference scale and shift are kept while gamma, beta and the moving
    # statistics are unchanged: an assignment or a training step must show in the next call.
    x = preprocessed_photos(32, 4)
    ours, keras_own = _batch_norm_pair(
        x, gamma=[0.5, 1.0, 2.0], moving_mean=[0.2, -0.1, 0.0], moving_variance=[0.5, 2.0, 1.0]
    )

    def assert_same():
        # torch keeps them only outside autograd, as in Keras' predict.
        with no_autograd():
            for _ in range(2):  # the second call may reuse what the first computed
                np.testing.assert_allclose(
                    to_numpy(ours(x, training=False)),
                    to_numpy(keras_own(x, training=False)),
                    rtol=1e-5,
                    atol=1e-5,
                )

    assert_same()
    for name, value in (
        ("gamma", [1.5, 0.25, 1.0]),
        ("beta", [0.0, 0.4, -0.3]),
        ("moving_mean", [0.5, 0.5, -0.5]),
        ("moving_variance", [1.0, 0.25, 4.0]),
    ):
        for layer in (ours, keras_own):
            getattr(layer, name).assign(np.asarray(value, "float32"))
        assert_same()
    ours(x, training=True)  # updates the moving statistics
    keras_own(x, training=True)
    assert_same()


@pytest.mark.parametrize("channels", [3, 16])
def test_batch_normalization_weight_gradients_match_keras(channels):
    # The fused kernels (TensorFlow and torch training) compute gamma's and beta's gradients
    # themselves: one SGD step (learning rate 1, so the change is the gradient) must move
    # them as it moves Keras' own layer.
    from keras_irevnet.layers import BatchNormalization

    x = _photo_channels(16, 4, channels)
    target = np.sin(3 * x)
    steps = []
    for layer in (
        BatchNormalization(epsilon=1e-5),
        keras.layers.BatchNormalization(epsilon=1e-5),
    ):
        model = keras.Sequential([keras.Input(x.shape[1:]), layer])
        layer.gamma.assign(np.resize(np.array([0.5, 1.0, 2.0], "float32"), channels))
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
        before = [to_numpy(w) for w in (layer.gamma, layer.beta)]
        model.train_on_batch(x, target)
        steps.append([b - to_numpy(w) for b, w in zip(before, (layer.gamma, layer.beta))])
    for ours, theirs in zip(*steps):
        assert np.abs(theirs).max() > 1e-3  # the step did move them
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def _float64_batch_norm(x, gamma, beta, epsilon, relu):
    """Training-mode batch normalisation as Keras writes it (jnp.mean, jnp.var), in float64."""
    import jax.numpy as jnp

    mean, variance = jnp.mean(x, axis=(0, 1, 2)), jnp.var(x, axis=(0, 1, 2))
    y = (x - mean) / jnp.sqrt(variance + epsilon) * gamma + beta
    return (jnp.maximum(y, 0) if relu else y), mean, variance


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX kernel")
@pytest.mark.parametrize("relu", [False, True])
def test_jax_batch_norm_gradient_is_the_derivative(relu, float64_enabled):
    # The training kernel's hand-written gradient, for all three outputs (the statistics
    # too), against JAX's derivative of the textbook formula, both in float64.
    import jax

    from keras_irevnet.layers import jax_batch_norm

    rng = np.random.default_rng(0)
    x = preprocessed_photos(16, 4, dtype="float64") * 3.0 + 1.0
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    outputs, pullback = jax.vjp(
        lambda *a: jax_batch_norm.batch_norm_training(*a, 1e-3, relu), x, gamma, beta
    )
    expected, expected_pullback = jax.vjp(
        lambda *a: _float64_batch_norm(*a, 1e-3, relu), x, gamma, beta
    )
    if relu:
        assert 0.1 < float((outputs[0] == 0).mean()) < 0.9  # the ReLU does cut
    cotangents = tuple(rng.normal(size=o.shape) for o in expected)
    for got, want in zip(outputs + pullback(cotangents), expected + expected_pullback(cotangents)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX kernel")
def test_jax_batch_norm_float32_statistics_are_accurate(float64_enabled):
    # Its sums are products with ones, which Eigen accumulates in sequence; over the CIFAR
    # model's 65,536 rows per channel at a mean of 5 that was 1e-5 off in the variance (the
    # model's gradients moved by 5 % overall, up to 20 % for single weights). Summed in
    # groups they stay within a few float32 roundings of the float64 values, outputs and
    # gradients too.
    import jax

    from keras_irevnet.layers import jax_batch_norm

    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 1.0, size=(64, 32, 32, 4))
    gamma, beta = rng.normal(size=4), rng.normal(size=4)
    cotangent = rng.normal(size=x.shape)

    def run(fn, dtype):
        args = [np.asarray(a, dtype) for a in (x, gamma, beta)]
        outputs, pullback = jax.vjp(lambda *a: fn(*a, 1e-3, True), *args)
        gradients = pullback((cotangent.astype(dtype), np.zeros(4, dtype), np.zeros(4, dtype)))
        return [np.asarray(v, "float64") for v in outputs + gradients]

    truth = run(_float64_batch_norm, "float64")
    for name, got, want in zip(
        ["outputs", "mean", "variance", "d_x", "d_gamma", "d_beta"],
        run(jax_batch_norm.batch_norm_training, "float32"),
        truth,
    ):
        error = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert error < 2e-6, (name, error)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="a torch memory layout")
@pytest.mark.parametrize("wide", [False, True])
def test_conv2d_kernel_stays_in_torch_convolution_layout(tmp_path, wide):
    # On torch the kernel's memory is laid out as the convolution takes it (a permuted view,
    # no copy of the kernel or of its gradient per step): channels_last, or contiguous
    # (out, in, kh, kw) where the layer runs NCHW. The layout must survive what writes
    # into a variable: training with a momentum optimizer (whose slots take the kernel's
    # layout), assign, loading weights; and the layer must still compute what Keras'
    # Conv2D computes after each.
    import torch

    from keras_irevnet.layers import Conv2D
    from keras_irevnet.layers.convolution import match_optimizer_layouts

    def in_convolution_layout(layer):
        kernel = layer.kernel.value.permute(3, 2, 0, 1)
        if wide:
            return kernel.is_contiguous()
        return kernel.is_contiguous(memory_format=torch.channels_last)

    x, filters = (_wide_photos(), 64) if wide else (preprocessed_photos(16, 2), 4)
    ours = keras.Sequential([keras.Input(x.shape[1:]), Conv2D(filters, 3, padding="same")])
    keras_own = keras.Sequential(
        [keras.Input(x.shape[1:]), keras.layers.Conv2D(filters, 3, padding="same")]
    )
    keras_own.set_weights(ours.get_weights())
    assert in_convolution_layout(ours.layers[0])
    assert not in_convolution_layout(keras_own.layers[0])  # the check can tell

    def assert_same_outputs():
        # Float32 rounding apart: torch picks the convolution's kernel, and with it the order
        # of the sums, by memory layout and by thread count (one thread per test worker gave
        # one-ulp differences on the narrow layer too, where two threads gave equal bits).
        assert_relative_error_below(to_numpy(ours(x)), to_numpy(keras_own(x)), bound=1e-6)

    assert_same_outputs()
    target = np.sin(to_numpy(keras_own(x)))
    for model in (ours, keras_own):
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    # What keras_irevnet's models do before training (models/optimizer_layout.py).
    ours.optimizer.build(ours.trainable_variables)
    match_optimizer_layouts(ours.optimizer, ours.trainable_variables)
    slots = [v.value for v in ours.optimizer.variables if v.value.dim() == 4]
    assert slots and all(s.stride() == ours.layers[0].kernel.value.stride() for s in slots)
    for model in (ours, keras_own):
        model.fit(x, target, epochs=3, verbose=0)
    assert in_convolution_layout(ours.layers[0])
    np.testing.assert_allclose(
        to_numpy(ours.layers[0].kernel), to_numpy(keras_own.layers[0].kernel), atol=1e-5
    )

    kernel = np.random.RandomState(0).randn(3, 3, x.shape[-1], filters).astype("float32")
    for model in (ours, keras_own):
        model.layers[0].kernel.assign(kernel)
    assert in_convolution_layout(ours.layers[0])
    assert_same_outputs()

    path = str(tmp_path / "conv.weights.h5")
    keras_own.save_weights(path)
    ours.layers[0].kernel.assign(np.zeros_like(kernel))
    ours.load_weights(path)
    assert in_convolution_layout(ours.layers[0])
    assert_same_outputs()
    np.testing.assert_array_equal(ours.get_weights()[0], kernel)  # get_weights: Keras' shape


# --- Dropout ------------------------------------------------------------------------------------


def test_dropout_drops_at_its_rate_and_rescales_the_rest():
    # On torch an unseeded layer draws its own mask (a cheaper draw than Keras'); on every
    # backend the result must be Keras' dropout: each element zero with probability `rate`,
    # the others divided by 1 - rate, and nothing changed in inference.
    from keras_irevnet.layers import Dropout

    rate = 0.3
    x = np.abs(preprocessed_photos(128, 4)) + 0.5  # no exact zeros of its own
    layer = Dropout(rate)
    y = to_numpy(layer(x, training=True))
    dropped = y == 0
    n = dropped.size
    assert abs(dropped.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
    np.testing.assert_allclose(y[~dropped], x[~dropped] / (1 - rate), rtol=1e-6)
    # Each channel and position is dropped independently (no shared noise shape).
    assert 0 < dropped[..., 0].mean() < 1 and 0 < dropped[0].mean() < 1
    np.testing.assert_array_equal(to_numpy(layer(x, training=False)), x)
    assert not np.array_equal(to_numpy(layer(x, training=True)) == 0, dropped)  # a new mask


def test_seeded_dropout_is_keras_dropout():
    from keras_irevnet.layers import Dropout

    x = preprocessed_photos(32, 2)
    ours, keras_own = Dropout(0.4, seed=7), keras.layers.Dropout(0.4, seed=7)
    np.testing.assert_array_equal(
        to_numpy(ours(x, training=True)), to_numpy(keras_own(x, training=True))
    )


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's Threefry hash")
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 5, 7), (16, 32, 32, 4)])
def test_jax_dropout_mask_is_jax_bernoulli_bit_for_bit(shape):
    # The hash written out must give JAX's own mask: same counters, rounds, key schedule
    # and bits-to-uniform conversion (a slip in any of them changes most elements).
    import jax

    from keras_irevnet.layers import jax_dropout

    assert jax_dropout.applies(shape)
    for seed in [(0, 0), (7, 1), (0xFFFFFFFF, 12345), (987654321, 3)]:
        seed = jax.numpy.array(seed, "uint32")
        for keep in (0.9, 0.5, 0.123):
            expected = np.asarray(jax.random.bernoulli(seed, keep, shape))
            np.testing.assert_array_equal(
                np.asarray(jax_dropout.keep_mask(seed, keep, shape)), expected
            )


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's dropout")
def test_jax_dropout_is_keras_dropout_with_the_same_seed_state_and_gradient():
    # An unseeded layer draws from its own seed generator as Keras' layer does: with the
    # same seed state, the same output and input gradient, op by op and compiled (as in a
    # training step, the state passed in), and the state advanced alike (reversible
    # backprop replays a mask by rewinding the state).
    import jax

    from keras_irevnet.layers import Dropout

    x = preprocessed_photos(16, 4)
    ours, keras_own = Dropout(0.3), keras.layers.Dropout(0.3)
    keras_own.seed_generator.state.assign(ours.seed_generator.state.value)
    state = ours.seed_generator.state.value

    def gradient(layer, compiled):
        if not compiled:
            return np.asarray(jax.grad(lambda x: (layer(x, training=True) * x).sum())(x))

        def loss(x, state):
            y, _ = layer.stateless_call([], [state], x, training=True)
            return (y * x).sum()

        return np.asarray(jax.jit(jax.grad(loss))(x, state))

    for compiled in (True, False):
        ours_grad, keras_grad = (gradient(layer, compiled) for layer in (ours, keras_own))
        np.testing.assert_array_equal(ours_grad, keras_grad)
        assert 0.2 < float((ours_grad == 0).mean()) < 0.4
    np.testing.assert_array_equal(
        to_numpy(ours(x, training=True)), to_numpy(keras_own(x, training=True))
    )
    np.testing.assert_array_equal(
        to_numpy(ours.seed_generator.state.value), to_numpy(keras_own.seed_generator.state.value)
    )


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch's global generator")
def test_torch_dropout_mask_follows_the_global_generator_and_its_gradient():
    # Reversible backprop replays a block's dropout mask by restoring torch's generator
    # state (as torch.utils.checkpoint does): the mask must come from that generator.
    import torch

    from keras_irevnet.layers import Dropout

    layer = Dropout(0.25)
    x = torch.tensor(preprocessed_photos(32, 2), requires_grad=True)
    state = torch.get_rng_state()
    y = layer(x, training=True)
    torch.set_rng_state(state)
    again = layer(x, training=True)
    torch.testing.assert_close(again, y, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(y.sum(), x)
    kept = (y != 0).to(y.dtype)
    torch.testing.assert_close(grad, kept / 0.75)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_normalization_frozen_statistics_normalise_but_do_not_update(dtype, float64_enabled):
    # Reversible backprop recomputes F inside `frozen_moving_statistics`: the same batch
    # normalisation as the forward pass, without a second update of the moving statistics.
    from keras_irevnet.layers import BatchNormalization
    from keras_irevnet.layers.batch_normalization import frozen_moving_statistics

    x = preprocessed_photos(16, 4, dtype=dtype)
    layer = BatchNormalization(epsilon=1e-5, dtype=dtype)
    layer.build(x.shape)

    def statistics():
        return [to_numpy(v).copy() for v in (layer.moving_mean, layer.moving_variance)]

    initial = statistics()
    with frozen_moving_statistics():
        frozen = to_numpy(layer(x, training=True))
    for before, after in zip(initial, statistics()):
        np.testing.assert_array_equal(after, before)
    updated = to_numpy(layer(x, training=True))
    np.testing.assert_allclose(frozen, updated, rtol=1e-6, atol=1e-6)
    assert all(np.abs(a - b).max() > 1e-3 for a, b in zip(statistics(), initial))

"""The IRevNet model and its constructors: counts, inversion, saving, fit, symbolic use."""

import keras
import numpy as np
import pytest

import keras_irevnet as kir
from keras_irevnet import _compat
from tests.helpers import once_in, preprocessed_photos, relative_error, tiny_model, to_numpy

tiny = tiny_model


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def settle_batchnorm(model, x, steps=3):
    """A few training-mode passes, so the inference-mode statistics are not (0, 1)."""
    for _ in range(steps):
        model(x, training=True)


@pytest.fixture(scope="module")
def cifar():
    keras.utils.set_random_seed(0)
    return kir.IRevNetCIFAR(classifier_activation=None)


@pytest.fixture(scope="module")
def bijective():
    keras.utils.set_random_seed(0)
    return kir.IRevNetBijective()


def test_cifar_parameter_count_and_shapes(cifar):
    assert trainable_count(cifar) == 6_274_826
    assert cifar.feature_shape == (8, 8, 512)
    assert len(cifar.block_stack.blocks) == 54 and cifar.injective


def test_bijective_parameter_count_and_shapes(bijective):
    assert trainable_count(bijective) == 125_120_356
    assert bijective.feature_shape == (7, 7, 3072)
    assert not bijective.injective  # Phi(x) has exactly as many numbers as x


@once_in("torch", "a count of weights the same code builds on every backend (fastest on torch)")
def test_injective_parameter_count_near_paper():
    model = kir.IRevNetInjective()
    assert abs(trainable_count(model) / 181e6 - 1) <= 0.05
    assert model.injective and model.feature_shape == (14, 14, 3712)


def test_cifar_inverts_real_photos(cifar):
    x = preprocessed_photos(32, 4)
    settle_batchnorm(cifar, x)
    assert relative_error(cifar.inverse(cifar.features(x)), x) <= 1e-5


def test_bijective_inverts_real_photos(bijective):
    x = preprocessed_photos(224, 2)
    z = bijective.features(x)
    assert tuple(z.shape) == (2, 7, 7, 3072)
    assert relative_error(bijective.inverse(z), x) <= 1e-5
    scores = to_numpy(bijective(x))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)  # softmax head


def test_float64_inverse_to_1e12(float64_enabled):
    model = tiny(dtype="float64", blocks=(2, 2))
    x = preprocessed_photos(32, 2, "float64")
    settle_batchnorm(model, x)
    z = model.features(x)
    assert str(to_numpy(z).dtype) == "float64"
    assert relative_error(model.inverse(z), x) <= 1e-12


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_runs_forward(policy):
    model = tiny(dtype=policy)
    x = preprocessed_photos(32, 2)
    scores = model(x)
    assert keras.backend.standardize_dtype(scores.dtype) == "float32"  # the head's output
    scores = to_numpy(scores)
    assert scores.shape == (2, 5) and np.all(np.isfinite(scores))
    assert model.block_stack.blocks[0].bottleneck.conv1.kernel.dtype == "float32"
    z = model.features(x)
    assert relative_error(model.inverse(z), x) < 1e-1  # half precision: a rough inverse


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_direct_calls_equal_keras_calls(policy, monkeypatch):
    # keras_irevnet.layers.direct_call skips the blocks' `__call__` under a mixed policy too,
    # casting and autocasting itself: outputs and a training step are those of `__call__`.
    from keras_irevnet.layers import direct_call

    model = tiny(dtype=policy)
    x = preprocessed_photos(32, 2)
    y = np.array([1, 3])
    initial = model.get_weights()
    block_class = type(model.block_stack.blocks[1])

    def run():
        model.set_weights(initial)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        calls = []
        original = block_class.call

        def counting(layer, *args, **kwargs):
            calls.append(layer.name)
            return original(layer, *args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(block_class, "call", counting)
            scores = to_numpy(model(x, training=False))
            features = to_numpy(model.features(x))
            inverse = to_numpy(model.inverse(model.features(x)))
        keras.utils.set_random_seed(0)
        model.train_on_batch(x, y)
        return [scores, features, inverse] + [to_numpy(w) for w in model.weights], len(calls)

    direct, direct_calls = run()
    with monkeypatch.context() as patch:
        patch.setattr(
            direct_call,
            "call",
            lambda layer, inputs, training=None: layer(inputs, training=training),
        )
        through_keras, keras_calls = run()
    assert direct_calls == keras_calls > 0
    for a, b in zip(direct, through_keras):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_include_top_false_and_pooling():
    x = preprocessed_photos(32, 2)
    phi = tiny(include_top=False)
    assert phi.output_shape == (None, 8, 8, 64)
    np.testing.assert_allclose(to_numpy(phi(x)), to_numpy(phi.features(x)), rtol=1e-6, atol=1e-6)
    assert tiny(include_top=False, pooling="avg").output_shape == (None, 64)
    assert tiny(include_top=False, pooling="max").output_shape == (None, 64)


def run_model_saving_test(model, x, tmp_path):
    """The one saving test: `model` comes back the same from a `.keras` file, from its config,
    from JSON, and as `weights=` from both file formats (config, dtype policy, class scores,
    Phi(x) and the inverse, bit for bit where the weights are the same)."""
    settle_batchnorm(model, x)
    keras_path, weights_path = str(tmp_path / "m.keras"), str(tmp_path / "m.weights.h5")
    model.save(keras_path)
    model.save_weights(weights_path)
    loaded = keras.models.load_model(keras_path)
    assert isinstance(loaded, kir.IRevNet) and loaded.get_config() == model.get_config()
    for rebuilt in (
        kir.IRevNet.from_config(model.get_config()),
        keras.models.model_from_json(model.to_json()),
    ):
        assert rebuilt.get_config() == model.get_config()
        assert rebuilt.block_stack.compute_dtype == model.block_stack.compute_dtype
    z = model.features(x)
    assert keras.backend.standardize_dtype(loaded.features(x).dtype) == (
        model.block_stack.compute_dtype
    )
    for other in (
        loaded,
        type(model)(**{**model.get_config(), "weights": weights_path}),
        type(model)(**{**model.get_config(), "weights": keras_path}),
    ):
        np.testing.assert_array_equal(to_numpy(other(x)), to_numpy(model(x)))
        np.testing.assert_array_equal(to_numpy(other.features(x)), to_numpy(z))
        np.testing.assert_array_equal(to_numpy(other.inverse(z)), to_numpy(model.inverse(z)))


SAVING_CASES = {
    "float32 with dropout": dict(dropout=0.1),
    "float64": dict(dtype="float64"),
    "mixed_bfloat16": dict(dtype="mixed_bfloat16"),
    "Phi(x) pooled": dict(include_top=False, pooling="avg"),
    "any image size": dict(input_shape=(None, None, 3)),
}


@pytest.mark.parametrize("case", list(SAVING_CASES))
def test_model_saving(case, tmp_path, float64_enabled):
    run_model_saving_test(tiny(**SAVING_CASES[case]), preprocessed_photos(32, 2), tmp_path)


def test_unknown_image_size_takes_several_sizes():
    # On TensorFlow the second size used to fail: psi computed h // b from a static None.
    model = tiny(input_shape=(None, None, 3), classifier_activation=None)
    assert model.feature_shape == (None, None, 64)
    for size in (32, 48):
        x = preprocessed_photos(size, 2)
        settle_batchnorm(model, x, steps=1)
        scores = model.predict(x, verbose=0)
        np.testing.assert_allclose(scores, to_numpy(model(x)), rtol=1e-4, atol=1e-4)
        z = model.features(x)
        assert tuple(z.shape) == (2, size // 4, size // 4, 64)
        assert relative_error(model.inverse(z), x) <= 1e-5
        x_back = model.inverse_model().predict(to_numpy(z), verbose=0)
        assert relative_error(x_back, x) <= 1e-5


def test_symbolic_inverse_and_features_build_functional_models():
    model = tiny()
    x = preprocessed_photos(32, 3)
    settle_batchnorm(model, x)
    z = keras.Input(model.feature_shape)
    inverse = keras.Model(z, model.inverse(z))
    assert inverse.output_shape == (None, 32, 32, 3)
    images = keras.Input(model.image_shape)
    features = keras.Model(images, model.features(images))
    assert features.output_shape == (None, 8, 8, 64)
    phi = to_numpy(model.features(x))
    np.testing.assert_allclose(to_numpy(features(x)), phi, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        inverse.predict(phi, verbose=0), to_numpy(model.inverse(phi)), rtol=1e-5, atol=1e-5
    )
    # Both in one graph: x -> Phi(x) -> x.
    roundtrip = keras.Model(images, model.inverse(model.features(images)))
    assert relative_error(roundtrip.predict(x, verbose=0), x) <= 1e-5


def test_symbolic_use_inside_functional_model():
    irevnet = tiny(classifier_activation=None)
    inputs = keras.Input((32, 32, 3))
    scaled = keras.layers.Rescaling(2.0)(inputs)
    outputs = keras.layers.Dense(3)(irevnet(scaled))
    outer = keras.Model(inputs, outputs)
    assert outer.output_shape == (None, 3)
    x = preprocessed_photos(32, 2)
    assert to_numpy(outer(x)).shape == (2, 3)
    own = kir.IRevNetCIFAR(input_tensor=keras.Input((32, 32, 3), name="pixels"))
    assert own.inputs[0].name == "pixels" and own.output_shape == (None, 10)


def _digits(size=16):
    from skimage.transform import resize
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images[:, :, :, None] / 16.0
    images = np.stack([resize(im, (size, size), order=1) for im in images]).astype("float32")
    return (images - 0.3) / 0.4, digits.target.astype("int32")


def digits_model():
    """A two-stage model for `_digits` (16x16 grey images, 10 classes), logits out."""
    return kir.IRevNet(
        blocks=(1, 1),
        strides=(1, 2),
        channels=(8, 32),
        init_ds=2,
        input_shape=(16, 16, 1),
        classes=10,
        classifier_activation=None,
    )


def test_fit_lowers_loss_and_model_still_inverts():
    x, y = _digits()
    x, y = x[:512], y[:512]
    model = digits_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, batch_size=32, epochs=4, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert after < 0.5 * before, (before, after)
    assert relative_error(model.inverse(model.features(x[:32])), x[:32]) <= 1e-5


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.compile")
def test_torch_compile_trains_as_eager_does_and_quietly():
    # `jit_compile=True` on torch is torch.compile, where the layers take Keras' own paths:
    # the same training to float32 rounding, and nothing of keras_irevnet's in the warnings.
    # Nothing in the model's forward pass breaks the compiled graph: every layer call is traced
    # inside the step, none compiled as a frame of its own. (Keras' BatchNorm broke it at its
    # reduction axes; `keras.ops.pad`, by naming the operation it builds on every call, broke
    # it at every Keras layer call after the first pad: the step took twice as long to compile.)
    import warnings

    from tests.helpers import compiled_by_dynamo

    rng = np.random.default_rng(0)
    x = preprocessed_photos(32, count=4)
    y = rng.integers(0, 5, 4)
    losses, weights = {}, {}
    for jit_compile in (False, True):
        model = tiny()
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
        losses[jit_compile] = history.history["loss"][0]
        weights[jit_compile] = [to_numpy(w) for w in model.weights]
        ours = [str(w.message) for w in caught if "keras_irevnet" in str(w.message)]
        assert not ours, ours
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    for compiled, eager in zip(weights[True], weights[False]):
        np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-6)
    batch_norm = kir.layers.BatchNormalization
    layer_calls = (keras.layers.Layer.forward, batch_norm.call, batch_norm.relu_of_call)
    assert compiled_by_dynamo(*layer_calls) == []


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch memory layouts")
@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_optimizer_slots_follow_the_kernel_layout_without_changing_training(optimizer):
    # On torch the convolution kernels are laid out for torch's convolution, and the model
    # gives the optimizer's slots of each kernel the same layout before training. Training
    # must be the same whatever the slots' layout: a twin whose slots are put back in
    # Keras' layout after the first epoch ends with the same weights.
    import torch

    from keras_irevnet.layers.convolution import in_torch_kernel_layout

    x, y = _digits()
    x, y = x[:64], y[:64]

    def trained_twin(contiguous_slots_after_first_epoch):
        model = digits_model()
        model.set_weights(reference_weights)
        model.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9)
            if optimizer == "sgd_momentum"
            else keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        slots = [v.value for v in model.optimizer.variables if v.value.dim() == 4]
        assert slots and all(in_torch_kernel_layout(s) for s in slots)
        if contiguous_slots_after_first_epoch:
            with torch.no_grad():
                for slot in slots:
                    values = slot.contiguous()
                    slot.set_(values.untyped_storage(), 0, values.shape, values.stride())
            assert not any(in_torch_kernel_layout(s) for s in slots)
            model._optimizer_layout_key = (id(model.optimizer), len(model.optimizer.variables))
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        assert all(in_torch_kernel_layout(s) != contiguous_slots_after_first_epoch for s in slots)
        return model.get_weights()

    reference_weights = digits_model().get_weights()
    for ours, twin in zip(trained_twin(False), trained_twin(True)):
        np.testing.assert_allclose(ours, twin, rtol=1e-5, atol=1e-6)


# --- errors: raised at construction where possible, saying what fits -----------------------


def test_error_spatial_size_not_divisible():
    with pytest.raises(
        ValueError,
        match=r"multiples of the model's total downsampling 32.*got 100.*nearest size that fits "
        r"is 96",
    ):
        kir.IRevNetBijective(input_shape=(100, 100, 3))


def test_error_stride2_stage_width():
    with pytest.raises(
        ValueError, match=r"channels\[1\]=60 does not fit stage 1.*channels = 2 \* 32 = 64"
    ):
        kir.IRevNet(
            blocks=(1, 1), strides=(1, 2), channels=(16, 60), init_ds=0, input_shape=(32, 32, 3)
        )


def test_error_list_lengths():
    with pytest.raises(ValueError, match="same length; got 2 blocks .* 3 strides"):
        kir.IRevNet(blocks=(1, 1), strides=(1, 2, 2), channels=(8, 32, 128))


def test_error_init_ds():
    with pytest.raises(ValueError, match="`init_ds` must be 0 .* or 2 .* got 4"):
        tiny(init_ds=4)


def test_error_weights_missing(tmp_path):
    # ValueError, as Keras Applications raise for a `weights` path that does not exist.
    with pytest.raises(ValueError, match="not found: .*nope.weights.h5"):
        tiny(weights=str(tmp_path / "nope.weights.h5"))
    with pytest.raises(ValueError, match=r"\.weights\.h5. or .\.keras. file, got 'resnet'"):
        tiny(weights="resnet")
    with pytest.raises(ValueError, match=r'use IRevNetBijective\(weights="imagenet"\)'):
        tiny(weights="imagenet")


def test_error_classes_inconsistent_with_weights(tmp_path):
    path = str(tmp_path / "five.weights.h5")
    tiny(classes=5).save_weights(path)
    with pytest.raises(ValueError, match="classifier for 5 classes.*classes=7; pass classes=5"):
        tiny(classes=7, weights=path)
    with pytest.raises(ValueError, match="include_top=True, classes=5"):
        tiny(include_top=False, weights=path)


def test_error_inverse_wrong_shape():
    model = tiny()
    with pytest.raises(
        ValueError,
        match=r"inverse expects a batch of shape \(batch, 8, 8, 64\), got shape \(2, 8, 8, 63\)",
    ):
        model.inverse(np.zeros((2, 8, 8, 63), "float32"))
    with pytest.raises(ValueError, match=r"features expects a batch of shape \(batch, 32, 32, 3\)"):
        model.features(np.zeros((2, 32, 32, 1), "float32"))


@pytest.mark.parametrize("mult", [0, -1, 2.5, True])
def test_error_mult_not_a_positive_integer(mult):
    with pytest.raises(ValueError, match=rf"`mult` must be a positive integer .*got mult={mult!r}"):
        tiny(mult=mult)


def test_error_mult_leaves_no_hidden_width():
    with pytest.raises(
        ValueError, match=r"`mult`=16 leaves no hidden width in the stage of 8 channels.*mult <= 8"
    ):
        tiny(mult=16)


def test_error_integer_dtype_policy():
    with pytest.raises(ValueError, match="`dtype` must be a floating-point policy .*got 'int32'"):
        tiny(dtype="int32")


def test_error_integer_images():
    model = tiny()
    pixels = preprocessed_photos(32, 2)  # floats: fine
    model(pixels)
    pixels = np.clip(pixels * 60 + 128, 0, 255).astype("uint8")
    message = r"expects preprocessed floating-point images .*preprocess_input.*got dtype uint8"
    with pytest.raises(ValueError, match=message):
        model(pixels)
    with pytest.raises(ValueError, match=message):
        model.predict(pixels, verbose=0)
    with pytest.raises(ValueError, match="irevnet.features " + message):
        model.features(pixels)


def test_error_unknown_size_model_given_indivisible_size():
    model = tiny(input_shape=(None, None, 3))
    x = preprocessed_photos(34, 1)[:, :, :32]  # 34 x 32
    message = (
        r"image height and width must be multiples of the model's total downsampling 4; got 34x32"
    )
    with pytest.raises(ValueError, match=message):
        model(x)
    with pytest.raises(ValueError, match=message):
        model.predict(x, verbose=0)
    with pytest.raises(ValueError, match="irevnet.features: " + message):
        model.features(x)


def test_error_indivisible_size_inside_a_traced_tensorflow_function():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("only TensorFlow traces with unknown sizes (JAX and torch see concrete ones)")
    import tensorflow as tf

    model = tiny(input_shape=(None, None, 3))
    traced = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, 3))])
    assert tuple(traced(preprocessed_photos(32, 1)).shape) == (1, 5)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"height and width\] \[36 34\].*total downsampling 4"
    ):
        traced(preprocessed_photos(36, 1)[:, :, :34])
    # predict retraces with relaxed shapes after the first size: the same run-time check.
    model.predict(preprocessed_photos(32, 1), verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[34 34\].*total downsampling 4"):
        model.predict(preprocessed_photos(34, 1), verbose=0)


def test_error_float64_on_jax_without_x64():
    if keras.backend.backend() != "jax":
        pytest.skip("JAX-only: the other backends compute float64 natively")
    with pytest.raises(ValueError, match="jax_enable_x64"):
        tiny(dtype="float64")


def test_error_channels_first_refused():
    keras.config.set_image_data_format("channels_first")
    try:
        with pytest.raises(ValueError, match="channels_last only"):
            tiny()
    finally:
        keras.config.set_image_data_format("channels_last")


def test_input_tensor_may_follow_other_layers():
    """As Keras Applications allow: the model's inputs are where `input_tensor` comes from."""
    pixels = keras.Input((32, 32, 3), name="pixels")
    model = tiny(input_tensor=keras.layers.Rescaling(2.0)(pixels))
    assert model.inputs[0] is pixels
    plain = tiny()
    plain.set_weights(model.get_weights())
    x = preprocessed_photos(32, 2)
    np.testing.assert_allclose(to_numpy(model(x)), to_numpy(plain(2.0 * x)), rtol=1e-5, atol=1e-5)
    # `features` and `inverse` work at the i-RevNet's own input (after the rescaling).
    np.testing.assert_allclose(
        to_numpy(model.features(x)), to_numpy(plain.features(x)), rtol=1e-6, atol=1e-6
    )
    with pytest.raises(ValueError, match="`input_tensor` must be a Keras tensor"):
        tiny(input_tensor=np.zeros((1, 32, 32, 3), "float32"))


def test_error_bad_pooling_and_classes():
    with pytest.raises(ValueError, match="`pooling` must be None, 'avg' or 'max', got 'sum'"):
        tiny(include_top=False, pooling="sum")
    with pytest.raises(ValueError, match="`classes` must be a positive integer, got 0"):
        tiny(classes=0)


def test_injective_model_inverts_after_batchnorm_learns_the_zero_channels():
    # Training teaches the BatchNorms that see zero-padded channels a variance of ~0, so
    # their gain 1/sqrt(eps) amplifies any rounding noise there; the inverse must put the
    # known zeros back rather than reconstruct them. momentum=0 makes the moving statistics
    # the batch statistics, which is where long training converges.
    model = kir.IRevNet(
        blocks=(2, 1),
        strides=(1, 2),
        channels=(8, 32),
        init_ds=0,
        input_shape=(32, 32, 3),
        classes=4,
        memory_efficient=False,
    )
    x = preprocessed_photos(32, 4)
    norms = [
        layer
        for layer in _compat.flatten_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)
    first = model.block_stack.blocks[0].bottleneck
    assert float(to_numpy(first.norm1.moving_variance).max()) < 1e-12  # F sees only zeros
    assert relative_error(model.inverse(model.features(x)), x) <= 1e-5


def test_inverse_model_predict_inverts_and_shares_weights():
    keras.utils.set_random_seed(1)
    model = tiny()
    x = preprocessed_photos(32, 4)
    settle_batchnorm(model, x)
    z = to_numpy(model.features(x))
    inverse = model.inverse_model()
    assert isinstance(inverse, kir.models.InverseModel)
    assert not inverse.weights or all(any(w is v for v in model.weights) for w in inverse.weights)
    x_back = inverse.predict(z, batch_size=3, verbose=0)  # two batches, the last one short
    assert x_back.shape == x.shape
    assert relative_error(x_back, x) <= 1e-5
    np.testing.assert_allclose(x_back, to_numpy(model.inverse(z)), rtol=1e-5, atol=1e-5)
    # Same weights, not a copy: a change to the model shows in the inverse model.
    model.set_weights([w * 1.5 for w in model.get_weights()])
    z = to_numpy(model.features(x))
    assert relative_error(inverse.predict(z, verbose=0), x) <= 1e-5


@pytest.mark.parametrize("name", ["tiny", "cifar"])
def test_every_layer_is_built_when_the_model_is(name):
    # While any layer of a model is unbuilt, Keras re-runs a symbolic build of the whole model
    # before every `predict_on_batch` and `train_on_batch` call: on JAX that was more than a
    # second per call of the CIFAR model (stride-1 psi layers were never built).
    keras.utils.set_random_seed(0)
    model = kir.IRevNet.from_preset(name, classifier_activation=None)
    assert [layer.name for layer in _compat.flatten_layers(model) if not layer.built] == []
    inverse = model.inverse_model()
    inverse.predict_on_batch(np.zeros((1,) + model.feature_shape, "float32"))
    assert [layer.name for layer in _compat.flatten_layers(inverse) if not layer.built] == []

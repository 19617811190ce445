"""keras_irevnet/layers/tensorflow_kernels.py: oneDNN's kernels (or Eigen's convolution
gradients) in TensorFlow's training graphs where TensorFlow runs without oneDNN.

The path is taken where TensorFlow runs without oneDNN and sees no GPU; the `kernels`
fixture takes it on any CPU (with oneDNN too), so the suite checks it wherever it runs, once
with oneDNN's kernels and once with Eigen's gradients (a build without oneDNN's kernels).
"""

import collections

import keras
import numpy as np
import pytest

from keras_irevnet.layers import Conv2D
from tests.helpers import (
    graph_nodes,
    preprocessed_photos,
    relative_error,
    tiny_model,
    to_numpy,
)

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow's convolution kernels"
)

_GRADIENT_OPS = ("Conv2DBackpropInput", "Conv2DBackpropFilter")
# The ops each form builds for a convolution trained in a graph: (op type, kernel label).
_CONVOLUTION_OPS = {
    "onednn": [
        ("_MklNativeConv2D", "MklNameChangeOp"),
        ("_MklNativeConv2DBackpropFilter", "MklNameChangeOp"),
        ("_MklNativeConv2DBackpropInput", "MklNameChangeOp"),
    ],
    "eigen": [("Conv2DBackpropFilter", "eigen_tensor"), ("Conv2DBackpropInput", "eigen_tensor")],
}


def _force(monkeypatch, kernels):
    """Takes the path as on a CPU without oneDNN: with `kernels` "onednn", "eigen" (a build
    without oneDNN's kernels) or None (TensorFlow's own kernels)."""
    from keras_irevnet.layers import tensorflow_kernels

    if kernels == "onednn" and not tensorflow_kernels._onednn_kernels():
        pytest.skip("this TensorFlow build has no oneDNN kernels")
    monkeypatch.setattr(tensorflow_kernels, "_cpu_without_onednn", lambda: kernels is not None)
    if kernels == "eigen":
        monkeypatch.setattr(tensorflow_kernels, "_onednn_kernels", lambda: False)


@pytest.fixture(params=["onednn", "eigen"])
def kernels(request, monkeypatch):
    _force(monkeypatch, request.param)
    return request.param


def _photo_channels(size, count, channels):
    """`count` real photos (the four of scikit-image, then their mirror images and
    rotations) widened to `channels` by a fixed 1x1 mixing of their colours."""
    x = preprocessed_photos(size, 4)
    x = np.concatenate([np.rot90(x, k, axes=(1, 2)) for k in range(4)])
    x = np.concatenate([x, x[:, :, ::-1]])[:count]
    mixing = np.random.RandomState(1).randn(3, channels).astype("float32")
    return np.tanh(x @ mixing)


def _pair(x, strides, padding, filters=8):
    ours = Conv2D(filters, 3, strides=strides, padding=padding)
    theirs = keras.layers.Conv2D(filters, 3, strides=strides, padding=padding)
    for layer in (ours, theirs):
        layer.build(x.shape)
    kernel = np.random.RandomState(2).randn(3, 3, x.shape[-1], filters).astype("float32") * 0.2
    bias = np.linspace(-0.5, 0.5, filters).astype("float32")
    for layer in (ours, theirs):
        layer.set_weights([kernel, bias])
    return ours, theirs


def _gradient_function(layer, target):
    """A tf.function: first-order gradients of a loss of `layer(x)` w.r.t. x, the kernel and
    the bias, and the second-order gradient of the squared input gradient w.r.t. the kernel."""
    import tensorflow as tf

    @tf.function
    def gradients(x):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(tf.sin(y) * target)
            dx, dkernel, dbias = tape.gradient(loss, [x, layer.kernel, layer.bias])
            curvature = tf.reduce_sum(dx * dx)
        return dx, dkernel, dbias, outer.gradient(curvature, layer.kernel)

    return gradients


def _first_order_function(layer):
    import tensorflow as tf

    @tf.function
    def gradients(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        return tape.gradient(loss, [x, layer.kernel])

    return gradients


def _labels(function, x, kind="Conv2D"):
    """(op type, kernel label) of every op of `kind` (convolutions, forward or gradient, or
    BatchNorm gradients) with a kernel label that `function` builds, in its graph or in the
    functions it calls; and "" for each such op without one."""
    return sorted(
        (node.op, node.attr["_kernel"].s.decode() if "_kernel" in node.attr else "")
        for node in graph_nodes(function, x)
        if kind in node.op and ("_kernel" in node.attr or node.op in _GRADIENT_OPS)
    )


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_gradients_equal_keras_convolution_gradients(kernels, strides, padding):
    import tensorflow as tf

    x = tf.constant(_photo_channels(17, 4, 5))  # odd size: "same" at stride 2 pads unevenly
    ours, theirs = _pair(x, strides, padding)
    target = tf.constant(np.cos(np.arange(np.prod(ours.compute_output_shape(x.shape)))))
    target = tf.reshape(tf.cast(target, "float32"), ours.compute_output_shape(x.shape))
    ours_gradients = _gradient_function(ours, target)
    theirs_gradients = _gradient_function(theirs, target)
    np.testing.assert_array_equal(to_numpy(ours(x)), to_numpy(theirs(x)))  # eager: Keras' op
    # oneDNN's forward convolution sums in another order than TensorFlow's: its output, and
    # so every gradient of sin(y), differs by float32 rounding (up to 1.1e-6 of the bias
    # gradient seen); Eigen's gradients of Keras' own forward differ by less.
    bound = 5e-6 if kernels == "onednn" else 1e-6
    for mine, reference in zip(ours_gradients(x), theirs_gradients(x)):
        # Relative to the whole tensor: the second-order terms are sums with cancellation.
        assert np.abs(to_numpy(reference)).max() > 1e-2
        assert relative_error(mine, reference) < bound, relative_error(mine, reference)
    # The first-order ops are the chosen kernels' (the second-order terms are TensorFlow's
    # own gradients of those ops).
    assert _labels(_first_order_function(ours), x) == _CONVOLUTION_OPS[kernels]
    assert all(label == "" for _, label in _labels(_first_order_function(theirs), x))


def test_wide_kernels_matrix_product_has_the_convolutions_gradients(kernels):
    # A kernel wide against the image (the ImageNet models' 7x7 stage) is computed as one
    # matrix product of shifted views, and its input gradient by the convolution gradient
    # kernel chosen, its kernel gradient as a product with the views.
    import tensorflow as tf

    x = tf.constant(_photo_channels(4, 4, 64))
    ours, theirs = _pair(x, 1, "same", filters=64)
    assert ours._shifted_products
    target = tf.reshape(tf.cos(tf.range(4 * 4 * 4 * 64, dtype="float32")), (4, 4, 4, 64))
    for mine, reference in zip(
        _gradient_function(ours, target)(x), _gradient_function(theirs, target)(x)
    ):
        assert np.abs(to_numpy(reference)).max() > 1e-2
        assert relative_error(mine, reference) < 5e-6, relative_error(mine, reference)
    input_gradient = [op for op in _CONVOLUTION_OPS[kernels] if "BackpropInput" in op[0]]
    assert _labels(_first_order_function(ours), x) == input_gradient


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_wide_kernels_matrix_product_under_mixed_precision(kernels, policy):
    # 16-bit inputs take Eigen's input gradient (oneDNN's kernels here are float32 only).
    import tensorflow as tf

    x = tf.constant(_photo_channels(4, 4, 64))
    ours = Conv2D(64, 3, padding="same", dtype=policy)
    theirs = keras.layers.Conv2D(64, 3, padding="same", dtype=policy)
    for layer in (ours, theirs):
        layer.build(x.shape)
    theirs.set_weights(ours.get_weights())
    assert ours._shifted_products

    def gradients(layer):
        @tf.function
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.square(tf.cast(layer(x), "float32")))
            return tape.gradient(loss, [x, layer.kernel])

        return run

    # 16-bit sums in two orders: float16 keeps 11 bits, bfloat16 8.
    bound = 1e-2 if policy == "mixed_float16" else 5e-2
    for mine, reference in zip(gradients(ours)(x), gradients(theirs)(x)):
        assert np.abs(to_numpy(reference)).max() > 1e-2
        assert relative_error(mine, reference) < bound, relative_error(mine, reference)
    assert _labels(gradients(ours), x) == [("Conv2DBackpropInput", "eigen_tensor")]


def test_float64_convolutions_take_eigen_gradients(monkeypatch):
    # oneDNN's kernels are float32 only: a float64 layer gets Eigen's gradients.
    import tensorflow as tf

    _force(monkeypatch, "onednn")
    x = tf.constant(_photo_channels(9, 2, 3).astype("float64"))
    ours = Conv2D(4, 3, padding="same", dtype="float64")
    theirs = keras.layers.Conv2D(4, 3, padding="same", dtype="float64")
    for layer in (ours, theirs):
        layer.build(x.shape)
    theirs.set_weights(ours.get_weights())
    mine, reference = _first_order_function(ours)(x), _first_order_function(theirs)(x)
    for a, b in zip(mine, reference):
        assert relative_error(a, b) < 1e-12
    assert _labels(_first_order_function(ours), x) == _CONVOLUTION_OPS["eigen"]


def test_gradients_hold_no_im2col_buffer(kernels):
    # TensorFlow's default gradient kernels (without oneDNN) allocate a scratch buffer for a
    # 30 MB working set whatever the batch: here 28 MB for the kernel gradient of a 16 -> 16
    # channel convolution of 16 images at 32x32 (1 MB each). oneDNN's and Eigen's allocate
    # their results.
    import tensorflow as tf

    from benchmarks.allocations import tensorflow_step_bytes

    x = tf.constant(_photo_channels(32, 16, 16))
    layer = Conv2D(16, 3, padding="same", use_bias=False)
    layer.build(x.shape)
    gradients = _first_order_function(layer)
    gradients(x)
    peak = min(tensorflow_step_bytes(lambda: gradients(x))["peak_tensor_bytes"] for _ in range(3))
    image_bytes = 4 * int(np.prod(x.shape))
    # The output, the input gradient and the loss's own temporaries: a few images' worth.
    assert peak < 6 * image_bytes, (peak, image_bytes)


def test_kernels_only_where_they_run(kernels):
    import tensorflow as tf

    from keras_irevnet.layers import tensorflow_kernels

    assert not tensorflow_kernels.applies()  # eager: kernels are not chosen by label
    seen = {}

    @tf.function(jit_compile=False)
    def graph(x):
        seen["no tape"] = tensorflow_kernels.applies()
        with tf.GradientTape() as tape:
            tape.watch(x)
            seen["tape"] = tensorflow_kernels.applies()
        return x

    @tf.function(jit_compile=True)
    def xla(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            seen["xla"] = tensorflow_kernels.applies()
        return x

    graph(tf.ones(2))
    xla(tf.ones(2))
    # Predictions and exports (no tape) build Keras' own convolution; XLA has its own kernels.
    assert seen == {"no tape": False, "tape": True, "xla": False}
    # And XLA does refuse them: a model trains under jit_compile (it would fail with them).
    model = tiny_model()
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    x = preprocessed_photos(32, 2)
    assert np.isfinite(model.train_on_batch(x, np.zeros((2, 5))))


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("chosen", ["onednn", "eigen"])
def test_training_steps_match_the_default_kernels(monkeypatch, chosen, memory_efficient):
    # The tiny i-RevNet (stride-1 and stride-2 blocks, BatchNorm, the head) trained three
    # SGD steps with the chosen kernels and with TensorFlow's defaults (oneDNN's where
    # TensorFlow runs it): the same weights to float32 rounding.
    x = preprocessed_photos(32, 4)
    y = np.eye(5, dtype="float32")[[0, 1, 2, 3]]
    weights = {}
    for kernels in (chosen, None):
        _force(monkeypatch, kernels)
        model = tiny_model(memory_efficient=memory_efficient)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = [to_numpy(w) for w in model.trainable_weights]
        for _ in range(3):
            model.train_on_batch(x, y)
        weights[kernels] = [to_numpy(w) for w in model.trainable_weights]
    moved = max(float(np.abs(a - b).max()) for a, b in zip(weights[chosen], before))
    assert moved > 1e-3
    for mine, reference in zip(weights[chosen], weights[None]):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-5)


def test_reversible_backprop_asked_for_the_input_gradient_only(kernels):
    # Reversible backprop waits for every gradient of a block before it moves on; a kernel
    # gradient nobody asks for is then turned into a NoOp by TensorFlow's graph optimizer,
    # which has no kernel under Eigen's or oneDNN's label (the step failed: "No registered
    # 'NoOp' OpKernel ... compatible with node Conv2DBackpropFilter").
    import tensorflow as tf

    x = tf.constant(preprocessed_photos(16, 4))
    gradients = []
    for memory_efficient in (True, False):
        # Two blocks per stage, the first injective (the smallest stack seen to fail).
        model = tiny_model(
            blocks=(2, 2),
            channels=(16, 64),
            init_ds=0,
            input_shape=(16, 16, 3),
            memory_efficient=memory_efficient,
        )

        @tf.function
        def input_gradient(x, model=model):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.square(model(x, training=True)))
            return tape.gradient(loss, x)

        gradients.append(input_gradient(x))
    assert float(tf.reduce_max(tf.abs(gradients[1]))) > 1e-3
    assert relative_error(*gradients) < 1e-5


def test_reversible_forward_pass_takes_the_prediction_steps_kernels(monkeypatch):
    # Reversible backprop's forward pass runs with the tape stopped, in a training step's
    # graph (never saved): its convolutions take the kernels Keras' predict step would
    # (oneDNN's, TensorFlow's own below `_few_output_positions`' count), not Keras' own ops
    # throughout; its recompute takes a training step's. Gradients equal plain training's.
    import tensorflow as tf

    from keras_irevnet.layers import tensorflow_kernels

    _force(monkeypatch, "onednn")
    # 16 photos of 32 x 32: the first stage's convolutions have 4096 output positions, the
    # second's (stride 2) 1024.
    x = preprocessed_photos(32, 4)
    x = tf.constant(np.concatenate([np.rot90(x, k, axes=(1, 2)) for k in range(4)]))

    def traced(function):
        """Top-level convolutions of `function`'s graph: TensorFlow's own ops, and calls of
        oneDNN's."""
        graph = function.get_concrete_function(x).graph.as_graph_def()
        onednn = {
            f.signature.name
            for f in graph.library.function
            if any(n.op == "_MklNativeConv2D" for n in f.node_def)
        }
        return collections.Counter(
            "onednn" if node.op.endswith("PartitionedCall") else node.op
            for node in graph.node
            if node.op == "Conv2D" or ("f" in node.attr and node.attr["f"].func.name in onednn)
        )

    counts, gradients = {}, {}
    for memory_efficient in (False, True):
        model = tiny_model(memory_efficient=memory_efficient)

        @tf.function
        def training_step(x, model=model):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.sin(model(x, training=True)))
            return tape.gradient(loss, model.trainable_variables)

        @tf.function
        def prediction_step(x, model=model):
            with tensorflow_kernels.keras_step():
                return model(x, training=False)

        counts[memory_efficient] = traced(training_step)
        gradients[memory_efficient] = training_step(x)
    predicted = traced(prediction_step)
    assert predicted["onednn"] > 0 and predicted["Conv2D"] > 0, predicted  # both kinds
    assert counts[False] == {"onednn": predicted.total()}, counts
    assert counts[True] == {
        "onednn": counts[False]["onednn"] + predicted["onednn"],
        "Conv2D": predicted["Conv2D"],
    }, (counts, predicted)
    for efficient, plain in zip(gradients[True], gradients[False]):
        assert relative_error(efficient, plain) < 1e-5


@pytest.mark.parametrize("replayed", [False, True])
def test_batch_norm_gradient_by_onednn_equals_tensorflow_own(monkeypatch, replayed):
    # A training-mode BatchNorm's gradients w.r.t. its input, scale and offset, first and
    # second order, with oneDNN's gradient kernel and with TensorFlow's own. `replayed`: the
    # recompute of reversible backprop, which normalises with the batch statistics the
    # forward pass kept and takes the gradient from the forward call's reserve spaces.
    import tensorflow as tf

    from keras_irevnet.layers import BatchNormalization
    from keras_irevnet.layers.batch_normalization import kept_batch_statistics

    x = tf.constant(_photo_channels(12, 6, 7) * 2.0 + 0.5)
    target = tf.constant(np.cos(np.arange(np.prod(x.shape))).reshape(x.shape).astype("float32"))
    layer = BatchNormalization()
    layer.build(x.shape)
    layer.gamma.assign(np.linspace(0.5, 1.5, 7).astype("float32"))
    layer.beta.assign(np.linspace(-0.3, 0.3, 7).astype("float32"))

    def gradients(kernels):
        _force(monkeypatch, kernels)

        @tf.function
        def compute(x):
            kept = []
            if replayed:
                with kept_batch_statistics(kept, replay=False):
                    layer(x, training=True)
            with tf.GradientTape() as outer:
                outer.watch(x)
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    with kept_batch_statistics(collections.deque(kept), replay=replayed):
                        y = layer(x, training=True)
                    loss = tf.reduce_sum(tf.sin(y) * target)
                dx, dgamma, dbeta = tape.gradient(loss, [x, layer.gamma, layer.beta])
                curvature = tf.reduce_sum(dx * dx)
            return (dx, dgamma, dbeta, outer.gradient(curvature, x)), y

        results = compute(x)
        return results, _labels(compute, x, kind="FusedBatchNormGrad")

    (mine, y_mine), labels = gradients("onednn")
    (reference, y_reference), reference_labels = gradients(None)
    np.testing.assert_array_equal(to_numpy(y_mine), to_numpy(y_reference))  # the same forward
    for a, b in zip(mine, reference):
        assert np.abs(to_numpy(b)).max() > 1e-2
        assert relative_error(a, b) < 1e-5, relative_error(a, b)
    # (Twice in the graph's functions: differentiating a function call makes a copy of it.)
    assert set(labels) == {("_MklNativeFusedBatchNormGradV3", "MklNameChangeOp")}
    assert reference_labels == []


def test_predictions_and_evaluations_take_onednn_kernels_exports_do_not(monkeypatch, tmp_path):
    # Keras' predict and test steps (never saved) are built with oneDNN's convolutions; an
    # export traced in the same process, after them, holds TensorFlow's public ops only
    # (a SavedModel must load where oneDNN's ops do not exist) and computes the same.
    import tensorflow as tf

    from keras_irevnet.export import export_saved_model
    from keras_irevnet.layers import tensorflow_kernels

    x = preprocessed_photos(32, 4)
    y = np.eye(5, dtype="float32")[[0, 1, 2, 3]]
    reference = tiny_model()
    reference.compile(loss="mse")
    expected = reference.predict_on_batch(x)
    expected_inverse = reference.inverse_model().predict_on_batch(reference.features(x))
    expected_loss = reference.evaluate(x, y, verbose=0)

    _force(monkeypatch, "onednn")
    built = []
    convolution = tensorflow_kernels.convolution
    monkeypatch.setattr(
        tensorflow_kernels,
        "convolution",
        lambda *args: built.append(tf.executing_eagerly()) or convolution(*args),
    )
    model = tiny_model()
    model.compile(loss="mse")
    for call, want in (
        (lambda: model.predict_on_batch(x), expected),
        (lambda: model.predict(x, verbose=0), expected),
        (lambda: model.inverse_model().predict_on_batch(model.features(x)), expected_inverse),
        (lambda: model.evaluate(x, y, verbose=0), expected_loss),
    ):
        before = len(built)
        result = call()
        assert len(built) > before  # traced with these kernels
        assert relative_error(result, want) < 1e-5, relative_error(result, want)
    assert relative_error(model(x), expected) < 1e-5  # eager: Keras' ops

    before = len(built)
    export_saved_model(model, str(tmp_path / "saved"))
    model.export(str(tmp_path / "keras_saved"), format="tf_saved_model")
    assert len(built) == before
    for directory in ("saved", "keras_saved"):
        graph = (tmp_path / directory / "saved_model.pb").read_bytes()
        assert b"Conv2D" in graph and b"_MklNative" not in graph and b"MklNameChangeOp" not in graph
    loaded = tf.saved_model.load(str(tmp_path / "keras_saved"))
    assert relative_error(loaded.serve(tf.constant(x)), expected) < 1e-5


def test_prediction_steps_leave_small_convolutions_to_tensorflow(monkeypatch):
    # In Keras' predict and test steps a convolution with fewer than 4096 output positions
    # over the traced batch takes TensorFlow's own kernel (`forward`), which its graph
    # optimiser fuses with the BatchNorm and ReLU after it; a larger one, an unknown batch
    # and a graph under a tape take oneDNN's. The results agree.
    import tensorflow as tf

    from keras_irevnet.layers import tensorflow_kernels

    _force(monkeypatch, "onednn")
    photos = tf.constant(_photo_channels(16, 16, 16))  # 16 images of 16 x 16: 4096 positions
    kernel = tf.constant(np.random.RandomState(3).randn(3, 3, 16, 8).astype("float32") * 0.2)
    forwarded = []

    def forward(strides, padding):
        def convolution(inputs, kernel):
            forwarded.append(int(inputs.shape[0]))
            return tf.nn.conv2d(inputs, kernel, strides, padding.upper())

        return convolution

    def convolution(inputs, strides=1, padding="same"):
        return tensorflow_kernels.convolution(
            inputs, kernel, (strides, strides), padding, forward(strides, padding)
        )

    @tf.function
    def predict_step(inputs, strides=1, padding="same"):
        with tensorflow_kernels.keras_step():
            return convolution(inputs, strides, padding)

    @tf.function
    def step_under_a_tape(inputs):
        with tensorflow_kernels.keras_step(), tf.GradientTape() as tape:
            tape.watch(inputs)
            y = convolution(inputs)
        return y, tape.gradient(y, inputs)

    for inputs, strides, padding, expected in (
        (photos[:15], 1, "same", [15]),  # 3840 output positions
        (photos, 1, "same", []),  # 4096
        (photos, 2, "same", [16]),  # 1024
        (photos, 1, "valid", [16]),  # 16 x 14 x 14 = 3136
    ):
        forwarded.clear()
        result = predict_step(inputs, strides, padding)
        assert forwarded == expected, (inputs.shape, strides, padding)
        wanted = tf.nn.conv2d(inputs, kernel, strides, padding.upper())
        assert relative_error(result, wanted) < 1e-5

    forwarded.clear()
    unknown_batch = predict_step.get_concrete_function(tf.TensorSpec((None, 16, 16, 16)))
    assert forwarded == []
    wanted = tf.nn.conv2d(photos[:2], kernel, 1, "SAME")
    assert relative_error(unknown_batch(photos[:2]), wanted) < 1e-5
    step_under_a_tape(photos[:2])
    assert forwarded == []


def test_prediction_steps_leave_small_wide_kernels_to_tensorflows_convolution(monkeypatch):
    # The 7x7 stage's matrix products give way to TensorFlow's own convolution in
    # prediction below 4096 output positions too.
    import tensorflow as tf

    from keras_irevnet.layers import tensorflow_kernels

    _force(monkeypatch, "onednn")
    photos = tf.constant(_photo_channels(4, 32, 64))
    ours, theirs = _pair(photos, 1, "same", filters=64)
    assert ours._shifted_products

    @tf.function
    def predict_step(inputs):
        with tensorflow_kernels.keras_step():
            return ours(inputs)

    for count, convolution in ((32, True), (256, False)):  # 512 and 4096 positions
        inputs = tf.tile(photos, (count // 32, 1, 1, 1))
        ops = {node.op for node in graph_nodes(predict_step, inputs)}
        assert ("Conv2D" in ops) == convolution and ("MatMul" in ops) != convolution, ops
        assert relative_error(predict_step(inputs), theirs(inputs)) < 1e-5


def test_small_convolutions_benchmark_compares_the_two_kernels(monkeypatch):
    # benchmarks.small_convolutions traces its chain of bottlenecks once with every
    # convolution on oneDNN's kernel and once on TensorFlow's own; both compute the same.
    from benchmarks import small_convolutions

    _force(monkeypatch, "onednn")
    x, runs = small_convolutions.chains(8, 16, 2)
    ops = {name: {node.op for node in graph_nodes(run, x)} for name, run in runs.items()}
    assert "_MklNativeConv2D" in ops["onednn"] and "Conv2D" not in ops["onednn"]
    assert "Conv2D" in ops["tensorflow"] and not any("Mkl" in op for op in ops["tensorflow"])
    assert relative_error(runs["onednn"](x), runs["tensorflow"](x)) < 1e-5
    assert set(small_convolutions.measure(8, 16, 2, repeats=1)) == {"onednn", "tensorflow"}

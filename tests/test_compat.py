"""keras_irevnet/_compat.py: the private Keras / TensorFlow / torch API the package relies on.

Each function is called for real, so an upgrade that moves or changes one fails here, by
name, before anything that depends on it does.
"""

import keras
import numpy as np
import pytest

from keras_irevnet import _compat
from tests.helpers import tiny_model

BACKEND = keras.backend.backend()


def test_in_symbolic_scope_tells_shape_inference_from_a_call():
    seen = []

    class Probe(keras.layers.Layer):
        def call(self, x):
            seen.append(_compat.in_symbolic_scope())
            return x

    probe = Probe()
    probe(keras.Input((2,)))  # shape inference runs `call` on symbolic tensors
    symbolic_calls = len(seen)  # torch may trace `call` more than once
    probe(np.zeros((1, 2), "float32"))
    assert symbolic_calls >= 1 and all(seen[:symbolic_calls])
    assert seen[symbolic_calls:] == [False]


def test_flatten_layers_reaches_every_sublayer():
    model = tiny_model()
    layers = _compat.flatten_layers(model.block_stack)
    names = {layer.name for layer in layers}
    assert model.block_stack in layers and "bottleneck" in names
    assert len(layers) == len({id(layer) for layer in layers})  # no repeats


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's tape and XLA context")
def test_tensorflow_stop_recording_and_xla_context():
    import tensorflow as tf

    x = tf.constant(2.0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        with _compat.tensorflow_stop_recording():
            y = x * x
    assert tape.gradient(y, x) is None  # nothing was recorded
    assert not _compat.tensorflow_in_xla_context()
    seen = []

    @tf.function(jit_compile=True)
    def compiled(v):
        seen.append(_compat.tensorflow_in_xla_context())
        return v + 1

    compiled(x)
    assert seen == [True]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's graphs")
def test_tensorflow_kernel_labels_recording_and_onednn_probe():
    import tensorflow as tf

    assert isinstance(_compat.tensorflow_uses_onednn(), bool)
    seen = {}

    @tf.function
    def labelled(x):
        seen["untaped"] = _compat.tensorflow_could_record_gradients()
        with tf.GradientTape():
            seen["taped"] = _compat.tensorflow_could_record_gradients()
        with _compat.tensorflow_kernel_label(["Conv2DBackpropFilter"], "eigen_tensor"):
            y = tf.compat.v1.nn.conv2d_backprop_filter(x, [1, 1, 1, 1], x, [1, 1, 1, 1], "SAME")
        return y, tf.compat.v1.nn.conv2d_backprop_filter(x, [1, 1, 1, 1], x, [1, 1, 1, 1], "SAME")

    x = tf.reshape(tf.range(8.0), (2, 2, 2, 1))
    labelled_y, default_y = labelled(x)
    assert float(labelled_y[0, 0, 0, 0]) == float(default_y[0, 0, 0, 0]) == 140.0
    assert seen == {"untaped": False, "taped": True}
    ops = labelled.get_concrete_function(x).graph.get_operations()
    labels = [
        op.node_def.attr["_kernel"].s if "_kernel" in op.node_def.attr else None
        for op in ops
        if op.type == "Conv2DBackpropFilter"
    ]
    assert labels == [b"eigen_tensor", None]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's kernel and gradient registries")
def test_tensorflow_internal_ops_their_kernels_and_gradients():
    import tensorflow as tf

    assert _compat.tensorflow_has_cpu_kernel("Conv2DBackpropFilter", "eigen_tensor")
    assert not _compat.tensorflow_has_cpu_kernel("Conv2DBackpropFilter", "no such label")
    assert not _compat.tensorflow_has_cpu_kernel("NoSuchOp", "")

    @tf.function
    def built(x):  # a public op built through the internal builder
        return _compat.tensorflow_op(
            "Conv2D",
            input=x,
            filter=tf.ones((1, 1, 1, 1)),
            strides=[1, 1, 1, 1],
            padding="SAME",
            use_cudnn_on_gpu=True,
            explicit_paddings=[],
            data_format="NHWC",
            dilations=[1, 1, 1, 1],
        )[0]

    x = tf.reshape(tf.range(8.0), (2, 2, 2, 1))
    np.testing.assert_array_equal(built(x).numpy(), x.numpy())
    assert [op.type for op in built.get_concrete_function(x).graph.get_operations()].count(
        "Conv2D"
    ) == 1
    # An op type with no gradient gets the one it is like (and keeps one it has).
    from tensorflow.python.framework import ops

    _compat.tensorflow_share_gradient("KerasIrevnetTestOpWithoutGradient", like="Relu")
    assert ops.gradient_registry.lookup("KerasIrevnetTestOpWithoutGradient") is (
        ops.gradient_registry.lookup("Relu")
    )
    _compat.tensorflow_share_gradient("Conv2D", like="Relu")
    assert ops.gradient_registry.lookup("Conv2D") is not ops.gradient_registry.lookup("Relu")


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's profiler")
def test_tensorflow_xspace_reads_the_profilers_trace(tmp_path):
    import glob

    import tensorflow as tf

    tf.profiler.experimental.start(str(tmp_path))
    tf.sin(tf.ones((3, 3)))
    tf.profiler.experimental.stop()
    (path,) = glob.glob(str(tmp_path / "**" / "*.xplane.pb"), recursive=True)
    space = _compat.tensorflow_xspace()()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    events = [
        plane.event_metadata[event.metadata_id].name
        for plane in space.planes
        for line in plane.lines
        for event in line.events
    ]
    assert any("Sin" in name for name in events), sorted(set(events))[:20]


@pytest.mark.skipif(BACKEND != "torch", reason="torch's version counter")
def test_torch_version_counter_grows_with_in_place_writes():
    import torch

    t = torch.zeros(3)
    before = _compat.torch_version_counter(t)
    t.add_(1)
    assert _compat.torch_version_counter(t) > before


def test_scope_predicates_follow_keras_scopes_also_after_clear_session():
    variable = keras.Variable(np.ones(2, "float32"))
    for _ in range(2):  # the second time after clear_session, which replaces Keras' state
        assert not _compat.in_stateless_scope() and _compat.autocast_scope_dtype() is None
        with keras.StatelessScope():
            assert _compat.in_stateless_scope()
        with _compat.autocast_scope("float16"):
            assert _compat.autocast_scope_dtype() == "float16"
        if BACKEND == "torch":
            with keras.StatelessScope(state_mapping=[(variable, keras.ops.zeros((2,)))]):
                assert float(keras.ops.sum(_compat.torch_variable_value(variable))) == 0.0
        keras.utils.clear_session()


@pytest.mark.skipif(BACKEND != "torch", reason="torch variables' Parameters")
def test_torch_variable_value_is_the_parameter_where_value_would_be():
    import torch

    variable = keras.Variable(np.arange(3.0, dtype="float32"))
    parameter = _compat.torch_variable_value(variable)
    assert parameter is variable.value and isinstance(parameter, torch.nn.Parameter)
    # Wherever Keras' `value` gives something else, so does this.
    mapped = keras.ops.zeros((3,))
    with keras.StatelessScope(state_mapping=[(variable, mapped)]):
        assert torch.equal(_compat.torch_variable_value(variable), variable.value)
        assert torch.equal(_compat.torch_variable_value(variable), mapped)
    with _compat.autocast_scope("bfloat16"):
        cast = _compat.torch_variable_value(variable)
        assert cast.dtype == torch.bfloat16 and torch.equal(cast, variable.value)
    with keras.device("meta"):
        assert _compat.torch_variable_value(variable).device.type == "meta"
    assert _compat.torch_variable_value(variable) is parameter


def test_weights_h5_bytes_is_what_save_weights_writes(tmp_path):
    import io

    import h5py

    model = tiny_model()
    added = []
    data = _compat.weights_h5_bytes(model, add_to_file=lambda h5: added.append(h5.filename))
    assert added
    path = tmp_path / "m.weights.h5"
    path.write_bytes(data)
    with h5py.File(io.BytesIO(data), "r") as h5:
        assert "layers" in h5 and "vars" in h5
    other = tiny_model(seed=1)
    other.load_weights(path)
    for a, b in zip(model.weights, other.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_ask_to_proceed_with_overwrite_is_callable(monkeypatch):
    monkeypatch.setattr("builtins.input", lambda *args: "n")
    assert _compat.ask_to_proceed_with_overwrite("some/file") is False


def test_keras_home_is_keras_cache_directory():
    import os

    home = _compat.keras_home()
    expected = os.environ.get("KERAS_HOME")
    assert isinstance(home, str) and (home == expected if expected else home.endswith(".keras"))


@pytest.mark.skipif(BACKEND != "jax", reason="Keras' JAX trainer")
def test_jax_trainer_compiler_options_reach_the_compilation():
    import jax
    from keras.src.backend.jax import trainer

    def conv(x, k):
        return jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    x, k = jax.numpy.ones((2, 8, 8, 64)), jax.numpy.ones((3, 3, 64, 64))
    # An option whose effect shows in the compiled program: XLA's CPU compiler hands the
    # convolution to YNNPACK by default, and not with the option.
    options = {"xla_cpu_experimental_ynn_fusion_type": ""}
    with _compat.jax_trainer_compiler_options(options):
        compiled = trainer.jit(conv).lower(x, k).compile().as_text()
    assert trainer.jit is jax.jit  # restored
    with _compat.jax_trainer_compiler_options(None):
        assert trainer.jit is jax.jit
    assert "ynn" in jax.jit(conv).lower(x, k).compile().as_text()
    assert "ynn" not in compiled


def test_autocast_scope_casts_variable_reads_as_a_mixed_layer_call_does():
    seen = {}

    class Probe(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(2,), initializer="ones")

        def call(self, x):
            seen["scope"] = _compat.autocast_scope_dtype()
            return x * self.w

    probe = Probe(dtype="mixed_bfloat16")
    probe(np.ones((1, 2), "float32"))  # Keras' own __call__: casts the input, enters the scope
    assert seen["scope"] == "bfloat16"
    assert _compat.autocast_scope_dtype() is None
    x = keras.ops.ones((1, 2), "bfloat16")
    with _compat.autocast_scope("bfloat16"):
        assert _compat.autocast_scope_dtype() == "bfloat16"
        y = probe.call(x)
        assert keras.backend.standardize_dtype(keras.ops.convert_to_tensor(probe.w).dtype) == (
            "bfloat16"
        )
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(probe.w.dtype) == "float32"


def test_untrack_batch_norm_axes_leaves_a_tuple_keras_reduces_over():
    layer = keras.layers.BatchNormalization()
    layer.build((2, 4, 4, 3))
    _compat.untrack_batch_norm_axes(layer)
    assert layer._reduction_axes == (0, 1, 2)
    x = np.random.RandomState(0).randn(2, 4, 4, 3).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)


def test_pad_with_zeros_is_ops_pad_without_an_operation_per_call():
    x = keras.ops.convert_to_tensor(np.random.RandomState(0).randn(2, 3, 4, 5).astype("float32"))
    widths = [[0, 0], [1, 2], [0, 1], [0, 3]]
    padded = _compat.pad_with_zeros(x, widths)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(padded), keras.ops.convert_to_numpy(keras.ops.pad(x, widths))
    )
    # Each `ops.pad` call builds an operation, whose automatic name counts up in a dict of
    # Keras' global state; the direct call builds none and changes nothing.
    from keras.src.backend.common import global_state

    def pads_named():
        return global_state.get_global_attribute("object_name_uids", {}).get("pad", 0)

    before = pads_named()
    keras.ops.pad(x, widths)
    assert pads_named() == before + 1
    _compat.pad_with_zeros(x, widths)
    assert pads_named() == before + 1
    symbolic = _compat.pad_with_zeros(keras.Input((3, 4, 5), batch_size=2), widths)
    assert keras.backend.is_keras_tensor(symbolic) and tuple(symbolic.shape) == (2, 6, 5, 8)

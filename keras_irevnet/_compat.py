"""The private Keras, TensorFlow and torch API keras_irevnet relies on, in one place.

Everything else in the package uses public API only. Each function here says what it is for
and why no public API does it; tests/test_compat.py calls every one of them, so a Keras,
TensorFlow or torch upgrade that moves or changes them fails there, by name, before anything
else does.
"""

import contextlib
import functools


def in_symbolic_scope():
    """Whether Keras is running a layer on symbolic tensors to infer shapes.

    Reversible backprop installs a custom gradient; inside Keras' shape inference (e.g. its
    symbolic build before `fit`) there is nothing to differentiate and the plain path is
    used. Keras has no public predicate for it.
    """
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope as keras_in_scope

    return keras_in_scope()


def flatten_layers(layer):
    """`layer` and every layer inside it, recursively (Keras' own walk, deduplicated).

    Keras 3 lists a model's layers publicly (`Model.layers`, one level) but not a layer's
    sublayers.
    """
    return list(layer._flatten_layers(include_self=True, recursive=True))


def tensorflow_stop_recording():
    """A context in which TensorFlow's gradient tapes record nothing.

    The forward pass of reversible backprop runs inside `tf.custom_gradient`; an enclosing
    eager `tf.GradientTape` recording its operations would keep every activation alive,
    which is what reversible backprop exists to avoid. TensorFlow's own `tf.recompute_grad`
    uses the same private context; the public `GradientTape.stop_recording` needs the tape
    object, which Keras' trainer owns.
    """
    from tensorflow.python.eager import record

    return record.stop_recording()


def tensorflow_in_xla_context():
    """Whether TensorFlow is building a function for XLA (`jit_compile=True`).

    XLA's CPU lowering of the fused BatchNorm kernel is slower than Keras' separate ops
    (benchmarks/results/optimisations.md), so `keras_irevnet.layers.BatchNormalization` fuses
    only outside XLA. Keras 2's own
    layers asked TensorFlow the same private question; there is no public one.
    """
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def tensorflow_uses_onednn():
    """Whether TensorFlow runs its CPU kernels through oneDNN (its default on Intel CPUs,
    off by default elsewhere; `TF_ENABLE_ONEDNN_OPTS` chooses). Without oneDNN its
    convolution gradients are its own im2col kernels, which
    `keras_irevnet.layers.tensorflow_kernels` replaces, and its CPU allocator keeps no
    statistics (`benchmarks.allocations`); TensorFlow tells this only through its private
    build-information probe.
    """
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # a TensorFlow without the probe
        return False


def tensorflow_kernel_label(op_types, label):
    """A context in which the graph being built asks for `label`'s kernels of `op_types`.

    TensorFlow registers more than one CPU kernel for some ops and picks one by the node's
    kernel label (`_kernel`); graph code chooses it with this map, as TensorFlow's own tests
    do. There is no public way to choose a kernel. Graph (tf.function) building only.
    """
    import tensorflow as tf

    return tf.compat.v1.get_default_graph()._kernel_label_map(
        {op_type: label for op_type in op_types}
    )


def tensorflow_has_cpu_kernel(op_type, label):
    """Whether this TensorFlow build registers a CPU kernel for `op_type` under `label`.

    oneDNN's kernels (`_MklNative*` ops, label "MklNameChangeOp") are in TensorFlow's x86
    Linux builds whether or not oneDNN is switched on, and in no others; asking is how
    `keras_irevnet.layers.tensorflow_kernels` knows it can use them. Only the private
    kernel registry answers it.
    """
    from tensorflow.python.framework import kernels

    try:
        registered = kernels.get_registered_kernels_for_op(op_type).kernel
    except Exception:  # an op this build does not know
        return False
    return any(k.device_type == "CPU" and k.label == label for k in registered)


def tensorflow_xspace():
    """The protocol-buffer class of the trace files TensorFlow's profiler writes (XSpace).

    `benchmarks.allocations` reads the allocator's events (each tensor's requested bytes)
    from a profile; TensorFlow exposes the profiler's start and stop but not the format of
    what it writes, whose class lives in its bundled profiler library.
    """
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError:  # TensorFlow builds that ship the profiler library on its own
        from tsl.profiler.protobuf import xplane_pb2
    return xplane_pb2.XSpace


def tensorflow_op(op_type, **inputs_and_attributes):
    """The outputs of a new `op_type` node in the graph being built.

    TensorFlow's internal ops (oneDNN's `_MklNative*`) have no `tf.raw_ops` wrapper; this
    is the op builder `tf.raw_ops` itself calls in graphs. Every attribute must be given
    (the Python side does not fill the defaults of internal ops). Graph building only.
    """
    from tensorflow.python.framework import op_def_library

    name = op_type.lstrip("_")  # node names may not start with "_"
    _, _, _, outputs = op_def_library._apply_op_helper(op_type, name=name, **inputs_and_attributes)
    return outputs


def tensorflow_share_gradient(op_type, like):
    """Registers `like`'s gradient function for `op_type`, unless it has one.

    oneDNN's `_MklNative*` ops take the inputs and attributes of the op they stand for, so
    that op's gradient is theirs; TensorFlow registers none for them in Python (its oneDNN
    rewrite happens after differentiation). Reading a registered gradient function needs
    the private registry.
    """
    import tensorflow as tf
    from tensorflow.python.framework import ops

    try:
        ops.gradient_registry.lookup(op_type)
    except LookupError:
        tf.RegisterGradient(op_type)(ops.gradient_registry.lookup(like))


def tensorflow_could_record_gradients():
    """Whether a TensorFlow gradient tape is recording (eager, or around the function being
    traced), so that the operations built now may be differentiated. Keras' train step
    records its forward pass; predictions, exports and reversible backprop's forward pass
    record nothing. TensorFlow's `py_function` and concrete functions ask the same private
    question; there is no public one."""
    from tensorflow.python.eager import record

    return record.could_possibly_record()


def torch_version_counter(tensor):
    """torch's in-place modification counter of `tensor` (it grows at every in-place write).

    The layers' torch fast paths keep tensors derived from weights (BatchNorm's inference
    scale and shift) while the weights are unchanged (`keras_irevnet.layers.torch_fast_path`);
    optimizer steps and `assign` write in place, and this counter is how torch itself
    (autograd's saved-tensor checks) notices such writes.
    """
    return tensor._version


def weights_h5_bytes(model, add_to_file=None):
    """The `.weights.h5` file of `model`, built in memory: what `model.save_weights` writes.

    Keras writes `save_weights` through HDF5's own file driver, which can crash the process
    when the write fails half-way (full disk, file-size limit); built in memory and written
    with one plain write, a failure is an ordinary OSError. Keras builds the weights of a
    `.keras` archive the same way; the pieces are private.

    Args:
        model: the model to save.
        add_to_file: optional `h5py.File -> None`, adding more to the file before it closes.
    """
    import io

    from keras.src.saving import saving_lib

    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    try:
        saving_lib._save_state(
            model,
            weights_store=store,
            assets_store=None,
            inner_path="",
            visited_saveables=set(),
        )
        if add_to_file is not None:
            add_to_file(store.h5_file)
    finally:
        store.close()
    return buffer.getvalue()


def ask_to_proceed_with_overwrite(path):
    """Keras' interactive question before replacing `path` (`save(..., overwrite=False)`)."""
    from keras.src.utils import io_utils

    return io_utils.ask_to_proceed_with_overwrite(path)


def keras_home():
    """Keras' cache and configuration directory (`$KERAS_HOME`, else `~/.keras`), where
    `keras.utils.get_file` keeps downloads. Keras computes it once, at import, and exposes it
    only privately; the converted pretrained weights are kept beside the download."""
    from keras.src.backend import config

    return config.keras_home()


@contextlib.contextmanager
def jax_trainer_compiler_options(compiler_options):
    """A context in which Keras' JAX trainer compiles its steps with `compiler_options`.

    Keras' JAX trainer builds its train, test and predict steps with `jax.jit` and has no
    way to pass XLA compiler options to it (`keras_irevnet.models.xla_cpu_options` says which
    and why). Its module-level `jit` is wrapped for the duration of one `make_*_function`
    call, which is where Keras calls it. With None, or where Keras uses Flax NNX's `jit`,
    nothing changes.
    """
    if not compiler_options:
        yield
        return
    import jax
    from keras.src.backend.jax import trainer

    original = trainer.jit
    if original is not jax.jit:
        yield
        return
    trainer.jit = functools.partial(original, compiler_options=compiler_options)
    try:
        yield
    finally:
        trainer.jit = original


def untrack_batch_norm_axes(layer):
    """Stores a built Keras `BatchNormalization`'s reduction axes as a tuple.

    Keras keeps them in a list, which a layer's attribute tracking wraps in a `TrackedList`;
    torch.compile cannot pass that to `torch.mean` and breaks the graph at every
    training-mode call (Keras 3.15, torch 2.13). A tuple of ints is stored as it is, and
    Keras only passes the axes on to its reductions. Keras offers no public setting for them.
    """
    layer._reduction_axes = tuple(layer._reduction_axes)


def pad_with_zeros(x, pad_width):
    """`keras.ops.pad(x, pad_width)` (zeros; one (before, after) pair per axis), without the
    operation object `ops.pad` builds on every call.

    Unlike most of `keras.ops`, `pad` has no eager shortcut (Keras 3.15): each call creates a
    `Pad` operation, whose automatic name bumps a counter in a global dict. That costs about
    160 us a call on every backend (torch's own pad of a small tensor: 28 us), and under
    torch.compile the dict's mutation makes every Keras layer call traced after it break the
    graph (Dynamo stops trusting `inspect.Signature`'s parameters after any dict mutation):
    a tiny i-RevNet's compiled training step was compiled layer by layer, in 275 instead of
    126 s. Symbolic tensors still go through `ops.pad`, which infers their shape.
    """
    import keras

    if keras.backend.is_keras_tensor(x):
        return keras.ops.pad(x, pad_width)
    from keras.src import backend

    return backend.numpy.pad(x, pad_width)


def in_stateless_scope():
    """Whether a `keras.StatelessScope` is active (variable writes are then recorded in it,
    not made): Keras exposes the scope but not this test."""
    return _keras_global_state().__dict__.get("stateless_scope") is not None


def autocast_scope(dtype):
    """The scope in which Keras reads floating-point variables cast to `dtype`: what a mixed
    policy's `Layer.__call__` enters around `call`. keras_irevnet's direct calls
    (keras_irevnet/layers/direct_call.py) enter it themselves; Keras exports no public
    handle on it."""
    from keras.src.backend.common.variables import AutocastScope

    return AutocastScope(dtype)


def autocast_scope_dtype():
    """The dtype of the active autocast scope (None when none, or one that casts nothing)."""
    scope = _keras_global_state().__dict__.get("autocast_scope")
    return None if scope is None else scope.dtype


def torch_variable_value(variable):
    """`variable.value` on torch, the torch Parameter itself where `value` would hand it
    back unchanged: outside a StatelessScope (which maps variables to other values), an
    autocast scope (which casts them) and a device scope (symbolic tracing on the meta
    device reads placeholders). Keras' `value` checks all three on every read, about 1.6 us
    each, and the layers' torch fast paths read several variables per call, hundreds of
    calls per batch; the scopes' state has no public accessor.
    """
    value = variable._value
    state = _keras_global_state().__dict__
    if (
        value is None
        or state.get("stateless_scope") is not None
        or state.get("autocast_scope") is not None
        or state.get("torch_device") is not None
    ):
        return variable.value
    return value


def _keras_global_state():
    """Keras' thread-local global state (the active scopes), read through the thread's own
    attribute dictionary: Keras' `get_global_attribute` is `getattr` with a default, which
    raises and catches an AttributeError for each scope that is not set (about 1 us).
    Looked up at each call: `keras.utils.clear_session()` replaces the object."""
    global _global_state_module
    if _global_state_module is None:
        # Imported once, kept in a module global (not a functools cache: torch.compile warns
        # about tracing through those).
        from keras.src.backend.common import global_state

        _global_state_module = global_state
    return _global_state_module.GLOBAL_STATE_TRACKER


_global_state_module = None

"""TensorFlow on CPU without oneDNN: oneDNN's kernels in the graphs Keras runs and never saves.

TensorFlow runs its CPU kernels through oneDNN by default only on some Intel CPUs
(`TF_ENABLE_ONEDNN_OPTS` chooses, once, before TensorFlow starts); elsewhere (AMD's CPUs
without AVX-512, among others) convolutions and BatchNorm get TensorFlow's own kernels,
which are slow on i-RevNet's shapes. Its convolution gradients also lay the image out as
columns (im2col) in a scratch buffer sized for a 30 MB working set whatever the batch, and a
graph runs the input and kernel gradients side by side: about 65 MB at the peak of every
training step whatever the depth, more than reversible backprop keeps for the whole CIFAR
model at batch 64. On 2 cores of an AMD EPYC (AVX2), the CIFAR model at batch 64, each op
timed alone and weighted by the blocks that use it (ms per step):

    kernels                                  conv forward  input grad  kernel grad  BN grad
    TensorFlow's own (no oneDNN)                   864         1322     (im2col)       335
    Eigen's tensor contractions ("eigen_tensor")     -          835        1018          -
    oneDNN's, as TensorFlow runs them with it      651          636         887        110

TensorFlow's x86 Linux builds register oneDNN's kernels whether or not oneDNN is on; it
only rewrites graphs to use them when it is. So on such a machine
`keras_irevnet.layers.Conv2D` builds oneDNN's convolution and its gradients itself (the
`_MklNative*` ops TensorFlow's rewrite would have put there), through a custom gradient, and
`keras_irevnet.layers.BatchNormalization` its training-mode gradient; a build without
oneDNN's kernels gets Eigen's convolution gradients (no im2col buffer) and TensorFlow's own
kernels otherwise. This is done in graphs that are run here and never saved: those that
may be differentiated (a gradient tape records: Keras' train step), Keras' predict and
test steps of keras_irevnet's models and reversible backprop's untaped forward pass
(`keras_step()`, `keras_irevnet.models.step_kernels`; there a convolution with a small
output keeps TensorFlow's own kernel, see `_few_output_positions`).
Exports (`model.export`, `tf.saved_model.save`, ONNX) trace the model's `call`, with no tape,
and get Keras' own ops: a SavedModel must load where oneDNN's ops do not exist. Nothing else
in the process changes: other ops keep TensorFlow's kernels.

Kernels are chosen by a graph's kernel labels, so this applies in `tf.function` graphs
(Keras' compiled steps) and only where the operations run on a CPU: not eagerly, not under
XLA (which has its own kernels and refuses labelled ones), not where TensorFlow sees a GPU.
Results are those of TensorFlow's own kernels to float32 rounding (tested). Higher-order
gradients work; their further terms are TensorFlow's own gradients of these ops.
"""

import contextlib
import functools
import threading

import tensorflow as tf

from keras_irevnet import _compat

_EIGEN = "eigen_tensor"
_ONEDNN = "MklNameChangeOp"  # the label TensorFlow's oneDNN rewrite gives these ops
# TensorFlow's op -> oneDNN's, which takes the same inputs and attributes.
_ONEDNN_OPS = {
    "Conv2D": "_MklNativeConv2D",
    "Conv2DBackpropInput": "_MklNativeConv2DBackpropInput",
    "Conv2DBackpropFilter": "_MklNativeConv2DBackpropFilter",
    "FusedBatchNormGradV3": "_MklNativeFusedBatchNormGradV3",
}


_thread = threading.local()


@contextlib.contextmanager
def keras_step():
    """A context for tracing graph code that runs here, is never saved and records no
    gradients, which may take oneDNN's kernels without a gradient tape: Keras' predict and
    test steps (`keras_irevnet.models.step_kernels`) and reversible backprop's forward pass
    inside a training step."""
    previous = getattr(_thread, "keras_step", False)
    _thread.keras_step = True
    try:
        yield
    finally:
        _thread.keras_step = previous


@functools.cache
def _cpu_without_onednn():
    return not _compat.tensorflow_uses_onednn() and not tf.config.list_logical_devices("GPU")


@functools.cache
def _onednn_kernels():
    """Whether this build has oneDNN's kernels for the ops (registering TensorFlow's
    gradients of the ops they stand for as theirs)."""
    available = all(
        _compat.tensorflow_has_cpu_kernel(onednn, _ONEDNN) for onednn in _ONEDNN_OPS.values()
    )
    if available:
        for op, onednn in _ONEDNN_OPS.items():
            _compat.tensorflow_share_gradient(onednn, like=op)
    return available


def applies():
    """Whether an op built now gets these kernels: TensorFlow building a graph that may be
    differentiated or that is Keras' predict or test step (`keras_step()`), outside XLA, on
    a machine whose TensorFlow has no GPU and runs without oneDNN."""
    return (
        not tf.executing_eagerly()
        and (_compat.tensorflow_could_record_gradients() or getattr(_thread, "keras_step", False))
        and not _compat.tensorflow_in_xla_context()
        and _cpu_without_onednn()
    )


def onednn_applies():
    """Whether a float32 op built now gets oneDNN's kernels: `applies()`, and this build
    has them."""
    return applies() and _onednn_kernels()


def convolution(inputs, kernel, strides, padding, forward):
    """`forward(inputs, kernel)` (a 2D NHWC convolution, undilated, ungrouped, with these
    `strides` and "same"/"valid" `padding`) computed, and differentiated, by oneDNN's
    kernels (float32, where this build has them), or differentiated by Eigen's.

    In Keras' predict and test steps, a small convolution (`_few_output_positions`) is left
    to `forward`, TensorFlow's own kernel.
    """
    if _few_output_positions(inputs, kernel, strides, padding):
        return forward(inputs, kernel)
    onednn = _takes_onednn(inputs)

    def op(name, **more):
        return _convolution_op(name, onednn, strides, padding, **more)

    @tf.custom_gradient
    def convolved(x, k):
        def gradient(output_gradient):
            dx = op("Conv2DBackpropInput")(
                input_sizes=tf.shape(x), filter=k, out_backprop=output_gradient
            )
            dk = op("Conv2DBackpropFilter")(
                input=x, filter_sizes=tf.shape(k), out_backprop=output_gradient
            )
            return dx[0], dk[0]

        if onednn:  # (the kernel changes at every step)
            return op("Conv2D", is_filter_const=False)(input=x, filter=k)[0], gradient
        return forward(x, k), gradient

    # Tensors, not the variable: a custom gradient would have to return gradients for
    # variables read inside it.
    return convolved(inputs, tf.convert_to_tensor(kernel))


def shifted_products(inputs, kernel, shifted_views, forward):
    """A stride-1 "same" convolution of NHWC `inputs` computed as one matrix product, the
    views `shifted_views(inputs, kernel_size)` (the kernel's kh * kw shifted views of the
    padded input, side by side) times the kernel as a (kh * kw * in, out) matrix, as
    `keras_irevnet.layers.Conv2D` computes its wide kernels (the ImageNet models' 7x7 stage),
    with its gradients written out: the input's by oneDNN's convolution gradient kernel
    (float32, where this build has it; Eigen's otherwise), the kernel's as the product of the
    views, kept from the forward pass, with the output's gradient.

    Autodiff of the product instead multiplies the output's gradient by the transposed kernel
    matrix, which TensorFlow's own matrix product does at a third to half of its speed on
    untransposed operands here, and then takes the gradient of each of the kh * kw views (a
    padded copy apiece) and sums them. On 2 cores of an AMD EPYC at batch 4, forward and
    backward of one convolution: 1536 -> 384 channels 76.1 -> 44.1 ms, 384 -> 384 19.1 ->
    12.3 ms, 384 -> 1536 61.8 -> 44.7 ms.

    In Keras' predict and test steps, a small convolution (`_few_output_positions`: up to
    batch 83 on the 7x7 stage) is left to `forward`, TensorFlow's own convolution.
    """
    if _few_output_positions(inputs, kernel, (1, 1), "same"):
        return forward(inputs, kernel)
    input_gradient = _convolution_op("Conv2DBackpropInput", _takes_onednn(inputs), (1, 1), "same")

    @tf.custom_gradient
    def convolved(x, k):
        kh, kw, channels_in, channels_out = k.shape
        rows = tf.reshape(shifted_views(x, (kh, kw)), (-1, kh * kw * channels_in))
        product = tf.matmul(rows, tf.reshape(k, (kh * kw * channels_in, channels_out)))
        y = tf.reshape(product, tf.concat([tf.shape(x)[:-1], [channels_out]], axis=0))

        def gradient(output_gradient):
            dx = input_gradient(input_sizes=tf.shape(x), filter=k, out_backprop=output_gradient)
            dk = tf.matmul(rows, tf.reshape(output_gradient, (-1, channels_out)), transpose_a=True)
            return dx[0], tf.reshape(dk, tf.shape(k))

        return y, gradient

    # Tensors, not the variable: a custom gradient would have to return gradients for
    # variables read inside it.
    return convolved(inputs, tf.convert_to_tensor(kernel))


# Below this many output positions (batch x height x width) a convolution in prediction
# takes TensorFlow's own kernel.
_FEW_OUTPUT_POSITIONS = 4096


def _few_output_positions(inputs, kernel, strides, padding):
    """Whether this is a `keras_step()` graph (Keras' predict or test step, reversible
    backprop's forward pass) with no tape, and the convolution of `inputs`
    (shape known when traced; an unknown batch: False) has fewer than
    `_FEW_OUTPUT_POSITIONS` output positions over the batch.

    There TensorFlow's own kernel, which its graph optimiser fuses with the BatchNorm and
    ReLU after it, is faster than oneDNN's, whose every call carries fixed costs (its kernel
    reordered into oneDNN's layout among them) that only a large output amortises. Measured
    on 2 cores of an AMD EPYC, four i-RevNet bottlenecks in a chain, TensorFlow's own against
    oneDNN's, by output positions: 196-3136 on every stage shape of both models (14x14
    384 -> 96 -> 384 channels, 28x28 96 -> 24 -> 96, 56x56 24 -> 6 -> 24, 8x8 256 -> 64 ->
    256, 16x16 64 -> 16 -> 64) 1.03-1.87x faster; at 4096, 0.93x on 32x32 16 -> 4 -> 16,
    0.94x on 8x8 and 1.22x on 16x16; above, 0.43-0.89x on the few-channel and 8x8 stages,
    1.01-1.28x on the others. On the 7x7 stage (1536 -> 384 -> 1536), against its matrix
    products (`shifted_products`), 1.05x at batch 1, 1.06x at 4, 1.29x at 16.
    `python -m benchmarks.small_convolutions` measures these on the machine at hand."""
    if not getattr(_thread, "keras_step", False) or _compat.tensorflow_could_record_gradients():
        return False
    shape = tf.TensorShape(inputs.shape)
    if not shape.is_fully_defined():
        return False
    batch, height, width = shape[0], shape[1], shape[2]
    kh, kw = tf.TensorShape(kernel.shape)[:2]
    if padding.lower() == "valid":
        height, width = height - kh + 1, width - kw + 1
    positions = batch * -(-height // strides[0]) * -(-width // strides[1])
    return positions < _FEW_OUTPUT_POSITIONS


def _takes_onednn(inputs):
    """Whether a convolution of `inputs` takes oneDNN's kernels: float32, where this build
    has them (Eigen's otherwise)."""
    return inputs.dtype == tf.float32 and _onednn_kernels()


def _convolution_op(name, onednn, strides, padding, **more):
    """`_labelled_op` for the 2D NHWC convolution op `name` (forward or a gradient),
    undilated, ungrouped, with these `strides` and "same"/"valid" `padding`."""
    return _labelled_op(
        name,
        onednn,
        strides=(1, *strides, 1),
        padding=padding.upper(),
        use_cudnn_on_gpu=True,
        explicit_paddings=(),
        data_format="NHWC",
        dilations=(1, 1, 1, 1),
        **more,
    )


def batch_norm_gradient(output_gradient, x, scale, reserve_mean, reserve_variance, epsilon, onednn):
    """(dx, dscale, doffset) of training-mode `FusedBatchNormV3` (NHWC) on `x`, given the
    two per-channel reserve spaces of its forward call: by oneDNN's kernel where `onednn`
    (`onednn_applies()`, asked with the forward pass: no tape records while gradients are
    built), TensorFlow's own otherwise. oneDNN's reads the reserve spaces TensorFlow's
    forward kernel writes (the batch mean and the biased variance): equal to TensorFlow's
    own gradient to float32 rounding (tested)."""
    attributes = dict(epsilon=epsilon, data_format="NHWC", is_training=True)
    if onednn:
        gradient = _labelled_op("FusedBatchNormGradV3", True, **attributes)
    else:
        gradient = functools.partial(tf.raw_ops.FusedBatchNormGradV3, **attributes)
    dx, dscale, doffset, _, _ = gradient(
        y_backprop=output_gradient,
        x=x,
        scale=scale,
        reserve_space_1=reserve_mean,
        reserve_space_2=reserve_variance,
        reserve_space_3=tf.constant([], scale.dtype),
    )
    return dx, dscale, doffset


@functools.cache
def _labelled_op(op, onednn, **attributes):
    """TensorFlow's `op` with oneDNN's kernel (`onednn`) or Eigen's, in a function of its
    own, called but not inlined. Grappler turns an op whose result nothing reads but which
    something waits for (reversible backprop's barrier waits for every gradient of a block;
    a kernel gradient nobody asked for is one) into a NoOp, and keeps its kernel label:
    TensorFlow then finds no NoOp kernel under that label and the step fails. A function
    call turned into a NoOp has no label. (Forward convolutions built inline instead, whose
    results are always read, made the ImageNet model's inference no faster: 1.096 against
    1.082 s, two models in one process, interleaved.)"""
    op_type, label = (_ONEDNN_OPS[op], _ONEDNN) if onednn else (op, _EIGEN)
    attributes = {k: list(v) if isinstance(v, tuple) else v for k, v in attributes.items()}

    @tf.function(
        autograph=False, reduce_retracing=True, experimental_attributes={"_noinline": True}
    )
    def labelled(**inputs):
        with _compat.tensorflow_kernel_label([op_type], label):
            return _compat.tensorflow_op(op_type, **inputs, **attributes)

    return labelled

"""Convolution gradients for TensorFlow on CPU without oneDNN: Eigen's kernels, not im2col.

TensorFlow registers two CPU kernels for each of a convolution's gradients. The default
ones lay the image out as columns (im2col) in a scratch buffer sized for a 30 MB working
set whatever the batch (about 32 MB per call on i-RevNet's shapes, batch 64 or batch 8),
and a graph runs the input and the kernel gradient side by side: about 65 MB at the peak of
every training step whatever the depth, more than reversible backprop keeps for the whole
CIFAR model at batch 64. The others, Eigen's tensor expressions ("eigen_tensor"), contract
the patches without materialising them. Alone, on 2 cores of an AMD EPYC without oneDNN,
the nine 3x3 convolutions of the CIFAR model at batch 64, summed (ms, and the peak bytes
of one call):

    input gradient   98.8 -> 66.5 ms   (up to 34 MB -> up to 4 MB: the gradient itself)
    kernel gradient  99.7 -> 76.8 ms   (up to 32 MB -> under 1 MB)

and the ImageNet model's 3x3 convolutions at batch 8: input gradient 83.1 -> 46.5 ms,
kernel gradient 70.0 -> 67.6 ms (Eigen's is slower where the convolution widens, 6 -> 24
channels at 56x56 10.5 against 4.5 ms, faster where it narrows). So where TensorFlow runs
its CPU kernels without oneDNN (its default off Intel CPUs; with oneDNN the gradients are
oneDNN's, left alone), `keras_irevnet.layers.Conv2D` computes its gradients with Eigen's
kernels, through a custom gradient whose forward pass is Keras' own convolution.

Kernels are chosen by a graph's kernel labels, so this applies in `tf.function` graphs
(Keras' compiled steps) and only where the operations run on a CPU: not eagerly, not under
XLA (which has its own kernels and refuses labelled ones), not where TensorFlow sees a GPU.
Results are those of the default kernels to float32 rounding (tested). Higher-order
gradients work; their further terms are TensorFlow's own gradients of these ops.
"""

import functools

import tensorflow as tf

from keras_irevnet import _compat

_EIGEN = "eigen_tensor"


@functools.cache
def _cpu_without_onednn():
    return not _compat.tensorflow_uses_onednn() and not tf.config.list_logical_devices("GPU")


def applies():
    """Whether a convolution built now gets Eigen's gradient kernels: TensorFlow building a
    graph that may be differentiated, outside XLA, on a machine whose TensorFlow has no GPU
    and runs without oneDNN."""
    return (
        not tf.executing_eagerly()
        and _compat.tensorflow_could_record_gradients()
        and not _compat.tensorflow_in_xla_context()
        and _cpu_without_onednn()
    )


def convolution(inputs, kernel, strides, padding, forward):
    """`forward(inputs, kernel)` (a 2D NHWC convolution, undilated, ungrouped, with these
    `strides` and "same"/"valid" `padding`), its gradients computed by Eigen's kernels."""
    strides = (1, *strides, 1)
    padding = padding.upper()

    @tf.custom_gradient
    def convolved(x, k):
        def gradient(output_gradient):
            dx = _eigen_op("Conv2DBackpropInput", strides, padding)(
                input_sizes=tf.shape(x), filter=k, out_backprop=output_gradient
            )
            dk = _eigen_op("Conv2DBackpropFilter", strides, padding)(
                input=x, filter_sizes=tf.shape(k), out_backprop=output_gradient
            )
            return dx, dk

        return forward(x, k), gradient

    # Tensors, not the variable: a custom gradient would have to return gradients for
    # variables read inside it.
    return convolved(inputs, tf.convert_to_tensor(kernel))


@functools.cache
def _eigen_op(name, strides, padding):
    """`tf.raw_ops.<name>` with Eigen's kernel, in a function of its own, called but not
    inlined. Grappler turns an op whose result nothing reads but which something waits for
    (reversible backprop's barrier waits for every gradient of a block; a kernel gradient
    nobody asked for is one) into a NoOp, and keeps its kernel label: TensorFlow then finds
    no "eigen_tensor" NoOp kernel and the step fails. A function call turned into a NoOp
    has no label."""
    op = getattr(tf.raw_ops, name)

    @tf.function(
        autograph=False, reduce_retracing=True, experimental_attributes={"_noinline": True}
    )
    def labelled(**arguments):
        with _compat.tensorflow_kernel_label([name], _EIGEN):
            return op(**arguments, strides=strides, padding=padding)

    return labelled

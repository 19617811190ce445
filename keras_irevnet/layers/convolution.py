"""Conv2D that runs channels-last data through torch's convolution without layout copies."""

import keras

from keras_irevnet.layers import torch_fast_path


@keras.saving.register_keras_serializable(package="keras_irevnet")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` with a copy-free torch path for the convolutions i-RevNet uses.

    On the torch backend, channels-last, undilated, ungrouped convolutions with "valid"
    padding or "same" padding at stride 1 with an odd kernel call
    `torch.nn.functional.conv2d` on a permuted view of the data: an (N, H, W, C) tensor
    seen as (N, C, H, W) is already in torch's channels_last memory format, which its CPU
    (oneDNN) convolution takes as is. Keras 3.15 instead makes the view NCHW-contiguous and
    then converts it back to channels_last: two full copies of every convolution's input
    (benchmarks/results/optimisations.md).

    The kernel gets the same treatment: on torch its variable keeps Keras' shape
    (kh, kw, in, out), and so its weights files and `get_weights`, but its memory is laid
    out in the order (out, kh, kw, in), which is torch's channels_last layout of an
    (out, in, kh, kw) kernel. Seen through a permutation it is what the convolution takes,
    and the weight gradient comes back in the variable's own layout: no reordered copy of
    the kernel in the forward pass, none of its gradient in the backward pass.

    Everything else, `torch.compile`, and every other backend, is Keras' own `Conv2D`.
    Weights and results are those of Keras' layer (tested bit for bit).
    """

    def add_weight(self, *args, **kwargs):
        if kwargs.get("name") == "kernel" and keras.backend.backend() == "torch":
            kwargs["initializer"] = _TorchChannelsLastKernel(kwargs.get("initializer"))
        return super().add_weight(*args, **kwargs)

    def convolution_op(self, inputs, kernel):
        padding = self._torch_padding()
        if padding is None:
            return super().convolution_op(inputs, kernel)
        import torch

        if torch.compiler.is_compiling():
            # Under torch.compile the layout is the compiler's business, and dynamo fails
            # on channels_last views with dynamic batch sizes ("cannot determine truth value
            # of Relational" in `fit`); Keras' path compiles.
            return super().convolution_op(inputs, kernel)

        x = torch_fast_path.torch_tensor(inputs).permute(0, 3, 1, 2)
        # A view for a kernel laid out by `_TorchChannelsLastKernel`; a copy for any other
        # (the layout is a speed matter, never a correctness one).
        k = torch_fast_path.torch_tensor(kernel).permute(3, 2, 0, 1)
        k = k.contiguous(memory_format=torch.channels_last)
        y = torch.nn.functional.conv2d(x, k, stride=tuple(self.strides), padding=padding)
        return y.permute(0, 2, 3, 1)

    def _torch_padding(self):
        if (
            keras.backend.backend() != "torch"
            or self.data_format != "channels_last"
            or tuple(self.dilation_rate) != (1, 1)
            or self.groups != 1
        ):
            return None
        if self.padding == "valid":
            return 0
        if tuple(self.strides) == (1, 1) and all(k % 2 for k in self.kernel_size):
            return tuple(k // 2 for k in self.kernel_size)
        return None


class _TorchChannelsLastKernel:
    """An initializer's (kh, kw, in, out) values, laid out in memory as (out, kh, kw, in).

    Keras' torch variable wraps the initial tensor as it is, strides included, and every
    later write (`assign`, the optimizers' in-place updates, loading weights) copies into
    it, so the layout lasts for the variable's life.
    """

    def __init__(self, initializer):
        self.initializer = keras.initializers.get(initializer)

    def __call__(self, shape, dtype=None):
        value = keras.ops.convert_to_tensor(self.initializer(shape, dtype=dtype), dtype=dtype)
        if len(value.shape) != 4:
            return value
        return value.permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)

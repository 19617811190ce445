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
    (benchmarks/results/optimisations.md). Outside autograd the kernel in
    torch's layout is cached while the variable is unchanged (inference keeps one copy of
    each kernel: as much memory again as the convolution weights).

    Everything else, `torch.compile`, and every other backend, is Keras' own `Conv2D`.
    Weights and results are those of Keras' layer (tested bit for bit).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._torch_kernel_cache = torch_fast_path.UnchangedTensorCache()

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
        k = self._torch_kernel(torch_fast_path.torch_tensor(kernel))
        y = torch.nn.functional.conv2d(x, k, stride=tuple(self.strides), padding=padding)
        return y.permute(0, 2, 3, 1)

    def _torch_kernel(self, kernel):
        import torch

        # Keras kernels are (kh, kw, in, out); torch's oneDNN convolution wants
        # (out, in, kh, kw) in its channels_last memory format (out, kh, kw, in). Reordering
        # a permuted view costs more than the convolution itself for the ImageNet model's
        # widest layers (benchmarks/results/optimisations.md): without autograd
        # (inference), the reordered copy is reused while the variable is unchanged.
        if torch_fast_path.needs_autograd(kernel):
            return kernel.permute(3, 2, 0, 1)
        return self._torch_kernel_cache.get(
            (kernel,), lambda k: k.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
        )

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

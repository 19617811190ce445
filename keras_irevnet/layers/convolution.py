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


def in_torch_kernel_layout(tensor):
    """Whether a torch tensor of shape (kh, kw, in, out) is laid out as (out, kh, kw, in)."""
    import torch

    return tensor.dim() == 4 and tensor.permute(3, 2, 0, 1).is_contiguous(
        memory_format=torch.channels_last
    )


def match_optimizer_layouts(optimizer, variables):
    """Lays out the optimizer's slot variables of torch-layout kernels as the kernels are.

    Keras' optimizers create their slot variables (momentum, Adam's moments) contiguous in
    Keras' layout. Their in-place updates then combine tensors laid out in two orders, and
    such a transposed elementwise pass over the ImageNet model's widest kernels (21 MB) is
    several times slower than a contiguous one. A slot belongs to a kernel when its name is
    the kernel's path with "/" as "_", followed by "_" and the slot's own name (Keras'
    `Optimizer.add_variable_from_reference`) and it has the kernel's shape. Values are
    kept; only the memory order changes (`torch.Tensor.set_`, same tensor object).
    """
    import torch

    by_shape = {}
    for variable in variables:
        value = variable.value
        if in_torch_kernel_layout(value):
            prefix = variable.path.replace("/", "_") + "_"
            by_shape.setdefault(tuple(value.shape), []).append(prefix)
    for slot in optimizer.variables:
        value = slot.value
        candidates = by_shape.get(tuple(value.shape), ())
        if in_torch_kernel_layout(value) or not any(slot.name.startswith(p) for p in candidates):
            continue
        with torch.no_grad():
            laid_out = _in_torch_kernel_layout_copy(value)
            value.set_(laid_out.untyped_storage(), 0, laid_out.shape, laid_out.stride())


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
        return _in_torch_kernel_layout_copy(value)


def _in_torch_kernel_layout_copy(tensor):
    """A copy of a (kh, kw, in, out) torch tensor, same shape, laid out as (out, kh, kw, in)."""
    return tensor.permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)

"""Conv2D that runs channels-last data through torch's convolution without layout copies."""

import keras

from keras_irevnet import _compat
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

    Where the kernel is large against the image (`_wide_kernel`: the 7x7 stage of the
    ImageNet models, 384-1536 channels), oneDNN's channels_last kernels are slow, above all
    for the weight gradient; there the layer copies its input to NCHW and its output back,
    and lays the kernel out as torch's contiguous (out, in, kh, kw). On TensorFlow and on
    JAX on CPU the same layers, where stride 1 and "same", compute the convolution as one
    matrix product (`_shifted_products_convolution`; on TensorFlow without oneDNN with its
    gradients written out, `tensorflow_kernels.shifted_products`). On JAX on CPU, a
    stride-1 "same" convolution to fewer channels than it reads (kernel not wide) has its
    kernel gradient computed in the form XLA runs fastest
    (`keras_irevnet.layers.jax_convolution`). On TensorFlow without oneDNN, the others are
    trained with oneDNN's kernels (float32) or Eigen's gradient kernels, not TensorFlow's
    default ones (`keras_irevnet.layers.tensorflow_kernels`).

    Everything else, and `torch.compile`, is Keras' own `Conv2D`. Weights are those of
    Keras' layer, and results too: bit for bit on the channels_last path, to float32
    rounding on the NCHW and matrix-product paths (tested).
    """

    # Which path `convolution_op` takes, set in `build` (class defaults: Keras' own path).
    _torch_nchw = False
    _torch_padding = None  # the fast path's padding where torch takes it
    _shifted_products = False
    _tensorflow_shifted_gradients = False
    _jax_narrowing = False
    _tensorflow_cpu_kernels = False

    def build(self, input_shape):
        wide = _wide_kernel(input_shape[1:3], input_shape[-1], self.filters, self.kernel_size)
        self._torch_nchw = wide
        padding = self._direct_padding()
        if keras.backend.backend() == "torch":
            self._torch_padding = padding
            self._torch_strides = tuple(self.strides)
        same = self.padding == "same" and padding is not None
        # (stride 1, odd kernel, channels_last, undilated, ungrouped)
        jax_cpu = _jax_cpu()
        self._shifted_products = (
            wide and same and (keras.backend.backend() == "tensorflow" or jax_cpu)
        )
        self._jax_narrowing = (
            same
            and not wide
            and input_shape[-1] is not None
            and input_shape[-1] > self.filters
            and jax_cpu
        )
        self._tensorflow_shifted_gradients = (
            self._shifted_products and keras.backend.backend() == "tensorflow"
        )
        self._tensorflow_cpu_kernels = (
            keras.backend.backend() == "tensorflow"
            and not self._shifted_products
            and self.data_format == "channels_last"
            and tuple(self.dilation_rate) == (1, 1)
            and self.groups == 1
        )
        super().build(input_shape)

    def add_weight(self, *args, **kwargs):
        if kwargs.get("name") == "kernel" and keras.backend.backend() == "torch":
            kwargs["initializer"] = _TorchKernelLayout(
                kwargs.get("initializer"), nchw=self._torch_nchw
            )
        return super().add_weight(*args, **kwargs)

    def convolution_op(self, inputs, kernel):
        if self._shifted_products:
            if self._tensorflow_shifted_gradients:
                from keras_irevnet.layers import tensorflow_kernels

                if tensorflow_kernels.applies():
                    return tensorflow_kernels.shifted_products(
                        inputs, kernel, shifted_views, super().convolution_op
                    )
            return _shifted_products_convolution(inputs, kernel)
        if self._jax_narrowing:
            from keras_irevnet.layers import jax_convolution

            convert = keras.ops.convert_to_tensor
            return jax_convolution.convolution(convert(inputs), convert(kernel))
        if self._tensorflow_cpu_kernels:
            from keras_irevnet.layers import tensorflow_kernels

            if tensorflow_kernels.applies():
                return tensorflow_kernels.convolution(
                    inputs, kernel, self.strides, self.padding, super().convolution_op
                )
        padding = self._torch_padding
        if padding is None:
            return super().convolution_op(inputs, kernel)
        import torch

        if torch.compiler.is_compiling():
            # Under torch.compile the layout is the compiler's business, and dynamo fails
            # on channels_last views with dynamic batch sizes ("cannot determine truth value
            # of Relational" in `fit`); Keras' path compiles.
            return super().convolution_op(inputs, kernel)

        x = torch_fast_path.torch_tensor(inputs).permute(0, 3, 1, 2)
        # A view for a kernel laid out by `_TorchKernelLayout`; a copy for any other (the
        # layout is a speed matter, never a correctness one).
        k = torch_fast_path.torch_tensor(kernel).permute(3, 2, 0, 1)
        if self._torch_nchw:
            x, k = x.contiguous(), k.contiguous()
            y = torch.nn.functional.conv2d(x, k, stride=self._torch_strides, padding=padding)
            # Channels-last again: the layers after it work on channels-last memory.
            return y.permute(0, 2, 3, 1).contiguous()
        k = k.contiguous(memory_format=torch.channels_last)
        y = torch.nn.functional.conv2d(x, k, stride=self._torch_strides, padding=padding)
        return y.permute(0, 2, 3, 1)

    def _direct_padding(self):
        """The explicit padding of a convolution the fast paths take (channels-last,
        undilated, ungrouped; "valid", or "same" at stride 1 with an odd kernel), or None."""
        if (
            self.data_format != "channels_last"
            or tuple(self.dilation_rate) != (1, 1)
            or self.groups != 1
        ):
            return None
        if self.padding == "valid":
            return 0
        if tuple(self.strides) == (1, 1) and all(k % 2 for k in self.kernel_size):
            return tuple(k // 2 for k in self.kernel_size)
        return None


def _jax_cpu():
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() == "cpu"


def _shifted_products_convolution(inputs, kernel):
    """A stride-1 "same" convolution as one matrix product: the kh * kw shifted views of the
    padded input side by side, times the kernel seen as a (kh * kw * in, out) matrix.

    For kernels wide against the image (`_wide_kernel`). TensorFlow on CPU: its
    convolution's forward pass on the ImageNet models' 7x7 stage ran at half the speed of
    this product (batch 4, forward, ms: 1536 -> 384 channels 26.1 -> 12.9, 384 -> 1536
    16.2 -> 12.9, 384 -> 384 5.6 -> 4.1; at 14x14 the convolution is faster, 3.3 against
    4.9). JAX on CPU: forward as fast as XLA's convolution, forward and backward faster
    with YNNPACK's matrix products (`xla_cpu_options`)."""
    kh, kw, channels_in, channels_out = kernel.shape
    matrix = keras.ops.reshape(kernel, (kh * kw * channels_in, channels_out))
    return keras.ops.tensordot(shifted_views(inputs, (kh, kw)), matrix, axes=1)


def shifted_views(inputs, kernel_size):
    """The kh * kw views of `inputs` zero-padded for a stride-1 "same" convolution, each
    shifted by one kernel position, side by side on the channel axis (in the order of the
    kernel's (kh, kw, in) elements)."""
    ops = keras.ops
    kh, kw = kernel_size[0], kernel_size[1]
    height, width = inputs.shape[1], inputs.shape[2]
    if height is None or width is None:
        height, width = ops.shape(inputs)[1], ops.shape(inputs)[2]
    padded = _compat.pad_with_zeros(
        inputs, [[0, 0], [kh // 2, kh // 2], [kw // 2, kw // 2], [0, 0]]
    )
    shifted = [padded[:, i : i + height, j : j + width, :] for i in range(kh) for j in range(kw)]
    return ops.concatenate(shifted, axis=-1)


def _wide_kernel(spatial, channels_in, channels_out, kernel_size):
    """Whether the kernel is large against the image: where torch's CPU convolution is
    faster on NCHW copies than on channels_last views, and TensorFlow's slower than a
    matrix product (`_shifted_products_convolution`).

    Measured per convolution, forward and backward with the copies, batch 4 (2 cores, AVX-512
    with AMX): at 7x7, 1536 -> 384 channels 35.7 ms NCHW against 57.8 channels_last, 384 ->
    1536 46.3 against 58.4, 384 -> 384 8.8 against 10.3; at 14x14, 384 -> 96 7.6 against 6.8
    (channels_last wins). The line between them: kernel elements at least 16 times one
    image's input and output elements. Unknown spatial sizes keep channels_last.
    """
    if None in tuple(spatial) or channels_in is None:
        return False
    height, width = spatial
    kernel = kernel_size[0] * kernel_size[1] * channels_in * channels_out
    return kernel >= 16 * height * width * (channels_in + channels_out)


def in_torch_kernel_layout(tensor):
    """Whether a torch tensor of shape (kh, kw, in, out) is laid out as one of torch's
    convolution kernels: (out, kh, kw, in) (channels_last) or (out, in, kh, kw)."""
    import torch

    if tensor.dim() != 4:
        return False
    torch_kernel = tensor.permute(3, 2, 0, 1)
    return torch_kernel.is_contiguous() or torch_kernel.is_contiguous(
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
            by_shape.setdefault(tuple(value.shape), []).append((prefix, value.stride()))
    for slot in optimizer.variables:
        value = slot.value
        strides = [s for p, s in by_shape.get(tuple(value.shape), ()) if slot.name.startswith(p)]
        if not strides or value.stride() == strides[0]:
            continue
        with torch.no_grad():
            laid_out = torch.empty_strided(
                value.shape, strides[0], dtype=value.dtype, device=value.device
            )
            laid_out.copy_(value)
            value.set_(laid_out.untyped_storage(), 0, laid_out.shape, laid_out.stride())


class _TorchKernelLayout:
    """An initializer's (kh, kw, in, out) values, laid out in memory as (out, kh, kw, in),
    or as (out, in, kh, kw) with `nchw`.

    Keras' torch variable wraps the initial tensor as it is, strides included, and every
    later write (`assign`, the optimizers' in-place updates, loading weights) copies into
    it, so the layout lasts for the variable's life.
    """

    def __init__(self, initializer, nchw=False):
        self.initializer = keras.initializers.get(initializer)
        self.nchw = nchw

    def __call__(self, shape, dtype=None):
        value = keras.ops.convert_to_tensor(self.initializer(shape, dtype=dtype), dtype=dtype)
        if self.nchw:
            return value.permute(3, 2, 0, 1).contiguous().permute(2, 3, 1, 0)
        return value.permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)

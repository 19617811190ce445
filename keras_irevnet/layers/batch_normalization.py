"""BatchNormalization that stays in float64 when the layer is float64, on every backend."""

import contextlib
import threading

import keras
from keras import ops

from keras_irevnet import _compat
from keras_irevnet.layers import torch_fast_path


class _ThreadState(threading.local):
    # Class-level defaults: a thread that never set them reads these, without the
    # AttributeError that `getattr(local, name, default)` raises and catches on every call.
    frozen = False  # `frozen_moving_statistics`
    kept_statistics = None  # `kept_batch_statistics`: (kept, replay)


_thread = _ThreadState()


@contextlib.contextmanager
def frozen_moving_statistics():
    """Within it, keras_irevnet's BatchNormalization in training mode normalises with the
    batch's statistics but does not compute the update of its moving statistics.

    For recomputing a forward pass that has already updated them (reversible backprop's
    recompute of F, inside a StatelessScope that discards writes): the update would only be
    computed to be thrown away. Where the layer takes Keras' own path (TensorFlow under XLA
    and JAX off CPU in float32, masks) Keras computes it anyway, and the scope discards it.
    """
    previous = _thread.frozen
    _thread.frozen = True
    try:
        yield
    finally:
        _thread.frozen = previous


@contextlib.contextmanager
def kept_batch_statistics(kept, replay):
    """Within it, keras_irevnet's BatchNormalization keeps its training-mode batch statistics
    (`replay=False`), or normalises with ones kept before (`replay=True`).

    For reversible backprop's recompute of F, which calls F's layers in the order the forward
    pass did, on exactly the inputs the forward pass gave them: the forward appends
    `(id(layer), ...)` to the list `kept` at each call (a few numbers per channel: torch's
    path keeps the mean and inverse standard deviation, TensorFlow's the mean, the variance
    and its kernel's two per-channel reserve spaces), and the recompute takes them from the
    front of the deque `kept` (the entries of one block, in order) instead of computing them
    again. The fused paths of torch (`keras_irevnet.layers.torch_batch_norm`) and of
    TensorFlow on the CPU only; the gradient stays that of training mode, through the batch
    statistics. The other paths compute the statistics as before.
    """
    previous = _thread.kept_statistics
    _thread.kept_statistics = (kept, replay)
    try:
        yield
    finally:
        _thread.kept_statistics = previous


def _tensorflow_kept_statistics():
    """`(kept, replay)` of `kept_batch_statistics` where TensorFlow's fused path keeps them:
    on the CPU. (A GPU's training kernel hands its gradient a third reserve space, cuDNN's,
    which the replay does not keep; there the statistics are computed again.)"""
    state = _thread.kept_statistics
    if state is None:
        return None, False
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        return None, False
    return state


@keras.saving.register_keras_serializable(package="keras_irevnet")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization, normalising float64 in float64 and fused on TensorFlow.

    Keras 3.15 upcasts the inputs with `result_type(dtype, "float32")`, which is float64 on
    TensorFlow but float32 on JAX and torch: a float64 i-RevNet would run every BatchNorm in
    float32 there. The inverse x1 = y1 - F(x2) then sees F jump by float32 rounding steps
    wherever the reconstructed x2 differs from the original in the last float64 bits, and
    float64 models invert to about 1e-12 instead of 1e-16.

    Fused kernels where Keras computes the moments and the normalisation in separate ops,
    for channels-last float32 batches:

    - TensorFlow, training and inference: `FusedBatchNormV3` (and its fused gradient). Not
      under XLA (`jit_compile=True`), whose CPU lowering of the fused op is slower than
      Keras' ops. On the CPU, reversible backprop's recompute normalises with the batch
      statistics the forward pass kept, through the inference kernel, with training
      mode's gradient (`kept_batch_statistics`).
    - JAX on CPU, training: `keras_irevnet.layers.jax_batch_norm`, whose reductions are
      matrix products and whose gradient is written out; XLA's CPU lowering of Keras' ops
      and of their derivative is several times slower. Forward-mode autodiff (`jax.jvp`)
      through a training-mode call is then refused by JAX (a `custom_vjp`); inference-mode
      calls, which the analyses make, take Keras' path.
    - torch, eager, training: `torch.nn.functional.batch_norm` on the channels-last data
      seen as NCHW (no copy), and its fused gradient. Keras' path is about ten small
      operations per call, each a full pass over the activations. Below 8 channels, where
      that kernel is several times slower, and in reversible backprop's recompute, the
      statistics and the normalisation are had apart (`keras_irevnet.layers.
      torch_batch_norm`; an autograd function without forward-mode derivative). Inference: one
      multiply-add per element (`torch.addcmul`) with the scale and shift from the moving
      statistics. Also for float16 and bfloat16 batches (mixed precision), between a cast
      to float32 and one back to the compute dtype, as Keras' path computes them.

    TensorFlow's and torch's kernels report the Bessel-corrected batch variance; the moving
    variance is updated with the biased one, as Keras does. Outputs, gradients and moving
    statistics agree with Keras' path to float32 rounding (tested). The measurements:
    benchmarks/results/optimisations.md.

    Every other case takes Keras' own path unchanged.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._torch_scale_shift_cache = torch_fast_path.UnchangedTensorCache()

    def build(self, input_shape):
        super().build(input_shape)
        _compat.untrack_batch_norm_axes(self)  # or torch.compile breaks the graph here

    def call(self, inputs, training=None, mask=None):
        fused = self._fused_kernel(inputs, training, mask)
        if fused is not None:
            return fused(inputs, training=bool(training) and self.trainable)
        if mask is not None or keras.backend.standardize_dtype(inputs.dtype) != "float64":
            return super().call(inputs, training=training, mask=mask)
        if training and self.trainable:
            rank = len(inputs.shape)
            axes = [i for i in range(rank) if i != self.axis % rank]
            mean, variance = ops.moments(inputs, axes, synchronized=self.synchronized)
            self._update_moving_statistics(mean, variance)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        return ops.batch_normalization(
            inputs,
            ops.cast(mean, "float64"),
            ops.cast(variance, "float64"),
            axis=self.axis,
            offset=ops.cast(self.beta, "float64") if self.center else None,
            scale=ops.cast(self.gamma, "float64") if self.scale else None,
            epsilon=self.epsilon,
        )

    def relu_of_call(self, inputs, training=None):
        """`relu(self.call(inputs, training))`, the ReLU fused in where the kernel is.

        On torch the ReLU then runs in place on the freshly normalised tensor (nothing else
        holds it, and neither kernel's gradient needs it): one activation-sized allocation
        fewer per call, as in the reference's `ReLU(inplace=True)`.
        """
        fused = self._fused_kernel(inputs, training, None)
        if fused is not None:
            return fused(inputs, training=bool(training) and self.trainable, relu=True)
        return ops.relu(self.call(inputs, training=training))

    _fusable_settings = None  # see `_fused_kernel`; set once the layer is built

    def _fused_kernel(self, inputs, training, mask):
        """The fused call for these inputs, or None for Keras' path."""
        fusable = self._fusable_settings
        if fusable is None:
            # Settings fixed once the layer is built: checked once, not at every call.
            fusable = (
                self.center
                and self.scale
                and not self.synchronized
                and not self.renorm
                and keras.backend.standardize_dtype(self.moving_mean.dtype) == "float32"
            )
            if self.built:
                self._fusable_settings = fusable
        if not (fusable and mask is None and self.axis in (-1, len(inputs.shape) - 1)):
            return None
        backend = keras.backend.backend()
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        # Mixed precision on torch: Keras' path computes in float32 and casts the result to
        # the compute dtype; so does the kernel, between two casts.
        mixed = backend == "torch" and dtype in ("float16", "bfloat16")
        if dtype != "float32" and not mixed:
            return None
        if backend == "tensorflow" and not _compat.tensorflow_in_xla_context():
            return self._tensorflow_fused_call
        if backend == "jax" and training and self.trainable:
            import jax

            if jax.default_backend() == "cpu":
                return self._jax_fused_call
        if backend == "torch" and len(inputs.shape) == 4:
            import torch

            # Under torch.compile the compiler fuses Keras' ops itself.
            if not torch.compiler.is_compiling():
                return self._torch_mixed_fused_call if mixed else self._torch_fused_call
        return None

    def _torch_scale_shift(self, gamma, beta, mean, variance):
        import torch

        scale = gamma * torch.rsqrt(variance + self.epsilon)
        return scale, beta - mean * scale

    def _update_moving_statistics(self, mean, variance, count=None):
        """Moves the moving statistics towards the batch's `mean` and `variance` (biased; or
        unbiased over `count` values where `count` is given, as the fused kernels give it)."""
        if _thread.frozen:
            return
        if count is not None:
            variance = variance * ((count - 1.0) / count)
        if keras.backend.backend() == "torch" and not _compat.in_stateless_scope():
            # One in-place kernel per statistic instead of Keras' four operations and
            # `assign` (about 0.1 ms of Python per call, hundreds of calls per step).
            # Inside a StatelessScope the write must go through `assign` to be recorded.
            import torch

            with torch.no_grad():
                for statistic, batch_value in (
                    (self.moving_mean, mean),
                    (self.moving_variance, variance),
                ):
                    torch_fast_path.torch_tensor(statistic).lerp_(batch_value, 1.0 - self.momentum)
            return
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )

    def _tensorflow_fused_call(self, inputs, training, relu=False):
        import tensorflow as tf

        outputs = self._tensorflow_fused_batch_norm(inputs, training)
        return tf.nn.relu(outputs) if relu else outputs

    def _tensorflow_fused_batch_norm(self, inputs, training):
        import tensorflow as tf

        gamma, beta = ops.convert_to_tensor(self.gamma), ops.convert_to_tensor(self.beta)
        if not training:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                gamma,
                beta,
                mean=ops.convert_to_tensor(self.moving_mean),
                variance=ops.convert_to_tensor(self.moving_variance),
                epsilon=self.epsilon,
                is_training=False,
            )
            return outputs
        kept, replay = _tensorflow_kept_statistics()
        if replay and kept and kept[0][0] == id(self):
            return self._tensorflow_replayed_batch_norm(inputs, gamma, beta, *kept.popleft()[1:])
        from keras_irevnet.layers import tensorflow_kernels

        onednn = tensorflow_kernels.onednn_applies()

        def fused(x, scale, offset):
            # The op itself rather than tf.compat.v1.nn.fused_batch_norm, which drops the
            # reserve spaces the training-mode gradient reads.
            return tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=scale,
                offset=offset,
                mean=tf.constant([], scale.dtype),
                variance=tf.constant([], scale.dtype),
                epsilon=self.epsilon,
                exponential_avg_factor=1.0,
                data_format="NHWC",
                is_training=True,
            )[:5]

        # TensorFlow's forward kernel, oneDNN's gradient kernel.
        @tf.custom_gradient
        def fused_with_onednn_gradient(x, scale, offset):
            results = fused(x, scale, offset)
            reserve = results[3:]

            def gradient(output_gradient, *statistics_gradients):
                return tensorflow_kernels.batch_norm_gradient(
                    output_gradient, x, scale, *reserve, self.epsilon, onednn=True
                )

            return results, gradient

        normalised = fused_with_onednn_gradient if onednn else fused
        # Tensors, not the variables Keras' convert_to_tensor may hand back: a custom gradient
        # would have to return gradients for variables read inside it.
        outputs, mean, variance, reserve_mean, reserve_variance = normalised(
            inputs, tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta)
        )
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], variance.dtype)
        biased = variance * ((count - 1.0) / count)  # what the kernel normalised with
        if kept is not None and not replay:
            # Kept with the two per-channel reserve spaces the gradient reads. Not the
            # third: oneDNN's is activation-sized, and only GPU kernels read it.
            kept.append((id(self), mean, biased, reserve_mean, reserve_variance))
        self._update_moving_statistics(mean, biased)
        return outputs

    def _tensorflow_replayed_batch_norm(
        self, inputs, gamma, beta, mean, variance, reserve_mean, reserve_variance
    ):
        """The training-mode BatchNorm of `inputs` with batch statistics kept from the same
        call in the forward pass: normalised in one pass by the inference kernel, with the
        gradient of training mode (through the batch statistics), TensorFlow's own kernel
        for it given the forward call's reserve spaces (or oneDNN's, see
        `keras_irevnet.layers.tensorflow_kernels`)."""
        import tensorflow as tf

        from keras_irevnet.layers import tensorflow_kernels

        onednn = tensorflow_kernels.onednn_applies()

        @tf.custom_gradient
        def replayed(x, scale, offset):
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x,
                scale,
                offset,
                mean=mean,
                variance=variance,
                epsilon=self.epsilon,
                is_training=False,
            )

            def gradient(output_gradient):
                return tensorflow_kernels.batch_norm_gradient(
                    output_gradient, x, scale, reserve_mean, reserve_variance, self.epsilon, onednn
                )

            return outputs, gradient

        # Tensors, not the variables Keras' convert_to_tensor may hand back: a custom gradient
        # would have to return gradients for variables read inside it.
        return replayed(inputs, tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta))

    def _jax_fused_call(self, inputs, training, relu=False):
        from keras_irevnet.layers import jax_batch_norm

        del training  # the kernel is chosen for training calls only
        outputs, mean, variance = jax_batch_norm.batch_norm_training(
            inputs, self.gamma.value, self.beta.value, self.epsilon, relu
        )
        self._update_moving_statistics(mean, variance)
        return outputs

    def _torch_mixed_fused_call(self, inputs, training, relu=False):
        outputs = self._torch_fused_call(ops.cast(inputs, "float32"), training, relu=relu)
        return ops.cast(outputs, self.compute_dtype)

    def _torch_fused_call(self, inputs, training, relu=False):
        import torch

        gamma, beta = (
            torch_fast_path.torch_tensor(self.gamma),
            torch_fast_path.torch_tensor(self.beta),
        )
        inputs = torch_fast_path.torch_tensor(inputs)
        if not training:
            # One multiply-add per element on the channels-last data as it is: torch's
            # batch_norm kernel on channels-last memory is 2-25x slower than this in
            # inference (e.g. 0.8 ms against 0.03 ms on 4x14x14x384), slower even than on
            # NCHW data. Without autograd the scale and shift are kept while the weights
            # and moving statistics are unchanged.
            sources = (
                gamma,
                beta,
                torch_fast_path.torch_tensor(self.moving_mean),
                torch_fast_path.torch_tensor(self.moving_variance),
            )
            if torch_fast_path.needs_autograd(gamma) or torch_fast_path.needs_autograd(beta):
                scale, shift = self._torch_scale_shift(*sources)
            else:
                scale, shift = self._torch_scale_shift_cache.get(sources, self._torch_scale_shift)
            y = torch.addcmul(shift, inputs, scale)
            return torch.relu_(y) if relu else y
        from keras_irevnet.layers import torch_batch_norm

        kept, replay = _thread.kept_statistics or (None, False)
        recording = kept is not None and not replay
        statistics = None  # (mean, invstd) to normalise with, where they are had apart
        if replay and kept and kept[0][0] == id(self):
            statistics = kept.popleft()[1:]
        elif torch_batch_norm.few_channels(inputs):
            mean, variance = torch_batch_norm.batch_statistics(inputs)
            statistics = (mean, torch.rsqrt(variance + self.epsilon))
            self._update_moving_statistics(mean, variance)
        if statistics is not None:
            if recording:
                kept.append((id(self), *statistics))
            y = torch_batch_norm.normalized(inputs, gamma, beta, *statistics, self.epsilon)
            return torch.relu_(y) if relu else y
        x = inputs.permute(0, 3, 1, 2)  # NHWC memory seen as NCHW
        # With momentum 1 the kernel writes the batch statistics into these two buffers
        # (fresh tensors, not the moving statistics: those are updated by
        # `_update_moving_statistics`, through Keras' `assign` inside a StatelessScope so
        # that the scope can capture or discard the update).
        mean = torch.zeros_like(gamma)
        variance = torch.ones_like(gamma)
        if recording:
            # The kernel `batch_norm` calls on CPU, which also returns what it normalised
            # with: the batch mean and inverse standard deviation.
            y, batch_mean, invstd = torch.ops.aten.native_batch_norm(
                x, gamma, beta, mean, variance, True, 1.0, self.epsilon
            )
            kept.append((id(self), batch_mean.detach(), invstd.detach()))
        else:
            y = torch.nn.functional.batch_norm(
                x, mean, variance, gamma, beta, True, 1.0, self.epsilon
            )
        self._update_moving_statistics(mean, variance, x.numel() // x.shape[1])
        if relu:
            y = torch.relu_(y)
        return y.permute(0, 2, 3, 1)

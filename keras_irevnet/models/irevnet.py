"""The i-RevNet model: class scores from `call`, Phi(x) from `features`, x from `inverse`."""

import math
import os

import keras
from keras import ops
from keras.src.utils import io_utils

from keras_irevnet.atomic import atomic_path
from keras_irevnet.layers.initializers import torch_bias_initializer, torch_kernel_initializer
from keras_irevnet.layers.batch_normalization import BatchNormalization
from keras_irevnet.layers.bottleneck import BN_EPSILON
from keras_irevnet.layers.invertible_downsampling import InvertibleDownsampling
from keras_irevnet.models.block_stack import BlockStack, _check_stage_config, check_stage_widths
from keras_irevnet.models.inverse_model import InverseModel
from keras_irevnet.models.weights_file import (
    architecture_record,
    check_file_exists,
    check_same_architecture,
    check_weights_argument,
    is_local_path,
    load_weights_file,
    read_saved_architecture,
    reading_errors,
    write_weights_file,
)

# The reference's head BatchNorm uses PyTorch momentum 0.9, which is Keras momentum 0.1.
HEAD_BN_MOMENTUM = 0.1


def _check_input_shape(input_shape, downsampling, detail):
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3:
        raise ValueError(
            "`input_shape` must be (height, width, channels) (channels-last), "
            f"got {input_shape!r}."
        )
    h, w, c = input_shape
    if c is None or c < 1:
        raise ValueError(f"`input_shape` must give the number of channels, got {input_shape!r}.")
    bad = [size for size in (h, w) if size is not None and (size < 1 or size % downsampling)]
    if bad:
        fit = max(downsampling, downsampling * round(bad[0] / downsampling))
        raise ValueError(
            f"input_shape {tuple(input_shape)}: height and width must be multiples of the "
            f"model's total downsampling {downsampling} ({detail}); got {bad[0]}. "
            f"The nearest size that fits is {fit}."
        )


def _check_mult(mult, channels):
    if not isinstance(mult, int) or isinstance(mult, bool) or mult < 1:
        raise ValueError(
            "`mult` must be a positive integer (the bottleneck factor: each F has hidden "
            f"width channels // mult), got mult={mult!r}."
        )
    narrowest = min(channels)
    if narrowest // mult < 1:
        raise ValueError(
            f"`mult`={mult} leaves no hidden width in the stage of {narrowest} channels "
            f"({narrowest} // {mult} = 0); use mult <= {narrowest}."
        )


def _check_floating_policy(policy):
    if not (
        keras.backend.is_float_dtype(policy.compute_dtype)
        and keras.backend.is_float_dtype(policy.variable_dtype)
    ):
        raise ValueError(
            "`dtype` must be a floating-point policy (e.g. 'float32', 'float64', "
            f"'mixed_float16', 'mixed_bfloat16'), got {policy.name!r}."
        )


@keras.saving.register_keras_serializable(package="keras_irevnet")
class IRevNet(keras.Model):
    """An i-RevNet (Jacobsen, Smeulders & Oyallon, ICLR 2018): invertible up to its head.

    The network is `x -> [psi(2)] -> split -> blocks -> merge -> Phi(x)`, every step invertible
    (bijective, or injective where a block pads channels), followed when `include_top` by the
    non-invertible head BN -> ReLU -> global average pool -> Dense. Stage k has `blocks[k]`
    blocks of width `channels[k]` per half; its first block has stride `strides[k]`.

    Args:
        blocks: blocks per stage, e.g. (18, 18, 18).
        strides: stride (1 or 2) of each stage's first block.
        channels: width of each half in each stage (`nChannels` of the authors' code). A
            stride-2 stage must have twice the channels entering it; a stride-1 stage may be
            wider (it then pads with zeros: injective).
        init_ds: 2 to start with invertible downsampling psi(2) (C -> 4C channels at half
            resolution), 0 for none.
        mult: bottleneck factor, a positive integer; each F has hidden width
            `channels // mult`.
        dropout: dropout rate inside each F.
        include_top: whether to add the classification head. Without it the model returns
            Phi(x) (or its pooled version, see `pooling`).
        weights: None, or the path of a `.weights.h5` / `.keras` file to load. A missing or
            unreadable file, or one saved from a different i-RevNet (other blocks, strides,
            channels, init_ds, mult, input channels, include_top or classes), raises a
            ValueError naming the difference. The image size may differ.
        input_tensor: optional `keras.Input` to use as the model's input.
        input_shape: (height, width, channels); height and width must be multiples of the
            total downsampling, or None for any such size (checked on every call).
            Defaults to (224, 224, 3).
        pooling: with `include_top=False`: None (return Phi(x)), "avg" or "max".
        classes: number of classes of the head.
        classifier_activation: activation of the head's Dense layer ("softmax", None for
            logits, ...).
        memory_efficient: train with reversible backprop (default True): in training mode
            the backward pass reconstructs each block's input from its output and
            recomputes the block, instead of storing activations, so activation memory
            stays flat in depth (see benchmarks/memory.py) for about one more forward pass
            of compute. On by default because training is otherwise the same training:
            gradients equal plain autodiff to float rounding (1e-5 relative in float32),
            BatchNorm statistics are updated once, dropout masks are replayed, and
            inference-mode calls (`features`, `inverse`, the analyses) take the plain path.
            Set False for the fastest step when memory is not the limit, or for
            higher-order gradients or forward-mode autodiff through a training-mode call
            (the custom gradient does not support them on every backend).
        name: model name.
        dtype: floating-point dtype policy of every layer (e.g. "float64" or
            "mixed_float16"); defaults to the global policy. It is stored in the config, so
            `.keras` files and `from_config` rebuild the model with it.

    Only channels-last data is supported: the channel order of psi and the splits are defined
    on the last axis, and a transposed copy would give another network.
    """

    def __init__(
        self,
        blocks,
        strides,
        channels,
        init_ds=2,
        mult=4,
        dropout=0.0,
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        memory_efficient=True,
        name="irevnet",
        dtype=None,
        **kwargs,
    ):
        blocks, strides, channels = _as_tuple(blocks), _as_tuple(strides), _as_tuple(channels)
        _check_stage_config(blocks, strides, channels)
        _check_mult(mult, channels)
        if init_ds not in (0, 2):
            raise ValueError(
                f"`init_ds` must be 0 (no initial downsampling) or 2 (psi(2) first), "
                f"got {init_ds!r}."
            )
        if keras.config.image_data_format() != "channels_last":
            raise ValueError(
                "keras_irevnet supports channels_last only (the order of invertible "
                "downsampling and of the channel splits is defined on the last axis); "
                "the Keras image data format is set to "
                f"{keras.config.image_data_format()!r}. Call "
                "keras.config.set_image_data_format('channels_last')."
            )
        if pooling not in (None, "avg", "max"):
            raise ValueError(f"`pooling` must be None, 'avg' or 'max', got {pooling!r}.")
        if include_top and (
            not isinstance(classes, int) or isinstance(classes, bool) or classes < 1
        ):
            raise ValueError(f"`classes` must be a positive integer, got {classes!r}.")
        check_weights_argument(weights)

        if input_tensor is not None:
            inputs = _source_input(input_tensor)
            input_shape = tuple(inputs.shape[1:])
        else:
            input_shape = (224, 224, 3) if input_shape is None else tuple(input_shape)
        downsampling = (2 if init_ds else 1) * 2 ** strides.count(2)
        _check_input_shape(
            input_shape,
            downsampling,
            f"init_ds={init_ds} and {strides.count(2)} stride-2 stages",
        )
        in_channels = input_shape[-1] * (4 if init_ds else 1)
        check_stage_widths(in_channels, strides, channels)

        policy = keras.dtype_policies.get(dtype) if dtype is not None else None
        # The functional wrapper keeps the global policy whatever `dtype` says; the config
        # must record the one the layers were built with.
        built_policy = policy or keras.config.dtype_policy()
        _check_floating_policy(built_policy)
        _check_float64_support(built_policy.variable_dtype)
        if input_tensor is None:
            input_dtype = policy.variable_dtype if policy else keras.config.floatx()
            inputs = keras.Input(shape=input_shape, dtype=input_dtype, name="image")

        # === Layers ===
        initial_downsampling = (
            InvertibleDownsampling(2, dtype=policy, name="initial_psi") if init_ds else None
        )
        block_stack = BlockStack(
            blocks,
            strides,
            channels,
            dropout=dropout,
            mult=mult,
            memory_efficient=memory_efficient,
            dtype=policy,
            name="block_stack",
        )

        # === Functional graph ===
        x = inputs
        if initial_downsampling is not None:
            x = initial_downsampling(x)
        phi = block_stack(x)
        if include_top:
            features = phi.shape[-1]
            x = BatchNormalization(
                momentum=HEAD_BN_MOMENTUM, epsilon=BN_EPSILON, dtype=policy, name="head_norm"
            )(phi)
            x = keras.layers.Activation("relu", dtype=policy, name="head_relu")(x)
            x = keras.layers.GlobalAveragePooling2D(dtype=policy, name="avg_pool")(x)
            outputs = keras.layers.Dense(
                classes,
                activation=classifier_activation,
                kernel_initializer=torch_kernel_initializer(),
                bias_initializer=torch_bias_initializer(features),
                # Class scores in the variables' dtype (float32 under mixed precision), as
                # Keras' mixed-precision guide advises: softmax and top-k need the range.
                dtype=(policy or keras.config.dtype_policy()).variable_dtype,
                name="predictions",
            )(x)
        elif pooling == "avg":
            outputs = keras.layers.GlobalAveragePooling2D(dtype=policy, name="avg_pool")(phi)
        elif pooling == "max":
            outputs = keras.layers.GlobalMaxPooling2D(dtype=policy, name="max_pool")(phi)
        else:
            outputs = phi
        super().__init__(inputs=inputs, outputs=outputs, name=name, dtype=policy, **kwargs)

        # === Config === (after the functional init: torch modules refuse earlier attributes)
        self.initial_downsampling = initial_downsampling
        self.block_stack = block_stack
        self.stage_blocks = blocks
        self.stage_strides = strides
        self.stage_channels = channels
        self.init_ds = init_ds
        self.mult = mult
        self.dropout = dropout
        self.include_top = include_top
        self.pooling = pooling
        self.classes = classes
        self.classifier_activation = classifier_activation
        self.memory_efficient = memory_efficient
        self.image_shape = tuple(input_shape)
        self.feature_shape = tuple(phi.shape[1:])
        self.built_dtype_policy = built_policy

        if weights is not None:
            load_weights_file(self, weights, include_top, classes)

    @property
    def total_downsampling(self):
        """Factor by which height and width shrink from the image to Phi(x)."""
        return (2 if self.init_ds else 1) * 2 ** self.stage_strides.count(2)

    @property
    def injective(self):
        """True when some block pads channels, so Phi(x) has more numbers than x."""
        return math.prod(self.feature_shape) != math.prod(self.image_shape)

    def _as_input(self, x, expected, what):
        x = ops.convert_to_tensor(x)
        got = tuple(x.shape[1:])
        if len(got) != len(expected) or any(
            e is not None and g != e for g, e in zip(got, expected)
        ):
            raise ValueError(
                f"{self.name}.{what} expects a batch of shape (batch, "
                f"{', '.join(str(e) for e in expected)}), got shape {tuple(x.shape)}."
            )
        return x

    def _checked_images(self, x, what):
        """`x` after the checks every entry point makes on images: floating point, and a
        height and width the model can downsample."""
        label = f"{self.name}.{what}" if what else self.name
        _check_floating_images(x, label)
        return _checked_image_size(x, self.total_downsampling, label)

    def call(self, inputs, training=None, mask=None, **kwargs):
        images = inputs[0] if isinstance(inputs, (list, tuple)) and len(inputs) == 1 else inputs
        images = self._checked_images(images, None)
        return super().call(images, training=training, mask=mask, **kwargs)

    def features(self, x, training=False):
        """Phi(x): the invertible representation, before the (non-invertible) head.

        Args:
            x: a batch of images, shape (batch,) + `image_shape`, preprocessed as for `call`
                (floating point; height and width multiples of `total_downsampling`), or a
                symbolic `keras.Input` to build a functional model on.
            training: BatchNorm / dropout mode (False: moving statistics, the mode in which
                `inverse` is the exact inverse).

        Returns:
            A tensor of shape (batch,) + `feature_shape`.
        """
        x = self._checked_images(self._as_input(x, self.image_shape, "features"), "features")
        if self.initial_downsampling is not None:
            x = self.initial_downsampling(x)
        return self.block_stack(x, training=training)

    def inverse(self, z):
        """x from Phi(x): the exact inverse of `features` (inference mode), up to rounding.

        Args:
            z: a batch of representations, shape (batch,) + `feature_shape`, or a symbolic
                tensor (`keras.Input(model.feature_shape)`): then the result is the output
                of one layer computing the inverse, for building a functional model.

        Returns:
            The images, shape (batch,) + `image_shape`.
        """
        if keras.backend.is_keras_tensor(z):
            # Applying the blocks' layers one by one to a symbolic tensor would put every
            # layer of the stack into the new graph a second time (Keras refuses the repeated
            # names); one layer that runs the eager inverse keeps the graph to one node.
            self._as_input(z, self.feature_shape, "inverse")
            name = f"{self.name}_inverse_{keras.backend.get_uid(self.name + '_inverse')}"
            return InverseModel(self, name=name)(z)
        z = self._as_input(z, self.feature_shape, "inverse")
        # The stack's dtype, not the model's: a functional model keeps the global policy.
        z = ops.cast(z, self.block_stack.compute_dtype)
        x = self.block_stack.inverse(z)
        if self.initial_downsampling is not None:
            x = self.initial_downsampling.inverse(x)
        return x

    def inverse_model(self, jit_compile="auto"):
        """A compiled inverse: a Keras model computing `inverse`, sharing these weights.

        `model.inverse_model().predict(z, batch_size=...)` inverts a large array in batches
        with Keras' compiled prediction loop (XLA / `jax.jit` where `jit_compile` asks for
        it), much faster than eager `inverse` calls on TensorFlow and JAX.

        Args:
            jit_compile: passed to `compile` (True, False or "auto", Keras' default).

        Returns:
            A `keras_irevnet.models.InverseModel`.
        """
        model = InverseModel(self)
        model.compile(jit_compile=jit_compile)
        return model

    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        """Saves the model as a `.keras` file (see `keras.Model.save`), atomically.

        A local `.keras` file is written under a temporary name in the same directory and
        renamed into place once complete: a failed or interrupted write never leaves a
        partial file, nor replaces a good one. Other targets (unzipped, remote, legacy `.h5`)
        are Keras' own `save`.
        """
        path = os.fspath(filepath) if is_local_path(filepath) else None
        if path is None or zipped is False or not path.endswith(".keras"):
            return super().save(filepath, overwrite=overwrite, zipped=zipped, **kwargs)
        if not _may_write(path, overwrite):
            return None
        with atomic_path(path) as temporary:
            super().save(temporary, overwrite=True, zipped=zipped, **kwargs)
        return None

    def save_weights(self, filepath, overwrite=True, max_shard_size=None):
        """Saves the weights to a `.weights.h5` file (see `keras.Model.save_weights`).

        The file also holds this model's architecture record (blocks, strides, channels,
        init_ds, mult, input channels, include_top, classes), which `load_weights` compares
        with the model it loads into. It is written atomically: under a temporary name in the
        same directory, renamed into place once complete. Sharded (`max_shard_size`) and
        remote files are Keras' own `save_weights`.
        """
        path = os.fspath(filepath) if is_local_path(filepath) else None
        if path is None or max_shard_size is not None or not path.endswith(".weights.h5"):
            return super().save_weights(
                filepath, overwrite=overwrite, max_shard_size=max_shard_size
            )
        if not _may_write(path, overwrite):
            return None
        with atomic_path(path) as temporary:
            write_weights_file(self, temporary, architecture_record(self))
        return None

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Loads weights from a `.weights.h5` or `.keras` file (see `keras.Model.load_weights`).

        Before anything is assigned, the file's architecture record (or, in a `.keras` file,
        its model config) is compared with this model; files saved by plain Keras or
        keras_irevnet 0.1 have none and get Keras' shape checks only. With
        `skip_mismatch=True` the comparison is skipped (partial loading is then the point).
        Sharded (`.weights.json`) and remote files are Keras' own `load_weights`.

        Raises:
            ValueError: the file is missing or unreadable (not HDF5, truncated, damaged), or
                holds a different i-RevNet (every differing field is named, with the file's
                and the model's values), or its weights do not fit the model.
        """
        path = os.fspath(filepath) if is_local_path(filepath) else None
        if path is None or not path.endswith((".weights.h5", ".keras")):
            if path is not None and path.endswith(".weights.json"):
                check_file_exists(path)
            return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        saved = read_saved_architecture(path)
        if saved is not None and not skip_mismatch:
            check_same_architecture(architecture_record(self), saved, path, self.name)
        with reading_errors(path, self.name):
            super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        return None

    def get_config(self):
        return {
            "blocks": self.stage_blocks,
            "strides": self.stage_strides,
            "channels": self.stage_channels,
            "init_ds": self.init_ds,
            "mult": self.mult,
            "dropout": self.dropout,
            "include_top": self.include_top,
            "input_shape": self.image_shape,
            "pooling": self.pooling,
            "classes": self.classes,
            "classifier_activation": _serialize_activation(self.classifier_activation),
            "memory_efficient": self.memory_efficient,
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.built_dtype_policy),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)


def _check_floating_images(images, label):
    # Integer pixels would be cast silently on some backends and fail inside a convolution on
    # others; either way the model was trained on preprocessed floats.
    dtype = getattr(images, "dtype", None)
    if dtype is None:
        return
    dtype = keras.backend.standardize_dtype(dtype)
    if not keras.backend.is_float_dtype(dtype):
        raise ValueError(
            f"{label} expects preprocessed floating-point images (e.g. "
            f"`keras_irevnet.preprocess_input(pixels)`), got dtype {dtype}."
        )


def _checked_image_size(images, factor, label):
    """`images`, checked to have a height and width that are multiples of `factor`."""
    shape = getattr(images, "shape", None)
    if shape is None or getattr(shape, "rank", len(shape)) != 4:
        return images  # Keras' own input checks name the problem
    sizes = tuple(shape[1:3])
    if None not in sizes:
        if any(size % factor for size in sizes):
            raise ValueError(
                f"{label}: image height and width must be multiples of the model's total "
                f"downsampling {factor}; got {sizes[0]}x{sizes[1]}."
            )
        return images
    if keras.backend.is_keras_tensor(images):
        return images  # a symbolic input of unknown size: checked when data arrives
    return _assert_sizes_divisible(images, factor, label)


def _may_write(path, overwrite):
    """Keras' rule: an existing file is replaced if `overwrite`, else only if the user agrees."""
    return overwrite or not os.path.exists(path) or io_utils.ask_to_proceed_with_overwrite(path)


def _assert_sizes_divisible(images, factor, what):
    """`images`, with a run-time check that height and width are multiples of `factor`.

    Only needed where the sizes are unknown while tracing: TensorFlow graphs of a model
    built with input_shape=(None, None, C) (JAX and torch always trace concrete shapes).
    Without it a wrong size would fail deep inside a reshape with a backend message.
    """
    if keras.backend.backend() != "tensorflow":
        return images
    import tensorflow as tf

    sizes = tf.shape(images)[1:3]
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(sizes % factor, 0)),
        [
            f"{what}: image height and width",
            sizes,
            f"must be multiples of the total downsampling {factor} of the model.",
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(images)


def _check_float64_support(dtype):
    # JAX computes in float32 unless x64 is enabled, silently: the inverse would then be
    # float32-exact while the user asked for float64.
    if dtype == "float64" and keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            raise ValueError(
                "float64 on the JAX backend needs 64-bit mode, which is off: call "
                "`jax.config.update('jax_enable_x64', True)` before building the model "
                "(or set JAX_ENABLE_X64=1)."
            )


def _serialize_activation(activation):
    if activation is None or isinstance(activation, str):
        return activation
    return keras.activations.serialize(activation)


def _as_tuple(values):
    return tuple(values) if isinstance(values, (list, tuple)) else values


def _source_input(input_tensor):
    history = getattr(input_tensor, "_keras_history", None)
    if history is None or not isinstance(history.operation, keras.layers.InputLayer):
        raise ValueError(
            "`input_tensor` must be a `keras.Input` (a model input); got "
            f"{input_tensor!r}. To put layers in front of an i-RevNet, call the model on "
            "your tensor instead: `outputs = kir.IRevNetCIFAR(...)(x)`."
        )
    return input_tensor

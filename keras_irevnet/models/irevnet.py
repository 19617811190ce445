"""The i-RevNet model: class scores from `call`, Phi(x) from `features`, x from `inverse`."""

import math

import keras
from keras import ops

from keras_irevnet import pretrained
from keras_irevnet.layers.batch_normalization import BatchNormalization
from keras_irevnet.layers.bottleneck import BN_EPSILON
from keras_irevnet.layers.channels import merge_channels
from keras_irevnet.layers.initializers import torch_bias_initializer, torch_kernel_initializer
from keras_irevnet.layers.invertible_downsampling import InvertibleDownsampling
from keras_irevnet.models import (
    checks,
    optimizer_layout,
    presets,
    step_kernels,
    weights_file,
    xla_cpu_options,
)
from keras_irevnet.models.block_stack import BlockStack
from keras_irevnet.models.inverse_model import InverseModel

# The reference's head BatchNorm uses PyTorch momentum 0.9, which is Keras momentum 0.1
# (docs/reference.md, "BatchNorm").
HEAD_BN_MOMENTUM = 0.1


@keras.saving.register_keras_serializable(package="keras_irevnet")
class IRevNet(
    weights_file.SafeWeightsFiles,
    step_kernels.StepKernels,
    xla_cpu_options.XlaCpuOptions,
    optimizer_layout.TorchOptimizerLayout,
    keras.Model,
):
    """An i-RevNet (Jacobsen, Smeulders & Oyallon, ICLR 2018): invertible up to its head.

    The network is `x -> [psi(2)] -> split -> blocks -> merge -> Phi(x)`, every step invertible
    (bijective, or injective where a block pads channels), followed when `include_top` by the
    non-invertible head BN -> ReLU -> global average pool -> Dense. Stage k has `blocks[k]`
    blocks of width `channels[k]` per half; its first block has stride `strides[k]`.
    `IRevNet.from_preset(name)` builds the named configurations (docs/reference.md).

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
        input_tensor: optional Keras tensor to use as the image input (a `keras.Input`, or
            the output of layers in front of the i-RevNet, whose inputs then become the
            model's). `features` and `inverse` work on the i-RevNet's own input.
        input_shape: (height, width, channels); height and width must be multiples of the
            total downsampling, or None for any such size (checked on every call).
            Defaults to (224, 224, 3).
        pooling: with `include_top=False`: None (return Phi(x)), "avg" or "max".
        classes: number of classes of the head.
        classifier_activation: activation of the head's Dense layer ("softmax", None for
            logits, ...).
        memory_efficient: train with reversible backprop (default False): in training
            mode the backward pass reconstructs each block's input from its output and
            recomputes the block, instead of storing activations, so activation memory
            hardly grows with depth (benchmarks/memory.py) for one more evaluation of each
            block's F. Training is otherwise the same training: gradients equal plain
            autodiff to float rounding (1e-5 relative in float32), BatchNorm statistics are
            updated once, dropout masks are replayed, and inference-mode calls
            (`features`, `inverse`, the analyses) take the plain path. Off by default
            because the extra evaluation makes each step slower (README, "Memory-efficient
            training"); turn it on when activations limit the batch size or the depth.
            Not for higher-order gradients or forward-mode autodiff through a
            training-mode call (the custom gradient does not support them everywhere).
        name: model name.
        dtype: floating-point dtype policy of every layer (e.g. "float64" or
            "mixed_float16"); defaults to the global policy. It is stored in the config, so
            `.keras` files and `from_config` rebuild the model with it.

    Attributes:
        image_shape, feature_shape: the shapes of x and Phi(x), without the batch axis.
        features_output: Phi(x) as a symbolic tensor of the model's own graph (before the
            head): `keras.Model(model.inputs, [model.output, model.features_output])`
            computes class scores and Phi(x) in one pass.
        block_outputs: {block name: symbolic tensor of the representation after that block},
            as keras-hub's `pyramid_outputs`: `keras.Model(model.inputs, model.block_outputs)`
            is a feature extractor of every depth.

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
        memory_efficient=False,
        name="irevnet",
        dtype=None,
        **kwargs,
    ):
        blocks, strides, channels = _as_tuple(blocks), _as_tuple(strides), _as_tuple(channels)
        checks.check_architecture(blocks, strides, channels, init_ds, mult)
        checks.check_channels_last()
        checks.check_head(include_top, pooling, classes)
        weights_file.check_weights_argument(weights)
        policy = keras.dtype_policies.get(dtype) if dtype is not None else None
        # The functional wrapper keeps the global policy whatever `dtype` says; the config
        # must record the one the layers were built with.
        built_policy = policy or keras.config.dtype_policy()
        checks.check_policy(built_policy)
        inputs, images = _image_input(input_tensor, input_shape, built_policy, init_ds, strides)
        checks.check_stage_widths(images.shape[-1] * (4 if init_ds else 1), strides, channels)

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
        x = initial_downsampling(images) if initial_downsampling is not None else images
        phi = block_stack(x)
        outputs = _head(phi, include_top, pooling, classes, classifier_activation, policy)
        super().__init__(inputs=inputs, outputs=outputs, name=name, dtype=policy, **kwargs)

        # After the functional init: torch modules refuse attributes set earlier.
        self.initial_downsampling = initial_downsampling
        self.block_stack = block_stack
        self.stage_blocks, self.stage_strides, self.stage_channels = blocks, strides, channels
        self.init_ds, self.mult, self.dropout = init_ds, mult, dropout
        self.include_top, self.pooling, self.classes = include_top, pooling, classes
        self.classifier_activation = classifier_activation
        self.memory_efficient = memory_efficient
        self.built_dtype_policy = built_policy
        self.image_shape = tuple(images.shape[1:])
        self.feature_shape = tuple(phi.shape[1:])
        self._checks_its_input = inputs is images
        self.features_output = phi
        self.block_outputs = _block_outputs(images, initial_downsampling, block_stack)
        if weights is not None:
            weights_file.load_weights_file(self, weights, include_top, classes)

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """The i-RevNet preset named `preset` (tiny, cifar, bijective, injective), built with
        `kwargs`.

        The preset gives the architecture and the default `input_shape` and `classes`;
        `kwargs` are any other `IRevNet` arguments (and may override those).
        `weights="imagenet"` loads published weights, where the preset has them (bijective;
        downloaded and converted once, then cached: `keras_irevnet.pretrained`).
        """
        preset = presets.get_preset(preset)
        arguments = {
            **preset.architecture,
            "input_shape": preset.input_shape,
            "classes": preset.classes,
            "name": f"irevnet_{preset.name}",
            **kwargs,
        }
        weights = arguments.get("weights")
        if isinstance(weights, str) and weights in pretrained.WEIGHT_NAMES:
            pretrained.check_weights_request(
                preset.name,
                weights,
                arguments.get("include_top", True),
                arguments["classes"],
                kwargs.get("input_shape"),
            )
            arguments["weights"] = pretrained.imagenet_weights_file(
                include_top=arguments.get("include_top", True)
            )
        return cls(**arguments)

    # --- What the network is ---

    @property
    def total_downsampling(self):
        """Factor by which height and width shrink from the image to Phi(x)."""
        return checks.downsampling_factor(self.init_ds, self.stage_strides)

    @property
    def injective(self):
        """True when some block pads channels, so Phi(x) has more numbers than x."""
        return math.prod(self.feature_shape) != math.prod(self.image_shape)

    # --- The two directions ---

    def call(self, inputs, training=None, mask=None, **kwargs):
        if self._checks_its_input:  # the model input is the i-RevNet's own (no layers before)
            single = isinstance(inputs, (list, tuple)) and len(inputs) == 1
            images = checks.check_images(
                inputs[0] if single else inputs, self.total_downsampling, self.name
            )
            inputs = [images] if single else images
        return super().call(inputs, training=training, mask=mask, **kwargs)

    def features(self, x, training=False):
        """Phi(x): the invertible representation, before the (non-invertible) head.

        Args:
            x: a batch of images, shape (batch,) + `image_shape`, preprocessed as for `call`
                (floating point; height and width multiples of `total_downsampling`), or a
                symbolic tensor to build a functional model on.
            training: BatchNorm / dropout mode (False: moving statistics, the mode in which
                `inverse` is the exact inverse).

        Returns:
            A tensor of shape (batch,) + `feature_shape`.
        """
        x = self._as_input(x, self.image_shape, "features")
        x = checks.check_images(x, self.total_downsampling, f"{self.name}.features")
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
        z = self._as_input(z, self.feature_shape, "inverse")
        if keras.backend.is_keras_tensor(z):
            # Applying the blocks' layers one by one to a symbolic tensor would put every
            # layer of the stack into the new graph a second time (Keras refuses the repeated
            # names); one layer that runs the eager inverse keeps the graph to one node.
            name = f"{self.name}_inverse_{keras.backend.get_uid(self.name + '_inverse')}"
            return InverseModel(self, name=name)(z)
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

    def _as_input(self, x, expected, what):
        if not keras.backend.is_keras_tensor(x):
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

    # --- Config ---

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


def _image_input(input_tensor, input_shape, policy, init_ds, strides):
    """(model inputs, the image tensor the i-RevNet starts from), as Keras Applications do:
    a new `keras.Input`, or `input_tensor` and the inputs it comes from."""
    if input_tensor is None:
        shape = (224, 224, 3) if input_shape is None else input_shape
        checks.check_input_shape(shape, init_ds, strides)
        images = keras.Input(shape=tuple(shape), dtype=policy.variable_dtype, name="image")
        return images, images
    if not keras.backend.is_keras_tensor(input_tensor):
        raise ValueError(
            "`input_tensor` must be a Keras tensor (a `keras.Input`, or the output of Keras "
            f"layers), got {type(input_tensor).__name__}. To run an i-RevNet on other "
            "tensors, call the model on them: `kir.IRevNetCIFAR()(x)`."
        )
    checks.check_input_shape(tuple(input_tensor.shape[1:]), init_ds, strides)
    sources = keras.utils.get_source_inputs(input_tensor)
    return (sources[0] if len(sources) == 1 else sources), input_tensor


def _block_outputs(images, initial_downsampling, block_stack):
    """{block name: the representation after that block}, symbolically, from `images`.

    The state after block j is the pair (x1, x2) merged back into one tensor: the network at
    depth j, from which Phi(x) follows invertibly. A walk of the blocks beside the model's own
    graph (whose stack is one layer, for reversible backprop).
    """
    x = initial_downsampling(images) if initial_downsampling is not None else images
    return {
        block.name: merge_channels(*pair) for block, pair in block_stack.walk(x, training=False)
    }


def _head(phi, include_top, pooling, classes, classifier_activation, policy):
    """The non-invertible end: the classifier, a pooling, or Phi(x) itself."""
    if include_top:
        x = BatchNormalization(
            momentum=HEAD_BN_MOMENTUM, epsilon=BN_EPSILON, dtype=policy, name="head_norm"
        )(phi)
        x = keras.layers.Activation("relu", dtype=policy, name="head_relu")(x)
        x = keras.layers.GlobalAveragePooling2D(dtype=policy, name="avg_pool")(x)
        return keras.layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=torch_kernel_initializer(),
            bias_initializer=torch_bias_initializer(phi.shape[-1]),
            # Class scores in the variables' dtype (float32 under mixed precision), as
            # Keras' mixed-precision guide advises: softmax and top-k need the range.
            dtype=(policy or keras.config.dtype_policy()).variable_dtype,
            name="predictions",
        )(x)
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(dtype=policy, name="avg_pool")(phi)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(dtype=policy, name="max_pool")(phi)
    return phi


def _serialize_activation(activation):
    if activation is None or isinstance(activation, str):
        return activation
    return keras.activations.serialize(activation)


def _as_tuple(values):
    return tuple(values) if isinstance(values, (list, tuple)) else values

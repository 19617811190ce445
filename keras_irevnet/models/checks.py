"""Argument and input checks of the i-RevNet models: every refusal says which argument, what
was expected and what was given, before any work is done."""

import keras

from keras_irevnet.layers.additive_coupling import block_padding


def downsampling_factor(init_ds, strides):
    """Factor by which height and width shrink from the image to Phi(x)."""
    return (2 if init_ds else 1) * 2 ** tuple(strides).count(2)


def check_stage_config(blocks, strides, channels):
    """`blocks`, `strides`, `channels`: one positive integer per stage, strides 1 or 2."""
    for arg, values in (("blocks", blocks), ("strides", strides), ("channels", channels)):
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"`{arg}` must be a non-empty list or tuple, got {values!r}.")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            raise ValueError(f"`{arg}` must hold positive integers, got {values!r}.")
    if not len(blocks) == len(strides) == len(channels):
        raise ValueError(
            "`blocks`, `strides` and `channels` give one value per stage and must have the "
            f"same length; got {len(blocks)} blocks {tuple(blocks)}, {len(strides)} strides "
            f"{tuple(strides)} and {len(channels)} channels {tuple(channels)}."
        )
    for i, s in enumerate(strides):
        if s not in (1, 2):
            raise ValueError(f"strides[{i}] must be 1 or 2, got {s}.")


def check_stage_widths(in_channels, strides, channels):
    """Raises a ValueError naming the first stage whose width cannot follow its input."""
    for i, (s, c) in enumerate(zip(strides, channels)):
        try:
            block_padding(in_channels, c, s)
        except ValueError as error:
            raise ValueError(
                f"channels[{i}]={c} does not fit stage {i} (strides[{i}]={s}, "
                f"{in_channels} channels entering): {error}"
            ) from None
        in_channels = 2 * c


def check_architecture(blocks, strides, channels, init_ds, mult):
    """The arguments that fix the network, checked together."""
    check_stage_config(blocks, strides, channels)
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
    if init_ds not in (0, 2):
        raise ValueError(
            f"`init_ds` must be 0 (no initial downsampling) or 2 (psi(2) first), got {init_ds!r}."
        )


def check_head(include_top, pooling, classes):
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"`pooling` must be None, 'avg' or 'max', got {pooling!r}.")
    if include_top and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 1):
        raise ValueError(f"`classes` must be a positive integer, got {classes!r}.")


def check_channels_last():
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "keras_irevnet supports channels_last only (the order of invertible "
            "downsampling and of the channel splits is defined on the last axis); "
            "the Keras image data format is set to "
            f"{keras.config.image_data_format()!r}. Call "
            "keras.config.set_image_data_format('channels_last')."
        )


def check_input_shape(input_shape, init_ds, strides):
    """`input_shape`: (height, width, channels), sizes None or multiples of the downsampling."""
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3:
        raise ValueError(
            f"`input_shape` must be (height, width, channels) (channels-last), got {input_shape!r}."
        )
    h, w, c = input_shape
    if c is None or c < 1:
        raise ValueError(f"`input_shape` must give the number of channels, got {input_shape!r}.")
    factor = downsampling_factor(init_ds, strides)
    bad = [size for size in (h, w) if size is not None and (size < 1 or size % factor)]
    if bad:
        fit = max(factor, factor * round(bad[0] / factor))
        raise ValueError(
            f"input_shape {tuple(input_shape)}: height and width must be multiples of the "
            f"model's total downsampling {factor} (init_ds={init_ds} and "
            f"{tuple(strides).count(2)} stride-2 stages); got {bad[0]}. The nearest size "
            f"that fits is {fit}."
        )


def check_policy(policy):
    """A floating-point policy that the backend computes as asked."""
    if not (
        keras.backend.is_float_dtype(policy.compute_dtype)
        and keras.backend.is_float_dtype(policy.variable_dtype)
    ):
        raise ValueError(
            "`dtype` must be a floating-point policy (e.g. 'float32', 'float64', "
            f"'mixed_float16', 'mixed_bfloat16'), got {policy.name!r}."
        )
    # JAX computes in float32 unless x64 is enabled, silently: the inverse would then be
    # float32-exact while the user asked for float64.
    if policy.variable_dtype == "float64" and keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            raise ValueError(
                "float64 on the JAX backend needs 64-bit mode, which is off: call "
                "`jax.config.update('jax_enable_x64', True)` before building the model "
                "(or set JAX_ENABLE_X64=1)."
            )


def check_images(images, factor, label):
    """`images`, checked: floating point (preprocessed), height and width multiples of
    `factor`; with unknown sizes inside a traced TensorFlow function, checked at run time."""
    dtype = getattr(images, "dtype", None)
    if dtype is not None and not keras.backend.is_float_dtype(
        keras.backend.standardize_dtype(dtype)
    ):
        # Integer pixels would be cast silently on some backends and fail inside a
        # convolution on others; either way the model was trained on preprocessed floats.
        raise ValueError(
            f"{label} expects preprocessed floating-point images (e.g. "
            f"`keras_irevnet.preprocess_input(pixels)`), got dtype "
            f"{keras.backend.standardize_dtype(dtype)}."
        )
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
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


def _assert_sizes_divisible(images, factor, label):
    """`images`, with a run-time check that height and width are multiples of `factor`.

    Only needed where sizes are unknown while tracing: TensorFlow graphs of a model built with
    input_shape=(None, None, C) (JAX and torch always trace concrete shapes). Without it a
    wrong size would fail deep inside a reshape with a backend message.
    """
    if keras.backend.backend() != "tensorflow":
        return images
    import tensorflow as tf

    sizes = tf.shape(images)[1:3]
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(sizes % factor, 0)),
        [
            f"{label}: image height and width",
            sizes,
            f"must be multiples of the total downsampling {factor} of the model.",
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(images)

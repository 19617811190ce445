"""Keras-Applications-style constructors for the published i-RevNet configurations.

Each is `IRevNet.from_preset(name, ...)` with the Keras Applications signature; the presets
live in `keras_irevnet.models.presets` (docs/reference.md, "Configurations").
"""

from keras_irevnet.models.irevnet import IRevNet

_COMMON_DOC = """
    Args:
        include_top: whether to add the head (BN -> ReLU -> global average pool -> Dense).
            Without it the model returns Phi(x), or its pooled version (see `pooling`).
        weights: None (random init, PyTorch's scheme), "imagenet" where published weights
            exist (`IRevNetBijective`: the authors' ImageNet weights, downloaded and
            converted once, then cached; see `keras_irevnet.pretrained`), or the path of a
            `.weights.h5` / `.keras` file. A missing, unreadable or other-architecture file
            raises a ValueError naming it. Other checkpoints of the authors' PyTorch code
            load with `keras_irevnet.load_official_weights`.
        input_tensor: optional Keras tensor to use as the image input.
        input_shape: (height, width, channels), channels-last; height and width must be
            multiples of the total downsampling ({downsampling}); (None, None, 3) accepts any
            such size. Defaults to {default_shape}.
        pooling: with `include_top=False`: None (Phi(x)), "avg" or "max".
        classes: number of classes.
        classifier_activation: activation of the last layer; None returns logits.
        memory_efficient: reversible backprop in training mode (default False): each
            block's input is reconstructed from its output in the backward pass instead of
            stored, so activation memory hardly grows with depth, for one more evaluation of
            each block's F. Gradients, BatchNorm statistics and dropout are those of plain
            autodiff (tested to float rounding); inference is unaffected. Off by default
            for the faster step; turn it on when activations limit the batch size or
            depth. Not for higher-order gradients.
        name: model name.
        **kwargs: passed to `IRevNet` (e.g. `dtype="float64"`).

    Returns:
        An `IRevNet` model with `features(x)` (Phi(x)) and `inverse(z)`.
"""


def _document(downsampling, default_shape):
    def decorate(fn):
        fn.__doc__ += _COMMON_DOC.format(downsampling=downsampling, default_shape=default_shape)
        return fn

    return decorate


def _from_preset(preset, arguments):
    """`IRevNet.from_preset(preset, ...)` with a constructor's arguments (its `locals()`)."""
    arguments = dict(arguments)
    arguments.update(arguments.pop("kwargs"))
    if arguments["input_shape"] is None:  # the preset's own
        del arguments["input_shape"]
    return IRevNet.from_preset(preset, **arguments)


@_document(32, "(224, 224, 3)")
def IRevNetBijective(
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    memory_efficient=False,
    name="irevnet_bijective",
    **kwargs,
):
    """The bijective ImageNet i-RevNet (paper's model (b), "i-RevNet 301"), preset "bijective".

    The configuration of the authors' released code: blocks (6, 16, 72, 6), strides
    (2, 2, 2, 2), channels (24, 96, 384, 1536), initial psi(2), no dropout. Phi(x) of a
    224x224x3 image is 7x7x3072, exactly as many numbers as the image. 125,120,356 trainable
    parameters with 1000 classes.
    """
    return _from_preset("bijective", locals())


@_document(16, "(224, 224, 3)")
def IRevNetInjective(
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    memory_efficient=False,
    name="irevnet_injective",
    **kwargs,
):
    """The injective ImageNet i-RevNet (paper's model (a), about 181M parameters), preset
    "injective".

    The paper does not give the widths of (a) and the authors' code does not contain it, so
    this is our choice: the depth of (b) (blocks (6, 16, 72, 6), initial psi(2)) with a first
    stage of stride 1 that widens the 12 channels after psi(2) to 2 x 29 = 58 by injective
    padding, then stride-2 stages of widths 116, 464 and 1856 (each twice its input, as a
    stride-2 block requires): channels (29, 116, 464, 1856), strides (1, 2, 2, 2). The width 29
    is the one that lands nearest the paper's count. Phi(x) of a 224x224x3 image is
    14x14x3712, 4.8x as many numbers as the image. 181,881,171 trainable parameters with 1000
    classes (0.5 % over the paper's 181M).
    """
    return _from_preset("injective", locals())


@_document(4, "(32, 32, 3)")
def IRevNetCIFAR(
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=10,
    classifier_activation="softmax",
    memory_efficient=False,
    name="irevnet_cifar",
    **kwargs,
):
    """The CIFAR-10 i-RevNet of the authors' code ("i-RevNet 163", injective), preset "cifar".

    Blocks (18, 18, 18), strides (1, 2, 2), channels (16, 64, 256), no initial psi, dropout
    0.1. The first block pads the 3 input channels to 32 (injective); Phi(x) of a 32x32x3
    image is 8x8x512. 6,274,826 trainable parameters with 10 classes.
    """
    return _from_preset("cifar", locals())

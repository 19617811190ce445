"""The named i-RevNet architectures: one registry for the library, its constructors and every
program (`--model=NAME`). The configurations and their parameter counts are explained in
docs/reference.md, "Configurations"."""

import dataclasses

from keras_irevnet.models.checks import downsampling_factor


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named architecture and what it is made for.

    Attributes:
        name: the name `IRevNet.from_preset` and the programs' `--model` take.
        description: one line for listings.
        architecture: the `IRevNet` arguments that fix the network (blocks, strides,
            channels, init_ds, mult, dropout).
        input_shape: the image shape it is built for by default.
        classes: the number of classes of its dataset.
        preprocessing: the `kir.preprocess_input` mode of the images it was made for, or None
            (the digits pipeline normalises its own way).
    """

    name: str
    description: str
    architecture: dict
    input_shape: tuple
    classes: int
    preprocessing: str = None

    @property
    def total_downsampling(self):
        """Factor by which image height and width must be divisible."""
        return downsampling_factor(self.architecture["init_ds"], self.architecture["strides"])


PRESETS = {
    preset.name: preset
    for preset in (
        Preset(
            "tiny",
            "psi(2), two stages of two bijective blocks: seconds on a CPU (the digits demo)",
            dict(blocks=(2, 2), strides=(1, 2), channels=(6, 24), init_ds=2, mult=1, dropout=0.0),
            input_shape=(16, 16, 3),
            classes=10,
        ),
        Preset(
            "cifar",
            "the authors' CIFAR-10 i-RevNet ('i-RevNet 163', injective), 6.3M parameters",
            dict(
                blocks=(18, 18, 18),
                strides=(1, 2, 2),
                channels=(16, 64, 256),
                init_ds=0,
                mult=4,
                dropout=0.1,
            ),
            input_shape=(32, 32, 3),
            classes=10,
            preprocessing="cifar",
        ),
        Preset(
            "bijective",
            "the authors' ImageNet i-RevNet (the paper's (b), 'i-RevNet 301'), 125M parameters",
            dict(
                blocks=(6, 16, 72, 6),
                strides=(2, 2, 2, 2),
                channels=(24, 96, 384, 1536),
                init_ds=2,
                mult=4,
                dropout=0.0,
            ),
            input_shape=(224, 224, 3),
            classes=1000,
            preprocessing="imagenet",
        ),
        Preset(
            "injective",
            "an injective ImageNet i-RevNet near the paper's (a), 182M parameters",
            dict(
                blocks=(6, 16, 72, 6),
                strides=(1, 2, 2, 2),
                channels=(29, 116, 464, 1856),
                init_ds=2,
                mult=4,
                dropout=0.0,
            ),
            input_shape=(224, 224, 3),
            classes=1000,
            preprocessing="imagenet",
        ),
    )
}


def get_preset(name):
    """The `Preset` called `name`; a ValueError listing the names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"Unknown i-RevNet preset {name!r}; expected one of {', '.join(PRESETS)}.")
    return PRESETS[name]

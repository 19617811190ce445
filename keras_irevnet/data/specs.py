"""What the training program needs to know about each dataset, without touching its files."""

import dataclasses

DIGITS = "digits"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset the pipelines support.

    Attributes:
        name: the name `make_dataset` takes (a tfds name, or "digits").
        classes: number of classes.
        train_split / eval_split: the split names used for training and for validation.
        default_image_size: the side of the square images fed to the model by default.
        kind: which preprocessing family applies ("imagenet", "cifar" or "digits").
        needs_manual_dir: whether tfds builds it from archives the user downloads by hand.
    """

    name: str
    classes: int
    train_split: str
    eval_split: str
    default_image_size: int
    kind: str
    needs_manual_dir: bool = False


SPECS = {
    spec.name: spec
    for spec in (
        DatasetSpec(DIGITS, 10, "train", "test", 16, "digits"),
        DatasetSpec("cifar10", 10, "train", "test", 32, "cifar"),
        DatasetSpec("cifar100", 100, "train", "test", 32, "cifar"),
        DatasetSpec(
            "imagenet2012", 1000, "train", "validation", 224, "imagenet", needs_manual_dir=True
        ),
    )
}


def dataset_spec(name):
    """The `DatasetSpec` of `name`; a ValueError listing the known names otherwise."""
    if name not in SPECS:
        raise ValueError(
            f"Unknown dataset {name!r}; expected one of {', '.join(sorted(SPECS))} "
            f"({DIGITS!r} is the offline default that ships with scikit-learn)."
        )
    return SPECS[name]

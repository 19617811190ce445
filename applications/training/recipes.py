"""The training recipe of each dataset (docs/reference.md, "Training recipes") and the
--schedule syntax."""

import dataclasses

from keras_irevnet.models.presets import get_preset


def check_image_size(model, image_size):
    """ValueError when --model cannot take square images of side --image_size."""
    try:
        factor = get_preset(model).total_downsampling
    except ValueError as error:
        raise ValueError(f"--model: {error}") from None
    if image_size < factor or image_size % factor:
        below = image_size // factor * factor
        nearest = " or ".join(str(s) for s in (below, below + factor) if s >= factor)
        raise ValueError(
            f"--image_size={image_size} does not fit --model={model}: its side must be a "
            f"multiple of the model's total downsampling {factor}; try {nearest}."
        )


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Training defaults of a dataset."""

    model: str
    batch_size: int
    epochs: int
    weight_decay: float
    schedule: str  # what --schedule=auto means


RECIPES = {
    # The CIFAR recipe, scaled to a dataset that is learnt in a few epochs.
    "digits": Recipe("tiny", 64, 15, 5e-4, "epochs:0.3,0.6,0.8:0.2"),
    "cifar10": Recipe("cifar", 128, 200, 5e-4, "epochs:60,120,160:0.2"),
    "cifar100": Recipe("cifar", 128, 200, 5e-4, "epochs:60,120,160:0.2"),
    # The authors' code: /10 every 32 epochs, 128 epochs, batch 256.
    "imagenet2012": Recipe("bijective", 256, 128, 1e-4, "epochs:32,64,96:0.1"),
}

SCHEDULE_HELP = (
    "Step learning-rate schedule: 'auto' (the dataset's recipe: imagenet2012 /10 at epochs "
    "32, 64, 96; cifar x0.2 at epochs 60, 120, 160; digits x0.2 at 30, 60, 80 %% of "
    "--epochs), 'constant', or 'UNIT:B1,B2,...:FACTOR' with UNIT 'epochs' or 'steps' and "
    "the learning rate multiplied by FACTOR at each boundary Bi; boundaries below 1 are "
    "fractions of the training length, e.g. 'steps:160000,320000,480000:0.1' (the paper's "
    "ImageNet schedule) or 'epochs:0.5,0.75:0.1'."
).replace("%%", "%")


def parse_schedule(text, dataset, epochs, steps_per_epoch):
    """--schedule -> (boundaries in optimizer steps, multiplier per boundary).

    Raises ValueError naming the flag and the expected syntax.
    """
    if text == "auto":
        text = RECIPES[dataset].schedule
    if text == "constant":
        return (), 1.0
    parts = text.split(":")
    try:
        unit, boundaries, factor = parts
        values = [float(b) for b in boundaries.split(",") if b.strip()]
        factor = float(factor)
    except ValueError:
        raise ValueError(f"--schedule={text!r} is not understood. {SCHEDULE_HELP}") from None
    if unit not in ("epochs", "steps") or not values or factor <= 0:
        raise ValueError(f"--schedule={text!r} is not understood. {SCHEDULE_HELP}")
    total = epochs if unit == "epochs" else epochs * steps_per_epoch
    values = [v * total if v < 1 else v for v in values]
    per_unit = steps_per_epoch if unit == "epochs" else 1
    steps = tuple(int(round(v * per_unit)) for v in values)
    if list(steps) != sorted(steps):
        raise ValueError(f"--schedule={text!r}: the boundaries must increase, got {steps}.")
    # Fractions of a very short run may round to the same step: the factors then compound.
    return steps, factor


def learning_rate_schedule(base, boundaries, factor):
    """A keras step schedule (serialisable, driven by optimizer.iterations, so it resumes)."""
    import keras

    if not boundaries:
        return base
    unique = sorted(set(boundaries))
    # After boundary b the rate is base * factor ** (how many boundaries are <= b).
    values = [base] + [base * factor ** sum(1 for x in boundaries if x <= b) for b in unique]
    return keras.optimizers.schedules.PiecewiseConstantDecay(unique, values)

"""Photos from files, prepared as the authors' evaluation prepares them."""

import os

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_image(path, size):
    """The RGB pixels (float32 in [0, 255]) of the photo `path`, as the reference evaluates:
    shorter side resized to size * 256 / 224, then the central size x size crop (32x32, for
    CIFAR models: resized to size x size directly).

    Raises:
        ValueError: one line naming `path` when it is missing or not an image.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    height, width = size
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise ValueError(f"{path!r}: no such file.") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path!r} is not an image PIL can read ({error}).") from None
    with image:
        image = image.convert("RGB")
        if (height, width) == (32, 32):
            return np.asarray(image.resize((width, height), Image.BILINEAR), dtype="float32")
        scale = max(height, width) * 256 / 224 / min(image.size)
        resized = image.resize(
            (max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale))),
            Image.BILINEAR,
        )
        left = (resized.size[0] - width) // 2
        top = (resized.size[1] - height) // 2
        cropped = resized.crop((left, top, left + width, top + height))
        return np.asarray(cropped, dtype="float32")


def image_files(directory):
    """The image files of `directory` (by extension), sorted by name."""
    return sorted(
        os.path.join(directory, name)
        for name in os.listdir(directory)
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )

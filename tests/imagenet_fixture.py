"""A miniature ILSVRC2012 manual_dir in the true archive layout, from real photos.

ILSVRC2012_img_train.tar holds one tar per synset (`n01751748.tar`), each of JPEGs named
`n01751748_<i>.JPEG`; ILSVRC2012_img_val.tar holds `ILSVRC2012_val_<8 digits>.JPEG`. tfds'
imagenet2012 builder labels the validation images by zipping their sorted names with its own
validation_labels.txt, so the miniature validation images take the first lines of that file;
the training synsets are those same synsets (names checked against tfds' labels.txt).
"""

import io
import os
import tarfile

import numpy as np

VAL_IMAGES = 4
IMAGES_PER_SYNSET = 4


def _photos():
    from skimage import data

    # Real photos of different sizes and aspect ratios (RGB uint8).
    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]


def _jpeg(pixels, height, width):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((width, height), Image.BILINEAR).save(
        buffer, format="JPEG", quality=90
    )
    return buffer.getvalue()


def _add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def tfds_label_files():
    """(the 1000 synsets in label order, the 50000 validation synsets) from tfds itself."""
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

    with open(imagenet_common.label_names_file()) as f:
        synsets = f.read().split()
    path = os.fspath(imagenet_common.tfds.core.tfds_path(imagenet_common._VALIDATION_LABELS_FNAME))
    with open(path) as f:
        validation = f.read().split()
    return synsets, validation


def write_manual_dir(directory):
    """Writes the two archives into `directory`; returns {split: [(file, synset), ...]}."""
    synsets, validation_synsets = tfds_label_files()
    val_synsets = validation_synsets[:VAL_IMAGES]
    train_synsets = sorted(set(val_synsets))
    assert all(s in synsets for s in train_synsets)
    photos = _photos()
    rng = np.random.RandomState(0)
    os.makedirs(directory, exist_ok=True)
    written = {"train": [], "validation": []}
    with tarfile.open(os.path.join(directory, "ILSVRC2012_img_train.tar"), "w") as outer:
        for k, synset in enumerate(train_synsets):
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for i in range(IMAGES_PER_SYNSET):
                    photo = photos[(k + i) % len(photos)]
                    height, width = rng.randint(40, 72, size=2)
                    name = f"{synset}_{i + 1}.JPEG"
                    _add(inner, name, _jpeg(photo, height, width))
                    written["train"].append((name, synset))
            _add(outer, f"{synset}.tar", inner_bytes.getvalue())
    with tarfile.open(os.path.join(directory, "ILSVRC2012_img_val.tar"), "w") as tar:
        for i, synset in enumerate(val_synsets):
            name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
            _add(tar, name, _jpeg(photos[i % len(photos)], 48 + 8 * i, 64))
            written["validation"].append((name, synset))
    return written

"""Per-image tf.data transforms: the training augmentations and evaluation crops.

Every random transform is a stateless op driven by an explicit seed pair (one per image, drawn
by the pipeline from `tf.data.Dataset.random`), so a pipeline with a seed yields the same
augmented images in the same order on every run, and different ones in each epoch.
"""

import tensorflow as tf

from keras_irevnet.preprocessing import NORMALIZATION

# ColorJitter(0.87, 0.5, 0.5, 0.2) of the reference, read as brightness, contrast, saturation,
# hue (docs/reference.md, "Training recipes"); torchvision's factor ranges are [1 - b, 1 + b]
# (clipped at 0).
COLOR_JITTER = dict(brightness=0.87, contrast=0.5, saturation=0.5, hue=0.2)
# Random resized crop of the reference (torchvision defaults).
CROP_AREA = (0.08, 1.0)
CROP_ASPECT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Evaluation: resize the shorter side to 256 and take the central 224 (for 224 outputs).
EVAL_RESIZE_RATIO = 256.0 / 224.0


def split_seed(seed, count):
    """`count` independent stateless seed pairs from one (int64 [2]) seed pair."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=count))


def normalize(image, mode):
    """float32 pixels in [0, 1] -> (x - mean) / std with the statistics of `mode`."""
    mean, std = NORMALIZATION[mode]
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


# --- ImageNet: JPEG bytes in, never decoding more of the image than the crop needs ---


def imagenet_train(jpeg, size, seed):
    """Random resized crop (area 8-100 %, aspect 3/4-4/3) decoded from the JPEG bytes,
    resized to `size`, random horizontal flip, colour jitter; float32 in [0, 1]."""
    crop_seed, flip_seed, jitter_seed = split_seed(seed, 3)
    shape = tf.image.extract_jpeg_shape(jpeg)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=crop_seed,
        min_object_covered=CROP_AREA[0],
        aspect_ratio_range=CROP_ASPECT_RATIO,
        area_range=CROP_AREA,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(crop_size)
    window = tf.stack([offset_y, offset_x, height, width])
    image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
    image = _resize(image, size)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return color_jitter(image, jitter_seed)


def imagenet_eval(jpeg, size):
    """The central crop that "resize the shorter side to size * 256 / 224, crop size x size"
    keeps, decoded from the JPEG bytes and resized to `size`; float32 in [0, 1]."""
    shape = tf.image.extract_jpeg_shape(jpeg)
    height, width = shape[0], shape[1]
    crop = tf.cast(
        tf.round(tf.cast(tf.minimum(height, width), tf.float32) / EVAL_RESIZE_RATIO), tf.int32
    )
    window = tf.stack([(height - crop + 1) // 2, (width - crop + 1) // 2, crop, crop])
    image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
    return _resize(image, size)


def color_jitter(image, seed):
    """Brightness, contrast, saturation and hue jitter of torchvision's ColorJitter(0.87, 0.5,
    0.5, 0.2), applied in that fixed order (torchvision shuffles the order per image)."""
    seeds = split_seed(seed, 4)
    b, c, s, h = (COLOR_JITTER[k] for k in ("brightness", "contrast", "saturation", "hue"))
    image = image * tf.random.stateless_uniform([], seeds[0], max(0.0, 1.0 - b), 1.0 + b)
    image = tf.clip_by_value(image, 0.0, 1.0)
    image = tf.image.adjust_contrast(image, tf.random.stateless_uniform([], seeds[1], 1 - c, 1 + c))
    image = tf.clip_by_value(image, 0.0, 1.0)
    image = tf.image.adjust_saturation(
        image, tf.random.stateless_uniform([], seeds[2], 1 - s, 1 + s)
    )
    image = tf.image.adjust_hue(image, tf.random.stateless_uniform([], seeds[3], -h, h))
    return tf.clip_by_value(image, 0.0, 1.0)


# --- CIFAR and digits: small uint8 images held whole ---


def padded_random_crop(image, padding, seed):
    """Zero-pad by `padding` pixels on each side, then crop back to the original size at a
    random offset (torchvision's RandomCrop(size, padding=padding))."""
    height, width, channels = image.shape
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    return tf.image.stateless_random_crop(padded, [height, width, channels], seed)


def small_image(image, size):
    """uint8 pixels -> float32 in [0, 1], resized to size x size (bilinear) if needed."""
    image = tf.cast(image, tf.float32) / 255.0
    if image.shape[0] != size or image.shape[1] != size:
        image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    return image


def _resize(image, size):
    image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    return tf.clip_by_value(image / 255.0, 0.0, 1.0)

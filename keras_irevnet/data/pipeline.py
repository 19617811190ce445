"""`make_dataset`: batched tf.data pipelines of (normalised images, labels) for `model.fit`.

The same pipeline feeds all three Keras backends (Keras converts tf.data batches to JAX
arrays or torch tensors). `batch_size` is the global batch: under a tf.distribute strategy
or a keras.distribution, Keras splits each batch over the replicas, so it must divide by the
number of replicas, and training batches are all full (drop_remainder) so that it always does.
"""

import dataclasses

import tensorflow as tf

from keras_irevnet.data import augment, digits, tfds_source
from keras_irevnet.data.specs import DIGITS, dataset_spec

# Images held in the shuffle buffer: a window over the (file-shuffled) tfds records.
SHUFFLE_BUFFER = {"imagenet": 10_000, "cifar": 50_000, "digits": digits.NUM_TRAIN}


@dataclasses.dataclass(frozen=True)
class Split:
    """A pipeline and what the training program needs to know about it."""

    dataset: tf.data.Dataset
    num_examples: int
    steps: int  # batches in one pass (full batches only for training)
    classes: int
    image_size: int


def make_dataset(
    name,
    split,
    batch_size,
    *,
    image_size=None,
    training=None,
    seed=None,
    deterministic=None,
    repeat=None,
    num_replicas=1,
    data_dir=None,
    manual_dir=None,
    prepare=True,
    start_step=0,
    shard=None,
):
    """A batched, prefetched tf.data pipeline of one split of a dataset.

    Args:
        name: "digits" (scikit-learn's digits, offline), "cifar10", "cifar100" or
            "imagenet2012" (tfds; built from the archives in `manual_dir`).
        split: "train" or "validation" (the dataset's held-out split: "test" for CIFAR and
            digits, "validation" for ImageNet), or any tfds split string.
        batch_size: the global batch size (all replicas together).
        image_size: side of the square output images; defaults to the dataset's own
            (digits 16, CIFAR 32, ImageNet 224).
        training: augment, shuffle, drop the last partial batch; defaults to
            `split == "train"`.
        seed: seeds shuffling and augmentation; None for fresh randomness each run. Every
            pass over the data is shuffled and augmented afresh, and the batches are a
            function of the seed alone: the same whichever iterator reads them, however
            often the dataset was iterated before. With a seed, tfds' file order is fixed
            by it (the examples are reshuffled every pass through a buffer of 10,000 for
            ImageNet, the whole split for CIFAR).
        deterministic: keep the element order fixed despite parallel map / interleave
            (slightly slower). Defaults to True when a seed is given: a seeded pipeline then
            yields the same batches on every run.
        repeat: repeat forever (for `fit` with `steps_per_epoch`); defaults to `training`.
        num_replicas: replicas the global batch is split over; `batch_size` must divide.
        data_dir: tfds data directory (default ~/tensorflow_datasets).
        manual_dir: where tfds finds hand-downloaded archives (ImageNet); default
            <data_dir>/downloads/manual.
        prepare: check that the dataset is prepared or preparable (ImageNet: the archives
            are in the manual_dir) and run tfds' download_and_prepare when it is not prepared
            yet. False reads what tfds has (or what `tfds.testing.mock_data` provides).
        start_step: global batches a training run has already consumed: the pipeline starts
            where that run's stopped, so a resumed run sees exactly the batches an
            uninterrupted one would (with a `seed`; the skipped images are read, not decoded).
        shard: (i, W) when each of W workers of a multi-worker strategy reads its own
            pipeline: worker i keeps the i-th contiguous W-th of every global batch and decodes
            only those images, so together the workers train on exactly the global batches of
            a one-process run. The batches stay global-sized for Keras (TensorFlow's
            distribution splits them into per-replica batches; its own sharding is turned
            off).

    Returns:
        A `Split`: `dataset` yields (float32 images (batch, size, size, 3), int64 labels).
    """
    spec = dataset_spec(name)
    split = _resolve_split(spec, split)
    training = split == spec.train_split if training is None else training
    repeat = training if repeat is None else repeat
    image_size = spec.default_image_size if image_size is None else int(image_size)
    check_batch_size(batch_size, num_replicas)
    if not isinstance(start_step, int) or start_step < 0:
        raise ValueError(f"start_step must be a non-negative integer, got {start_step!r}.")
    if start_step and not (training and repeat):
        raise ValueError("start_step applies to repeated training pipelines only.")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}.")
    deterministic = seed is not None if deterministic is None else bool(deterministic)
    _keep_tensorflow_off_gpus()
    # One seed stream per role, so training and evaluation never share random numbers.
    stream_seed = _stream_seed(seed, 1 if training else 2)

    if spec.name == DIGITS:
        images, labels = digits.load_digits_split(split)
        count = len(labels)
        dataset = tf.data.Dataset.from_tensor_slices((images[..., None], labels))
    else:
        if prepare:
            builder = tfds_source.check_prepared_or_preparable(spec, [split], data_dir, manual_dir)
            tfds_source.prepare(builder, manual_dir)
        else:
            builder = tfds_source.get_builder(spec.name, data_dir)
        dataset = tfds_source.read_split(
            builder,
            split,
            encoded_images=spec.kind == "imagenet",
            shuffle_files=training,
            seed=seed,
        )
        count = tfds_source.num_examples(builder, split, dataset)

    dataset = _passes(
        dataset,
        count,
        stream_seed,
        shuffle_buffer=training and min(SHUFFLE_BUFFER[spec.kind], count),
        repeat=repeat,
    )
    # Positioning and sharding act on the undecoded stream: cheap, and the same elements in
    # the same order as a run that never stopped or ran in one process.
    dataset = dataset.skip(start_step * batch_size)
    if shard is not None:
        dataset = _take_share(dataset, batch_size, *shard)
    transform = _transform(spec.kind, image_size, training)
    dataset = dataset.map(
        lambda example, pair: transform(example[0], example[1], pair),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    dataset = dataset.batch(batch_size, drop_remainder=training)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    if shard is not None:
        # The share is taken above; TensorFlow must not shard it again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    dataset = dataset.with_options(options)
    # Training, and shares of batches, keep full batches only.
    steps = count // batch_size if training or shard else -(-count // batch_size)
    return Split(dataset, count, steps, spec.classes, image_size)


def _take_share(dataset, batch_size, index, count):
    """Worker `index` of `count` keeps elements [i*B/W, (i+1)*B/W) of every global batch."""
    if batch_size % count:
        raise ValueError(
            f"batch_size {batch_size} is the global batch and must divide evenly over the "
            f"{count} workers."
        )
    dataset = dataset.batch(batch_size // count, drop_remainder=True)
    return dataset.shard(count, index).unbatch()


def first_images(dataset, count):
    """The images of the first batches of `dataset` ((images, labels) batches), `count` at
    most, as one NumPy array: a fixed sample of a split (evaluation order is fixed)."""
    import numpy as np

    images, held = [], 0
    for x, _ in dataset:
        images.append(np.asarray(x))
        held += len(images[-1])
        if held >= count:
            break
    if not images:
        raise ValueError("the dataset yielded no images.")
    return np.concatenate(images)[:count]


def check_batch_size(batch_size, num_replicas):
    """ValueError unless the global batch is a positive multiple of the replica count."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if batch_size % num_replicas:
        raise ValueError(
            f"batch_size {batch_size} is the global batch and must divide evenly over the "
            f"{num_replicas} replicas; use a multiple of {num_replicas} "
            f"(e.g. {num_replicas * max(1, round(batch_size / num_replicas))})."
        )


def _keep_tensorflow_off_gpus():
    # On JAX / torch, TensorFlow only runs the input pipeline; left alone it would also
    # reserve most of every GPU's memory for itself.
    import keras

    if keras.backend.backend() == "tensorflow":
        return
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised its devices; nothing to change any more
        pass


def _resolve_split(spec, split):
    if split == "validation":
        return spec.eval_split
    if spec.name == DIGITS and split not in ("train", "test"):
        raise ValueError(f"digits has the splits 'train' and 'validation', got {split!r}.")
    return split


def _stream_seed(seed, stream):
    """A 31-bit seed for one role of a pipeline (1 training, 2 evaluation); drawn at random
    when `seed` is None."""
    if seed is None:
        import secrets

        return secrets.randbelow(2**31)
    return (int(seed) * 2 + stream) % (2**31)


def _passes(source, count, stream_seed, shuffle_buffer, repeat):
    """(element, seed pair) of `source`, shuffled afresh in every pass when `shuffle_buffer`.

    The order is a pure function of `stream_seed` and the pass number, and element i of the
    stream gets the seed pair (stream_seed, i) for the stateless augmentations. tf.data's
    reshuffling advances a random generator created with the dataset and shared by all its
    iterators, so the batches would depend on how often the dataset had been iterated
    before (Keras opens an iterator just to peek at a batch when it builds a model's
    metrics), and a resumed run would not see the batches of an uninterrupted one. Built
    inside `flat_map`, the shuffle gets a new generator with every iterator instead.
    """

    def stream(_):
        elements = source
        if shuffle_buffer:
            elements = elements.shuffle(
                shuffle_buffer, seed=stream_seed, reshuffle_each_iteration=True
            )
        if repeat:
            elements = elements.repeat()
        pairs = tf.data.Dataset.counter().map(
            lambda i: tf.stack([tf.constant(stream_seed, tf.int64), i])
        )
        return tf.data.Dataset.zip((elements, pairs))

    if not shuffle_buffer:  # nothing random: no generator to keep apart
        return stream(None)
    # flat_map hides the cardinality, which Keras reads (infinite: keep one iterator over
    # the epochs; finite: progress bars and evaluation steps).
    cardinality = tf.data.INFINITE_CARDINALITY if repeat else count
    return (
        tf.data.Dataset.range(1)
        .flat_map(stream)
        .apply(tf.data.experimental.assert_cardinality(cardinality))
    )


def _transform(kind, size, training):
    """(image, label, seed pair) -> (normalised float32 image, int64 label)."""

    def imagenet(image, label, seed):
        if training:
            image = augment.imagenet_train(image, size, seed)
        else:
            image = augment.imagenet_eval(image, size)
        return augment.normalize(image, "imagenet"), tf.cast(label, tf.int64)

    def cifar(image, label, seed):
        image = augment.small_image(image, size)
        if training:
            crop_seed, flip_seed = augment.split_seed(seed, 2)
            # The reference pads 4 pixels at 32x32: keep that fraction of the side.
            image = augment.padded_random_crop(image, max(1, round(size / 8)), crop_seed)
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return augment.normalize(image, "cifar"), tf.cast(label, tf.int64)

    def digit(image, label, seed):
        image = augment.small_image(image, size)
        if training:
            # Shift by up to one original pixel; no flips, digits are not mirror-symmetric.
            image = augment.padded_random_crop(image, max(1, round(size / 8)), seed)
        image = (image - digits.MEAN) / digits.STD
        # Grey -> RGB, so every model (made for 3-channel photos) accepts it.
        return tf.tile(image, [1, 1, 3]), tf.cast(label, tf.int64)

    return {"imagenet": imagenet, "cifar": cifar, "digits": digit}[kind]

"""Reading tensorflow-datasets builders, and the checks that run before any slow work."""

import os

# The archives the imagenet2012 builder reads from its manual_dir (see tfds'
# datasets/imagenet2012/imagenet2012_dataset_builder.py); validation labels come from the
# label file shipped inside tfds, matched to the sorted file names of the validation archive.
IMAGENET_ARCHIVES = {"train": "ILSVRC2012_img_train.tar", "validation": "ILSVRC2012_img_val.tar"}


def get_builder(name, data_dir=None):
    """`tfds.builder(name, data_dir=data_dir)`."""
    import tensorflow_datasets as tfds

    return tfds.builder(name, data_dir=data_dir)


def default_manual_dir(builder):
    """Where tfds looks for hand-downloaded archives: <data_dir>/downloads/manual."""
    return os.path.join(builder.data_dir_root, "downloads", "manual")


def check_prepared_or_preparable(spec, splits, data_dir=None, manual_dir=None):
    """Raises FileNotFoundError, naming the missing file and where tfds looks for it, when
    the dataset is neither prepared in `data_dir` nor preparable from `manual_dir`.

    Cheap: looks at file names only. Datasets tfds downloads itself (cifar10, ...) pass.
    """
    builder = get_builder(spec.name, data_dir)
    if builder.is_prepared() or not spec.needs_manual_dir:
        return builder
    manual_dir = manual_dir or default_manual_dir(builder)
    for split in splits:
        if split not in IMAGENET_ARCHIVES:
            continue  # e.g. "test": tfds itself reports its archive
        archive = os.path.join(manual_dir, IMAGENET_ARCHIVES[split])
        if not os.path.isfile(archive):
            raise FileNotFoundError(
                f"{spec.name} is not prepared in {builder.data_dir} and its {split} archive "
                f"{IMAGENET_ARCHIVES[split]} is missing: tfds looks for {archive} (the "
                f"manual_dir; default <data_dir>/downloads/manual). Download "
                f"{', '.join(IMAGENET_ARCHIVES.values())} from https://image-net.org and put "
                "them there, or pass their directory as manual_dir (--manual_dir)."
            )
    return builder


def prepare(builder, manual_dir=None):
    """Runs tfds' download_and_prepare (a no-op when already prepared)."""
    import tensorflow_datasets as tfds

    if builder.is_prepared():
        return
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=config)


def read_split(builder, split, *, encoded_images, shuffle_files, seed):
    """(images, labels) dataset of one split, images as JPEG bytes when `encoded_images`."""
    import tensorflow_datasets as tfds

    decoders = {"image": tfds.decode.SkipDecoding()} if encoded_images else None
    # With a seed the file order is fixed by it, the same in every pass (a reshuffle would
    # depend on how often the dataset had been iterated, see pipeline._passes); the examples
    # are still reshuffled every pass through the shuffle buffer.
    read_config = tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=seed is None)
    dataset = builder.as_dataset(
        split=split,
        decoders=decoders,
        shuffle_files=shuffle_files,
        read_config=read_config,
    )
    return dataset.map(lambda example: (example["image"], example["label"]))


def num_examples(builder, split, dataset):
    """The number of examples in `split`: the dataset's cardinality (tfds asserts it), else
    what tfds recorded when preparing."""
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    return builder.info.splits[split].num_examples

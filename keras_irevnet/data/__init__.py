"""tf.data input pipelines for training and evaluating i-RevNets with `model.fit`.

    from keras_irevnet import data
    train = data.make_dataset("digits", "train", batch_size=64, seed=0)
    model.fit(train.dataset, steps_per_epoch=train.steps, epochs=...)

Datasets: "digits" (scikit-learn, offline), "cifar10", "cifar100" (tfds), "imagenet2012"
(tfds, built from the ILSVRC2012 archives in a manual_dir). TensorFlow is needed for the
pipelines on every Keras backend.
"""

from keras_irevnet.data.pipeline import Split, check_batch_size, first_images, make_dataset
from keras_irevnet.data.specs import SPECS, DatasetSpec, dataset_spec
from keras_irevnet.data.tfds_source import IMAGENET_ARCHIVES, check_prepared_or_preparable

__all__ = [
    "SPECS",
    "IMAGENET_ARCHIVES",
    "DatasetSpec",
    "Split",
    "check_batch_size",
    "check_prepared_or_preparable",
    "dataset_spec",
    "first_images",
    "make_dataset",
]

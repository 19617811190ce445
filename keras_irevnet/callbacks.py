"""Keras callbacks for training i-RevNets."""

import os

import keras
import numpy as np

from keras_irevnet.analysis.inversion import reconstruct, reconstruction_error


class InversionMonitor(keras.callbacks.Callback):
    """Measures, at each validation, how exactly the model still inverts a fixed batch.

    An i-RevNet is invertible by construction, but what the inverse reproduces in floating
    point depends on training: mixed precision, or a BatchNorm whose learnt variance of a
    zero-padded channel approaches 0, can make `inverse(features(x))` drift from `x`. This
    callback makes that visible while the run goes on: after every epoch that ran validation
    it computes ||x - inverse(features(x))|| / ||x|| (inference mode, float64 norms) on the
    same images and adds it to the epoch's logs as `val_inverse_rel_error`, so it appears in
    the `History`, in CSV logs and, with `keras.callbacks.TensorBoard` placed after this
    callback, as the validation scalar `epoch_inverse_rel_error`. With `log_dir` it also
    writes a few originals, reconstructions and their differences as TensorBoard images
    (run "inversion").

    Args:
        images: the fixed batch, preprocessed as for training (NumPy or tensor).
        log_dir: TensorBoard log directory for the images; None writes none.
        num_shown: how many of the images to show.
        every_epoch: measure after every epoch, not only those with validation.
        batch_size: images per forward / inverse pass.
    """

    def __init__(self, images, log_dir=None, num_shown=4, every_epoch=False, batch_size=32):
        super().__init__()
        self.images = np.asarray(keras.ops.convert_to_numpy(images))
        if self.images.ndim != 4 or not len(self.images):
            raise ValueError(
                "InversionMonitor: `images` must be a non-empty batch (N, H, W, C), got "
                f"shape {self.images.shape}."
            )
        self.log_dir = log_dir
        self.num_shown = min(num_shown, len(self.images))
        self.every_epoch = every_epoch
        self.batch_size = batch_size
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not (self.every_epoch or any(k.startswith("val_") for k in logs)):
            return
        x = self.images.astype(self.model.compute_dtype)
        error = reconstruction_error(self.model, x, batch_size=self.batch_size)["rel_error"]
        logs["val_inverse_rel_error"] = error
        if self.log_dir and self.num_shown:
            shown = x[: self.num_shown]
            self._write_images(epoch, shown, reconstruct(self.model, shown), error)

    def _write_images(self, epoch, originals, reconstructions, error):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "inversion"))
        with self._writer.as_default():
            tf.summary.image(
                "original | inverse(features(x)) | difference",
                _side_by_side(originals, reconstructions),
                step=epoch,
                max_outputs=self.num_shown,
                description=f"relative error {error:.3e} over the monitored batch; the "
                "difference is scaled to its own maximum.",
            )
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _side_by_side(originals, reconstructions):
    """RGB images in [0, 1]: original, reconstruction (same scale), |difference| (own scale)."""
    originals = originals.astype("float32")
    reconstructions = reconstructions.astype("float32")
    low = originals.min(axis=(1, 2, 3), keepdims=True)
    span = np.maximum(originals.max(axis=(1, 2, 3), keepdims=True) - low, 1e-12)
    difference = np.abs(reconstructions - originals)
    difference /= np.maximum(difference.max(axis=(1, 2, 3), keepdims=True), 1e-30)
    panels = [
        np.clip((originals - low) / span, 0, 1),
        np.clip((reconstructions - low) / span, 0, 1),
        difference,
    ]
    if originals.shape[-1] == 1:
        panels = [np.repeat(p, 3, axis=-1) for p in panels]
    return np.concatenate([p[..., :3] for p in panels], axis=2)

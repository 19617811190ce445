"""The optimizer's slot variables in the memory layout of the weights they follow (torch)."""

import keras

from keras_irevnet.layers import convolution


class TorchOptimizerLayout:
    """Mixin for a `keras.Model`: on torch, before its train step runs, the optimizer's
    slot variables of the convolution kernels take the kernels' memory layout
    (`keras_irevnet.layers.convolution.match_optimizer_layouts`). Elsewhere nothing changes.

    Keras builds the optimizer just before it makes the train function (`fit`,
    `train_on_batch`); the layouts are matched once per optimizer and set of slots.
    """

    def make_train_function(self, force=False):
        optimizer = getattr(self, "optimizer", None)
        if keras.backend.backend() == "torch" and optimizer is not None and optimizer.built:
            key = (id(optimizer), len(optimizer.variables))
            if key != getattr(self, "_optimizer_layout_key", None):
                convolution.match_optimizer_layouts(optimizer, self.trainable_variables)
                self._optimizer_layout_key = key
        return super().make_train_function(force=force)

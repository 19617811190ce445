"""Stopping a diverging run at once, with a message that says where and what to try."""

import keras


class TrainingDiverged(RuntimeError):
    """The loss (or the weights) stopped being finite; nothing was saved after that point."""


def where(step, steps_per_epoch):
    """'step 7 (epoch 2, step 3 of 4)' for the 7th global step."""
    epoch, in_epoch = divmod(step - 1, steps_per_epoch)
    return f"step {step} (epoch {epoch + 1}, step {in_epoch + 1} of {steps_per_epoch})"


class StopOnDivergence(keras.callbacks.TerminateOnNaN):
    """Keras' `TerminateOnNaN(raise_error=True)` with a message a user can act on.

    Raising stops `fit` inside the step that diverged: no validation of the broken model, no
    end-of-epoch checkpoint of NaN weights (callbacks after this one do not run for that
    step), and the program exits with an error instead of training on.

    Args:
        steps_per_epoch: the run's steps per epoch (to say where it happened).
        start_step: global steps done before this `fit` call (a resumed run).
    """

    def __init__(self, steps_per_epoch, start_step=0):
        super().__init__(raise_error=True)
        self.steps_per_epoch = steps_per_epoch
        self.step = start_step

    def on_train_batch_end(self, batch, logs=None):
        # Counted here, not from `batch`: a resumed epoch starts its batch count at 0.
        self.step += 1
        try:
            super().on_train_batch_end(batch, logs)
        except RuntimeError:
            raise TrainingDiverged(
                f"training diverged: the loss is {logs['loss']} after "
                f"{where(self.step, self.steps_per_epoch)}"
            ) from None

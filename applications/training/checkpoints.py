"""Checkpoint every epoch, resume after an interruption, keep the run's logs consistent.

A checkpoint is one file per finished epoch, `<model_dir>/checkpoints/epoch-NNNN.weights.h5`,
holding the model weights and the optimizer state (momentum, iteration count, hence the
learning-rate schedule). It is written under a temporary name and renamed, so a run killed at
any moment (SIGKILL included) leaves only complete checkpoints; the epoch number is in the
name, so weights and epoch can never disagree. A restart with the same flags loads the newest
one and continues with the next epoch: an epoch cut short is redone from its start, a finished
one is never repeated.
"""

import csv
import json
import os
import re

import keras

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^epoch-(\d{4,})\.weights\.h5$")
RUN_CONFIG = "run_config.json"


def checkpoint_path(model_dir, epoch):
    return os.path.join(model_dir, CHECKPOINT_DIR, f"epoch-{epoch:04d}.weights.h5")


def latest_checkpoint(model_dir):
    """(epoch, path) of the newest complete checkpoint, or (0, None)."""
    directory = os.path.join(model_dir, CHECKPOINT_DIR)
    found = []
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            match = _NAME.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(directory, name)))
    return max(found) if found else (0, None)


def restore(model, model_dir):
    """Loads the newest checkpoint into `model` and its optimizer; returns the epochs done.

    Call inside the strategy scope, after `compile` (the optimizer's slots are created here).
    """
    epoch, path = latest_checkpoint(model_dir)
    if path is None:
        return 0
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    return epoch


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes the checkpoint of each finished epoch atomically; keeps the newest `keep`."""

    def __init__(self, model_dir, keep=2, write=True):
        super().__init__()
        self.model_dir = model_dir
        self.keep = keep
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        if not self.write:  # a non-chief worker of a multi-worker run
            return
        final = checkpoint_path(self.model_dir, epoch + 1)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        # save_weights wants a name ending in .weights.h5; the leading "." keeps it out of
        # latest_checkpoint until the rename, which is atomic.
        partial = os.path.join(os.path.dirname(final), "." + os.path.basename(final))
        self.model.save_weights(partial, overwrite=True)
        os.replace(partial, final)
        self._prune()

    def _prune(self):
        directory = os.path.join(self.model_dir, CHECKPOINT_DIR)
        epochs = sorted(
            int(m.group(1)) for m in map(_NAME.match, os.listdir(directory)) if m
        )
        for old in epochs[: -self.keep]:
            os.remove(checkpoint_path(self.model_dir, old))


def trim_history(csv_path, epochs_done):
    """Drops rows of epochs after the checkpoint (an epoch cut short, or one whose checkpoint
    was removed), so that history.csv lists every finished epoch exactly once."""
    if not os.path.isfile(csv_path):
        return
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [row for row in body if row and int(row[0]) < epochs_done]
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows([header] + kept)


def check_run_config(model_dir, config, write=True):
    """Stores the flags that define the run; refuses to resume a run made with others.

    `config` holds the flags whose change would make the checkpoint meaningless or the
    resumed run a different experiment (dataset, model, sizes, optimisation); --epochs may
    grow between runs.
    """
    path = os.path.join(model_dir, RUN_CONFIG)
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)
        changed = {
            key: (stored.get(key), value)
            for key, value in config.items()
            if stored.get(key) != value
        }
        if changed and latest_checkpoint(model_dir)[1] is not None:
            details = "; ".join(f"--{k}: was {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"--model_dir={model_dir} holds a run made with other flags ({details}). "
                "Resume with the same flags, or pass a new --model_dir."
            )
    if write:
        os.makedirs(model_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)


def save_portable_model(model, path):
    """Saves architecture and weights as `.keras`, without compile state.

    The optimizer and metrics of training are classes of this program; a `.keras` file that
    named them would only load where `applications` is importable. The copy is uncompiled,
    so it loads anywhere with keras and keras_irevnet; the optimizer state stays in the
    checkpoints, from which this program resumes.
    """
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    copy.save(path)
    return path

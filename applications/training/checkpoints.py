"""Checkpoints inside and at the end of epochs, exact resumption, and the run's record files.

A checkpoint is one file, `<model_dir>/checkpoints/step-NNNNNNNNN.weights.h5`, named after
the global step (optimizer updates) it was taken at. Besides the weights and the optimizer
state (momentum, iteration count, hence the learning-rate schedule) that `save_weights`
stores, it holds what an exact continuation needs and Keras does not save: the epoch's
running metric sums, the dropout seed states, torch's global random state, and the history
of the finished epochs. It is written through `keras_irevnet.atomic`, so a kill at any moment
leaves complete checkpoints only, and the step is in its name, so weights and position can
never disagree.

Checkpoints are taken every `every` steps inside an epoch and at the end of each epoch (after
validation). A restart loads the newest readable one (an unreadable newest one is reported
and the one before it used) and the data pipeline continues at that step, so the resumed run
computes exactly what the uninterrupted one would have.

Why not `keras.callbacks.BackupAndRestore`: its writes replace the backup in place (a kill or
a full disk mid-write corrupts it, and weights and metadata are two files that can
disagree), it restarts an interrupted epoch from its first batch with the weights of its last
batch (the data order restarts), it does not fall back past a file that opens but is
truncated inside, and every worker of a multi-worker run writes the same files.
"""

import csv
import dataclasses
import io
import json
import os
import re
import tempfile
import warnings

import h5py
import keras
import numpy as np

from keras_irevnet import atomic
from keras_irevnet.models.weights_file import architecture_record, write_weights_file

CHECKPOINT_DIR = "checkpoints"
HISTORY_CSV = "history.csv"
_NAME = re.compile(r"^step-(\d{9})\.weights\.h5$")
# Where a checkpoint keeps what `save_weights` does not: JSON metadata and arrays.
_METADATA = "keras_irevnet_training"
_ARRAYS = "keras_irevnet_training_state"
_FORMAT = 1


class CheckpointError(ValueError):
    """No checkpoint of the run can be read."""


@dataclasses.dataclass
class TrainingState:
    """Where a run stands: what a checkpoint records besides the weights.

    Attributes:
        step: optimizer steps done (global batches consumed).
        epochs_done: epochs finished, validation included.
        history: one dict of logs per finished epoch.
        metric_values: {metric variable path: value}, the running sums of an epoch cut short
            (None at an epoch end).
        path: the checkpoint this state was read from (None for a fresh run).
    """

    step: int = 0
    epochs_done: int = 0
    history: list = dataclasses.field(default_factory=list)
    metric_values: dict = None
    path: str = None

    def position(self, steps_per_epoch):
        """(epoch index, steps of it already done)."""
        return divmod(self.step, steps_per_epoch)


def checkpoint_dir(model_dir):
    return os.path.join(model_dir, CHECKPOINT_DIR)


def checkpoint_path(model_dir, step):
    return os.path.join(checkpoint_dir(model_dir), f"step-{step:09d}.weights.h5")


def list_checkpoints(model_dir):
    """[(step, path)] of the checkpoint files, newest first (complete names only)."""
    directory = checkpoint_dir(model_dir)
    if not os.path.isdir(directory):
        return []
    found = [
        (int(match.group(1)), os.path.join(directory, name))
        for name, match in ((n, _NAME.match(n)) for n in os.listdir(directory))
        if match
    ]
    return sorted(found, reverse=True)


def latest_step(model_dir):
    """The step of the newest checkpoint file (0 if none), without reading it."""
    found = list_checkpoints(model_dir)
    return found[0][0] if found else 0


# --- State keras does not save ----------------------------------------------------------------


def _seed_states(model):
    # Dropout masks come from these SeedGenerator states; `save_weights` leaves them out.
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _torch_rng_state():
    if keras.backend.backend() != "torch":
        return None
    import torch

    # Keras' torch dropout draws masks from torch's global generator.
    return torch.get_rng_state().numpy()


def _set_torch_rng_state(value):
    if value is None or keras.backend.backend() != "torch":
        return
    import torch

    torch.set_rng_state(torch.from_numpy(np.asarray(value, dtype=np.uint8)))


def _write_extras(h5, state, metric_values, seed_values, torch_rng):
    metadata = {
        "format": _FORMAT,
        "step": state.step,
        "epochs_done": state.epochs_done,
        "history": atomic.finite_or_none(state.history),
        "metric_count": len(metric_values),
        "metric_paths": [name for name, _ in metric_values],
        "seed_count": len(seed_values),
    }
    metric_values = [value for _, value in metric_values]
    h5.attrs[_METADATA] = json.dumps(metadata)
    group = h5.create_group(_ARRAYS)
    for prefix, values in (("metric", metric_values), ("seed", seed_values)):
        for i, value in enumerate(values):
            group.create_dataset(f"{prefix}_{i}", data=np.asarray(value))
    if torch_rng is not None:
        group.create_dataset("torch_rng", data=torch_rng)


def _read_extras(path):
    with h5py.File(path, "r") as h5:
        if _METADATA not in h5.attrs:
            raise ValueError("it holds weights but no training state (not a checkpoint)")
        metadata = json.loads(h5.attrs[_METADATA])
        group = h5[_ARRAYS]
        metrics = {
            name: group[f"metric_{i}"][()] for i, name in enumerate(metadata["metric_paths"])
        }
        seeds = [group[f"seed_{i}"][()] for i in range(metadata["seed_count"])]
        torch_rng = group["torch_rng"][()] if "torch_rng" in group else None
    return metadata, metrics, seeds, torch_rng


def first_non_finite(model):
    """The path of the first model or optimizer variable holding NaN or inf, else None."""
    optimizer_variables = model.optimizer.variables if model.optimizer is not None else []
    for variable in list(model.variables) + list(optimizer_variables):
        if keras.backend.is_float_dtype(variable.dtype) and not np.all(
            np.isfinite(keras.ops.convert_to_numpy(variable))
        ):
            return variable.path
    return None


def save_checkpoint(model, model_dir, state, inside_epoch):
    """Writes the checkpoint of `state` (weights, optimizer, the rest) atomically; returns
    its path.

    `inside_epoch`: the epoch's running metric sums are kept too (at an epoch end the next
    epoch starts from zero).
    """
    path = checkpoint_path(model_dir, state.step)
    metric_values = []
    if inside_epoch:
        metric_values = [(v.path, keras.ops.convert_to_numpy(v)) for v in model.metrics_variables]
    seed_values = [keras.ops.convert_to_numpy(v) for v in _seed_states(model)]
    torch_rng = _torch_rng_state()
    with atomic.atomic_path(path) as temporary:
        # One in-memory HDF5 file, weights and training state together, written in one go.
        write_weights_file(
            model,
            temporary,
            architecture_record(model),
            add_to_file=lambda h5: _write_extras(h5, state, metric_values, seed_values, torch_rng),
        )
    return path


def load_checkpoint(model, path):
    """Loads `path` into `model` (weights, optimizer, seeds, RNG); returns its TrainingState.

    Raises ValueError (naming what is wrong) if the file cannot be read completely.
    """
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    try:
        metadata, metrics, seeds, torch_rng = _read_extras(path)
    except Exception as error:  # h5py / OSError / KeyError: truncated or damaged
        raise ValueError(_first_line(error)) from None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(path)
    except Exception as error:
        raise ValueError(_first_line(error)) from None
    for warning in caught:
        # Keras loads what fits and only warns about the rest; a resumed run without its
        # optimizer's state (momentum, step count) would not be the same run.
        if "Skipping variable loading" in str(warning.message):
            raise ValueError(f"its state does not fit this model and optimizer ({warning.message})")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    seed_variables = _seed_states(model)
    if len(seeds) == len(seed_variables):
        for variable, value in zip(seed_variables, seeds):
            variable.assign(value)
    _set_torch_rng_state(torch_rng)
    state = TrainingState(
        step=metadata["step"],
        epochs_done=metadata["epochs_done"],
        history=metadata["history"],
        metric_values=metrics or None,
        path=path,
    )
    return state


def _build_compiled_metrics(model):
    # Compiled metrics create their variables at the first training step; their sums can
    # only be restored once they exist. One update on a dummy batch builds them, and the
    # restore overwrites what it added.
    output_shape = model.output_shape
    y_pred = np.zeros((1,) + tuple(output_shape[1:]), "float32")
    model.compute_metrics(None, np.zeros((1,), "int64"), keras.ops.convert_to_tensor(y_pred))


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def restore(model, model_dir, log=print):
    """Loads the newest readable checkpoint of `model_dir`; returns its TrainingState.

    An unreadable checkpoint (truncated, damaged) is reported and the one before it tried.
    Call inside the strategy scope, after `compile`.

    Raises:
        CheckpointError: checkpoints exist but none can be read (the message names each file
            and why), so the run cannot continue without losing its progress silently.
    """
    found = list_checkpoints(model_dir)
    failures = []
    for _, path in found:
        try:
            state = load_checkpoint(model, path)
        except ValueError as error:
            failures.append((path, str(error)))
            continue
        for bad, reason in failures:
            log(
                f"Checkpoint {bad} is unreadable ({reason}); resuming from the older "
                f"{os.path.basename(path)} (step {state.step})."
            )
        return state
    if failures:
        listing = "; ".join(f"{path}: {reason}" for path, reason in failures)
        raise CheckpointError(
            f"no checkpoint in {checkpoint_dir(model_dir)} can be read ({listing}). Remove "
            f"the directory to train from the start, or pass another --model_dir."
        )
    return TrainingState()


def prune(model_dir, keep):
    """Deletes all but the newest `keep` checkpoints (and leftovers of killed writes)."""
    for _, path in list_checkpoints(model_dir)[keep:]:
        os.remove(path)


# --- The callback ------------------------------------------------------------------------------


class TrainingCheckpoint(keras.callbacks.Callback):
    """Checkpoints every `every` steps and after each epoch; keeps history.csv in step with them.

    Args:
        model_dir: the run directory.
        steps_per_epoch: the run's steps per epoch.
        state: the `TrainingState` the run starts from (a restored one when resuming).
        every: steps between checkpoints inside an epoch (0: at epoch ends only).
        keep: checkpoints kept (the newest); two, so a damaged newest one has a fallback.
        write: False on the workers of a multi-worker run that are not the chief.
    """

    def __init__(self, model_dir, steps_per_epoch, state, every, keep=2, write=True):
        super().__init__()
        self.model_dir = model_dir
        self.steps_per_epoch = steps_per_epoch
        self.state = state
        self.every = every
        self.keep = keep
        self.write = write

    def on_epoch_begin(self, epoch, logs=None):
        # Keras zeroed the metrics just before; a resumed epoch continues its running sums.
        if self.state.metric_values:
            _build_compiled_metrics(self.model)
            for variable in self.model.metrics_variables:
                if variable.path in self.state.metric_values:
                    variable.assign(self.state.metric_values[variable.path])

    def on_train_batch_end(self, batch, logs=None):
        # `self.model` is not touched unless saving: on JAX reading it syncs every variable.
        self.state.step += 1
        in_epoch = self.state.step % self.steps_per_epoch
        if self.every and in_epoch and self.state.step % self.every == 0:
            self._save(inside_epoch=True, logs=logs)

    def on_epoch_end(self, epoch, logs=None):
        self.state.epochs_done = epoch + 1
        self.state.metric_values = None
        self.state.history.append({"epoch": epoch, **(logs or {})})
        self._save(inside_epoch=False, logs=logs)
        if self.write:
            write_history(self.model_dir, self.state.history)

    def _save(self, inside_epoch, logs):
        # A loss can stay finite while a state overflows (a BatchNorm's moving variance):
        # such weights must not become "the last good checkpoint".
        broken = first_non_finite(self.model)
        if broken is not None:
            from applications.training.divergence import TrainingDiverged, where

            loss = (logs or {}).get("loss")
            raise TrainingDiverged(
                f"training diverged: {broken} is not finite after "
                f"{where(self.state.step, self.steps_per_epoch)}"
                + (f" (loss {loss})" if loss is not None else "")
            )
        if self.write:
            save_checkpoint(self.model, self.model_dir, self.state, inside_epoch)
            prune(self.model_dir, self.keep)
            return
        # A worker that is not the chief reads the same variables (reading a synchronised
        # variable is a collective operation every worker must join) and throws the file away.
        with tempfile.TemporaryDirectory() as scratch:
            save_checkpoint(self.model, scratch, self.state, inside_epoch)


def write_history(model_dir, rows):
    """history.csv: one row per finished epoch, every column the logs ever had; atomic."""
    columns = ["epoch"] + sorted({key for row in rows for key in row} - {"epoch"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    with atomic.atomic_open(os.path.join(model_dir, HISTORY_CSV), "w", newline="") as stream:
        stream.write(buffer.getvalue())


def save_portable_model(model, path, write=True):
    """Saves architecture and weights as `.keras`, without compile state, atomically.

    With `write=False` (a worker that is not the chief) the weights are read as on the chief,
    since every worker must take part in reading synchronised variables, and nothing is kept.

    The optimizer and metrics of training are classes of this program; a `.keras` file that
    named them would only load where `applications` is importable. The copy is uncompiled,
    so it loads anywhere with keras and keras_irevnet; the optimizer state stays in the
    checkpoints, from which this program resumes.
    """
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    if write:
        with atomic.atomic_path(path) as temporary:
            copy.save(temporary)
    return path

"""run_config.json: the flags a run's checkpoints belong to, checked when the run resumes.

A run directory resumes only with the flags that made it (other data, model, batch or
optimisation would turn the checkpoint into a different experiment), with two exceptions that
change nothing already trained:

- `--epochs` may grow (or shrink) on a finished or interrupted run. The learning-rate
  schedule keeps the steps it was resolved to when the run started, so the steps already
  trained keep their rates and the extension continues at the last one.
- `--schedule` may change where it agrees with the recorded schedule on every step already
  trained (it may move or add boundaries that lie ahead), and stays stepped or constant as
  it was: Keras keeps a constant rate in the optimizer's state and a schedule outside it.

Not recorded: `--strategy` and the device flags (the batch is global, so a run may resume on
other devices), verbosity, evaluation and export flags.
"""

import os

from keras_irevnet import atomic

RUN_CONFIG = "run_config.json"
# Flags whose values must match the recorded ones when a run resumes.
FIXED_FLAGS = (
    "dataset",
    "model",
    "image_size",
    "batch_size",
    "steps_per_epoch",
    "learning_rate",
    "weight_decay",
    "memory_efficient",
    "mixed_precision",
    "seed",
)


def _read(path):
    return atomic.read_json(
        path,
        what=(
            "It records the flags this --model_dir was trained with: restore it from a "
            "backup, or delete it to resume with the flags given now (they must be the "
            "original ones), or pass a new --model_dir."
        ),
    )


def _past_boundaries(boundaries, steps_done):
    return [b for b in boundaries if b < steps_done]


def reconcile(model_dir, flags, schedule, steps_done, write=True, log=print):
    """Checks `flags` against the run recorded in `model_dir` and records them.

    Args:
        model_dir: the run directory.
        flags: {flag name: value} for FIXED_FLAGS plus "schedule" and "epochs".
        schedule: (boundaries in steps, factor) resolved from `flags` for this invocation.
        steps_done: steps the newest checkpoint has trained (0: nothing to protect).
        write: record the flags (False on non-chief workers).

    Returns:
        The (boundaries, factor) schedule to train with.

    Raises:
        ValueError: naming each flag (as `--name`) that differs from the recorded run, or the
            unreadable run_config.json and what to do about it.
    """
    path = os.path.join(model_dir, RUN_CONFIG)
    boundaries, factor = tuple(schedule[0]), schedule[1]
    # Without a checkpoint there is nothing to protect: a broken or different record is
    # simply replaced.
    stored = _read(path) if steps_done and os.path.isfile(path) else None
    if stored is not None:
        changed = [
            f"--{name}: was {stored.get(name)!r}, now {flags[name]!r}"
            for name in FIXED_FLAGS
            if stored.get(name) != flags[name]
        ]
        if changed:
            raise ValueError(
                f"--model_dir={model_dir} holds a run made with other flags "
                f"({'; '.join(changed)}). Resume with the same flags (--epochs may change), "
                "or pass a new --model_dir."
            )
        boundaries, factor = _continued_schedule(stored, flags, boundaries, factor, steps_done, log)
    if write:
        record = {name: flags[name] for name in FIXED_FLAGS}
        record.update(
            schedule=flags["schedule"],
            epochs=flags["epochs"],
            schedule_boundaries=list(boundaries),
            schedule_factor=factor,
        )
        atomic.write_json(path, record)
    return boundaries, factor


def _continued_schedule(stored, flags, boundaries, factor, steps_done, log):
    recorded = (tuple(stored.get("schedule_boundaries", ())), stored.get("schedule_factor", 1.0))
    if flags["schedule"] == stored.get("schedule"):
        if recorded != (boundaries, factor):
            log(
                f"--epochs changed from {stored.get('epochs')} to {flags['epochs']}: the "
                f"learning-rate schedule stays as resolved when the run started (x"
                f"{recorded[1]} at steps {', '.join(map(str, recorded[0])) or 'none'}); pass "
                "--schedule=steps:... to change the steps ahead."
            )
        return recorded
    if bool(recorded[0]) != bool(boundaries):
        # Keras keeps a constant rate as one of the optimizer's variables and a schedule as
        # none: the checkpoints' optimizer state (momentum, step count) would not load.
        kinds = {True: "stepped", False: "constant"}
        raise ValueError(
            f"--schedule={flags['schedule']!r} gives a {kinds[bool(boundaries)]} learning "
            f"rate, and the run was trained with a {kinds[bool(recorded[0])]} one "
            f"(--schedule={stored.get('schedule')!r}): the optimizer keeps the two in "
            "different state, so its checkpoints could not resume it. Keep a schedule of "
            "the same kind (a stepped one may move or add boundaries after step "
            f"{steps_done}), or pass a new --model_dir."
        )
    past = _past_boundaries(recorded[0], steps_done)
    if past != _past_boundaries(boundaries, steps_done) or (past and recorded[1] != factor):
        raise ValueError(
            f"--schedule={flags['schedule']!r} changes the learning rate of steps already "
            f"trained (the run has done {steps_done} steps with --schedule="
            f"{stored.get('schedule')!r}: x{recorded[1]} at steps "
            f"{', '.join(map(str, recorded[0])) or 'none'}). Only boundaries after step "
            f"{steps_done} may change; or pass a new --model_dir."
        )
    return boundaries, factor

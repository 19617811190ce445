"""applications/train.py in this process: flags, a short run and its files, exact resumption,
raising --epochs, refusals, divergence, damaged checkpoints and run records.

Kills, file-size limits and multi-process runs are in test_train_faults.py.
"""

import csv
import json
import os
import re

import keras
import numpy as np
import pytest

import keras_irevnet as kir
from applications import train
from applications.training import checkpoints, distribute, recipes
from applications.training.divergence import TrainingDiverged
from applications.training.optimizer import CoupledWeightDecaySGD
from tests.helpers import once_in

BACKEND = keras.backend.backend()
# Short runs: 3 epochs of 4 steps of 16 digits, checkpoints inside epochs every 3 steps.
SHORT = dict(
    epochs=3,
    steps_per_epoch=4,
    checkpoint_every=3,
    batch_size=16,
    eval_steps=2,
    inverse_images=8,
    monitor_images=8,
    verbose=0,
)


def _args(**overrides):
    values = {name: train.FLAGS[name].default for name in train.FLAG_NAMES}
    values.update(overrides)
    return train.resolve_arguments(values)


def _short(model_dir, **overrides):
    return _args(**{**SHORT, "model_dir": str(model_dir), **overrides})


def _history(model_dir):
    with open(os.path.join(model_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def _final_weights(model_dir):
    model = keras.saving.load_model(os.path.join(model_dir, "model.keras"))
    return [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights]


def _strict_json(path):
    """The JSON in `path`, refusing the non-standard NaN / Infinity Python's json accepts."""

    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    with open(path) as f:
        return json.load(f, parse_constant=refuse)


class _Interrupted(Exception):
    pass


def _interrupt_at(monkeypatch, step):
    """Makes the next run stop right after global step `step` (its checkpoint included)."""
    original = checkpoints.TrainingCheckpoint.on_train_batch_end

    def stop(self, batch, logs=None):
        original(self, batch, logs)
        if self.state.step == step:
            raise _Interrupted

    monkeypatch.setattr(checkpoints.TrainingCheckpoint, "on_train_batch_end", stop)


# --- Bad input: clear errors before any slow work -------------------------------------------


def test_defaults_are_the_digits_recipe():
    args = _args()
    assert (args["dataset"], args["model"], args["image_size"]) == ("digits", "tiny", 16)
    assert args["model_dir"] == os.path.join("runs", "irevnet_tiny_digits")
    assert args["weight_decay"] == 5e-4 and args["learning_rate"] == 0.1
    assert args["checkpoint_every"] == 2500 and args["monitor_images"] == 32
    imagenet = _args(dataset="imagenet2012")
    assert (imagenet["model"], imagenet["image_size"], imagenet["batch_size"]) == (
        "bijective",
        224,
        256,
    )


def test_unknown_dataset():
    with pytest.raises(ValueError, match="--dataset: Unknown dataset 'mnist'.*digits"):
        _args(dataset="mnist")


def test_image_size_the_model_cannot_take():
    with pytest.raises(
        ValueError, match=r"--image_size=18 .*--model=tiny.*multiple of .* 4; try 16 or 20"
    ):
        _args(image_size=18)
    with pytest.raises(ValueError, match=r"--image_size=48 .*--model=bijective.* 32"):
        _args(dataset="imagenet2012", image_size=48)


@pytest.mark.parametrize(
    "flag, value", [("checkpoint_every", -1), ("monitor_images", -2), ("inverse_images", 0)]
)
def test_negative_counts_are_refused(flag, value):
    with pytest.raises(ValueError, match=f"--{flag} must not be negative, got {value}"):
        _args(**{flag: value})


def test_bad_schedule():
    with pytest.raises(ValueError, match="--schedule='weekly' is not understood"):
        _args(schedule="weekly")
    boundaries, factor = recipes.parse_schedule(
        "steps:160000,320000,480000:0.1", "imagenet2012", 128, 5004
    )
    assert boundaries == (160000, 320000, 480000) and factor == 0.1
    assert recipes.parse_schedule("auto", "cifar10", 200, 391) == (
        (60 * 391, 120 * 391, 160 * 391),
        0.2,
    )


@pytest.mark.parametrize("strategy", ["mirrored", "multi_worker", "data_parallel"])
def test_strategy_the_backend_lacks(strategy, tmp_path):
    if BACKEND in distribute.STRATEGIES[strategy]:
        pytest.skip(f"--strategy={strategy} is available on {BACKEND}")
    with pytest.raises(ValueError, match=f"--strategy={strategy} needs the"):
        train.run(_args(strategy=strategy, model_dir=str(tmp_path)))
    assert not os.listdir(tmp_path)


def test_missing_imagenet_archives_fail_first(tmp_path):
    args = _args(
        dataset="imagenet2012",
        model="tiny",
        image_size=32,
        data_dir=str(tmp_path / "tfds"),
        manual_dir=str(tmp_path / "manual"),
        model_dir=str(tmp_path / "run"),
    )
    with pytest.raises(FileNotFoundError) as error:
        train.run(args)
    assert str(tmp_path / "manual" / "ILSVRC2012_img_train.tar") in str(error.value)
    assert not (tmp_path / "run").exists()


def test_coupled_weight_decay_matches_torch_sgd():
    """One step of CoupledWeightDecaySGD == torch.optim.SGD(momentum, weight_decay)."""
    from applications.training.optimizer import CoupledWeightDecaySGD

    w0 = np.array([1.0, -2.0, 3.0], "float32")
    grads = [np.array([0.5, 0.1, -0.3], "float32"), np.array([0.2, -0.4, 0.1], "float32")]
    variable = keras.Variable(w0)
    optimizer = CoupledWeightDecaySGD(0.1, momentum=0.9, l2=0.01)
    for g in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
    # torch.optim.SGD: d = g + wd * w; buf = d (first step) / momentum * buf + d; w -= lr * buf
    w, buf = w0.astype("float64"), None
    for g in grads:
        d = g + 0.01 * w
        buf = d if buf is None else 0.9 * buf + d
        w = w - 0.1 * buf
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), w, rtol=1e-6)


def _traced_apply(optimizer, variables):
    """`optimizer.apply(gradients, variables)` as a tf.function of the gradients."""
    import tensorflow as tf

    @tf.function
    def step(gradients):
        optimizer.apply(gradients, variables)

    return step


@pytest.mark.parametrize("nesterov", [False, True])
def test_coupled_weight_decay_takes_tensorflows_fused_momentum(nesterov):
    # On TensorFlow the momentum update is one fused kernel per variable
    # (ResourceApplyKerasMomentum), in a traced step as eagerly, and it moves the weights
    # exactly as Keras' own SGD does (without weight decay, where the two agree).
    if BACKEND != "tensorflow":
        pytest.skip("TensorFlow's fused kernel")
    import tensorflow as tf

    start = [np.linspace(-1, 1, 12, dtype="float32").reshape(3, 4), np.ones(4, "float32")]
    gradients = [
        [
            tf.constant(np.cos(np.arange(12) + step).reshape(3, 4), "float32"),
            tf.constant(np.sin(np.arange(4) * step), "float32"),
        ]
        for step in range(3)
    ]
    moved, ops = {}, {}
    for name, optimizer in (
        ("ours", CoupledWeightDecaySGD(0.1, momentum=0.9, nesterov=nesterov)),
        ("keras", keras.optimizers.SGD(0.1, momentum=0.9, nesterov=nesterov)),
    ):
        variables = [keras.Variable(w) for w in start]
        optimizer.build(variables)
        step = _traced_apply(optimizer, variables)
        for g in gradients:
            step(g)
        ops[name] = {
            op.type for op in step.get_concrete_function(gradients[0]).graph.get_operations()
        }
        moved[name] = [keras.ops.convert_to_numpy(v) for v in variables]
    assert "ResourceApplyKerasMomentum" in ops["ours"], ops["ours"]
    assert "ResourceApplyKerasMomentum" not in ops["keras"], ops["keras"]
    assert max(float(np.abs(w - s).max()) for w, s in zip(moved["ours"], start)) > 0.1
    for mine, reference in zip(moved["ours"], moved["keras"]):
        np.testing.assert_allclose(mine, reference, rtol=1e-6, atol=1e-7)


# --- A run, its files, and what the inversion monitor logs -----------------------------------


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """One uninterrupted short run: (model_dir, metrics). Tests copy it before changing it."""
    model_dir = tmp_path_factory.mktemp("whole") / "run"
    keras.utils.set_random_seed(1234)
    return model_dir, train.run(_short(model_dir))


def _copy_of(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run[0], copy)
    return copy


def test_short_run_writes_everything_as_standard_json(whole_run):
    model_dir, metrics = whole_run
    assert _strict_json(model_dir / "metrics.json") == metrics
    assert _strict_json(model_dir / "run_config.json")["batch_size"] == 16
    assert metrics["backend"] == BACKEND and metrics["epochs"] == 3 and metrics["steps"] == 12
    assert metrics["inverse_rel_error"] < 1e-5
    # Each epoch once, with the inversion error of its validation.
    rows = _history(model_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert all(0 < float(r["val_inverse_rel_error"]) < 1e-5 for r in rows)
    # The newest two checkpoints: the end of epoch 3 (step 12) and step 9 inside it.
    assert [step for step, _ in checkpoints.list_checkpoints(model_dir)] == [12, 9]
    loaded = keras.saving.load_model(model_dir / "model.keras")
    assert loaded.image_shape == (16, 16, 3)
    assert not [n for _, _, names in os.walk(model_dir) for n in names if ".partial-" in n]


def test_tensorboard_gets_the_inversion_error_and_reconstructions(whole_run):
    from tensorboard.backend.event_processing import event_accumulator

    def run_log(run):
        accumulator = event_accumulator.EventAccumulator(
            str(whole_run[0] / "logs" / run), size_guidance={"tensors": 0}
        )
        accumulator.Reload()
        return accumulator

    errors = run_log("validation").Tensors("epoch_inverse_rel_error")
    assert [e.step for e in errors] == [0, 1, 2]
    images = run_log("inversion").Tensors("original | inverse(features(x)) | difference")
    assert [e.step for e in images] == [0, 1, 2]
    # An image summary holds width, height, then the encoded PNGs (4 shown).
    assert len(images[0].tensor_proto.string_val) == 2 + 4


# --- Resumption ------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_at, resumed", [(5, 4), (7, 6)])
@pytest.mark.slow
def test_interrupted_run_ends_with_the_weights_of_an_uninterrupted_one(
    whole_run, tmp_path, monkeypatch, stop_at, resumed
):
    """Stopped after step 5 it resumes from the end of epoch 1 (step 4); after step 7, from
    the checkpoint inside epoch 2 (step 6, with the data, metric sums and seeds of step 6)."""
    with monkeypatch.context() as patch:
        _interrupt_at(patch, stop_at)
        with pytest.raises(_Interrupted):
            train.run(_short(tmp_path / "cut"))
    metrics = train.run(_short(tmp_path / "cut"))
    assert metrics["resumed_after_step"] == resumed
    # Bit for bit on every backend (CPU): same data from the same step, same state.
    for whole, cut in zip(_final_weights(whole_run[0]), _final_weights(tmp_path / "cut")):
        np.testing.assert_array_equal(whole, cut)
    assert _history(whole_run[0]) == _history(tmp_path / "cut")


@once_in(
    "torch",
    "raising --epochs is the program's bookkeeping (exact resumption on every backend is "
    "test_interrupted_run_ends_with_the_weights_of_an_uninterrupted_one)",
)
@pytest.mark.slow
def test_epochs_can_be_raised_and_keep_the_schedule_of_the_steps_trained(tmp_path, capsys):
    model_dir = tmp_path / "run"
    train.run(_short(model_dir, epochs=2))  # auto: x0.2 at 30, 60, 80 % of 8 steps
    assert _strict_json(model_dir / "run_config.json")["schedule_boundaries"] == [2, 5, 6]
    metrics = train.run(_short(model_dir, epochs=3))
    assert "--epochs changed from 2 to 3" in capsys.readouterr().out
    assert metrics["resumed_after_step"] == 8 and metrics["steps"] == 12
    record = _strict_json(model_dir / "run_config.json")
    assert record["schedule_boundaries"] == [2, 5, 6] and record["epochs"] == 3
    assert [int(r["epoch"]) for r in _history(model_dir)] == [0, 1, 2]
    # Exactly a 3-epoch run with the schedule of the first 2 epochs, written out.
    train.run(_short(tmp_path / "direct", schedule="steps:2,5,6:0.2"))
    for a, b in zip(_final_weights(model_dir), _final_weights(tmp_path / "direct")):
        np.testing.assert_array_equal(a, b)


def test_refusals_name_flags_that_exist(whole_run, tmp_path):
    model_dir = _copy_of(whole_run, tmp_path)
    with pytest.raises(ValueError) as error:
        train.run(_short(model_dir, batch_size=32, learning_rate=0.05))
    message = str(error.value)
    assert "--batch_size: was 16, now 32" in message and "--learning_rate" in message
    named = set(re.findall(r"--([a-z_]+)", message))
    assert named and named <= set(train.FLAG_NAMES), named - set(train.FLAG_NAMES)
    # A schedule that would change the rate of steps already trained is refused by name...
    with pytest.raises(ValueError, match="--schedule='steps:2:0.1' changes the learning rate"):
        train.run(_short(model_dir, epochs=4, schedule="steps:2:0.1"))
    # ... one that keeps the boundaries behind (auto over 3 epochs: steps 4, 7, 10) and only
    # adds one ahead is taken.
    metrics = train.run(_short(model_dir, epochs=4, schedule="steps:4,7,10,14:0.2"))
    assert metrics["steps"] == 16
    assert _strict_json(model_dir / "run_config.json")["schedule_boundaries"] == [4, 7, 10, 14]


@once_in("torch", "the schedule check and checkpoint loading do not depend on the backend")
def test_a_schedule_of_the_other_kind_is_refused_before_the_optimizer_state_is_lost(tmp_path):
    # Keras keeps a constant learning rate as an optimizer variable and a schedule as none,
    # and loads a checkpoint whose optimizer state does not fit with only a warning: the run
    # would resume with its momentum and step count reset.
    model_dir = tmp_path / "constant"
    train.run(_short(model_dir, epochs=1, schedule="constant"))
    with pytest.raises(ValueError, match="--schedule='steps:100:0.1' gives a stepped"):
        train.run(_short(model_dir, epochs=2, schedule="steps:100:0.1"))
    assert _strict_json(model_dir / "run_config.json")["schedule"] == "constant"
    # The loader itself refuses such a checkpoint too, whoever calls it.
    model = kir.IRevNet.from_preset("tiny", classes=10)
    model.compile(
        optimizer=CoupledWeightDecaySGD(recipes.learning_rate_schedule(0.1, [100], 0.1)),
        loss="sparse_categorical_crossentropy",
    )
    (_, path), *_ = checkpoints.list_checkpoints(model_dir)
    with pytest.raises(ValueError, match="Skipping variable loading for optimizer"):
        checkpoints.load_checkpoint(model, path)
    with pytest.raises(checkpoints.CheckpointError, match="does not fit"):
        checkpoints.restore(model, str(model_dir), log=lambda message: None)
    # The same flags resume.
    assert train.run(_short(model_dir, epochs=2, schedule="constant"))["resumed_after_step"] == 4


# --- Divergence ------------------------------------------------------------------------------


def test_divergence_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path):
    model_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as error:
        train.run(_short(model_dir, learning_rate=1e6, checkpoint_every=1))
    message = str(error.value)
    assert re.search(r"after step \d+ \(epoch 1, step \d+ of 4\)", message), message
    # Every checkpoint left is finite: the last good state, and nothing after it.
    kept = checkpoints.list_checkpoints(model_dir)
    assert kept, "the steps before the divergence were checkpointed"
    model = kir.IRevNet.from_preset("tiny", classes=10)
    for _, path in kept:
        model.load_weights(path)
        assert all(np.all(np.isfinite(keras.ops.convert_to_numpy(w))) for w in model.weights)
    # The run ended: nothing claims it finished.
    assert not (model_dir / "metrics.json").exists() and not (model_dir / "model.keras").exists()
    advice = train._divergence_advice(_short(model_dir, learning_rate=1e6))
    assert f"The newest checkpoint, step {kept[0][0]}" in advice
    assert "--learning_rate (this run: 1000000.0)" in advice


# --- Damaged files ---------------------------------------------------------------------------


def _truncate(path, keep=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def test_truncated_newest_checkpoint_falls_back_to_the_one_before(whole_run, tmp_path, capsys):
    model_dir = _copy_of(whole_run, tmp_path)
    (newest, newest_path), (older, _) = checkpoints.list_checkpoints(model_dir)
    _truncate(newest_path)
    metrics = train.run(_short(model_dir))
    out = capsys.readouterr().out
    assert f"Checkpoint {newest_path} is unreadable" in out
    assert f"resuming from the older step-{older:09d}.weights.h5 (step {older})" in out
    assert metrics["resumed_after_step"] == older and metrics["steps"] == newest
    # The redone steps give what the lost checkpoint held.
    for a, b in zip(_final_weights(model_dir), _final_weights(whole_run[0])):
        np.testing.assert_array_equal(a, b)


def test_no_readable_checkpoint_is_one_clear_error(whole_run, tmp_path):
    model_dir = _copy_of(whole_run, tmp_path)
    paths = [path for _, path in checkpoints.list_checkpoints(model_dir)]
    _truncate(paths[0])
    with open(paths[1], "wb"):
        pass  # emptied
    with pytest.raises(checkpoints.CheckpointError) as error:
        train.run(_short(model_dir))
    message = str(error.value)
    assert "\n" not in message and all(path in message for path in paths)
    assert "Remove the directory" in message


def test_corrupt_run_config_is_named_with_what_to_do(whole_run, tmp_path):
    model_dir = _copy_of(whole_run, tmp_path)
    (model_dir / "run_config.json").write_text('{"dataset": "digits", ')  # cut short
    with pytest.raises(ValueError) as error:
        train.run(_short(model_dir))
    message = str(error.value)
    assert str(model_dir / "run_config.json") in message and "not valid JSON" in message
    assert "delete it to resume" in message

"""applications/train.py: argument checks, a short run on this backend, resumption, and the
multi-device paths (TF MirroredStrategy on ImageNet, JAX DataParallel), each run as its own
process because the CPU must be split into devices before the backend starts."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import pytest

from applications import train
from applications.training import checkpoints, distribute, presets
from tests.imagenet_fixture import write_manual_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()


def _args(**overrides):
    values = {name: train.FLAGS[name].default for name in train.FLAG_NAMES}
    values.update(overrides)
    return train.resolve_arguments(values)


def _history_epochs(model_dir):
    with open(os.path.join(model_dir, "history.csv")) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def _run_program(flags, backend, env_extra=None, timeout=300):
    env = dict(os.environ, KERAS_BACKEND=backend, **(env_extra or {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "applications.train", *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout


# --- Bad input: clear errors before any slow work -------------------------------------------


def test_defaults_are_the_digits_recipe():
    args = _args()
    assert (args["dataset"], args["model"], args["image_size"]) == ("digits", "tiny", 16)
    assert args["model_dir"] == os.path.join("runs", "irevnet_tiny_digits")
    assert args["weight_decay"] == 5e-4 and args["learning_rate"] == 0.1
    imagenet = _args(dataset="imagenet2012")
    assert (imagenet["model"], imagenet["image_size"], imagenet["batch_size"]) == (
        "bijective", 224, 256)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="--dataset: unknown dataset 'mnist'.*digits"):
        _args(dataset="mnist")


def test_image_size_the_model_cannot_take():
    with pytest.raises(ValueError,
                       match=r"--image_size=18 .*--model=tiny.*multiple of .* 4; try 16 or 20"):
        _args(image_size=18)
    with pytest.raises(ValueError, match=r"--image_size=48 .*--model=bijective.* 32"):
        _args(dataset="imagenet2012", image_size=48)


def test_bad_schedule():
    with pytest.raises(ValueError, match="--schedule='weekly' is not understood"):
        _args(schedule="weekly")
    boundaries, factor = presets.parse_schedule("steps:160000,320000,480000:0.1",
                                                "imagenet2012", 128, 5004)
    assert boundaries == (160000, 320000, 480000) and factor == 0.1
    assert presets.parse_schedule("auto", "cifar10", 200, 391) == (
        (60 * 391, 120 * 391, 160 * 391), 0.2)


@pytest.mark.parametrize("strategy", ["mirrored", "multi_worker", "data_parallel"])
def test_strategy_the_backend_lacks(strategy, tmp_path):
    args = _args(strategy=strategy, model_dir=str(tmp_path))
    if BACKEND in distribute.STRATEGIES[strategy]:
        pytest.skip(f"--strategy={strategy} is available on {BACKEND}")
    started = time.time()
    with pytest.raises(ValueError, match=f"--strategy={strategy} needs the"):
        train.run(args)
    assert time.time() - started < 5 and not os.listdir(tmp_path)


def test_missing_imagenet_archives_fail_first(tmp_path):
    args = _args(dataset="imagenet2012", model="tiny", image_size=32,
                 data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual"),
                 model_dir=str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError) as error:
        train.run(args)
    assert str(tmp_path / "manual" / "ILSVRC2012_img_train.tar") in str(error.value)
    assert not (tmp_path / "run").exists()


# --- The program on this backend: train, measure, save, resume -------------------------------


def test_short_run_writes_everything_and_resumes(tmp_path):
    model_dir = str(tmp_path / "run")
    small = dict(epochs=2, steps_per_epoch=3, batch_size=16, eval_steps=2, inverse_images=8,
                 validation_freq=1, verbose=0, model_dir=model_dir)
    metrics = train.run(_args(**small))
    with open(os.path.join(model_dir, "metrics.json")) as f:
        assert json.load(f) == metrics
    assert metrics["backend"] == BACKEND and metrics["epochs"] == 2
    assert {"top1", "top5", "inverse_rel_error"} <= set(metrics)
    assert metrics["inverse_rel_error"] < 1e-5
    assert checkpoints.latest_checkpoint(model_dir)[0] == 2
    assert _history_epochs(model_dir) == [0, 1]
    assert os.listdir(os.path.join(model_dir, "logs"))
    loaded = keras.saving.load_model(os.path.join(model_dir, "model.keras"))
    assert loaded.image_shape == (16, 16, 3)

    # Remove the last epoch's checkpoint: a new run redoes exactly that epoch.
    os.remove(checkpoints.checkpoint_path(model_dir, 2))
    metrics = train.run(_args(**small))
    assert metrics["resumed_after_epoch"] == 1
    assert _history_epochs(model_dir) == [0, 1]

    # Other flags for the same model_dir are refused.
    with pytest.raises(ValueError, match="--batch_size: was 16, now 32"):
        train.run(_args(**dict(small, batch_size=32)))


def test_coupled_weight_decay_matches_torch_sgd():
    """One step of CoupledWeightDecaySGD == torch.optim.SGD(momentum, weight_decay)."""
    import numpy as np

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


@pytest.mark.skipif(BACKEND != "torch", reason=(
    "SIGKILL resumption is backend-independent (checkpoint files + restore); it runs once, "
    "in the torch suite, which has no other subprocess test"))
def test_resume_after_sigkill_mid_epoch(tmp_path):
    model_dir = str(tmp_path / "run")
    flags = [f"--model_dir={model_dir}", "--epochs=2", "--steps_per_epoch=25", "--batch_size=8",
             "--eval_steps=1", "--inverse_images=8", "--validation_freq=0", "--verbose=2"]
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "applications.train", *flags], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 240
        while checkpoints.latest_checkpoint(model_dir)[0] < 1:
            assert process.poll() is None and time.time() < deadline, "no first checkpoint"
            time.sleep(0.2)
        time.sleep(0.5)  # into the second epoch
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    killed_at = checkpoints.latest_checkpoint(model_dir)[0]
    assert killed_at in (1, 2)
    out = _run_program(flags, BACKEND)
    assert f"Resuming after epoch {killed_at}" in out
    assert _history_epochs(model_dir) == [0, 1]  # each epoch once
    with open(os.path.join(model_dir, "metrics.json")) as f:
        assert json.load(f)["resumed_after_epoch"] == killed_at


# --- Multi-device paths, each in a fresh process ---------------------------------------------


@pytest.mark.skipif(BACKEND != "tensorflow", reason=(
    "MirroredStrategy needs the TensorFlow backend; the process runs with "
    "KERAS_BACKEND=tensorflow, once, in the TensorFlow suite"))
def test_imagenet_from_manual_dir_mirrored_over_two_cpus_and_resume(tmp_path):
    manual = str(tmp_path / "manual")
    written = write_manual_dir(manual)
    model_dir = str(tmp_path / "run")
    flags = ["--dataset=imagenet2012", f"--data_dir={tmp_path / 'tfds'}",
             f"--manual_dir={manual}", "--model=tiny", "--image_size=32", "--batch_size=4",
             "--epochs=2", "--steps_per_epoch=2", "--strategy=mirrored", "--cpu_devices=2",
             f"--model_dir={model_dir}", "--inverse_images=4", "--verbose=2"]
    out = _run_program(flags, "tensorflow")
    assert "strategy mirrored over 2 replica(s)" in out
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["replicas"] == 2 and metrics["epochs"] == 2
    assert metrics["validation_images"] == len(written["validation"])
    assert metrics["inverse_rel_error"] < 1e-5 and "top5" in metrics
    assert _history_epochs(model_dir) == [0, 1]
    # tfds built the real imagenet2012 from the archives.
    assert os.path.isdir(tmp_path / "tfds" / "imagenet2012" / "5.1.0")

    os.remove(checkpoints.checkpoint_path(model_dir, 2))  # the last epoch's progress
    out = _run_program(flags, "tensorflow")
    assert "Resuming after epoch 1" in out and "Epoch 2/2" in out and "Epoch 1/2" not in out
    assert _history_epochs(model_dir) == [0, 1]
    with open(os.path.join(model_dir, "metrics.json")) as f:
        assert json.load(f)["resumed_after_epoch"] == 1


@pytest.mark.skipif(BACKEND != "jax", reason=(
    "keras.distribution.DataParallel is JAX-only; the process runs with KERAS_BACKEND=jax, "
    "once, in the JAX suite"))
def test_jax_data_parallel_over_two_cpu_devices(tmp_path):
    model_dir = str(tmp_path / "run")
    out = _run_program(
        [f"--model_dir={model_dir}", "--strategy=data_parallel", "--cpu_devices=2",
         "--epochs=1", "--steps_per_epoch=4", "--batch_size=16", "--eval_steps=2",
         "--inverse_images=16", "--verbose=2"],
        "jax",
    )
    assert "strategy data_parallel over 2 replica(s)" in out
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["replicas"] == 2 and metrics["inverse_rel_error"] < 1e-5

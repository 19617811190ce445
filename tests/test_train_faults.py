"""The training program under real faults, each in its own processes: SIGKILL at any moment,
a file-size limit during writes, a diverging run's exit status, and runs across two worker
processes (a killed worker included).

Each test runs once, in the suite of the backend it names (the faults are the program's, not
the backend's), so the three suites share the cost.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import keras
import numpy as np
import pytest

import keras_irevnet as kir
from applications import train
from applications.training import checkpoints
from tests.helpers import once_in

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()
# Every test here starts the program in its own processes.
pytestmark = pytest.mark.slow
FLAGS = [
    "--epochs=2",
    "--steps_per_epoch=4",
    "--checkpoint_every=3",
    "--batch_size=16",
    "--eval_steps=2",
    "--inverse_images=8",
    "--monitor_images=8",
    "--verbose=2",
]


def _env(backend, **extra):
    env = dict(os.environ, KERAS_BACKEND=backend, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    return env


def _start(flags, backend, log_path, **env):
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "applications.train", *flags],
            cwd=REPO,
            env=_env(backend, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _finish(process, log_path, timeout=300):
    try:
        code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    with open(log_path) as f:
        log = f.read()
    assert code == 0, log[-6000:]
    return log


def _weights(model_dir):
    model = keras.saving.load_model(os.path.join(model_dir, "model.keras"))
    return [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights]


def _assert_same_weights(a, b):
    for x, y in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(x, y)


def _wait_for_checkpoint(model_dir, step, processes, timeout=240):
    deadline = time.time() + timeout
    while checkpoints.latest_step(model_dir) < step:
        assert all(p.poll() is None for p in processes), "a process ended before the kill"
        assert time.time() < deadline, f"no checkpoint of step {step} in time"
        time.sleep(0.05)


# --- SIGKILL at any moment -------------------------------------------------------------------


@pytest.mark.skipif(
    BACKEND != "torch",
    reason=(
        "the kill test runs once, in the torch suite (the checkpoint code is backend-neutral; "
        "exact resumption on every backend is test_train.py's interrupted-run test)"
    ),
)
def test_killed_again_and_again_then_the_same_command_ends_exactly(tmp_path):
    model_dir = str(tmp_path / "run")
    flags = FLAGS + [f"--model_dir={model_dir}", "--checkpoint_every=1", "--epochs=3"]
    rng = random.Random(0)
    log = str(tmp_path / "log.txt")
    for _ in range(3):
        process = _start(flags, BACKEND, log)
        try:
            # Past the next checkpoint, then a random moment: inside a step, a validation or
            # a checkpoint write.
            _wait_for_checkpoint(model_dir, checkpoints.latest_step(model_dir) + 1, [process])
            time.sleep(rng.uniform(0.0, 0.3))
            assert process.poll() is None, "the run ended before it could be killed"
            process.send_signal(signal.SIGKILL)
            process.wait()
        finally:
            if process.poll() is None:
                process.kill()
        # Only complete checkpoints under real names; a write cut short stays a temporary,
        # and each loads whole (Keras only warns when it skips the optimizer's variables).
        for step, path in checkpoints.list_checkpoints(model_dir):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert checkpoints.load_checkpoint(_fresh_model(), path).step == step
            assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
    out = _finish(_start(flags, BACKEND, log), log)
    assert "Resuming after" in out
    leftovers = [n for _, _, names in os.walk(model_dir) for n in names if ".partial-" in n]
    assert not leftovers
    reference = str(tmp_path / "reference")
    train.run(
        train.resolve_arguments(
            {
                **{n: train.FLAGS[n].default for n in train.FLAG_NAMES},
                **_flag_values(flags),
                "model_dir": reference,
            }
        )
    )
    _assert_same_weights(model_dir, reference)


def _flag_values(flags):
    values = {}
    for flag in flags:
        name, value = flag[2:].split("=", 1)
        values[name] = int(value) if value.lstrip("-").isdigit() else value
    return values


def _fresh_model():
    """The tiny model compiled as applications.train compiles it for these flags: with a
    learning-rate schedule (a float rate would add a variable the checkpoints do not have,
    and Keras would skip loading the optimizer's state)."""
    from applications.training import recipes
    from applications.training.metrics import accuracy_metrics
    from applications.training.optimizer import CoupledWeightDecaySGD

    model = kir.IRevNet.from_preset("tiny", classes=10)
    model.compile(
        optimizer=CoupledWeightDecaySGD(recipes.learning_rate_schedule(0.1, [1], 0.1)),
        loss="sparse_categorical_crossentropy",
        metrics=accuracy_metrics(10),
    )
    return model


# --- Writes that fail half-way ---------------------------------------------------------------

_LIMITED_WRITER = """
import os, resource, signal, sys
sys.path.insert(0, {repo!r})
import keras
from applications.training import checkpoints
from keras_irevnet import atomic

model_dir, limit = sys.argv[1], int(sys.argv[2])
model = keras.saving.load_model(os.path.join(model_dir, "model.keras"))
for layer_weights in model.weights:  # other weights than the ones on disk
    layer_weights.assign(layer_weights * 2.0)
# Past the limit a write fails with EFBIG instead of killing the process.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
failures = []
for name, write in (
    ("model.keras", lambda: checkpoints.save_portable_model(
        model, os.path.join(model_dir, "model.keras"))),
    ("metrics.json", lambda: atomic.write_json(
        os.path.join(model_dir, "metrics.json"), {{"padding": "x" * (2 * limit)}})),
):
    try:
        write()
    except OSError as error:
        failures.append(name)
print(",".join(failures))
"""


@once_in("torch", "atomic writes are the same code on every backend")
def test_a_write_cut_by_a_file_size_limit_keeps_the_previous_file(tmp_path):
    model_dir = tmp_path / "run"
    train.run(
        train.resolve_arguments(
            {
                **{n: train.FLAGS[n].default for n in train.FLAG_NAMES},
                **_flag_values(FLAGS),
                "model_dir": str(model_dir),
                "verbose": 0,
            }
        )
    )
    before_model = _weights(model_dir)
    before_metrics = (model_dir / "metrics.json").read_bytes()
    limit = os.path.getsize(model_dir / "model.keras") // 2
    result = subprocess.run(
        [sys.executable, "-c", _LIMITED_WRITER.format(repo=REPO), str(model_dir), str(limit)],
        env=_env(BACKEND),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == "model.keras,metrics.json"
    for old, now in zip(before_model, _weights(model_dir)):
        np.testing.assert_array_equal(old, now)
    assert (model_dir / "metrics.json").read_bytes() == before_metrics
    assert not [n for n in os.listdir(model_dir) if ".partial-" in n]


# --- Divergence as the user sees it ----------------------------------------------------------


@once_in("torch", "the program's exit status does not depend on the backend")
def test_diverging_program_exits_with_one_line_and_status_3(tmp_path):
    log = str(tmp_path / "log.txt")
    process = _start(
        FLAGS + [f"--model_dir={tmp_path / 'run'}", "--learning_rate=1e6", "--checkpoint_every=1"],
        BACKEND,
        log,
    )
    assert process.wait(timeout=300) == 3
    with open(log) as f:
        out = f.read()
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert "training diverged" in errors[0] and "--learning_rate" in errors[0]
    assert not (tmp_path / "run" / "metrics.json").exists()


# --- Two worker processes --------------------------------------------------------------------


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _tf_config(ports, index):
    return json.dumps(
        {
            "cluster": {"worker": [f"localhost:{port}" for port in ports]},
            "task": {"type": "worker", "index": index},
        }
    )


def _file_states(directory):
    """Each file under `directory` with its size and modification time."""
    states = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            info = os.stat(path)
            states[os.path.relpath(path, directory)] = (info.st_size, info.st_mtime_ns)
    return states


def _start_workers(flags_per_worker, tmp_path, tag):
    ports = _free_ports(2)
    logs = [str(tmp_path / f"{tag}_worker{i}.txt") for i in range(2)]
    processes = [
        _start(
            flags + ["--strategy=multi_worker"],
            "tensorflow",
            logs[i],
            TF_CONFIG=_tf_config(ports, i),
        )
        for i, flags in enumerate(flags_per_worker)
    ]
    return processes, logs


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason=(
        "MultiWorkerMirroredStrategy is TensorFlow's; the worker processes run once, in the "
        "TensorFlow suite"
    ),
)
def test_two_workers_train_as_one_process_does_and_survive_a_killed_worker(tmp_path):
    # A one-process run with the same global batch split the same way: two replicas.
    mirrored = str(tmp_path / "mirrored")
    log = str(tmp_path / "mirrored.txt")
    _finish(
        _start(
            FLAGS + [f"--model_dir={mirrored}", "--strategy=mirrored", "--cpu_devices=2"],
            "tensorflow",
            log,
        ),
        log,
    )

    # Two workers, killed inside epoch 2: worker 1 after the checkpoint of step 6, worker 0
    # then fails (or is stopped) as a cluster manager would see it. Worker 1 is given its own
    # --model_dir, empty as the shared one is at a fresh start, to show that it writes nothing.
    model_dir, other_dir = str(tmp_path / "workers"), str(tmp_path / "worker1_dir")
    flags = FLAGS + [f"--model_dir={model_dir}", "--checkpoint_every=2"]
    processes, logs = _start_workers(
        [flags, FLAGS + [f"--model_dir={other_dir}", "--checkpoint_every=2"]], tmp_path, "killed"
    )
    try:
        _wait_for_checkpoint(model_dir, 6, processes)
        processes[1].send_signal(signal.SIGKILL)
        try:
            processes[0].wait(timeout=60)
        except subprocess.TimeoutExpired:
            processes[0].send_signal(signal.SIGKILL)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert not os.path.exists(other_dir) or not os.listdir(other_dir)
    killed_at = checkpoints.latest_step(model_dir)
    assert 6 <= killed_at <= 8

    # Both restarted with the same command, on the shared --model_dir; worker 1 on its own
    # copy of it, which it resumes from and must leave as it is, to the end of the run.
    copy = str(tmp_path / "worker1_copy")
    shutil.copytree(model_dir, copy)
    copied = _file_states(copy)
    processes, logs = _start_workers(
        [flags, FLAGS + [f"--model_dir={copy}", "--checkpoint_every=2"]], tmp_path, "resumed"
    )
    outs = [_finish(process, log) for process, log in zip(processes, logs)]
    assert _file_states(copy) == copied
    assert all("strategy multi_worker over 2 replica(s)" in out for out in outs)
    assert all(f"(global step {killed_at})" in out for out in outs)
    with open(os.path.join(model_dir, "metrics.json")) as f:
        assert json.load(f)["resumed_after_step"] == killed_at
    # Per-replica batches, per-replica BatchNorm statistics, gradients summed over the two
    # replicas: the same arithmetic as the one-process run, so, killed and resumed, the same
    # weights bit for bit.
    _assert_same_weights(model_dir, mirrored)


@pytest.mark.skipif(
    BACKEND != "jax",
    reason=("keras.distribution.DataParallel is JAX's; the processes run once, in the JAX suite"),
)
def test_jax_data_parallel_over_two_devices_and_over_two_processes(tmp_path):
    # One process, its CPU split into two devices.
    one = str(tmp_path / "one_process")
    log = str(tmp_path / "one.txt")
    out = _finish(
        _start(
            FLAGS + [f"--model_dir={one}", "--strategy=data_parallel", "--cpu_devices=2"],
            "jax",
            log,
        ),
        log,
    )
    assert "strategy data_parallel over 2 replica(s)" in out
    with open(os.path.join(one, "metrics.json")) as f:
        assert json.load(f)["inverse_rel_error"] < 1e-5

    # Two processes of one device each (keras.distribution.initialize from the environment).
    # The second gets its own --model_dir to show that only process 0 writes.
    port = _free_ports(1)[0]
    two, other = str(tmp_path / "two_processes"), str(tmp_path / "process1_dir")
    logs = [str(tmp_path / f"process{i}.txt") for i in range(2)]
    processes = [
        _start(
            FLAGS + [f"--model_dir={directory}", "--strategy=data_parallel"],
            "jax",
            logs[i],
            KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{port}",
            KERAS_DISTRIBUTION_NUM_PROCESSES="2",
            KERAS_DISTRIBUTION_PROCESS_ID=str(i),
        )
        for i, directory in enumerate((two, other))
    ]
    outs = [_finish(process, log) for process, log in zip(processes, logs)]
    assert all("strategy data_parallel over 2 replica(s)" in out for out in outs)
    assert not os.path.exists(other) or not os.listdir(other)
    # The same global batches over the same two devices, whatever process holds them: the
    # same compiled program, so the same weights bit for bit.
    _assert_same_weights(two, one)


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason=(
        "MirroredStrategy needs the TensorFlow backend; the process runs once, in the "
        "TensorFlow suite"
    ),
)
def test_imagenet_from_manual_dir_mirrored_over_two_cpus_and_resume(tmp_path):
    from tests.imagenet_fixture import write_manual_dir

    manual = str(tmp_path / "manual")
    written = write_manual_dir(manual)
    model_dir = str(tmp_path / "run")
    flags = [
        "--dataset=imagenet2012",
        f"--data_dir={tmp_path / 'tfds'}",
        f"--manual_dir={manual}",
        "--model=tiny",
        "--image_size=32",
        "--batch_size=4",
        "--epochs=2",
        "--steps_per_epoch=2",
        "--strategy=mirrored",
        "--cpu_devices=2",
        f"--model_dir={model_dir}",
        "--inverse_images=4",
        "--monitor_images=4",
        "--verbose=2",
    ]
    log = str(tmp_path / "log.txt")
    out = _finish(_start(flags, "tensorflow", log), log)
    assert "strategy mirrored over 2 replica(s)" in out
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["replicas"] == 2 and metrics["epochs"] == 2
    assert metrics["validation_images"] == len(written["validation"])
    assert metrics["inverse_rel_error"] < 1e-5 and "top5" in metrics
    # tfds built the real imagenet2012 from the archives.
    assert os.path.isdir(tmp_path / "tfds" / "imagenet2012" / "5.1.0")

    os.remove(checkpoints.checkpoint_path(model_dir, 4))  # the last epoch's progress
    open(log, "w").close()
    out = _finish(_start(flags, "tensorflow", log), log)
    assert "Resuming after epoch 1 (global step 2)" in out
    assert "Epoch 2/2" in out and "Epoch 1/2" not in out
    with open(os.path.join(model_dir, "history.csv")) as f:
        assert [line.split(",")[0] for line in f.read().split()[1:]] == ["0", "1"]

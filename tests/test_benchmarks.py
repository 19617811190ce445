"""The speed benchmark's bookkeeping: FLOP count, ratios, targets and the files it writes."""

import json
import os

import pytest

from benchmarks import speed_report
from benchmarks.speed_setup import time_steps, workloads
from tests.helpers import once_in


def _timing(backend, work, images_per_second, jit="eager", memory_efficient=False, call=None):
    if call is None and backend != "reference":
        call = "fit" if work == "train" else "predict"
    record = dict(
        model="cifar",
        backend=backend,
        work=work,
        jit=jit,
        batch=64,
        memory_efficient=memory_efficient,
        images_per_second=images_per_second,
        step_seconds=64 / images_per_second,
        warmup_seconds=1.0,
    )
    if call is not None:
        record["call"] = call
    return record


def _machine():
    """The machine description `speed_report.write` puts in the files' header."""
    return dict(
        processor="cpu",
        platform="linux",
        cpus=2,
        python="3.11",
        quick=True,
        workloads=[w.__dict__ for w in workloads(True)],
        total_seconds=60,
        date="today",
    )


def test_reference_flop_count_matches_the_documented_count():
    torch = pytest.importorskip("torch")
    del torch
    from benchmarks.speed_reference import forward_flops, reference_model

    # docs/reference.md: 0.99 GFLOP per 32x32 image (CIFAR); 28.9 per 224x224 image (ImageNet (b)).
    assert forward_flops(reference_model("cifar"), 32) / 1e9 == pytest.approx(0.99, abs=0.01)
    assert forward_flops(reference_model("bijective"), 224) / 1e9 == pytest.approx(28.9, abs=0.1)


def test_report_ratios_targets_and_files(tmp_path, monkeypatch):
    monkeypatch.setattr(speed_report, "_default_memory_efficient", lambda: True)
    records = [
        dict(model="cifar", backend="reference", work="flops", forward_flops=1e9),
        dict(model="cifar", backend="reference", work="matmul_peak", gflops=200.0),
        _timing("reference", "train", 40.0),
        _timing("reference", "inference", 100.0),
        _timing("reference", "inverse", 100.0),
        # TensorFlow: the default mode (tf.function) meets the training target with both
        # calls; XLA is faster still, but it is not what the defaults run.
        _timing("tensorflow", "train", 30.0, "tf.function", memory_efficient=False),
        _timing("tensorflow", "train", 41.0, "tf.function", memory_efficient=True),
        _timing("tensorflow", "train", 40.0, "tf.function", True, call="train_on_batch"),
        _timing("tensorflow", "train", 60.0, "XLA", memory_efficient=True),
        _timing("tensorflow", "inference", 120.0, "tf.function"),
        _timing("tensorflow", "inference", 100.0, "tf.function", call="predict_on_batch"),
        _timing("tensorflow", "inverse", 114.0, "tf.function"),
        _timing("jax", "train", 20.0, "jax.jit", True),
        _timing("jax", "train", 40.0, "jax.jit", False),
        _timing("jax", "inference", 90.0, "jax.jit"),
        _timing("jax", "inverse", 60.0, "jax.jit"),
        dict(
            model="cifar",
            backend="torch",
            work="train",
            call="fit",
            jit="torch.compile",
            memory_efficient=False,
            error="RuntimeError: no compiler",
        ),
    ]
    summary = speed_report.summarize(records)
    targets = summary["cifar"]["targets"]
    # Targets read the default compilation and (patched above) memory_efficient=True.
    assert targets["train"]["fit"]["tensorflow"]["vs_reference"] == pytest.approx(41 / 40)
    assert targets["train"]["fit"]["tensorflow"]["met"]
    assert targets["train"]["train_on_batch"]["tensorflow"]["met"]  # 1.0x
    assert targets["train"]["fit"]["jax"] == dict(vs_reference=0.5, target=0.8, met=False)
    assert targets["inference"]["predict"]["tensorflow"]["met"]  # 1.2x >= 1.1x
    assert not targets["inference"]["predict_on_batch"]["tensorflow"]["met"]  # 1.0x
    assert targets["inference"]["predict"]["jax"]["met"]  # 0.9x >= 0.8x
    assert not targets["inverse"]["predict"]["jax"]["met"]  # 0.6x
    assert targets["reversible"]["tensorflow"]["time_vs_plain"] == pytest.approx(30 / 41)
    assert not targets["reversible"]["jax"]["met"]  # twice the plain step time
    tf_train = next(r for r in records if r["backend"] == "tensorflow" and r.get("jit") == "XLA")
    assert tf_train["gflops"] == pytest.approx(60 * 3)  # training counts 3x forward FLOPs
    assert tf_train["fraction_of_peak"] == pytest.approx(60 * 3 / 200)

    speed_report.write(records, _machine(), str(tmp_path))
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["summary"]["cifar"]["matmul_peak_gflops"] == 200.0
    table = (tmp_path / "speed.md").read_text()
    assert "| tensorflow | XLA | True | train | fit | 60.0 | 1.50 |" in table
    assert "failed: RuntimeError: no compiler" in table
    assert "- inference, `predict_on_batch`, x reference: tensorflow 1.00x (NOT met" in table
    assert "reversible training time / plain, jax (jax.jit, `fit`): 2.00x (NOT met" in table
    assert (tmp_path / "speed.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speed.json", "speed.md", "speed.png"]


def test_each_backend_is_compared_with_the_reference_runs_around_it(tmp_path):
    # The machine slows down during the run: the reference measures 40, 30 and 20 img/s
    # before, between and after two backends that each run at 0.9x of it.
    def tagged(row, **tags):
        return dict(row, **tags)

    records = [
        tagged(_timing("reference", "train", 40.0), round=0),
        tagged(_timing("tensorflow", "train", 31.5, "tf.function"), reference_rounds=[0, 1]),
        tagged(_timing("reference", "train", 30.0), round=1),
        tagged(_timing("jax", "train", 22.5, "jax.jit"), reference_rounds=[1, 2]),
        tagged(_timing("reference", "train", 20.0), round=2),
    ]
    speed_report.summarize(records)
    by_backend = {r["backend"]: r for r in records if r["backend"] != "reference"}
    assert by_backend["tensorflow"]["vs_reference"] == pytest.approx(0.9)
    assert by_backend["jax"]["vs_reference"] == pytest.approx(0.9)
    # Each reference run against the mean of all three shows the drift.
    assert [r["vs_reference"] for r in records if r["backend"] == "reference"] == (
        pytest.approx([40 / 30, 1.0, 20 / 30])
    )
    speed_report.write(records, _machine(), str(tmp_path))
    table = (tmp_path / "speed.md").read_text()
    assert "| reference | eager | False | train | loop, run 2 | 20.0 | 0.67 |" in table


def test_time_steps_excludes_the_warm_up_call(monkeypatch):
    # A clock that each step advances by a known amount, so the test does not depend on how
    # busy the machine is: the first call takes 10 s (a compilation), the others 1-3 s.
    from benchmarks import speed_setup

    durations = iter([10.0, 1.0, 3.0, 2.0, 1.0, 2.0])
    now = [0.0]
    monkeypatch.setattr(speed_setup.time, "perf_counter", lambda: now[0])

    def step():
        now[0] += next(durations)

    assert time_steps(step, 5) == (10.0, 2.0)


def test_memory_targets_read_the_deepest_and_shallowest_measurements():
    from benchmarks.memory_report import target_lines

    def record(backend, depth, mode, mib):
        return (backend, depth, mode), dict(activation_bytes=mib * 2**20)

    by_key = dict(
        [
            record("tensorflow", 6, "efficient", 10),
            record("tensorflow", 54, "efficient", 11),
            record("tensorflow", 54, "plain", 200),
            record("jax", 6, "efficient", 10),
            record("jax", 54, "efficient", 30),
            record("jax", 54, "plain", 120),
        ]
    )
    tf, jax = target_lines(by_key, ["tensorflow", "jax", "torch"])  # torch: not measured
    assert tf == (
        "- tensorflow, memory-efficient: 0.055 of plain at 54 blocks (met, <= 0.1); "
        "54 blocks / 6 blocks = 1.10 (met, <= 1.2)."
    )
    assert "0.250 of plain at 54 blocks (NOT met" in jax and "= 3.00 (NOT met" in jax


def _fake_clock_work(monkeypatch, durations):
    """Keras work and reference steps that advance a fake clock by the next of
    `durations[name]` each; `fit` runs its steps between a real StepTimer's batch hooks.
    Returns the list of steps run, by name."""
    from benchmarks import interleaved, speed_reference

    calls, now = [], [0.0]

    def step(name):
        def run():
            calls.append(name)
            now[0] += next(durations[name])

        return run

    def work(workload, memory_efficient):
        name = "reversible" if memory_efficient else "plain"

        def fit(callback, steps):
            for batch in range(steps):
                callback.on_train_batch_begin(batch)
                step(name + " fit")()
                callback.on_train_batch_end(batch, {})

        return {"train": {"on_batch": step(name), "fit": fit}}

    monkeypatch.setattr(interleaved, "keras_work", work)
    monkeypatch.setattr(
        speed_reference, "reference_steps", lambda workload: {"train": step("reference")}
    )
    monkeypatch.setattr(interleaved.time, "perf_counter", lambda: now[0])
    return calls


def test_interleaved_alternates_the_steps_and_divides_their_medians(monkeypatch):
    # Ours takes 2 s per call, the reference 3 s, except one slow call of each (a slow spell
    # of the machine falls on both alike); within `fit`, ours takes 4 s.
    from benchmarks import interleaved

    durations = {
        "plain": iter([9, 9, 2, 2, 7, 2]),
        "plain fit": iter([9, 9, 4, 4, 9, 4]),
        "reference": iter([9, 9, 3, 8, 3, 3] + [9, 9, 3, 3, 8, 3]),
    }
    calls = _fake_clock_work(monkeypatch, durations)
    on_batch, fit = interleaved.compare(workloads(quick=True)[0], False, steps=4)
    assert calls == ["plain", "reference"] * 6 + ["plain fit", "reference"] * 6
    assert (on_batch["call"], fit["call"]) == ("train_on_batch", "fit")
    assert (on_batch["keras_seconds"], on_batch["reference_seconds"]) == (2.0, 3.0)
    assert on_batch["x_reference"] == 1.5
    assert (fit["keras_seconds"], fit["reference_seconds"]) == (4.0, 3.0)
    assert fit["x_reference"] == 0.75
    assert "time_over_plain" not in on_batch and "time_over_plain" not in fit


def test_interleaved_takes_turns_between_plain_and_reversible_training(monkeypatch):
    # Plain steps take 2 s, reversible ones 3 s (1.5x); in `fit`, 4 s and 5 s. Each is
    # followed by a reference step; `fit` calls of two timed steps take turns, each call's
    # first step (the first call's first two) untimed.
    from benchmarks import interleaved

    durations = {
        "plain": iter([2] * 6),
        "reversible": iter([3] * 6),
        "plain fit": iter([9, 9, 4, 4, 9, 4, 4]),
        "reversible fit": iter([9, 9, 5, 5, 9, 5, 5]),
        "reference": iter([1] * 12 + [1] * 14),
    }
    calls = _fake_clock_work(monkeypatch, durations)
    plain, reversible, plain_fit, reversible_fit = interleaved.compare(
        workloads(quick=True)[0], True, steps=4
    )
    on_batch_round = ["plain", "reference", "reversible", "reference"]
    plain_call, reversible_call = (["plain fit", "reference"], ["reversible fit", "reference"])
    assert calls == (
        on_batch_round * 6
        + plain_call * 4
        + reversible_call * 4
        + plain_call * 3
        + reversible_call * 3
    )
    assert [r["memory_efficient"] for r in (plain, reversible, plain_fit, reversible_fit)] == [
        False,
        True,
        False,
        True,
    ]
    assert reversible["time_over_plain"] == 1.5
    assert reversible_fit["time_over_plain"] == 1.25
    assert (reversible_fit["keras_seconds"], reversible_fit["x_reference"]) == (5.0, 0.2)
    assert "time_over_plain" not in plain and "time_over_plain" not in plain_fit


def test_interleaved_fails_when_fit_reports_no_steps(monkeypatch):
    # A `fit` whose steps never reach the callback (as with steps_per_execution > 1 and
    # few batches) would leave the rounds waiting for timings forever.
    from benchmarks import interleaved

    _fake_clock_work(monkeypatch, {"plain": iter([1] * 6), "reference": iter([1] * 6)})
    silent = {"train": {"on_batch": lambda: None, "fit": lambda callback, steps: None}}
    monkeypatch.setattr(interleaved, "keras_work", lambda workload, memory_efficient: silent)
    with pytest.raises(RuntimeError, match="reported 0 steps to its callback, expected 6"):
        list(interleaved.compare(workloads(quick=True)[0], False, steps=4, calls=("fit",)))


@once_in("torch", "real steps of the Keras model and the reference, small batches")
def test_interleaved_measures_real_steps_of_both_models():
    import dataclasses

    from benchmarks import interleaved

    tiny = dataclasses.replace(workloads(quick=True)[0], train_batch=2, infer_batch=2)
    results = list(interleaved.compare(tiny, memory_efficient=True, steps=1))
    assert [(r["work"], r["call"], r["memory_efficient"]) for r in results] == [
        ("train", "train_on_batch", False),
        ("train", "train_on_batch", True),
        ("train", "fit", False),
        ("train", "fit", True),
        ("inference", "predict_on_batch", False),
        ("inference", "predict", False),
        ("inverse", "predict_on_batch", False),
        ("inverse", "predict", False),
    ]
    for r in results:
        assert r["keras_seconds"] > 0 and r["reference_seconds"] > 0
        assert r["x_reference"] == pytest.approx(r["reference_seconds"] / r["keras_seconds"])
    assert [r.get("time_over_plain", 0) > 0 for r in results] == [False, True] * 2 + [False] * 4


@once_in("jax", "runs the harness's own processes, whatever the suite's backend")
def test_a_failed_backend_fails_the_interleaved_run_and_before_after(tmp_path):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run(module, *flags):
        return subprocess.run(
            [sys.executable, "-m", module, *flags],
            cwd=root,
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=root),
        )

    # A backend Keras cannot import: its worker dies at start-up, as a broken install would.
    interleaved = run(
        "benchmarks.interleaved", "--backends=nosuchbackend", f"--output_dir={tmp_path / 'i'}"
    )
    assert interleaved.returncode != 0
    assert "| nosuchbackend | failed: ValueError: Unable to import backend" in interleaved.stdout
    assert "nosuchbackend (exit status 1)" in interleaved.stderr
    assert json.loads((tmp_path / "i" / "interleaved.json").read_text()) == []

    worktrees = subprocess.run(
        ["git", "worktree", "list"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    compared = run(
        "benchmarks.before_after",
        "--before=HEAD",
        "--backends=nosuchbackend",
        f"--output_dir={tmp_path / 'ba'}",
    )
    assert compared.returncode != 0
    # The error carries the failed run's own stderr, down to Keras' message.
    assert "benchmarks.interleaved failed for nosuchbackend" in compared.stderr
    assert "Unable to import backend : nosuchbackend" in compared.stderr
    assert not (tmp_path / "ba" / "before_after.json").exists()
    assert (
        subprocess.run(
            ["git", "worktree", "list"], cwd=root, capture_output=True, text=True, check=True
        ).stdout
        == worktrees
    )


def test_before_after_pairs_each_measurement_of_the_two_states():
    from benchmarks import before_after

    def result(backend, work, x, memory_efficient=False, over_plain=None):
        r = dict(
            backend=backend,
            model="cifar",
            work=work,
            call="train_on_batch" if work == "train" else "predict_on_batch",
            memory_efficient=memory_efficient,
            x_reference=x,
        )
        if over_plain is not None:
            r["time_over_plain"] = over_plain
        return r

    before = [
        result("torch", "train", 0.8),
        result("torch", "train", 0.5, memory_efficient=True, over_plain=1.6),
        result("jax", "inference", 0.5),  # a measurement only one state has
    ]
    after = [
        result("torch", "train", 1.1),
        result("torch", "train", 0.9, memory_efficient=True, over_plain=1.22),
    ]
    rows = before_after.table(before, after, ("old", "new")).splitlines()
    assert "old: x ref" in rows[0] and "new: time / plain" in rows[0]
    assert rows[2:] == [
        "| jax | cifar | inference | predict_on_batch | False | 0.50x |  |  |  |",
        "| torch | cifar | train | train_on_batch | False | 0.80x | 1.10x |  |  |",
        "| torch | cifar | train | train_on_batch | True | 0.50x | 0.90x | 1.60x | 1.22x |",
    ]


def test_op_profile_counts_convolutions_apart_from_the_rest():
    from benchmarks import op_profile

    times = {
        "_MklNativeFusedConv2D": (10.0, 4),  # TensorFlow's kernels
        "_MklMatMul": (2.0, 1),
        "Conv2DBackpropFilter": (3.0, 1),
        "aten::mkldnn_convolution": (5.0, 3),  # torch's operators
        "aten::convolution_backward": (4.0, 3),
        "aten::addmm": (1.0, 1),
        "aten::mm": (0.5, 1),
        "_MklNativeFusedBatchNormEx": (6.0, 2),
        "aten::native_batch_norm": (1.5, 2),
        "aten::sum": (0.25, 1),
        "AddV2": (0.75, 4),
    }
    assert op_profile.split(times) == (25.5, 8.5)


@pytest.mark.parametrize("work", ["inference", "train"])
def test_op_profile_sees_every_convolution_of_a_real_step(work):
    import keras
    import numpy as np

    from benchmarks import op_profile
    from tests.helpers import tiny_model

    backend = keras.backend.backend()
    if backend == "jax":
        pytest.skip("op_profile profiles TensorFlow and torch")
    profile = {"tensorflow": op_profile.tensorflow_op_times, "torch": op_profile.torch_op_times}
    # The tests' tiny i-RevNet has every kind of block the benchmark's models have (with the
    # CIFAR model, the training case took 33 s on TensorFlow; with this one, under 3 s).
    model = tiny_model()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    convolutions = sum(isinstance(layer, keras.layers.Conv2D) for layer in model._flatten_layers())
    assert convolutions == 3 * sum(model.stage_blocks)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")
    y = np.array([1, 2])
    if work == "train":
        step = lambda: model.train_on_batch(x, y)  # noqa: E731
    else:
        step = lambda: model.predict_on_batch(x)  # noqa: E731
    for _ in range(2):
        step()
    times = profile[backend](step, steps=2).host
    # Each convolution layer runs once per forward pass: TensorFlow's forward kernels (fused
    # with a BatchNorm, a ReLU or a padding or not) are "...Conv2D", torch's "aten::conv2d".
    if backend == "tensorflow":
        forward = [name for name in times if name.endswith("Conv2D")]
    else:
        forward = ["aten::conv2d"]
    assert sum(times[name][1] for name in forward) == convolutions
    convolution_ms, other_ms = op_profile.split(times)
    assert convolution_ms > 0 and other_ms > 0
    assert all(ms >= 0 and calls > 0 for ms, calls in times.values())


@once_in("torch", "torch.profiler of plain torch steps")
def test_op_profile_counts_the_steps_host_waits():
    import torch

    from benchmarks import op_profile

    x = torch.randn(64, 64)

    def step(waits):
        y = x @ x
        for _ in range(waits):
            y = y * float((y.sum() > 0).item())  # the host reads a result: it waits for it
        return y

    profiles = {
        waits: op_profile.torch_op_times(lambda w=waits: step(w), steps=3) for waits in (0, 2)
    }
    assert profiles[0].host_waits == 0 and profiles[2].host_waits == 2
    assert profiles[2].host["aten::mm"][1] == 1
    # Without a GPU there are no kernels to report.
    assert profiles[2].device == {} and profiles[2].kernels == {} and profiles[2].device_total == 0


def test_tensorflow_traced_step_bytes_count_what_the_tensors_requested():
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's profiler and allocator")
    import tensorflow as tf

    from benchmarks.allocations import tensorflow_traced_step_bytes

    x, z = tf.ones((1000, 500)), tf.ones((1000, 301))

    @tf.function
    def step(x, z):
        total = tf.reduce_sum(tf.sin(x))  # a 2,000,000-byte temporary, released at once
        shifted = z + total  # 1,204,000 bytes (not a multiple of the allocator's 256)
        return shifted, tf.cos(shifted)  # both returned: neither buffer is reused

    step(x, z)
    measured = tensorflow_traced_step_bytes(lambda: step(x, z))
    # At the peak the two results (2,408,000 bytes) and a scalar or two; the temporary is
    # gone. The allocator counts its chunks: rounded up, and possibly the temporary's.
    assert 2_408_000 <= measured["peak_tensor_bytes"] <= 2_408_000 + 64, measured
    assert measured["allocator_peak_bytes"] >= measured["peak_tensor_bytes"], measured


@once_in("tensorflow", "runs the memory benchmark's own TensorFlow processes")
def test_memory_benchmark_takes_the_median_of_tensorflow_calls(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "-m", "benchmarks.memory", "--backends=tensorflow"]
    # One depth: each depth and mode is a process of its own that traces its steps (about
    # 25 s apiece here). The targets across depths are checked by
    # test_memory_targets_read_the_deepest_and_shallowest_measurements.
    command += ["--depths=3", "--batch_size=4", "--timed_steps=1", "--tensorflow_calls=3"]
    command += ["--tensorflow_inter_op_threads=1", f"--output_dir={tmp_path}"]
    subprocess.run(command, cwd=root, check=True, capture_output=True, timeout=900)
    records = json.loads((tmp_path / "memory.json").read_text())
    assert {(r["depth"], r["mode"]) for r in records} == {(3, "plain"), (3, "efficient")}
    for record in records:
        low, high = record["peak_tensor_bytes_range"]
        assert 0 < low <= record["peak_tensor_bytes"] <= high
        assert record["activation_bytes"] == (
            record["peak_tensor_bytes"] - record["weight_gradient_bytes"]
        )
        # Each call's tensors' own bytes are at most the allocator's chunks, so the medians too.
        assert record["peak_tensor_bytes"] <= record["allocator_peak_bytes"]
        low, high = record["allocator_peak_bytes_range"]
        assert low <= record["allocator_peak_bytes"] <= high
        assert "median of 3 calls" in record["method"]
        assert record["inter_op_threads"] == 1 and "1 inter-op thread" in record["method"]
    assert "median of 3 calls" in (tmp_path / "memory.md").read_text()

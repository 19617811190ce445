"""The speed benchmark's bookkeeping: FLOP count, ratios, targets and the files it writes."""

import json

import pytest

from benchmarks import speed_report
from benchmarks.speed_setup import time_steps, workloads


def _timing(backend, work, images_per_second, jit="eager", memory_efficient=False):
    return dict(
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


def test_reference_flop_count_matches_the_documented_count():
    torch = pytest.importorskip("torch")
    del torch
    from benchmarks.speed_reference import forward_flops, reference_model

    # docs/reference.md: 0.99 GFLOP per 32x32 image (CIFAR); 28.9 per 224x224 image (ImageNet (b)).
    assert forward_flops(reference_model("cifar"), 32) / 1e9 == pytest.approx(0.99, abs=0.01)
    assert forward_flops(reference_model("bijective"), 224) / 1e9 == pytest.approx(28.9, abs=0.1)


def test_report_ratios_targets_and_files(tmp_path):
    records = [
        dict(model="cifar", backend="reference", work="flops", forward_flops=1e9),
        dict(model="cifar", backend="reference", work="matmul_peak", gflops=200.0),
        _timing("reference", "train", 40.0),
        _timing("reference", "inference", 100.0),
        _timing("tensorflow", "train", 30.0, "tf.function"),
        _timing("tensorflow", "train", 44.0, "XLA"),
        _timing("tensorflow", "inference", 120.0, "tf.function"),
        _timing("tensorflow", "inverse", 114.0, "tf.function"),
        _timing("jax", "train", 20.0, "jax.jit", True),
        _timing("jax", "inference", 90.0, "jax.jit"),
        _timing("jax", "inverse", 60.0, "jax.jit"),
        dict(
            model="cifar",
            backend="torch",
            work="train",
            jit="torch.compile",
            memory_efficient=False,
            error="RuntimeError: no compiler",
        ),
    ]
    summary = speed_report.summarize(records)
    targets = summary["cifar"]["targets"]
    assert targets["train"]["best_backend"] == "tensorflow"
    assert targets["train"]["best_vs_reference"] == pytest.approx(44 / 40)  # best mode: XLA
    assert targets["train"]["best_met"] and not targets["train"]["every_backend_met"]
    assert targets["inference"]["per_backend"]["jax"] == pytest.approx(0.9)
    assert targets["inverse"]["tensorflow"]["met"] and not targets["inverse"]["jax"]["met"]
    tf_train = next(r for r in records if r["backend"] == "tensorflow" and r.get("jit") == "XLA")
    assert tf_train["gflops"] == pytest.approx(44 * 3)  # training counts 3x forward FLOPs
    assert tf_train["fraction_of_peak"] == pytest.approx(44 * 3 / 200)

    machine = dict(
        processor="cpu",
        platform="linux",
        cpus=2,
        python="3.11",
        quick=True,
        workloads=[w.__dict__ for w in workloads(True)],
        total_seconds=60,
        date="today",
    )
    speed_report.write(records, machine, str(tmp_path))
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["summary"]["cifar"]["matmul_peak_gflops"] == 200.0
    table = (tmp_path / "speed.md").read_text()
    assert "| tensorflow | XLA | False | train | 44.0 | 1.10 |" in table
    assert "failed: RuntimeError: no compiler" in table
    assert "every backend >= 0.7x: NOT met" in table
    assert (tmp_path / "speed.png").read_bytes()[:4] == b"\x89PNG"


def test_time_steps_excludes_the_warm_up_call():
    calls = []

    def step():
        calls.append(None)
        if len(calls) == 1:
            sum(range(2_000_000))  # a slow first call, like a compilation

    first, median = time_steps(step, 5)
    assert len(calls) == 6 and first > median

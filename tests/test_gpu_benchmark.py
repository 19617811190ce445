"""The GPU benchmark's bookkeeping: the largest-batch search and the table's ratios.

The measurements themselves need a GPU (`python -m benchmarks.gpu`); its `--cpu_dry_run`
runs every worker's code path on the CPU at tiny sizes.
"""

import pytest

from benchmarks import batch_search, gpu_report
from benchmarks.batch_search import Probe, largest_batch, linear_estimate
from tests.helpers import once_in


def _memory(fixed, per_image, capacity):
    """A probe on a device whose step needs `fixed + per_image * batch` bytes."""
    calls = []

    def probe(batch):
        calls.append(batch)
        need = fixed + per_image * batch
        return Probe(batch, need <= capacity, need if need <= capacity else None)

    return probe, calls


def test_linear_estimate_is_where_the_line_through_two_probes_meets_capacity():
    probe, _ = _memory(fixed=3 << 30, per_image=300 << 20, capacity=140 << 30)
    estimate = linear_estimate(probe(8), probe(16), 140 << 30)
    assert estimate == (140 - 3) * 1024 // 300  # 467
    assert linear_estimate(Probe(8, True, None), Probe(16, True, None), 1 << 30) is None
    assert linear_estimate(Probe(8, True, 100), Probe(16, True, 100), 1 << 30) is None


@pytest.mark.parametrize("estimate", [300, 467, 700])
def test_search_brackets_the_largest_batch_within_its_resolution(estimate):
    probe, calls = _memory(fixed=3 << 30, per_image=300 << 20, capacity=140 << 30)
    low, high, probes = largest_batch(probe, estimate, known_fit=16, resolution=0.02)
    assert [p.batch for p in probes] == calls and calls[0] == estimate and len(calls) <= 8
    assert [p.fits for p in probes] == [b <= 467 for b in calls]
    assert low == max(b for b in calls if b <= 467)
    assert low <= 467 < high and high - low <= 0.02 * low


def test_search_stops_after_max_probes_with_what_it_verified():
    probe, calls = _memory(fixed=0, per_image=1, capacity=10_000)
    low, high, probes = largest_batch(probe, 100, known_fit=16, max_probes=2)
    assert len(calls) == 2 and high is None and low == calls[-1] > 100


def test_search_does_not_start_a_probe_that_would_end_after_the_deadline(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(batch_search.time, "time", lambda: now[0])

    def probe(batch):  # each probe takes 60 s (a compilation)
        now[0] += 60
        return Probe(batch, batch <= 500, 1)

    low, high, probes = largest_batch(probe, 400, known_fit=16, deadline=1000 + 150)
    # Started at 1000 and 1060; a third would end at 1180, after the deadline.
    assert [p.batch for p in probes] == [400, 433] and (low, high) == (433, None)


def _speed(kind, backend, precision, model, work, images_per_second, memory_efficient=False):
    job = dict(kind=kind, precision=precision)
    if backend != "reference":
        job["backend"] = backend
    return dict(
        job=job,
        model=model,
        work=work,
        memory_efficient=memory_efficient,
        images_per_second=images_per_second,
        warmup_seconds=1.0,
        batch=64,
    )


def test_speed_rows_compare_each_backend_with_the_reference_in_the_same_precision():
    records = [
        _speed("reference_speed", "reference", "float32", "cifar", "train", 1000.0),
        _speed("reference_speed", "reference", "bfloat16", "cifar", "train", 2000.0),
        _speed("keras_speed", "torch", "float32", "cifar", "train", 1100.0),
        _speed("keras_speed", "jax", "float32", "cifar", "train", 1500.0),
        _speed("keras_speed", "jax", "bfloat16", "cifar", "train", 3000.0),
        _speed("keras_speed", "jax", "float32", "cifar", "train", 800.0, memory_efficient=True),
        dict(job=dict(kind="keras_speed", backend="torch"), work="worker", error="exit status 1"),
    ]
    rows = {(r["precision"], r["memory_efficient"]): r for r in gpu_report.speed_rows(records)}
    assert rows["float32", False]["torch_vs_reference"] == pytest.approx(1.1)
    assert rows["float32", False]["jax_vs_reference"] == pytest.approx(1.5)
    assert rows["bfloat16", False]["jax_vs_reference"] == pytest.approx(1.5)
    assert "torch" not in rows["bfloat16", False]
    # Memory-efficient training against the reference's plain training.
    assert rows["float32", True]["jax_vs_reference"] == pytest.approx(0.8)
    table = gpu_report.markdown(records, dict(workloads={}, date="today"))
    assert "| cifar | train | False | bfloat16 | 2,000.0 | - | - | 3,000.0 | 1.50 |" in table
    assert "exit status 1" in table


def test_search_stops_once_its_limit_fits():
    probe, calls = _memory(fixed=0, per_image=1, capacity=10_000)
    low, high, probes = largest_batch(probe, 100, known_fit=16, limit=120)
    assert calls == [100, 109, 120] and (low, high) == (120, None)  # 8 %, then 16 % capped


def test_bracket_of_a_search_cut_short():
    probes = [Probe(8, True, 1), Probe(16, True, 2), Probe(900, False), Probe(500, True, 9)]
    assert batch_search.bracket(probes) == (500, 900)
    assert batch_search.bracket(probes[:2]) == (16, None)
    assert batch_search.bracket([Probe(8, False)]) == (None, 8)


def test_a_search_by_memory_plan_says_so_and_whether_its_answer_ran():
    def search(memory_efficient, check):
        probes = [vars(Probe(8, True, 2**30)), vars(Probe(16, True, 2**31))]
        return dict(
            job=dict(kind="keras_largest_batch", backend="jax"),
            work="largest_batch",
            by="xla_analysis",
            model="bijective",
            memory_efficient=memory_efficient,
            largest_fitting=16,
            smallest_failing=None,
            estimate=16,
            probes=probes,
            check=check,
        )

    records = [
        search(False, dict(batch=16, ran=True, peak_bytes=3 * 2**30)),
        search(True, dict(batch=16, ran=False, error="RESOURCE_EXHAUSTED: out of memory")),
    ]
    table = gpu_report.markdown(records, dict(workloads={}, date="today"))
    assert "| 1 | jax | False | 16 | - | 2.0 | 128.0 | 16 | 8, 16 |" in table
    assert "memory_efficient=False: probes are XLA's memory plan" in table
    assert "batch 16, ran (peak 3.0 GiB allocated)" in table
    assert "batch 16, did not run: RESOURCE_EXHAUSTED" in table


@once_in("jax", "the merge is file bookkeeping, the same on every backend")
def test_merge_keeps_each_run_with_its_own_reference(tmp_path):
    # Device time comes in short leases: `--merge` joins runs, merged files included, and
    # each backend stays compared with the reference measured in its own run.
    import json
    import os
    import subprocess
    import sys

    def run_file(name, reference, jax):
        directory = tmp_path / name
        directory.mkdir()
        results = [
            _speed("reference_speed", "reference", "float32", "cifar", "train", reference),
            _speed("keras_speed", "jax", "float32", "cifar", "train", jax),
        ]
        machine = dict(date=name, total_seconds=1.0, workloads={})
        (directory / "gpu.json").write_text(json.dumps(dict(machine=machine, results=results)))
        (directory / "gpu_log.txt").write_text(f"log of {name}\n")
        return str(directory / "gpu.json")

    def merge(paths, output):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.gpu",
                f"--merge={','.join(paths)}",
                f"--output_dir={output}",
            ],
            check=True,
            capture_output=True,
            # The quickest backend to import: the merge uses none.
            env=dict(os.environ, KERAS_BACKEND="jax"),
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        payload = json.loads((output / "gpu.json").read_text())
        return payload, gpu_report.speed_rows(payload["results"])

    first = merge([run_file("a", 100.0, 200.0), run_file("b", 50.0, 150.0)], tmp_path / "ab")
    _, rows = merge([str(tmp_path / "ab" / "gpu.json"), run_file("c", 10.0, 5.0)], tmp_path / "abc")
    assert [r["run"] for r in first[1]] == [1, 2]
    assert [(r["run"], r["jax_vs_reference"]) for r in rows] == [(1, 2.0), (2, 3.0), (3, 0.5)]
    logs = [(tmp_path / "abc" / f"gpu_log_run{n}.txt").read_text() for n in (1, 2, 3)]
    assert logs == ["log of a\n", "log of b\n", "log of c\n"]

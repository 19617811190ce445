import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

# JAX's suite is mostly XLA compiling small programs (each op run eagerly, each step of a
# tiny model), and most of a compilation is code generation. Two of XLA's options make it
# cheaper: no LLVM optimisation of the generated code (the JAX suite took 8.5 instead of
# 13.3 minutes in one process), and XLA's older emitters for its fused loops instead of the
# MLIR-based ones (a convolution's gradient compiles in 80 instead of 120 ms; test_model,
# test_layers and test_reversible 1.3-1.6x faster). Everything XLA decides before code
# generation is the same (fusions, buffer assignment: the memory tests read the same
# bytes); results differ by float32 rounding (loops vectorised differently: a tiny model's
# weights after three SGD steps within 9e-7 relative of XLA's defaults), inside every
# test's bounds; the generated code's speed is benchmarks/' business, run with XLA's
# defaults. Set before Keras imports JAX, and inherited by the programs the tests start
# (and by pytest-xdist's workers, which then find them set). XLA aborts the process on a
# flag it does not know, and a later jaxlib may drop one: each is tried in a child process
# first (all in one child; each alone only if that fails), and one that is already in
# XLA_FLAGS is left as given.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def _xla_takes(flags):
    env = dict(os.environ, XLA_FLAGS=" ".join(flags))
    check = [sys.executable, "-c", "import jax; jax.devices()"]
    return subprocess.run(check, env=env, capture_output=True).returncode == 0


if os.environ.get("KERAS_BACKEND") == "jax":
    given = os.environ.get("XLA_FLAGS", "")
    wanted = [f for f in TEST_XLA_FLAGS if f.split("=")[0] not in given]
    if wanted and not _xla_takes(wanted):
        wanted = [f for f in wanted if _xla_takes([f])]
    os.environ["XLA_FLAGS"] = " ".join([given] + wanted).strip()

# The JAX suite's processes (two pytest-xdist workers, the programs the tests start) compile
# many of the same programs: the tiny model's eager ops and steps. JAX's persistent
# compilation cache, every program kept, lets each be compiled once per suite run (the JAX
# suite's tests took 911 instead of 981 s of work; test_layers 79 instead of 99 s). A fresh
# directory per run, made by the process that runs pytest (its workers and programs inherit
# it) and removed when it ends: nothing carries over from one run to the next. A cache
# directory you set yourself is left as you set it.
if os.environ.get("KERAS_BACKEND") == "jax" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="keras_irevnet_tests_jax_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def _cpus_per_worker():
    """This process's share of the CPUs when it is one of pytest-xdist's workers, else None."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if not workers:
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) // workers)


# `make test` runs a worker per CPU, and torch gives each a thread per CPU, whose OpenMP
# threads spin while they wait: two workers' threads fight over two CPUs. The tests' models
# are small, so a worker's share of the CPUs is all it needs. Measured with seven of the
# torch suite's test files on two workers, two runs each way: 112 and 133 s against 173 and
# 187 s. (TensorFlow's suite measured the same either way, JAX's within its noise: both are
# left as they set themselves up.) Set before Keras imports torch, and inherited by the
# programs the tests start: the thread count decides torch's convolution kernels and so
# their float32 rounding, and the fault tests compare a program's weights bit for bit with
# the test's own.
_threads = _cpus_per_worker()
if os.environ.get("KERAS_BACKEND") == "torch" and _threads:
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))

import keras  # noqa: E402

# The repository root, so tests can import applications/ and benchmarks/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if keras.backend.backend() == "tensorflow":
    # The step-memory tests read TensorFlow's allocator statistics (before its first op).
    from benchmarks.allocations import keep_tensorflow_cpu_statistics

    keep_tensorflow_cpu_statistics()


# `make test` hands the test files to its worker processes (pytest-xdist, `--dist=loadfile`)
# in collection order, one to each at first and the next whenever one is nearly done. A long
# file handed out last keeps one worker busy while the other waits: each suite's longest
# files (several programs in subprocesses, the full-size models, many compilations on JAX)
# go first, longest first, as measured in that suite; the rest follow in pytest's order. (With
# one list for all three suites, TensorFlow's benchmark and kernel tests came last: one worker
# waited 24 s for the other at the end of the TensorFlow suite, 12 s in torch's.) It changes
# how long a suite takes, never what it checks.
LONGEST_FILES_FIRST = {
    "tensorflow": (
        "test_train_faults.py",
        "test_export_faults.py",
        "test_reversible.py",
        "test_benchmarks.py",
        "test_model.py",
        "test_train.py",
        "test_export.py",
        "test_data.py",
        "test_analysis.py",
        "test_tensorflow_kernels.py",
        "test_evaluation_programs.py",
        "test_callbacks.py",
        "test_weights_files.py",
        "test_official_weights.py",
    ),
    "jax": (
        "test_reversible.py",
        "test_model.py",
        "test_export.py",
        "test_train_faults.py",
        "test_analysis.py",
        "test_layers.py",
        "test_train.py",
        "test_weights_files.py",
        "test_evaluation_programs.py",
        "test_data.py",
        "test_benchmarks.py",
        "test_fusion_boundary.py",
        "test_official_weights.py",
        "test_callbacks.py",
    ),
    "torch": (
        "test_model.py",
        "test_train_faults.py",
        "test_pretrained.py",
        "test_train.py",
        "test_export.py",
        "test_benchmarks.py",
        "test_official_weights.py",
        "test_data.py",
        "test_analysis.py",
        "test_evaluation_programs.py",
    ),
}


def pytest_collection_modifyitems(items):
    longest = LONGEST_FILES_FIRST.get(keras.backend.backend(), ())
    rank = {name: i for i, name in enumerate(longest)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _seed_and_policy():
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def float64_enabled():
    """Turns on JAX's 64-bit mode for one test (JAX computes float64 as float32 otherwise)."""
    from tests.helpers import float64_mode

    with float64_mode():
        yield

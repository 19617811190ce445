import os
import sys

# JAX's suite is mostly XLA compiling small programs (each op run eagerly, each step of a
# tiny model), and most of a compilation is LLVM optimising the generated code. Without
# that optimisation the JAX suite takes 8.5 instead of 13.3 minutes. Everything XLA decides
# before code generation is the same (fusions, buffer assignment: the memory tests read the
# same bytes); results differ by float32 rounding (loops vectorised differently: a tiny
# model's weights after three steps within 1.6e-6 relative), inside every test's bounds;
# the generated code's speed is benchmarks/' business, run with XLA's defaults. Set before
# Keras imports JAX, and inherited by the programs the tests start.
if os.environ.get("KERAS_BACKEND") == "jax":
    os.environ["XLA_FLAGS"] = " ".join(
        filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"])
    )

import keras  # noqa: E402
import pytest

# The repository root, so tests can import applications/ and benchmarks/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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

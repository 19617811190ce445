import os
import sys

import keras
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

# The README's two commands: `make demo` (the main job) and `make test` (the suite on all
# three backends). Both create the virtualenv and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BACKENDS := tensorflow jax torch

.PHONY: setup demo test test-quick lint benchmark

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# CPU builds: torch 2.13.0 is the CPU wheel on this machine's disk; see the README for GPUs.
	# Leave pip's byte-compilation on: where PYTHONDONTWRITEBYTECODE is set (this project's
	# machines) Python never writes what it compiles, and with --no-compile every process of
	# the suite compiled TensorFlow and Keras from source (TensorFlow suite 495 s, not 370 s).
	$(PY) -m pip install "torch==2.13.0" -e ".[jax,torch,analysis,test]"
	touch $@

setup: $(VENV)/.installed

RUN_DIR := runs/irevnet_tiny_digits

# Train on the offline digits data, invert (figures + JSON), export (SavedModel + ONNX).
# Run again, it resumes the finished run (nothing to train) and says the export is done.
demo: setup
	$(PY) -m applications.train  # no flags: the offline default, into $(RUN_DIR)
	$(PY) -m applications.invert --model_path=$(RUN_DIR)/model.keras --output_dir=$(RUN_DIR)/inversion
	$(PY) -m applications.export --model_path=$(RUN_DIR)/model.keras \
		--saved_model_dir=$(RUN_DIR)/saved_model --onnx_path=$(RUN_DIR)/onnx

# Lint and format check (ruff, configured in pyproject.toml), then one pytest run per
# backend; all three run, and the target fails if any failed. Each run spreads its test files
# over one worker process per CPU this process may run on (pytest-xdist; at most 4, each
# holds a backend and its models in memory): the tests are single-threaded, mostly compiling
# and starting programs, so two CPUs run the suite in a little over half the time. (xdist's
# own "auto" counts physical cores, one on a 2-vCPU machine whose vCPUs are one core's two
# threads.) The order of the files is tests/conftest.py's (the longest first).
# TEST_WORKERS=0 runs each suite in one process.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; cpus = os.sched_getaffinity(0) if hasattr(os, \"sched_getaffinity\") else range(os.cpu_count() or 1); print(min(4, len(cpus)))")
test: lint
	@failed=""; \
	for backend in $(BACKENDS); do \
		echo "=== KERAS_BACKEND=$$backend"; \
		KERAS_BACKEND=$$backend $(PY) -m pytest tests -q -p no:cacheprovider \
			-n $(TEST_WORKERS) --dist=loadfile --no-loadscope-reorder \
			$(PYTEST_ARGS) || failed="$$failed $$backend"; \
	done; \
	if [ -n "$$failed" ]; then echo "FAILED on:$$failed"; exit 1; fi

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The same without the tests marked slow (programs in subprocesses, long runs): minutes.
test-quick: setup
	$(MAKE) test PYTEST_ARGS='-m "not slow" $(PYTEST_ARGS)'

# Speed against a plain-torch i-RevNet on this machine (README "Performance"); about an hour.
# BENCHMARK_ARGS=--quick for a short version.
benchmark: setup
	$(PY) -m benchmarks.run $(BENCHMARK_ARGS)
	$(PY) -m benchmarks.conv_kernels

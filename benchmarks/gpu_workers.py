"""What one GPU benchmark worker process measures (`benchmarks/gpu.py` runs them).

Each function yields result dicts. Keras workers set the dtype policy before building a
model: "bfloat16" means Keras' "mixed_bfloat16" (float32 weights, bfloat16 computation),
the reference's counterpart `torch.autocast` to bfloat16.
"""

import concurrent.futures
import gc
import json
import os
import tempfile
import time

import numpy as np

from benchmarks import batch_search
from benchmarks.speed_setup import MODELS


def _is_out_of_memory(error):
    text = f"{type(error).__name__}: {error}"
    return any(mark in text for mark in ("OutOfMemoryError", "RESOURCE_EXHAUSTED", "out of memory"))


# ---- the plain-torch reference ----


def _torch_device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def reference_speed(workload, precision):
    from benchmarks import speed_reference

    yield from speed_reference.measure(workload, device=_torch_device(), precision=precision)


def reference_largest_batch(workload, deadline, max_probes, limit):
    """The reference's largest training batch (plain autodiff: it has no reversible mode)."""
    import torch
    from torch import nn

    from benchmarks import speed_reference

    device = _torch_device()
    torch.backends.cudnn.benchmark = True
    model = speed_reference.reference_model(workload.model).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    classes = MODELS[workload.model]["classes"]
    tile = torch.randn(16, 3, workload.image_size, workload.image_size, device=device)

    def step(batch):
        x = tile.repeat((batch + 15) // 16, 1, 1, 1)[:batch]
        y = torch.randint(0, classes, (batch,), device=device)
        optimizer.zero_grad()
        logits, _ = model(x)
        nn.functional.cross_entropy(logits, y).backward()
        optimizer.step()
        del x, logits

    fields = dict(model=workload.model, memory_efficient=False)
    yield from _search(step, _TorchMemory(), deadline, max_probes, limit, fields)


# ---- keras_irevnet on the current backend ----


def _set_precision(precision):
    import keras

    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")


def keras_speed(workload, precision, works):
    """`fit` for "train" / "train_memory_efficient", `predict` for "inference" and
    "inverse" (on `inverse_model()`), each with Keras' default compilation for the backend."""
    import keras

    from benchmarks import speed_keras

    _set_precision(precision)
    memory = _keras_memory()
    rng = np.random.default_rng(0)
    classes = MODELS[workload.model]["classes"]
    jit = "auto"  # Keras' default: jax.jit on JAX, eager on torch
    mode = speed_keras.JIT_MODES[keras.backend.backend()][keras.backend.backend() == "jax"]
    for work in works:
        fields = dict(jit=mode, memory_efficient=work == "train_memory_efficient")
        if work.startswith("train"):
            n = workload.train_batch * (1 + workload.steps)
            x = rng.standard_normal((n,) + workload.image_shape).astype("float32")
            y = rng.integers(0, classes, n)
            fields.update(work="train", call="fit", batch=workload.train_batch)
            memory.reset()

            def train(fields=fields, x=x, y=y):
                model = speed_keras._compiled(workload, jit, fields["memory_efficient"])
                return speed_keras._fit(model, workload.train_batch, x, y)

            result = speed_keras._guarded(train, fields)
            # JAX's peak is the process' so far, not this step's: torch's alone is reported.
            yield dict(result, **(memory.peak() if keras.backend.backend() == "torch" else {}))
        else:
            n = workload.infer_batch * (1 + workload.steps)
            x = rng.standard_normal((n,) + workload.image_shape).astype("float32")
            fields.update(work=work, call="predict", batch=workload.infer_batch)

            def run(work=work, x=x):
                model = speed_keras._model(workload, memory_efficient=False)
                if work == "inverse":
                    phi = keras.ops.convert_to_numpy(model.features(x[: workload.infer_batch]))
                    x = np.concatenate([phi] * (1 + workload.steps))
                    model = model.inverse_model()
                return speed_keras._predict(model, x, workload.infer_batch)

            yield speed_keras._guarded(run, fields)
        gc.collect()


def keras_largest_batch(workload, memory_efficient, deadline, max_probes, limit):
    """The largest batch `train_on_batch` runs at on torch's first accelerator (JAX:
    `jax_largest_batch_by_analysis`)."""
    import keras

    from benchmarks import speed_keras

    _set_precision("float32")
    model = speed_keras._compiled(workload, "auto", memory_efficient)
    classes = MODELS[workload.model]["classes"]
    tile = np.random.default_rng(0).standard_normal((16,) + workload.image_shape).astype("float32")

    def step(batch):
        x = np.tile(tile, ((batch + 15) // 16, 1, 1, 1))[:batch]
        y = np.arange(batch) % classes
        keras.ops.convert_to_numpy(model.train_on_batch(x, y))

    fields = dict(model=workload.model, memory_efficient=memory_efficient)
    yield from _search(step, _keras_memory(), deadline, max_probes, limit, fields)


def jax_largest_batch_by_analysis(workload, memory_efficient, deadline, max_probes, limit):
    """JAX: the largest training batch by XLA's own plan of the step's device memory.

    A probe is a compilation of the training step (`jax.jit` of the model's `train_step`,
    as Keras' `train_on_batch` compiles it) for the batch, without running it; its memory
    analysis (arguments, outputs and temporaries, less the donated state) is compared with
    what JAX's allocator may hold. JAX's own peak statistics cannot be reset, and the first
    compilation's autotuning of the convolutions sets a peak that hides the steps' own, so
    two small real steps cannot give bytes per image here. The search's result is then run
    for real once (one process at a time, through a file lock), to check the plan."""
    import jax

    from benchmarks import speed_keras
    from keras_irevnet.models import xla_cpu_options

    _set_precision("float32")
    model = speed_keras._compiled(workload, "auto", memory_efficient)
    classes = MODELS[workload.model]["classes"]
    one = np.zeros((1,) + workload.image_shape, "float32")
    # Creates the optimizer's and the metrics' variables without compiling a step.
    model._symbolic_build(data_batch=(one, np.zeros((1,), "int32")))
    state = model._get_jax_state(
        trainable_variables=True,
        non_trainable_variables=True,
        optimizer_variables=True,
        metrics_variables=True,
    )
    step = jax.jit(
        model.train_step,
        donate_argnums=0,
        compiler_options=xla_cpu_options.jax_compiler_options(),
    )
    capacity = _JaxMemory().capacity()
    fields = dict(model=workload.model, memory_efficient=memory_efficient, by="xla_analysis")
    compiled = {}

    def probe(batch):
        start = time.time()
        x = jax.ShapeDtypeStruct((batch,) + workload.image_shape, "float32")
        y = jax.ShapeDtypeStruct((batch,), "int32")
        try:
            compiled[batch] = step.lower(state, (x, y)).compile()
            m = compiled[batch].memory_analysis()
            need = (
                m.argument_size_in_bytes
                + m.output_size_in_bytes
                + m.temp_size_in_bytes
                - m.alias_size_in_bytes
            )
            result = batch_search.Probe(batch, need <= capacity, need)
        except Exception as error:  # the compilation itself can fail at a large batch
            text = f"{type(error).__name__}: {error}"
            result = batch_search.Probe(
                batch, False, error=None if _is_out_of_memory(error) else text[:300]
            )
        result.seconds = time.time() - start
        print("RESULT " + json.dumps(dict(fields, work="probe", **vars(result))), flush=True)
        return result

    # Two compilations at once: XLA compiles outside the GIL, and each takes most of a minute.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        small, large = pool.map(probe, (8, 16))
    # The plan is close to linear in the batch; a little under the line, a run fits too.
    result = _search_from(probe, small, large, capacity, deadline, max_probes, limit, fields, 0.98)
    if "error" in result:
        yield result
        return
    low = result["largest_fitting"]
    # The check: one real step at the batch the plan says fits.
    check = dict(batch=low, ran=False)
    if low in compiled and time.time() < deadline:
        import fcntl

        with open(os.path.join(tempfile.gettempdir(), "keras_irevnet_gpu_run.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            x = np.tile(
                np.random.default_rng(0).standard_normal((16,) + workload.image_shape),
                ((low + 15) // 16, 1, 1, 1),
            )[:low].astype("float32")
            y = (np.arange(low) % classes).astype("int32")
            try:
                logs, _ = compiled[low](state, (x, y))
                check.update(ran=True, loss=float(np.asarray(logs["loss"])))
                check.update(_JaxMemory().peak())
            except Exception as error:
                check.update(error=f"{type(error).__name__}: {error}"[:300])
            # The lock is held to the process' end, which gives the memory back.
            result["check"] = check
            yield result
            os._exit(0)
    result["check"] = check
    yield result


def _search(step, memory, deadline, max_probes, limit, fields):
    """Two small probes, the linear estimate from their peaks, then `largest_batch`. Each
    probe is one training step; one step before them creates the optimizer's state, which
    the probes' peaks then include."""

    def probe(batch):
        memory.reset()
        start = time.time()
        try:
            step(batch)
            result = batch_search.Probe(batch, True, memory.peak().get("peak_bytes"))
        except Exception as error:
            # Anything else that fails at a large batch (a kernel's size limit, say) also
            # bounds the batch a user can train at; the probe keeps its message.
            text = f"{type(error).__name__}: {error}"
            result = batch_search.Probe(
                batch, False, error=None if _is_out_of_memory(error) else text[:300]
            )
            del error
        gc.collect()
        memory.release()
        result.seconds = time.time() - start
        # Printed as it happens: a probe can break the process (a CUDA error after running
        # out of memory, say), and the search's bracket is then rebuilt from these lines.
        print("RESULT " + json.dumps(dict(fields, work="probe", **vars(result))), flush=True)
        return result

    step(8)
    small, large = probe(8), probe(16)
    # Aim a little under the line: a probe that fits is cheaper than one that fails.
    yield _search_from(
        probe, small, large, memory.capacity(), deadline, max_probes, limit, fields, 0.97
    )


def _search_from(probe, small, large, capacity, deadline, max_probes, limit, fields, margin):
    """The search's result from its two small probes: `margin` times the linear estimate
    (32 without one: no allocator statistics, or no growth), then `largest_batch`."""
    if not (small.fits and large.fits):
        return dict(
            fields, work="largest_batch", error=f"batch 8 or 16 does not fit: {small}, {large}"
        )
    estimate = batch_search.linear_estimate(small, large, capacity)
    if estimate is None:
        estimate = 32
    estimate = min(limit, max(17, int(margin * estimate)))
    low, high, probes = batch_search.largest_batch(
        probe, estimate, known_fit=16, max_probes=max_probes, deadline=deadline, limit=limit
    )
    return dict(
        fields,
        work="largest_batch",
        largest_fitting=low,
        smallest_failing=None if limit and low >= limit else high,
        estimate=estimate,
        capacity_bytes=capacity,
        probes=[vars(p) for p in [small, large] + probes],
    )


# ---- device memory, per backend ----


class _TorchMemory:
    def reset(self):
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def peak(self):
        import torch

        return (
            {"peak_bytes": torch.cuda.max_memory_allocated()} if torch.cuda.is_available() else {}
        )

    def release(self):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def capacity(self):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.mem_get_info()[1]
        return 8 << 30  # the CPU dry run: a nominal 8 GiB


class _JaxMemory:
    """JAX's allocator statistics; its peak cannot be reset (it is the process' peak)."""

    def _stats(self):
        import jax

        return jax.devices()[0].memory_stats() or {}

    def reset(self):
        pass

    def peak(self):
        stats = self._stats()
        return {"peak_bytes": stats["peak_bytes_in_use"]} if "peak_bytes_in_use" in stats else {}

    def release(self):
        pass

    def capacity(self):
        return self._stats().get("bytes_limit", 8 << 30)


def _keras_memory():
    import keras

    return _JaxMemory() if keras.backend.backend() == "jax" else _TorchMemory()


def device_description():
    """The accelerator and library versions, as the worker sees them."""
    import keras

    info = dict(backend=keras.backend.backend(), keras=keras.__version__)
    if keras.backend.backend() == "jax":
        import jax

        info.update(jax=jax.__version__, devices=[str(d) for d in jax.devices()])
    else:
        import torch

        info.update(torch=torch.__version__, cuda=torch.version.cuda)
        if torch.cuda.is_available():
            info.update(
                devices=[torch.cuda.get_device_name(0)],
                cudnn=torch.backends.cudnn.version(),
                cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            )
    return info

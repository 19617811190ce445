"""--strategy and --cpu_devices: which devices train, and how the batch is split over them.

Call `check_strategy` first (cheap), then `configure_cpu_devices` before anything runs on a
device, then `make_distributor`, whose `scope()` the model and optimizer are built in.
"""

import contextlib
import dataclasses
import json
import os

STRATEGIES = {
    "none": ("tensorflow", "jax", "torch"),
    "mirrored": ("tensorflow",),
    "multi_worker": ("tensorflow",),
    "data_parallel": ("jax",),
}


def current_backend():
    """The Keras backend this process will use (without initialising any device)."""
    import keras

    return keras.backend.backend()


def check_strategy(strategy, backend, cpu_devices):
    """ValueError unless --strategy and --cpu_devices are available on `backend`."""
    if strategy not in STRATEGIES:
        raise ValueError(
            f"--strategy: unknown strategy {strategy!r}; expected one of "
            f"{', '.join(STRATEGIES)}."
        )
    if backend not in STRATEGIES[strategy]:
        available = [name for name, backends in STRATEGIES.items() if backend in backends]
        needs = " or ".join(STRATEGIES[strategy])
        raise ValueError(
            f"--strategy={strategy} needs the {needs} backend (KERAS_BACKEND={needs}), but "
            f"this process runs Keras on {backend}, which offers --strategy="
            f"{' / '.join(available)}."
        )
    if cpu_devices < 0:
        raise ValueError(f"--cpu_devices must be 0 (off) or a positive count, got {cpu_devices}.")
    if cpu_devices and backend == "torch":
        raise ValueError(
            "--cpu_devices is not available on the torch backend (Keras has no multi-device "
            "training for torch); use KERAS_BACKEND=tensorflow with --strategy=mirrored or "
            "KERAS_BACKEND=jax with --strategy=data_parallel."
        )


def configure_cpu_devices(backend, count):
    """Splits the CPU into `count` logical devices, before any device is initialised."""
    if not count:
        return
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
            )
        except RuntimeError as error:  # TF already initialised its devices
            raise RuntimeError(
                f"--cpu_devices={count}: TensorFlow's devices are already initialised in this "
                "process, so the CPU can no longer be split; start a fresh process."
            ) from error
    elif backend == "jax":
        flag = f"--xla_force_host_platform_device_count={count}"
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
        import jax

        found = len(jax.devices("cpu"))
        if found != count:
            raise RuntimeError(
                f"--cpu_devices={count}: JAX shows {found} CPU device(s). XLA reads "
                f"XLA_FLAGS={flag} only when JAX first starts its CPU backend, which already "
                "happened in this process (or XLA_FLAGS sets another count); run the program "
                "in a fresh process."
            )


def has_gpu(backend):
    """Whether the backend sees a GPU."""
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    import torch

    return torch.cuda.is_available()


@dataclasses.dataclass
class Distributor:
    """What the training program needs from a strategy."""

    name: str
    num_replicas: int
    is_chief: bool  # the worker that writes checkpoints, logs and the final files
    devices: tuple
    _strategy: object = None

    def scope(self):
        """Where to build and compile the model (a tf.distribute scope, or nothing)."""
        return self._strategy.scope() if self._strategy is not None else contextlib.nullcontext()


def make_distributor(strategy, backend):
    """The Distributor for --strategy on `backend` (after `configure_cpu_devices`)."""
    if strategy == "none":
        return Distributor("none", 1, True, ("default",))
    if strategy == "data_parallel":
        import keras

        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return Distributor(strategy, len(devices), True, tuple(devices))

    import tensorflow as tf

    if strategy == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        # Without GPUs: the logical CPUs of --cpu_devices, so the same code path runs on CPU.
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        tf_strategy = tf.distribute.MirroredStrategy(devices=devices)
        return Distributor(strategy, tf_strategy.num_replicas_in_sync, True, tuple(devices),
                           tf_strategy)
    # multi_worker: the cluster comes from TF_CONFIG; the chief (or worker 0) writes files.
    tf_strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    is_chief = task.get("type", "chief") == "chief" or (
        task.get("type") == "worker" and task.get("index", 0) == 0
        and "chief" not in json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    )
    return Distributor(strategy, tf_strategy.num_replicas_in_sync, is_chief,
                       tuple(tf_strategy.extended.worker_devices), tf_strategy)

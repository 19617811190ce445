"""--strategy and --cpu_devices: which devices and processes train, and how batches are split.

Call `check_strategy` first (cheap), then `configure_devices` before anything runs on a
device, then `make_distributor`, whose `scope()` the model and optimizer are built in.

Several processes: on TensorFlow, `--strategy=multi_worker` with `TF_CONFIG` set in each
worker; on JAX, `--strategy=data_parallel` with Keras' own variables
`KERAS_DISTRIBUTION_JOB_ADDRESSES` (the coordinator's host:port), `KERAS_DISTRIBUTION_NUM_PROCESSES`
and `KERAS_DISTRIBUTION_PROCESS_ID` set in each process (`keras.distribution.initialize`). In
both, process 0 (TensorFlow: the chief, or worker 0) writes every file, and each process
decodes only its own share of every global batch.
"""

import contextlib
import dataclasses
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


def jax_processes():
    """(this process' index, process count) from the KERAS_DISTRIBUTION_* variables, or None
    for a single process. ValueError naming the variable when they are inconsistent."""
    raw = os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "").strip()
    if not raw:
        return None
    try:
        count = int(raw)
        index = int(os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", "").strip())
    except ValueError:
        raise ValueError(
            f"KERAS_DISTRIBUTION_NUM_PROCESSES={raw!r} needs an integer "
            "KERAS_DISTRIBUTION_PROCESS_ID (0 for the coordinator) in every process, got "
            f"{os.environ.get('KERAS_DISTRIBUTION_PROCESS_ID')!r}."
        ) from None
    if count < 2:
        return None
    if not 0 <= index < count:
        raise ValueError(
            f"KERAS_DISTRIBUTION_PROCESS_ID={index} must be in [0, {count}) for "
            f"KERAS_DISTRIBUTION_NUM_PROCESSES={count}."
        )
    if not os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"):
        raise ValueError(
            "KERAS_DISTRIBUTION_JOB_ADDRESSES (host:port of process 0) must be set with "
            "KERAS_DISTRIBUTION_NUM_PROCESSES."
        )
    return index, count


def check_strategy(strategy, backend, cpu_devices):
    """ValueError unless --strategy and --cpu_devices are available on `backend`."""
    if strategy not in STRATEGIES:
        raise ValueError(
            f"--strategy: unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}."
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
    if backend == "jax" and jax_processes() and strategy != "data_parallel":
        raise ValueError(
            "KERAS_DISTRIBUTION_NUM_PROCESSES asks for several JAX processes, which train "
            f"together with --strategy=data_parallel only (got --strategy={strategy})."
        )


def configure_devices(backend, strategy, cpu_devices):
    """Before any device is initialised: joins the JAX processes, splits the CPU."""
    if backend == "jax":
        if cpu_devices:
            flag = f"--xla_force_host_platform_device_count={cpu_devices}"
            flags = os.environ.get("XLA_FLAGS", "")
            if "xla_force_host_platform_device_count" not in flags:
                os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
        if strategy == "data_parallel" and jax_processes():
            import keras

            keras.distribution.initialize()  # reads the KERAS_DISTRIBUTION_* variables
        if cpu_devices:
            _check_jax_cpu_devices(cpu_devices)
    elif backend == "tensorflow" and cpu_devices:
        _split_tensorflow_cpu(cpu_devices)


def _check_jax_cpu_devices(count):
    import jax

    found = len(jax.local_devices(backend="cpu"))
    if found != count:
        raise RuntimeError(
            f"--cpu_devices={count}: JAX shows {found} CPU device(s). XLA reads "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={count} only when JAX first "
            "starts its CPU backend, which already happened in this process (or XLA_FLAGS "
            "sets another count); run the program in a fresh process."
        )


def _split_tensorflow_cpu(count):
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
    """What the training program needs from a strategy.

    Attributes:
        name: the --strategy.
        num_replicas: devices the global batch is split over, all processes together.
        is_chief: whether this process writes checkpoints, logs and the final files.
        process: (index, count) of this process when several train together, else None.
        feeds_local_batches: each process passes Keras its own part of every batch (JAX);
            otherwise global-sized batches, which TensorFlow splits.
    """

    name: str
    num_replicas: int
    is_chief: bool = True
    process: tuple = None
    feeds_local_batches: bool = False
    _strategy: object = None

    def scope(self):
        """Where to build and compile the model (a tf.distribute scope, or nothing)."""
        return self._strategy.scope() if self._strategy is not None else contextlib.nullcontext()

    def shard(self, training):
        """The `shard` argument of `make_dataset`: this process' share, or None.

        Validation batches are shared out too where each process feeds its own part; on
        TensorFlow the strategy shares them out itself.
        """
        if self.process is None or not (training or self.feeds_local_batches):
            return None
        return self.process

    def local_batches(self, dataset, batch_size):
        """`dataset` as this process passes it to Keras (JAX: its part of each batch)."""
        if not (self.feeds_local_batches and self.process):
            return dataset
        return dataset.rebatch(batch_size // self.process[1])


def make_distributor(strategy, backend):
    """The Distributor for --strategy on `backend` (after `configure_devices`)."""
    if strategy == "none":
        return Distributor("none", 1)
    if strategy == "data_parallel":
        return _jax_data_parallel()
    import tensorflow as tf

    if strategy == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        # Without GPUs: the logical CPUs of --cpu_devices, so the same code path runs on CPU.
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        tf_strategy = tf.distribute.MirroredStrategy(devices=devices)
        return Distributor(strategy, tf_strategy.num_replicas_in_sync, _strategy=tf_strategy)
    return _multi_worker()


def _jax_data_parallel():
    import keras

    processes = jax_processes()
    devices = keras.distribution.list_devices()
    # Across processes each one reads its own share of the data (make_dataset's `shard`);
    # Keras' automatic sharding would have every process decode every image.
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices, auto_shard_dataset=processes is None)
    )
    return Distributor(
        "data_parallel",
        len(devices),
        is_chief=processes is None or processes[0] == 0,
        process=processes,
        feeds_local_batches=True,
    )


def _multi_worker():
    import tensorflow as tf

    # The cluster comes from TF_CONFIG; the chief (or worker 0 without one) writes files.
    tf_strategy = _reduce_as_keras_expects(tf.distribute.MultiWorkerMirroredStrategy())
    resolver = tf_strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict()
    workers = [
        (kind, index) for kind in ("chief", "worker") for index in range(len(cluster.get(kind, ())))
    ]
    if len(workers) < 2:
        return Distributor("multi_worker", tf_strategy.num_replicas_in_sync, _strategy=tf_strategy)
    position = workers.index((resolver.task_type, resolver.task_id))
    return Distributor(
        "multi_worker",
        tf_strategy.num_replicas_in_sync,
        is_chief=position == 0,
        process=(position, len(workers)),
        _strategy=tf_strategy,
    )


def _reduce_as_keras_expects(strategy):
    """`strategy` whose `reduce` takes what Keras 3.15's `fit` gives it, as MirroredStrategy's does.

    Keras' TensorFlow trainer calls `reduce` in two ways that MultiWorkerMirroredStrategy
    (TensorFlow 2.21) rejects, so `fit` fails on every cluster of more than one worker:
    - it reduces a whole (images, labels) batch at once, `reduce("MEAN", batch, axis=None)`,
      where MultiWorkerMirroredStrategy takes a single value ("Attempt to convert a value
      (PerReplica ...) to a Tensor");
    - it averages scalar metric results with `reduce("MEAN", value, axis=0)` ("Invalid
      reduction dimension 0 for input with 0 dimensions").
    Each value of a nest is reduced on its own, and a scalar across replicas only.
    """
    import tensorflow as tf

    reduce = strategy.reduce

    def reduce_one(reduce_op, value, axis):
        values = getattr(value, "values", (value,))
        if axis is not None and all(
            getattr(v, "shape", None) is not None and v.shape.rank == 0 for v in values
        ):
            axis = None
        return reduce(reduce_op, value, axis)

    def reduce_each(reduce_op, value, axis=None):
        return tf.nest.map_structure(lambda v: reduce_one(reduce_op, v, axis), value)

    strategy.reduce = reduce_each
    return strategy

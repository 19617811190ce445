"""What the speed benchmark measures: model configurations, batch sizes and step counts.

Shared by the Keras worker (`speed_keras.py`) and the plain-torch yardstick
(`speed_reference.py`), so that both run exactly the same architecture on the same work.
"""

import dataclasses
import statistics
import time

from keras_irevnet.models.presets import PRESETS

MODELS = {
    "cifar": dict(config=PRESETS["cifar"].architecture, classes=10, constructor="IRevNetCIFAR"),
    "bijective": dict(
        config=PRESETS["bijective"].architecture, classes=1000, constructor="IRevNetBijective"
    ),
}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One model at one size: the full benchmark's batches or a smaller version (quick)."""

    model: str
    image_size: int
    train_batch: int
    infer_batch: int
    steps: int  # timed steps after the warm-up step; their median is reported

    @property
    def image_shape(self):
        return (self.image_size, self.image_size, 3)


def workloads(quick):
    """The benchmark's workloads. Quick keeps the sizes, with fewer steps and ImageNet batch 4.

    The ImageNet model stays at 224x224: at smaller sizes its last stage runs on 2x2 or 3x3
    feature maps, where XLA's CPU convolutions (TensorFlow XLA and JAX) fall to a few
    GFLOP/s (measured: 3-7 GFLOP/s at 2x2 with 384-1536 channels, against 190 for torch),
    which would make a quick run misrepresent the real workload.
    """
    if quick:
        return [
            Workload("cifar", 32, train_batch=64, infer_batch=128, steps=4),
            Workload("bijective", 224, train_batch=4, infer_batch=4, steps=3),
        ]
    return [
        Workload("cifar", 32, train_batch=64, infer_batch=128, steps=10),
        Workload("bijective", 224, train_batch=8, infer_batch=8, steps=5),
    ]


# On a GPU: the authors' batches (CIFAR 128; ImageNet 256 over 4 GPUs, 64 per GPU), 10
# timed steps.
GPU_WORKLOADS = {
    "cifar": Workload("cifar", 32, train_batch=128, infer_batch=128, steps=10),
    "bijective": Workload("bijective", 224, train_batch=64, infer_batch=64, steps=10),
}


def time_steps(step, steps):
    """(warm-up, median) seconds of `step()`: one warm-up call, then `steps` timed calls."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def rates(batch, first, seconds):
    """A measurement's result fields from its warm-up and median step seconds."""
    return dict(
        step_seconds=seconds,
        images_per_second=batch / seconds,
        warmup_seconds=first,
    )

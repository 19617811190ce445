"""Bytes of the tensors one training step allocates, from the backend's allocator.

Kept apart from `benchmarks/memory.py`, which defines command-line flags, so that the tests
can import it.
"""

import os


def torch_step_bytes(step):
    """Peak and final bytes of the tensors `step()` allocates, from torch's allocator events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    # Each "[memory]" event is one allocation (+bytes) or release (-bytes), in time order
    # once sorted. The public `events()` list attributes them to operators without their
    # order; the profiler's raw results keep it.
    changes = sorted(
        (event.start_ns(), event.nbytes())
        for event in profiler.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return {"peak_tensor_bytes": peak, "left_allocated_bytes": live}


def keep_tensorflow_cpu_statistics():
    """Makes TensorFlow's CPU allocator keep statistics; call before TensorFlow's first op.

    With oneDNN (TensorFlow's default on Intel CPUs) its allocator keeps them. Without it
    (TensorFlow's default on other CPUs, AMD's among them) the plain CPU allocator keeps
    none, and `get_memory_info("CPU:0")` raises; there TensorFlow's BFC allocator, which
    keeps them, is chosen (`TF_CPU_ALLOCATOR_USE_BFC`, read when the CPU device is created).
    A value the user set is left as it is.
    """
    from keras_irevnet import _compat

    if not _compat.tensorflow_uses_onednn():
        os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")


def tensorflow_step_bytes(step, device="CPU:0"):
    """Peak and final bytes `step()` adds to TensorFlow's allocator on `device`.

    TensorFlow's allocator statistics (`tf.config.experimental.get_memory_info`) count every
    tensor buffer its kernels allocate, on the CPU too; the peak is reset before the step.
    On a CPU they need `keep_tensorflow_cpu_statistics()` first where oneDNN is off.
    """
    import tensorflow as tf

    try:
        before = tf.config.experimental.get_memory_info(device)["current"]
    except ValueError as error:  # "Allocator stats not available for device 'CPU:0'"
        raise RuntimeError(
            f"TensorFlow keeps no allocator statistics for {device} in this process: call "
            "benchmarks.allocations.keep_tensorflow_cpu_statistics() before TensorFlow's "
            "first operation (or set TF_CPU_ALLOCATOR_USE_BFC=true before it starts)."
        ) from error
    tf.config.experimental.reset_memory_stats(device)
    step()
    info = tf.config.experimental.get_memory_info(device)
    return {
        "peak_tensor_bytes": info["peak"] - before,
        "left_allocated_bytes": info["current"] - before,
    }


def tensorflow_loss_gradient(model, loss_fn):
    """`(x, y) -> gradients of loss_fn(y, model(x)) w.r.t. the trainable weights`, a
    `tf.function` computing them as Keras' train step does, without the optimizer's update."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def gradient(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    return gradient


def weight_gradient_bytes(model):
    """Bytes of one gradient per trainable weight: what a step holds at the end of its
    backward pass in either mode, plain or reversible."""
    import numpy as np

    return sum(
        int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.trainable_variables
    )

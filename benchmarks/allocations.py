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


def tensorflow_traced_step_bytes(step, device="CPU:0"):
    """`tensorflow_step_bytes`, with the peak counted in the bytes the tensors asked for.

    The allocator's statistics count the chunks it hands out, and TensorFlow's BFC allocator
    (the one `keep_tensorflow_cpu_statistics` chooses, and oneDNN's for large buffers)
    hands a request a whole free chunk of up to twice its size rather than split it: a
    buffer that outlives the others, such as a weight gradient kept to the end of the
    backward pass, then counts for up to twice its bytes. TensorFlow's profiler records
    every allocation with the size requested; the peak of their running sum is what the
    step's tensors hold, as torch's profiler (`torch_step_bytes`) and XLA's memory
    analysis count it on the other backends. Returns "peak_tensor_bytes" from the trace,
    "allocator_peak_bytes" (the statistics' peak) and "left_allocated_bytes".
    """
    import glob
    import tempfile

    import tensorflow as tf

    from keras_irevnet import _compat

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            measured = tensorflow_step_bytes(step, device)
        finally:
            tf.profiler.experimental.stop()
        space = _compat.tensorflow_xspace()()
        for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
            with open(path, "rb") as f:
                space.MergeFromString(f.read())
    changes = sorted(_tensorflow_allocation_events(space))
    if not changes:
        raise RuntimeError(
            "TensorFlow's profiler recorded no allocations: the allocator of this process "
            "does not trace them (see keep_tensorflow_cpu_statistics)."
        )
    live, current, peak = {}, 0, 0
    for _, allocated, address, requested in changes:
        if allocated:
            live[address] = requested
            current += requested
            peak = max(peak, current)
        elif address in live:  # a buffer from before the trace was not counted in
            current -= live.pop(address)
    return {
        "peak_tensor_bytes": peak,
        "allocator_peak_bytes": measured["peak_tensor_bytes"],
        "left_allocated_bytes": measured["left_allocated_bytes"],
    }


def _tensorflow_allocation_events(space):
    """(time in ps, allocated?, address, requested bytes) of each allocator event."""
    kinds = {"MemoryAllocation": True, "MemoryDeallocation": False}
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                kind = kinds.get(plane.event_metadata[event.metadata_id].name)
                if kind is None:
                    continue
                stats = {}
                for stat in event.stats:
                    field = stat.WhichOneof("value")
                    stats[plane.stat_metadata[stat.metadata_id].name] = getattr(stat, field)
                yield (
                    line.timestamp_ns * 1000 + event.offset_ps,
                    kind,
                    stats["addr"],
                    int(stats.get("requested_bytes", 0)),
                )


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

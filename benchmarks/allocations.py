"""Bytes of the tensors one torch step allocates, from torch's allocator events.

Kept apart from `benchmarks/memory.py`, which defines command-line flags, so that the tests
can import it.
"""


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

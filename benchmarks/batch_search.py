"""The largest training batch that fits in an accelerator's memory, found with few probes.

A probe is one real training step at a batch size (after one that created the optimizer's
state), and on JAX each new batch size is also a compilation: probes are expensive. Peak
memory is close to linear in the batch (weights, gradients and optimizer state, plus a
per-image working set), so two small probes give an estimate of the largest batch, and the
search starts there: up in growing steps while probes fit, then bisection between the largest
batch that fit and the smallest that did not, until they are within `resolution` of each other.
"""

import dataclasses
import math
import time


@dataclasses.dataclass
class Probe:
    batch: int
    fits: bool
    peak_bytes: int | None = None  # the step's peak of allocated bytes, where it fitted
    seconds: float = 0.0
    error: str | None = None  # why it did not fit, where that was not plainly out of memory


def linear_estimate(small, large, capacity_bytes):
    """The batch at which memory reaches `capacity_bytes`, on the line through two probes
    that fitted (`Probe`s with `peak_bytes`); None without peaks, or when they do not grow."""
    if small.peak_bytes is None or large.peak_bytes is None:
        return None
    per_image = (large.peak_bytes - small.peak_bytes) / (large.batch - small.batch)
    if per_image <= 0:
        return None
    fixed = small.peak_bytes - per_image * small.batch
    return int((capacity_bytes - fixed) / per_image)


def largest_batch(
    probe, estimate, *, known_fit, resolution=0.02, max_probes=8, deadline=None, limit=None
):
    """Searches from `estimate` for the largest batch at which `probe(batch) -> Probe` fits.

    `known_fit` is a batch known to fit. Stops when the largest fitting and the smallest
    failing batch are within `resolution` (relative), after `max_probes` probes, or when the
    next probe would likely end after `deadline` (a `time.time()` value; the longest probe
    so far is the guess), or once `limit` (the largest batch worth trying) fits. Returns
    (largest batch that fitted, smallest that did not or None, the probes in order).
    """
    low, high, probes = known_fit, None, []
    growth = 4 * resolution
    candidate = max(estimate, known_fit + 1)
    while len(probes) < max_probes and (limit is None or low < limit):
        if limit is not None:
            candidate = min(candidate, limit)
        if deadline is not None and probes:
            if time.time() + max(p.seconds for p in probes) > deadline:
                break
        start = time.time()
        result = probe(candidate)
        result.seconds = result.seconds or time.time() - start
        probes.append(result)
        if result.fits:
            low = candidate
        else:
            high = candidate
        if high is not None and high - low <= max(1, resolution * low):
            break
        if high is None:  # up in growing steps: 8 %, 16 %, 32 %... for a resolution of 2 %
            candidate = math.ceil(low * (1 + growth)) + 1
            growth *= 2
        else:
            candidate = (low + high) // 2
    return low, high, probes


def bracket(probes):
    """(largest batch that fitted, smallest larger one that did not or None) from probes in
    any order: what a search that was cut short had established."""
    fitted = [p.batch for p in probes if p.fits]
    low = max(fitted, default=None)
    failed = [p.batch for p in probes if not p.fits and (low is None or p.batch > low)]
    return low, min(failed, default=None)

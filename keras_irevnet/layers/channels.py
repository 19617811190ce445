"""Split and merge of the channel axis: the one place that decides how halves are cut.

The i-RevNet carries its state as a pair (x1, x2). `split_channels` gives x1 the first
floor(C/2) channels (as the authors' code does when C is odd) and `merge_channels` is its exact
inverse. Channels-last only.
"""

from keras import ops


def split_channels(x):
    """Splits `x` on the last axis into (first floor(C/2) channels, the rest)."""
    n = x.shape[-1] // 2
    return x[..., :n], x[..., n:]


def merge_channels(x1, x2):
    """Concatenates two halves on the last axis; the inverse of `split_channels`."""
    return ops.concatenate([x1, x2], axis=-1)


def split_shape(shape):
    """The shapes of the two halves `split_channels` returns for an input of `shape`."""
    shape = tuple(shape)
    n = shape[-1] // 2
    return shape[:-1] + (n,), shape[:-1] + (shape[-1] - n,)

"""The backend-neutral part of reversible backprop: the forward chain and the backward walk.

Each backend module wraps `forward` in its custom-gradient mechanism and calls `backward`
from its gradient function, supplying only `residual_vjp`: F recomputed with the backend's
autodiff (GradientTape, jax.vjp, torch.autograd.grad). Only the additive-coupling contract is
used (`keras_irevnet.layers.AdditiveCoupling`: `coupling_forward`, `coupling_backward`,
`residual`, `injective`),
so any stack of additive couplings runs here, whatever its F.
"""

import collections
import contextlib

import keras

from keras_irevnet.layers.additive_coupling import final, walk
from keras_irevnet.layers.batch_normalization import (
    frozen_moving_statistics,
    kept_batch_statistics,
)


def checkpoint_indices(blocks):
    """Blocks whose input the forward pass stores, because reconstructing it is not enough.

    An injective coupling k pads its input with exact zeros. Its output half y1 = F(x2) + x1
    keeps those zero channels wherever F's output is zero, which is the case at PyTorch's
    (and Keras') initialisation: the first block's F sees only zero padding and has all its
    ReLUs at 0. A reconstruction gives those channels rounding noise instead of zeros, and
    the next block's training-mode BatchNorm and ReLU (at its kink, beta = 0) turn the noise
    into different gradients: plain autodiff takes ReLU'(0) = 0 and leaves them dead, a
    reconstruction picks up a random subgradient. So the input of block k + 2 (the output of
    block k + 1, whose F reads y1) is stored, one activation pair per injective block,
    independent of depth. Block k's own input half x2 is exact zeros by construction (see
    `IRevNetBlock._project`).
    """
    return sorted(
        k + 2 for k, block in enumerate(blocks) if block.injective and k + 2 < len(blocks)
    )


def forward(blocks, inputs, training, before_block=None):
    """(outputs, checkpoints): the chain's output pair and the stored inputs.

    `checkpoints` maps a block index from `checkpoint_indices` to that block's input pair.
    `before_block(block, x) -> x`, if given, runs before each block (to record per-block RNG
    state, or to order the block's random numbers after its input).
    """
    stored = set(checkpoint_indices(blocks))
    position = {id(block): i for i, block in enumerate(blocks)}
    checkpoints = {}

    def step(block, x):
        if position[id(block)] in stored:
            checkpoints[position[id(block)]] = tuple(x)
        if before_block is not None:
            x = before_block(block, x)
        return block.coupling_forward(x, training=training)

    _, outputs = final(walk(blocks, inputs, step))
    return tuple(outputs), checkpoints


def backward(blocks, outputs, output_grads, residual_vjp, checkpoints, barrier=None):
    """Walks `blocks` in reverse from their output and the gradients w.r.t. it.

    Args:
        blocks: the blocks `forward` ran.
        outputs: the pair `forward` returned.
        output_grads: the gradients of the loss w.r.t. that pair.
        residual_vjp: `(block, a2, block_output_grads) -> (F(a2), vjp)`, see
            `AdditiveCoupling.coupling_backward`; `block_output_grads` (the gradients w.r.t.
            the block's output) are there to order the recompute after them (JAX).
        checkpoints: the stored inputs `forward` returned; they replace the reconstruction.
        barrier: optional `tensors -> tensors` applied to each block's results (input pair,
            gradients, weight gradients) before the walk goes on; a compiler may not move
            work across it (JAX: keeps XLA from running ahead or behind the walk;
            TensorFlow's holds each reconstruction back until the block before it in the
            walk has its gradients).

    Returns:
        (input_grads, weight_grads): the gradient pair w.r.t. the chain's inputs and a dict
        `id(variable) -> gradient` over the blocks' trainable variables that F used.
    """
    x, grads = outputs, output_grads
    # Emptied as the walk goes, so a used pair is released (when the caller keeps no
    # reference to the dict it passed).
    checkpoints = dict(checkpoints)
    weight_grads = {}
    for i in reversed(range(len(blocks))):
        block = blocks[i]
        x, grads, block_grads = block.coupling_backward(
            x, grads, lambda a2, block=block, grads=grads: residual_vjp(block, a2, grads)
        )
        if i in checkpoints:
            x = checkpoints.pop(i)
        if barrier is not None:
            x, grads, values = barrier((tuple(x), tuple(grads), [g for _, g in block_grads]))
            block_grads = [(v, g) for (v, _), g in zip(block_grads, values)]
        for variable, grad in block_grads:
            if grad is None:
                continue
            key = id(variable)
            weight_grads[key] = grad if key not in weight_grads else weight_grads[key] + grad
    return grads, weight_grads


class BatchStatistics:
    """The BatchNorms' batch statistics from the forward pass, per block, for the recompute.

    The forward pass runs inside `recording()`, with `before_block` called before each block
    (`forward`'s hook); each block's recompute inside `replaying(block)` then normalises with
    the statistics of that block's calls instead of computing them again (a few numbers per
    channel and call; see `kept_batch_statistics` for the BatchNorms that keep them).
    """

    def __init__(self, blocks):
        self.position = {id(block): i for i, block in enumerate(blocks)}
        self.entries = []  # in call order, as the forward pass makes them
        self.starts = []  # where each block's entries start, in block order

    def before_block(self, block):
        self.starts.append(len(self.entries))

    def recording(self):
        return kept_batch_statistics(self.entries, replay=False)

    def replaying(self, block):
        """Replays `block`'s entries, handed over (released here) so that each lives only
        until its block's recompute. A second recompute of the block (a persistent tape's
        second gradient) finds none and computes the statistics as usual."""
        i = self.position[id(block)]
        start = self.starts[i]
        end = self.starts[i + 1] if i + 1 < len(self.starts) else len(self.entries)
        entries = collections.deque(e for e in self.entries[start:end] if e is not None)
        self.entries[start:end] = [None] * (end - start)
        return kept_batch_statistics(entries, replay=True)


def unique_variables(variables):
    """`variables` without repeats (a shared layer would list its weights twice)."""
    seen, result = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            result.append(v)
    return result


def seed_states(blocks):
    """The dropout seed-state variables of `blocks` (non-trainable state that is not a weight).

    Their values before the forward pass are all the recompute needs to replay the forward's
    dropout masks: each dropout layer is called once per forward pass.
    """
    states = []
    for block in blocks:
        weights = {id(w) for w in block.weights}
        states.extend(v for v in block.non_trainable_variables if id(v) not in weights)
    return unique_variables(states)


def block_seed_states(blocks):
    """`id(block) -> seed_states([block])`: each block's own dropout seed states.

    A recompute maps only its block's seeds (mapping every block's seeds for each block's
    recompute costs a conversion per seed, per block: quadratic in depth).
    """
    return {id(block): seed_states([block]) for block in blocks}


def raw_values(variables):
    """The variables' current values in their own dtype.

    The reversible path needs the float32 values themselves under a mixed policy (to
    differentiate them and to map them in a StatelessScope without a lossy round trip), so it
    runs where variables are not autocast: inside `BlockStack` (built with autocast=False)
    or outside any layer call.
    """
    return [v.value for v in variables]


def replay_scope(seed_variables, seed_values, extra_mapping=()):
    """A StatelessScope for the recompute: dropout seeds rewound, state updates discarded.

    BatchNorm in training mode assigns its moving statistics; inside this scope that
    assignment is recorded in the scope and dropped, so they are updated once per step (by
    the forward pass) and not a second time by the recompute.
    """
    mapping = list(zip(seed_variables, seed_values)) + list(extra_mapping)
    return keras.StatelessScope(state_mapping=mapping)


@contextlib.contextmanager
def recompute_scope(seed_variables, seed_values, extra_mapping=()):
    """`replay_scope` for recomputing F in the backward walk, where BatchNorm also skips
    computing the update of its moving statistics that the scope would discard."""
    with replay_scope(seed_variables, seed_values, extra_mapping), frozen_moving_statistics():
        yield

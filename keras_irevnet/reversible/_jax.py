"""Reversible backprop on JAX: `jax.custom_vjp` with a `jax.vjp` per block.

A custom_vjp function must be pure: it may not close over traced values. Under the Keras JAX
trainer every Keras variable is mapped to a traced value in a StatelessScope, so the blocks'
weights (and their non-trainable state: moving statistics, dropout seeds) are explicit
inputs of the custom_vjp function; inside it they are mapped back onto the variables with a
nested StatelessScope, and the state the forward pass updates comes out as an output, which
is assigned to the variables afterwards (recorded by the trainer's scope, or applied eagerly).
"""

import jax
import numpy as np

from keras_irevnet.layers.fusion_boundary import after
from keras_irevnet.reversible import _walk


def _zero_cotangent(value):
    # Integer inputs (the uint32 dropout seeds) take float0 cotangents in JAX.
    if jax.numpy.issubdtype(value.dtype, jax.numpy.inexact):
        return jax.numpy.zeros_like(value)
    return np.zeros(value.shape, dtype=jax.dtypes.float0)


def reversible_blocks(blocks, inputs, training):
    weights = _walk.unique_variables(v for b in blocks for v in b.trainable_variables)
    states = _walk.unique_variables(v for b in blocks for v in b.non_trainable_variables)

    def mapping(weight_values, state_values):
        return list(zip(weights, weight_values)) + list(zip(states, state_values))

    block_seeds = _walk.block_seed_states(blocks)

    def forward(x, weight_values, state_values):
        with _walk.replay_scope((), (), mapping(weight_values, state_values)) as scope:

            def seeds_after_input(block, x):
                # Each block draws its dropout masks once its input exists, not all blocks'
                # masks at the start of the step (kept until used: memory growing with depth).
                seeds = block_seeds[id(block)]
                if seeds:
                    tied = after([scope.get_current_value(v) for v in seeds], x[1])
                    for variable, value in zip(seeds, tied):
                        variable.assign(value)
                return x

            outputs, checkpoints = _walk.forward(
                blocks, x, training, before_block=seeds_after_input
            )
        new_states = [scope.get_current_value(v) for v in states]
        return outputs, new_states, checkpoints

    @jax.custom_vjp
    def run(x, weight_values, state_values):
        outputs, new_states, _ = forward(x, weight_values, state_values)
        return outputs, new_states

    def run_fwd(x, weight_values, state_values):
        outputs, new_states, checkpoints = forward(x, weight_values, state_values)
        # Residuals: the chain's output, the few stored inputs (see
        # _walk.checkpoint_indices), and the weights and state before the step (weights are
        # kept anyway; the state is small). No other activation is kept.
        return (outputs, new_states), (outputs, checkpoints, weight_values, state_values)

    def run_bwd(residuals, cotangents):
        outputs, checkpoints, weight_values, state_values = residuals
        output_grads, _ = cotangents  # the updated state is not differentiated
        index = {id(v): i for i, v in enumerate(weights)}
        state_index = {id(v): i for i, v in enumerate(states)}

        def residual_vjp(block, a2, block_output_grads):
            block_weights = block.trainable_variables
            block_values = [weight_values[index[id(v)]] for v in block_weights]
            seeds = block_seeds[id(block)]
            seed_values = [state_values[state_index[id(v)]] for v in seeds]
            # The recompute's input, weights and dropout seeds are released only once the
            # gradients w.r.t. the block's output exist. Otherwise XLA finds recomputes equal
            # to forward computations (the first blocks read stored inputs, or zeros) and
            # keeps the forward's results until the end of the backward pass instead, and
            # computes the weights' transposed copies for the backward convolutions of all
            # blocks at once.
            a2, *tied = after([a2] + block_values + seed_values, block_output_grads[0])
            block_values, tied = tied[: len(block_values)], tied[len(block_values) :]

            def residual(a2, values):
                # Every variable mapped (a nested scope does not fall back to the outer
                # one), the seeds to their values before the forward pass: the same masks;
                # BatchNorm's second update of the moving statistics is dropped with the scope.
                replaced = mapping(weight_values, state_values)
                replaced += list(zip(block_weights, values)) + list(zip(seeds, tied))
                with _walk.recompute_scope((), (), replaced):
                    return block.residual_call(a2, training=training)

            fa2, pullback = jax.vjp(residual, a2, block_values)

            def vjp(cotangent):
                grad_a2, grad_values = pullback(cotangent)
                return grad_a2, list(zip(block_weights, grad_values))

            return fa2, vjp

        # The barrier makes XLA finish each block (its weight gradients included) before
        # the next: left free, its scheduler computes weight gradients late or
        # reconstructions early, and activations of many blocks are alive at once.
        input_grads, weight_grads = _walk.backward(
            blocks,
            outputs,
            output_grads,
            residual_vjp,
            checkpoints,
            barrier=jax.lax.optimization_barrier,
        )
        return (
            tuple(input_grads),
            [
                weight_grads[id(v)] if id(v) in weight_grads else _zero_cotangent(value)
                for v, value in zip(weights, weight_values)
            ],
            [_zero_cotangent(value) for value in state_values],
        )

    run.defvjp(run_fwd, run_bwd)
    outputs, new_states = run(tuple(inputs), _walk.raw_values(weights), _walk.raw_values(states))
    for variable, value in zip(states, new_states):
        variable.assign(value)
    return outputs

"""Reversible backprop on TensorFlow: `tf.custom_gradient` with a GradientTape per block."""

import contextlib

import tensorflow as tf

from keras_irevnet import _compat
from keras_irevnet.layers import tensorflow_kernels
from keras_irevnet.reversible import _walk


def _residual_vjp(block_seeds, seed_values, statistics, training):
    def residual_vjp(block, a2, block_output_grads):
        del block_output_grads  # the graph's order comes from _one_block_behind
        seeds = block_seeds[id(block)]
        # The block's dropout seeds are tied to its reconstructed input. A recompute's masks
        # depend on nothing else, so TensorFlow would draw every block's as soon as the walk
        # starts and hold each until the walk reaches its block: one mask per block (a
        # quarter MiB each on CIFAR at batch 64, 13 MiB at 54 blocks).
        with tf.control_dependencies([a2]):
            tied = [tf.identity(seed_values[id(v)]) for v in seeds]
        with tf.GradientTape() as tape:
            tape.watch(a2)
            with _walk.recompute_scope(seeds, tied), statistics.replaying(block):
                fa2 = block.residual_call(a2, training=training)
        # The trainable tf.Variables F read (the tape watches those automatically): the same
        # objects TensorFlow lists in the `variables` of the gradient function.
        weights = list(tape.watched_variables())

        def vjp(cotangent):
            grads = tape.gradient(fa2, [a2] + weights, output_gradients=cotangent)
            return grads[0], list(zip(weights, grads[1:]))

        return fa2, vjp

    return residual_vjp


def _one_block_behind():
    """A barrier for one backward walk (`_walk.backward`): each block's reconstructed input
    is released to the walk once the block after it has all its gradients.

    In a graph, TensorFlow runs every op as soon as its inputs exist. The reconstructions
    depend only on the stack's output, so unchecked they would all run first and keep every
    block's activations alive at once (plain autodiff's memory). Held back by one block,
    the recompute of a block's F runs while the block after it computes its gradients: two
    blocks' work in flight, at most two blocks' activations alive whatever the depth. (Held
    back until its own block's gradients, the walk ran one op chain at a time, and on 2
    cores the CIFAR model's memory-efficient step took 1.05-1.06x longer.)
    """
    awaited = []

    def barrier(tensors):
        x, grads, weight_grads = tensors
        with tf.control_dependencies(tf.nest.flatten(x) + awaited):
            x = tf.nest.map_structure(tf.identity, x)
        awaited[:] = tf.nest.flatten((grads, weight_grads))
        return x, grads, weight_grads

    return barrier


@contextlib.contextmanager
def _untaped_forward():
    # An enclosing GradientTape must not record the forward (it would keep every activation
    # alive). With the tape stopped, the layers would take Keras' own ops where TensorFlow
    # runs without oneDNN; this graph is the training step's, run here and never saved, so
    # they may keep their faster kernels, as in Keras' predict step.
    with _compat.tensorflow_stop_recording(), tensorflow_kernels.keras_step():
        yield


def reversible_blocks(blocks, inputs, training):
    seed_variables = _walk.seed_states(blocks)
    block_seeds = _walk.block_seed_states(blocks)
    statistics = _walk.BatchStatistics(blocks)

    def before_block(block, x):
        statistics.before_block(block)
        return x

    @tf.custom_gradient
    def run(x1, x2):
        # The seeds before the forward pass advances them: the recompute replays these.
        seed_values = {
            id(v): tf.identity(value)
            for v, value in zip(seed_variables, _walk.raw_values(seed_variables))
        }
        with _untaped_forward(), statistics.recording():
            outputs, checkpoints = _walk.forward(
                blocks, (x1, x2), training, before_block=before_block
            )
        outputs = tuple(tf.identity(y) for y in outputs)

        def grad(*output_grads, variables=None):
            input_grads, weight_grads = _walk.backward(
                blocks,
                outputs,
                output_grads,
                _residual_vjp(block_seeds, seed_values, statistics, training),
                checkpoints,
                barrier=_one_block_behind(),
            )
            # Variables read but not trained through F (moving statistics, seed states) get
            # None, as TensorFlow's own gradients would give them.
            return list(input_grads), [weight_grads.get(id(v)) for v in variables or ()]

        return outputs, grad

    return run(*inputs)

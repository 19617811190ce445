"""Reversible backprop on PyTorch: a `torch.autograd.Function` with `torch.autograd.grad`."""

import contextlib

import torch

from keras_irevnet.reversible import _walk


def _cuda_in_use():
    return torch.cuda.is_available() and torch.cuda.is_initialized()


class _Chain:
    """What the autograd function needs besides tensors: blocks, mode, seeds, RNG states and
    the BatchNorms' batch statistics."""

    def __init__(self, blocks, training):
        self.blocks = blocks
        self.training = training
        # Each block's variables, listed once per step: every `trainable_variables` access
        # walks the block's sublayers again (three walks per block and step cost the CIFAR
        # model about 8 ms of Python per step).
        self.block_weights = {id(b): b.trainable_variables for b in blocks}
        self.weights = _walk.unique_variables(v for b in blocks for v in self.block_weights[id(b)])
        self.block_seeds = _walk.block_seed_states(blocks)
        self.seed_variables = _walk.unique_variables(
            v for b in blocks for v in self.block_seeds[id(b)]
        )
        self.seed_values = None
        self.rng_states = {}
        self.checkpoints = None
        self.batch_statistics = _walk.BatchStatistics(blocks)

    def take_checkpoints(self):
        # The stored block inputs are kept here rather than saved for backward: saved
        # tensors live until the whole backward pass ends, and each stored pair is dead once
        # the walk has passed its block. Handed over with no reference left behind, so the
        # walk releases each pair there. (They are intermediates of the forward, which
        # nothing outside can modify in place.)
        checkpoints, self.checkpoints = self.checkpoints, None
        return checkpoints

    def before_block(self, block, x):
        self.batch_statistics.before_block(block)
        # Keras' torch dropout draws an unseeded layer's mask from torch's global generator
        # (its fast path), not from the layer's seed state; so the recompute also needs the
        # global RNG state each block started from (as torch.utils.checkpoint keeps it).
        cuda = torch.cuda.get_rng_state() if _cuda_in_use() else None
        self.rng_states[id(block)] = (torch.get_rng_state(), cuda)
        return x

    @contextlib.contextmanager
    def replayed_rng(self, block):
        cpu, cuda = self.rng_states[id(block)]
        devices = [torch.cuda.current_device()] if cuda is not None else []
        # fork_rng puts the global state back afterwards: the recompute consumes nothing.
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda)
            yield

    def residual_vjp(self, block, a2, block_output_grads):
        del block_output_grads  # eager: runs in the order it is called
        # Runs inside backward(), where autograd is off by default: switch it on locally.
        a2 = a2.detach().requires_grad_(True)
        variables = self.block_weights[id(block)]
        params = _walk.raw_values(variables)
        seeds = self.block_seeds[id(block)]
        values = [self.seed_values[id(v)] for v in seeds]
        with (
            torch.enable_grad(),
            self.replayed_rng(block),
            _walk.recompute_scope(seeds, values),
            self.batch_statistics.replaying(block),
        ):
            fa2 = block.residual_call(a2, training=self.training)

        def vjp(cotangent):
            grads = torch.autograd.grad(fa2, [a2] + params, cotangent, allow_unused=True)
            return grads[0], list(zip(variables, grads[1:]))

        return fa2.detach(), vjp


class _ReversibleBlocks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, chain, x1, x2, *weights):
        # `weights` are the torch Parameters behind the Keras variables: autograd routes
        # gradients to an autograd.Function's tensor arguments only, so they must be passed
        # here (a Keras variable object would be silently ignored). Autograd is off in here.
        chain.seed_values = {
            id(v): value.clone()
            for v, value in zip(chain.seed_variables, _walk.raw_values(chain.seed_variables))
        }
        with chain.batch_statistics.recording():
            outputs, checkpoints = _walk.forward(
                chain.blocks, (x1, x2), chain.training, before_block=chain.before_block
            )
        ctx.chain = chain
        chain.checkpoints = checkpoints
        ctx.save_for_backward(*outputs)
        return outputs

    @staticmethod
    @torch.compiler.disable  # autograd calls it from inside the compiled step: see below
    def backward(ctx, *output_grads):
        if torch.is_grad_enabled():
            # Autograd enables grad mode in backward only for create_graph=True; the
            # gradients below are not themselves differentiable, so refuse rather than
            # return wrong second derivatives.
            raise RuntimeError(
                "memory-efficient (reversible) backprop does not support higher-order "
                "gradients (create_graph=True); build the model with memory_efficient=False."
            )
        chain = ctx.chain
        input_grads, weight_grads = _walk.backward(
            chain.blocks,
            ctx.saved_tensors,
            output_grads,
            chain.residual_vjp,
            chain.take_checkpoints(),
        )
        return (None, *input_grads, *(weight_grads.get(id(v)) for v in chain.weights))


# Under `torch.compile` (`jit_compile=True`) the chain runs eagerly, as one opaque call in the
# compiled step. Dynamo cannot capture it (RNG state, `torch.autograd.grad` in backward, a
# Python object through autograd). Left to try, it compiled the walk's pieces frame by frame
# (a two-block model's training step: 270 s of cold compilation instead of 106 s), and where
# Inductor compiled a block's forward it drew the dropout masks from its own generator, which
# the recompute's replay of torch's generator does not reproduce: wrong gradients. Eager, the
# chain also takes keras_irevnet's own torch kernels, as outside `torch.compile`.
@torch.compiler.disable
def reversible_blocks(blocks, inputs, training):
    chain = _Chain(blocks, training)
    return _ReversibleBlocks.apply(chain, *inputs, *_walk.raw_values(chain.weights))

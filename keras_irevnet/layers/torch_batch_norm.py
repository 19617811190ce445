"""Training-mode batch normalisation on torch from batch statistics computed earlier.

Reversible backprop recomputes each block's F in the backward pass, on exactly the input the
forward pass gave it. Its training-mode BatchNorms would compute the same batch statistics
again: a pass over the activations per call, for a result already known. The forward pass
keeps each BatchNorm's batch mean and inverse standard deviation (per channel: a few
kilobytes for a whole model, whatever its depth), and the recompute normalises with one
multiply-add per element, with the gradient of training mode (through the batch
statistics) from torch's own `native_batch_norm_backward`, the kernel plain autograd calls.

Outputs equal the fused kernel's to float32 rounding (it evaluates the same affine map in
another order), gradients likewise. CIFAR model, memory-efficient training step against the
recompute with torch's training kernel, one process, steps interleaved:
benchmarks/results/optimisations.md.
"""

import torch


class _ReplayedBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta, mean, invstd, epsilon):
        scale = gamma * invstd
        ctx.save_for_backward(x, gamma, mean, invstd)
        ctx.epsilon = epsilon
        return torch.addcmul(beta - mean * scale, x, scale)

    @staticmethod
    def backward(ctx, grad):
        x, gamma, mean, invstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x, grad_gamma, grad_beta = torch.ops.aten.native_batch_norm_backward(
            grad.permute(0, 3, 1, 2),
            x.permute(0, 3, 1, 2),
            gamma,
            None,
            None,
            mean,
            invstd,
            True,
            ctx.epsilon,
            [needs[0], needs[1], needs[2]],
        )
        if grad_x is not None:
            grad_x = grad_x.permute(0, 2, 3, 1)
        return grad_x, grad_gamma, grad_beta, None, None, None


def replayed_batch_norm(x, gamma, beta, mean, invstd, epsilon):
    """Channels-last `x` normalised with the given batch `mean` and `invstd`, differentiable
    as training mode is: the gradient flows through the batch statistics of `x` (which must
    be the ones given), not around them."""
    return _ReplayedBatchNorm.apply(x, gamma, beta, mean, invstd, epsilon)

"""Training-mode batch normalisation on torch from batch statistics given to it.

torch's fused training kernel (`native_batch_norm` and its backward) computes the batch
statistics and normalises in one call. Two cases where the statistics are better had apart:

- Reversible backprop's recompute of F sees exactly the inputs the forward pass gave each
  BatchNorm. The forward keeps each call's batch mean and inverse standard deviation (per
  channel: a few kilobytes for a whole model, whatever its depth), and the recompute only
  normalises, one multiply-add per element.
- Channels-last batches with fewer than 8 channels (i-RevNet's bottlenecks have a quarter of
  the block's channels: 4 in CIFAR's first stage, 6 in the ImageNet model's): the kernel
  vectorises over channels and runs such batches at a fraction of its speed on 8 or 16
  channels. There the statistics come from `torch.var_mean` over the rows of the (N*H*W, C)
  matrix and the gradient from the textbook formula.

Either way the gradient is training mode's, through the batch statistics (torch's own
`native_batch_norm_backward` with the given statistics, or the formula for few channels).
Outputs and gradients equal the fused kernel's to float32 rounding (it evaluates the same
affine map in another order). Measurements: benchmarks/results/optimisations.md.
"""

import torch

FEW_CHANNELS = 8


def few_channels(x):
    """Whether channels-last `x` has so few channels that torch's fused kernel is slow."""
    return x.shape[-1] < FEW_CHANNELS


def batch_statistics(x):
    """`(mean, variance)` of channels-last `x` over all but the last axis (biased variance),
    as constants: `normalized` carries their gradient."""
    with torch.no_grad():
        variance, mean = torch.var_mean(x.reshape(-1, x.shape[-1]), dim=0, correction=0)
    return mean, variance


class _Normalized(torch.autograd.Function):
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
        if few_channels(x):
            grad_x, grad_gamma, grad_beta = _few_channels_backward(grad, x, gamma, mean, invstd)
        else:
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
        return (
            grad_x if needs[0] else None,
            grad_gamma if needs[1] else None,
            grad_beta if needs[2] else None,
            None,
            None,
            None,
        )


def _few_channels_backward(grad, x, gamma, mean, invstd):
    channels = x.shape[-1]
    rows = x.numel() // channels
    normalized = (x.reshape(-1, channels) - mean) * invstd
    grad = grad.reshape(-1, channels)
    grad_beta = grad.sum(0)
    grad_gamma = (grad * normalized).sum(0)
    grad_x = (grad - grad_beta / rows - normalized * (grad_gamma / rows)) * (gamma * invstd)
    return grad_x.reshape(x.shape), grad_gamma, grad_beta


def normalized(x, gamma, beta, mean, invstd, epsilon):
    """Channels-last `x` normalised with its batch `mean` and inverse standard deviation
    `invstd` (which must be those of `x`), differentiable as training mode is: the gradient
    flows through the batch statistics, not around them."""
    return _Normalized.apply(x, gamma, beta, mean, invstd, epsilon)

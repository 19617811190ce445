"""The yardstick: a plain-PyTorch i-RevNet (benchmarks/torch_irevnet.py), timed as the authors'
code runs.

Training step as the authors' train loop runs it (eager, SGD with momentum 0.9 and weight
decay, cross-entropy), inference and inverse in `eval()` mode under `torch.no_grad()`. Also
the FLOP count of the architecture (from the convolutions' and the linear layer's output
shapes) and the machine's float32 matmul peak.
"""

import torch
from torch import nn

from benchmarks.speed_setup import MODELS, rates, time_steps
from benchmarks.torch_irevnet import TorchIRevNet

MATMUL_SIZES = (1024, 2048, 4096)


def reference_model(name):
    spec = MODELS[name]
    config = spec["config"]
    return TorchIRevNet(
        config["blocks"],
        config["strides"],
        config["channels"],
        init_ds=config["init_ds"],
        classes=spec["classes"],
        dropout=config.get("dropout", 0.0),
    )


def forward_flops(model, image_size):
    """Multiply-adds x 2 of the convolutions and the linear layer, per image."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += 2 * output[0].numel() * module.in_channels * kh * kw
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    return total


def matmul_peak_gflops(repeats=5):
    """float32 GFLOP/s of the fastest square matmul (torch and numpy, all threads).

    The best of several sizes and both libraries: on this project's 2-core machine a single
    2048^3 torch matmul reached 220 GFLOP/s while oneDNN's convolutions reached 560, so one
    size alone understated the machine (and gave "% of peak" above 100).
    """

    best = 0.0
    for size in MATMUL_SIZES:
        a, b = torch.randn(size, size), torch.randn(size, size)
        _, seconds = time_steps(lambda a=a, b=b: torch.mm(a, b), repeats)
        best = max(best, 2 * size**3 / seconds / 1e9)
        an, bn = a.numpy(), b.numpy()
        _, seconds = time_steps(lambda an=an, bn=bn: an @ bn, repeats)
        best = max(best, 2 * size**3 / seconds / 1e9)
    return best


def reference_steps(workload, device="cpu", precision="float32"):
    """The reference's steps on `workload`'s batches: `{"train", "inference", "inverse"}`.

    "train" is the authors' training step (SGD with momentum 0.9 and weight decay,
    cross-entropy) in `train()` mode; "inference" the forward pass and "inverse" the inverse
    of Phi(x) in `eval()` mode under `torch.no_grad()`. Each step switches the mode only when
    it changes (a mode switch walks every module). `precision="bfloat16"` runs the forward
    passes under `torch.autocast` (bfloat16 mixed precision; weights and the loss stay
    float32).
    """
    autocast = torch.autocast(
        device_type="cuda" if device.startswith("cuda") else "cpu",
        dtype=torch.bfloat16,
        enabled=precision == "bfloat16",
    )
    torch.manual_seed(0)
    model = reference_model(workload.model).to(device)
    classes = MODELS[workload.model]["classes"]
    weight_decay = 5e-4 if workload.model == "cifar" else 1e-4
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=weight_decay)
    size = workload.image_size
    x = torch.randn(workload.train_batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (workload.train_batch,), device=device)
    x_inference = torch.randn(workload.infer_batch, 3, size, size, device=device)
    phi = []

    def mode(training):
        if model.training != training:
            model.train(training)

    def train():
        mode(True)
        optimizer.zero_grad()
        with autocast:
            logits, _ = model(x)
        nn.functional.cross_entropy(logits.float(), y).backward()
        optimizer.step()

    def inference():
        mode(False)
        with torch.no_grad(), autocast:
            return model(x_inference)

    def inverse():
        mode(False)
        with torch.no_grad(), autocast:
            if not phi:
                phi.append(model.features(x_inference))
            return model.inverse(phi[0])

    return {"train": train, "inference": inference, "inverse": inverse}


def measure(workload, device="cpu", precision="float32"):
    """Yields one result dict per measurement of the reference on `workload`
    (`reference_steps`, timed).

    On a GPU each timed call ends with `torch.cuda.synchronize()` (its kernels are queued
    asynchronously), cuDNN picks its convolution algorithms by timing them
    (`cudnn.benchmark`, as the authors' training programs set it), and each training result
    carries the step's peak of allocated bytes.
    """
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cudnn.benchmark = True

    def synchronized(call):
        def step():
            out = call()
            if cuda:
                torch.cuda.synchronize()
            return out

        return step

    steps = reference_steps(workload, device, precision)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = _result(
        "train", workload.train_batch, *time_steps(synchronized(steps["train"]), workload.steps)
    )
    if cuda:
        result["peak_bytes"] = torch.cuda.max_memory_allocated()
    yield result
    for work in ("inference", "inverse"):
        yield _result(
            work, workload.infer_batch, *time_steps(synchronized(steps[work]), workload.steps)
        )


def _result(work, batch, first, seconds):
    return dict(
        work=work, batch=batch, jit="eager", memory_efficient=False, **rates(batch, first, seconds)
    )

"""A plain-PyTorch i-RevNet written from docs/reference.md (NCHW, no Keras).

Two jobs: the independent reference the tests compare our Keras models against (same
weights -> same logits, Phi(x) and inverse), and the yardstick of the speed benchmarks. Its
`state_dict()` has exactly the authors' layout (`stack.{i}.bottleneck_block.{j}.*`, `bn1.*`,
`linear.*`), so `torch.save({'state_dict': {'module.' + k: v}})` makes a checkpoint in the
format of the authors' releases.
"""

import torch
from torch import nn
from torch.nn import functional as F


def psi(x, b):
    """Space to depth, reference order: channel (dh*b + dw)*C + c (NCHW)."""
    if b == 1:
        return x
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // b, b, w // b, b)
    return x.permute(0, 3, 5, 1, 2, 4).reshape(n, b * b * c, h // b, w // b)


def psi_inverse(x, b):
    if b == 1:
        return x
    n, c, h, w = x.shape
    x = x.reshape(n, b, b, c // (b * b), h, w)
    return x.permute(0, 3, 4, 1, 5, 2).reshape(n, c // (b * b), h * b, w * b)


def split(x):
    n = x.shape[1] // 2
    return x[:, :n], x[:, n:]


class Block(nn.Module):
    def __init__(self, in_ch, out_ch, stride, first, dropout, mult):
        super().__init__()
        self.pad = 2 * out_ch - in_ch
        self.stride = stride
        self.injective = self.pad != 0 and stride == 1
        if self.injective:
            in_ch = 2 * out_ch
        hidden = out_ch // mult
        layers = []
        if not first:
            layers += [nn.BatchNorm2d(in_ch // 2), nn.ReLU()]
        layers += [
            nn.Conv2d(in_ch // 2, hidden, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            nn.Dropout(dropout),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_ch, 3, padding=1, bias=False),
        ]
        self.bottleneck_block = nn.Sequential(*layers)

    def forward(self, x1, x2):
        if self.injective:
            x1, x2 = split(F.pad(torch.cat([x1, x2], 1), (0, 0, 0, 0, 0, self.pad)))
        fx2 = self.bottleneck_block(x2)
        if self.stride == 2:
            x1, x2 = psi(x1, 2), psi(x2, 2)
        return x2, fx2 + x1

    def inverse(self, x2, y1):
        if self.stride == 2:
            x2 = psi_inverse(x2, 2)
        x1 = y1 - self.bottleneck_block(x2)
        if self.stride == 2:
            x1 = psi_inverse(x1, 2)
        if self.injective:
            x = torch.cat([x1, x2], 1)
            x1, x2 = split(x[:, : x.shape[1] - self.pad])
        return x1, x2


class TorchIRevNet(nn.Module):
    """i-RevNet in plain PyTorch; `forward` returns (logits, Phi(x)) as the authors' code."""

    def __init__(
        self, blocks, strides, channels, init_ds=2, in_channels=3, classes=1000, dropout=0.0, mult=4
    ):
        super().__init__()
        self.init_ds = init_ds
        in_ch = in_channels * (4 if init_ds else 1)
        self.stack = nn.ModuleList()
        for n, s, c in zip(blocks, strides, channels):
            for j in range(n):
                self.stack.append(
                    Block(in_ch, c, s if j == 0 else 1, not self.stack, dropout, mult)
                )
                in_ch = 2 * c
        self.bn1 = nn.BatchNorm2d(in_ch, momentum=0.9)
        self.linear = nn.Linear(in_ch, classes)

    def features(self, x):
        if self.init_ds:
            x = psi(x, 2)
        x1, x2 = split(x)
        for block in self.stack:
            x1, x2 = block(x1, x2)
        return torch.cat([x1, x2], 1)

    def forward(self, x):
        phi = self.features(x)
        out = F.relu(self.bn1(phi)).mean(dim=(2, 3))
        return self.linear(out), phi

    def inverse(self, phi):
        x1, x2 = split(phi)
        for block in reversed(self.stack):
            x1, x2 = block.inverse(x1, x2)
        x = torch.cat([x1, x2], 1)
        return psi_inverse(x, 2) if self.init_ds else x

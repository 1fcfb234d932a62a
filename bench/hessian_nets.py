"""The networks and data of the Hessian bench, torch only: imported by ``bench.hessian`` and by ``bench.pyhessian_side``
(which runs in a virtualenv that has PyHessian and torch but not llmpi's other dependencies).

``SmallCNN`` is small enough for its dense Hessian (about 4,000 parameters: every column is one product), so the
trace and the density have an exact reference; the CIFAR ResNets come from ``llmpi.models``.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv 3->c (3x3, stride 2) BN ReLU, conv c->2c (3x3, stride 2) BN ReLU, 4x4 average pool, linear 32c->10:
    3,986 parameters with c = 8 (``smallcnn``), 486 with c = 2 (``tinycnn``, the test suite's)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.linear = nn.Linear(32 * c, 10)

    def forward(self, x):
        out = self.bn1(self.conv1(x)).relu()
        out = self.bn2(self.conv2(out)).relu()
        return self.linear(self.pool(out).flatten(1))


def build(arch: str) -> nn.Module:
    if arch == "smallcnn":
        return SmallCNN(8)
    if arch == "tinycnn":
        return SmallCNN(2)
    from llmpi import models  # torch only below llmpi.models

    return models.build(arch)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> nn.Module:
    """A few epochs of SGD with momentum (batch 128): a network near a minimum, whose Hessian has the few large
    outlying eigenvalues over a bulk that trained networks have (at initialisation it has not)."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(epochs):
        model.train()
        for s in torch.randperm(len(y)).split(128):
            loss = nn.functional.cross_entropy(model(x[s]), y[s])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()

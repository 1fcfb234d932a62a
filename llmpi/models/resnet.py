"""CIFAR ResNets (He et al. 2016) with and without shortcut connections, as in the paper's experiments.

Depth 6n+2: a 3x3 stem with 16 channels, three stages of n basic blocks (16, 32, 64 channels; stride 2 between
stages), global average pooling, a linear classifier. Where a block changes shape the shortcut is a 1x1
convolution with BatchNorm (``shortcut.0``, ``shortcut.1``). The ``_noshort`` variants drop the shortcut, which is
what makes the paper's loss surfaces chaotic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.use_shortcut = shortcut
        if shortcut:
            projection = stride != 1 or cin != cout
            self.shortcut = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                if projection
                else nn.Sequential()
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.use_shortcut:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, shortcut: bool = True, width: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        widths = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for stage, cout in enumerate(widths, start=1):
            stride = 1 if stage == 1 else 2
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(cin, cout, stride if b == 0 else 1, shortcut))
                cin = cout
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _depth(depth: int, shortcut: bool, width: int = 1):
    assert (depth - 2) % 6 == 0, depth
    return lambda: CifarResNet((depth - 2) // 6, shortcut=shortcut, width=width)


BUILDERS = {
    # resnet8 is not in the paper: the smallest member of the family, for the demo and the tests.
    "resnet8": _depth(8, True),
    "resnet8_noshort": _depth(8, False),
    "resnet20": _depth(20, True),
    "resnet20_noshort": _depth(20, False),
    "resnet56": _depth(56, True),
    "resnet56_noshort": _depth(56, False),
    "resnet110": _depth(110, True),
    "resnet110_noshort": _depth(110, False),
}

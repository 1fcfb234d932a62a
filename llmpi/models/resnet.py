"""CIFAR ResNets (He et al. 2016) and their wide versions, with and without shortcut connections.

Depth 6n+2: a 3x3 stem with 16k channels, three stages of n basic blocks (16k, 32k, 64k channels; stride 2
between stages), global average pooling, a linear classifier; k = 1 is the plain ResNet, k > 1 the paper's
Wide-ResNets (``wrn56_4`` is depth 56 with 4x the filters). Where a block changes shape the shortcut is a 1x1
convolution with BatchNorm (``shortcut.0``, ``shortcut.1``; He et al.'s option B, which is why ``resnet20`` has
0.272M parameters where their option-A table says 0.27M). The ``_noshort`` variants have no shortcut at all --
no ``shortcut`` module either, so their state_dicts hold exactly the paper's keys -- and that missing identity
path is what makes the paper's deep loss surfaces chaotic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm; out = relu(bn2(conv2(relu(bn1(conv1 x)))) [+ shortcut x])."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, shortcut: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.use_shortcut = shortcut
        if shortcut:
            self.shortcut = projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.use_shortcut:
            out = out + self.shortcut(x)
        return F.relu(out)


def projection(cin: int, cout: int, stride: int) -> nn.Sequential:
    """The shortcut path: the identity (an empty Sequential, no parameters) unless the shape changes."""
    if stride == 1 and cin == cout:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


def global_average(x: torch.Tensor) -> torch.Tensor:
    """Average each channel over its whole map, (N, C, H, W) -> (N, C).

    The paper's code pools with a fixed kernel (8x8, or 4x4 for the 4-stage nets) that equals the final map on
    32x32 images; the same pooling kernel over the whole map gives bit-identical outputs there, and any image
    size works.
    """
    return F.avg_pool2d(x, x.shape[-2:]).flatten(1)


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
        out = global_average(out)
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
    "resnet32_noshort": _depth(32, False),
    "resnet44_noshort": _depth(44, False),
    # The paper's name: depth 50 of this 16-channel CIFAR family, not the 4-stage bottleneck resnet50.
    "resnet50_16_noshort": _depth(50, False),
    "resnet56": _depth(56, True),
    "resnet56_noshort": _depth(56, False),
    "resnet110": _depth(110, True),
    "resnet110_noshort": _depth(110, False),
    "wrn56_2": _depth(56, True, 2),
    "wrn56_2_noshort": _depth(56, False, 2),
    "wrn56_4": _depth(56, True, 4),
    "wrn56_4_noshort": _depth(56, False, 4),
    "wrn56_8": _depth(56, True, 8),
    "wrn56_8_noshort": _depth(56, False, 8),
    "wrn110_2_noshort": _depth(110, False, 2),
    "wrn110_4_noshort": _depth(110, False, 4),
}

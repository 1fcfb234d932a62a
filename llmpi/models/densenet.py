"""DenseNet-121 (Huang et al. 2017) for 32x32 images, the paper's example of a smooth, skip-rich landscape.

A 3x3 stem with 2g channels (growth rate g = 32), four dense blocks of 6, 12, 24, 16 bottleneck layers, each
layer adding g channels concatenated in front of its input; between blocks a transition (BatchNorm, ReLU, 1x1 conv
halving the channels, 2x2 average pool); at the end BatchNorm, ReLU, global average pooling, a linear classifier.
Layers are pre-activation (BatchNorm and ReLU before each convolution), as in the paper's code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import global_average


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv to 4g channels, BN-ReLU-3x3 conv to g channels; the g new channels go first."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    def __init__(
        self, blocks: tuple[int, ...], growth: int = 32, reduction: float = 0.5, num_classes: int = 10
    ) -> None:
        super().__init__()
        channels = 2 * growth
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        for i, count in enumerate(blocks, start=1):
            layers = []
            for _ in range(count):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            setattr(self, f"dense{i}", nn.Sequential(*layers))
            if i < len(blocks):
                reduced = int(channels * reduction)
                setattr(self, f"trans{i}", Transition(channels, reduced))
                channels = reduced
        self.bn = nn.BatchNorm2d(channels)
        self.linear = nn.Linear(channels, num_classes)
        self.stages = len(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for i in range(1, self.stages + 1):
            out = getattr(self, f"dense{i}")(out)
            if i < self.stages:
                out = getattr(self, f"trans{i}")(out)
        out = global_average(F.relu(self.bn(out)))
        return self.linear(out)


BUILDERS = {"densenet121": lambda: DenseNet((6, 12, 24, 16), growth=32)}

"""The ImageNet ResNet configurations (ResNet-18/34/50/101/152, He et al. 2016, Table 1) at CIFAR resolution.

As in the paper's code: a 3x3 stride-1 stem with 64 channels and no max-pool (a 32x32 image is small already),
four stages of 64, 128, 256, 512 planes (stride 2 between stages, so 4x4 maps at the end), global average
pooling, a linear classifier. ResNet-18/34 stack basic blocks; ResNet-50/101/152 stack bottlenecks
(1x1 reduce, 3x3 with the stride, 1x1 expand by 4). ``_noshort`` drops every shortcut and its module; its
bottleneck blocks also end without the final ReLU, exactly as the paper's ``Bottleneck_noshortcut`` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import BasicBlock, global_average, projection


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 convolutions with BatchNorm, 4x as many channels out as the 3x3 has."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, shortcut: bool) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.use_shortcut = shortcut
        if shortcut:
            self.shortcut = projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if not self.use_shortcut:
            # The paper's shortcut-free bottleneck ends at bn3, with no ReLU: kept so that its checkpoints compute
            # the function they were trained as.
            return out
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self, block: type[BasicBlock | Bottleneck], blocks: list[int], shortcut: bool = True, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
            layers = []
            for b in range(count):
                # BasicBlock's second argument is its output width, Bottleneck's its inner width: with
                # expansion 1 the two coincide, so one call serves both.
                layers.append(block(cin, planes, 2 if stage > 1 and b == 0 else 1, shortcut))
                cin = planes * block.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = global_average(out)
        return self.linear(out)


_CONFIGS = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


def _builder(depth: int, shortcut: bool):
    block, blocks = _CONFIGS[depth]
    return lambda: ResNet(block, blocks, shortcut)


BUILDERS = {
    f"resnet{depth}{suffix}": _builder(depth, shortcut)
    for depth in _CONFIGS
    for suffix, shortcut in (("", True), ("_noshort", False))
}

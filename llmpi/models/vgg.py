"""VGG-9 with BatchNorm, the paper's network for its batch-size and weight-decay comparisons.

Seven 3x3 convolutions (64, 64, M, 128, 128, M, 256, 256, 256, M; each conv with bias, BatchNorm, ReLU; M a 2x2
max-pool), then one hidden fully connected layer of 256 units with BatchNorm and ReLU (``fc``) and the linear
``classifier``. Module indices inside ``features`` and ``fc`` are part of the parameter names (features.0 is the
first conv, features.1 its BatchNorm, ...), so the layer order below is the paper's and must stay so.
"""

from __future__ import annotations

import math

import torch
from torch import nn

VGG9 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M")


class VGG(nn.Module):
    def __init__(self, config: tuple[int | str, ...] = VGG9, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = 3, image_size
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
                size = math.ceil(size / 2)
            else:
                layers += [nn.Conv2d(cin, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
                cin = item
        self.features = nn.Sequential(*layers)
        # The hidden layer sees the whole final feature map (4x4 for CIFAR), so the input size is fixed.
        self.fc = nn.Sequential(nn.Linear(cin * size * size, cin), nn.BatchNorm1d(cin), nn.ReLU())
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.features(x).flatten(1)))


BUILDERS = {"vgg9": lambda: VGG(VGG9)}

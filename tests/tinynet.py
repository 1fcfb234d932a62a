"""A network small enough for a dense Hessian (268 weights in tensors of two or more dimensions), registered as
arch ``tinynet`` (and ``refusednet``, the same network through an operator torch.compile cannot trace), and the
sweep's command line with them registered:

    mpirun -n 3 python -m tinynet job.yaml          # = python -m llmpi.sweep job.yaml, with arch tinynet known
    mpirun -n 3 python -m tinynet spectrum job.yaml # = python -m llmpi.spectrum job.yaml, likewise

(tests/ on PYTHONPATH). The real sweep runs unchanged; only the registry gains one entry before the job loads.
"""

from __future__ import annotations

import sys

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv 3->4 (3x3, stride 4), BatchNorm, ReLU, 2x2 average pool, linear 16->10: CIFAR-shaped input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=4, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.linear = nn.Linear(16, 10)

    def forward(self, x):
        return self.linear(self.pool(self.bn1(self.conv1(x)).relu()).flatten(1))


@torch.library.custom_op("llmpitests::halve", mutates_args=())
def halve(x: torch.Tensor) -> torch.Tensor:
    """An operator of the user's own without a fake kernel: eager runs it, dynamo cannot trace it (no
    ``register_fake``), so torch.compile of a network that calls it fails -- as it does for many custom CUDA ops."""
    return x * 0.5


class RefusedNet(TinyNet):
    """TinyNet with its logits through ``halve``: the same parameters, a network dynamo refuses to compile."""

    def forward(self, x):
        return halve(super().forward(x))


def detached_loss(model: nn.Module, batch):
    """A loss factory that forgets the graph (computed under no_grad): a Hessian of it must be refused clearly."""
    import torch

    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="sum"), len(batch[1]), None


def train(root, path, seed: int = 1) -> None:
    """A tinynet trained briefly (one pass, 200 images of the CIFAR-format folder ``root``) saved to ``path``: a
    network near a minimum, with a Hessian of a few large eigenvalues over a bulk, as real ones have."""
    import torch

    from llmpi.compute import data

    torch.manual_seed(seed)
    model = TinyNet()
    images, labels = data.load_cifar10(root, "train", download=False)
    x, y = data.normalize(images[:200]), torch.as_tensor(labels[:200])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for s in torch.randperm(200).split(25):
        loss = torch.nn.functional.cross_entropy(model(x[s]), y[s])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save({"state_dict": model.state_dict()}, path)


def register() -> None:
    from llmpi import models

    models.REGISTRY.setdefault("tinynet", TinyNet)
    models.REGISTRY.setdefault("refusednet", RefusedNet)


register()

if __name__ == "__main__":
    if sys.argv[1:2] == ["spectrum"]:
        from llmpi.spectrum import main

        sys.exit(main(sys.argv[2:]))
    from llmpi.sweep import main

    sys.exit(main())

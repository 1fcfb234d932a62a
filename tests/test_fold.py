"""BatchNorm folded per point (llmpi.compute.fold) against the unfolded network: what folds, and how far values move.

    pytest tests/test_fold.py                   # one network per family of the zoo (make test)
    LLMPI_ZOO=all pytest tests/test_fold.py     # every zoo network with BatchNorm (make test-zoo, minutes)

Each network is freshly initialised with random BatchNorm statistics and affine parameters (so the folding is not
the identity) and its classifier scaled so that the logits have a standard deviation of 3 (a loss that reacts to
small changes, unlike an untrained net's uniform 2.3). Directions use ``ignore: none``, so the BatchNorm
parameters (and with ``type: states`` the running statistics) move as well as the weights.
"""

from __future__ import annotations

import copy
import functools
import os

import pytest
import torch
from torch import nn

from llmpi import models
from llmpi.compute.evaluate import Evaluator
from llmpi.compute.fold import fold
from llmpi.space.directions import perturbed_entries, random_directions

# The bounds on |folded - unfolded| / |unfolded| of the mean loss, per precision: 5x the largest deviation measured
# over the zoo (fp32 3.8e-7, wrn56_2 with type states; bf16 5.1e-3, the same: bf16 rounds the folded weights once,
# the unfolded network rounds every BatchNorm's output, both ~1e-3 from fp32).
BOUND = {"fp32": 2e-6, "bf16": 2.5e-2}

FAMILIES = ["resnet8", "vgg9"]  # CIFAR ResNet with projection shortcuts; VGG (conv bias, Linear -> BatchNorm1d)


def zoo_with_batchnorm() -> list[str]:
    out = []
    for name in models.names():
        with torch.device("meta"):
            if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in models.build(name).modules()):
                out.append(name)
    return out


NETWORKS = zoo_with_batchnorm() if os.environ.get("LLMPI_ZOO") == "all" else FAMILIES
IMAGES = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
LABELS = torch.arange(6) % 10


@functools.cache
def randomised(arch: str) -> nn.Module:
    """``arch`` with random BatchNorm statistics and affine parameters, logits scaled to a standard deviation of 3."""
    torch.manual_seed(0)
    model = models.build(arch).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        scale = 3.0 / model(IMAGES).std().item()
        last.weight.mul_(scale)
        last.bias.mul_(scale)
    return model


@pytest.mark.parametrize("arch", NETWORKS)
def test_folded_values_stay_within_the_bound_of_the_unfolded_network(arch):
    model = randomised(arch)  # each evaluator below converts a copy of it to its precision
    for kind in ("weights", "states"):
        entries = {k: v.detach() for k, v in perturbed_entries(model, kind).items()}
        dirs = random_directions(entries, seed=0, norm="filter", ignore="none")
        if kind == "states":
            assert any(d.dim() == 1 and d.any() for n, d in dirs[0].items() if n.endswith("running_var"))
        for precision in ("fp32", "bf16"):
            points = [(0.0, 0.0), (0.3, -0.2)]
            unfolded = Evaluator(copy.deepcopy(model), dirs, IMAGES, LABELS, 6, kind=kind, precision=precision)
            unfolded = unfolded.many(points)
            ev = Evaluator(copy.deepcopy(model), dirs, IMAGES, LABELS, 6, kind=kind, precision=precision, fold=True)
            folded = ev.many(points)
            assert ev.network.folded.pairs, arch
            for (a, acc_a), (b, _) in zip(unfolded, folded):
                assert abs(b - a) <= BOUND[precision] * abs(a), (arch, kind, precision, a, b)
                assert 0.0 <= acc_a <= 100.0


def test_folding_leaves_the_original_network_alone_and_shares_its_other_modules():
    model = copy.deepcopy(randomised("resnet8"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold(model, IMAGES[:1])
    assert [(p.layer, p.norm) for p in folded.pairs][:2] == [("conv1", "bn1"), ("layer1.0.conv1", "layer1.0.bn1")]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert folded.network.linear is model.linear  # unfolded modules are the same objects: they follow the point
    assert folded.network.conv1 is not model.conv1 and not hasattr(folded.network, "bn1")
    assert folded.network.conv1.weight.is_contiguous(memory_format=torch.contiguous_format)
    folded.refresh(folded.gather({k: v.detach() for k, v in model.state_dict(keep_vars=True).items()}))
    with torch.no_grad():
        assert torch.allclose(folded.network(IMAGES), model(IMAGES), rtol=1e-5, atol=1e-5)


def test_folded_weights_follow_the_perturbed_statistics_by_hand():
    """One conv + BatchNorm, with every entry moved: the folded layer is s·W, s·(b − μ) + β with s = γ/√(σ² + ε)."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4, eps=1e-3), nn.ReLU()).eval()
    g = torch.Generator().manual_seed(3)
    values = {k: torch.randn(v.shape, generator=g) for k, v in net.state_dict().items() if v.is_floating_point()}
    values["1.running_var"] = values["1.running_var"].abs() + 0.1
    folded = fold(net, IMAGES[:1])
    folded.refresh(folded.gather(values))
    s = values["1.weight"] / torch.sqrt(values["1.running_var"] + 1e-3)
    layer = folded.network.get_submodule("0")
    assert torch.allclose(layer.weight, values["0.weight"] * s.view(4, 1, 1, 1), rtol=1e-6, atol=0)
    assert torch.allclose(layer.bias, s * (values["0.bias"] - values["1.running_mean"]) + values["1.bias"], rtol=1e-6)


def test_densenet_folds_only_the_batchnorm_that_follows_a_convolution():
    """DenseNet is pre-activation: most BatchNorms follow a concatenation or pooling and stay; each dense layer's
    second BatchNorm follows its 1x1 convolution and folds."""
    model = models.build("densenet121").eval()
    folded = fold(model, IMAGES[:1])
    assert (
        folded.describe()
        == "58 of 120 BatchNorm layers folded (62 follow no convolution or linear layer of their own and stay)"
    )
    assert all(p.norm.endswith(".bn2") and p.layer.endswith(".conv1") for p in folded.pairs)


class Branching(nn.Module):
    """A convolution whose output feeds a BatchNorm and something else: folding would change the other use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.bn(self.conv(x))
        return self.conv(x)


def test_a_layer_with_other_users_or_an_untraceable_network_is_not_folded():
    assert fold(Branching().eval(), IMAGES[:1]).pairs == []
    assert fold(Untraceable().eval(), IMAGES[:1]) is None
    assert fold(Branching().train(), IMAGES[:1]).norms == 0  # train-mode BatchNorm is no affine map

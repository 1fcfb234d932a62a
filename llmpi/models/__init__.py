"""The networks of the paper, by name: ``llmpi.models.build("resnet56_noshort")``.

    python -m llmpi.models            # every architecture with its parameter count

The names are those of the paper's published code (``cifar10/model_loader.py``), and so are the parameter names
and shapes, so its checkpoints load as they are:

* CIFAR ResNets ``resnet20/56/110`` (+ ``_noshort``), ``resnet32/44_noshort``, ``resnet50_16_noshort`` and the
  Wide-ResNets ``wrn56_2/4/8`` (+ ``_noshort``), ``wrn110_2/4_noshort`` -- :mod:`.resnet`;
* the 4-stage ``resnet18/34/50/101/152`` (+ ``_noshort``) -- :mod:`.resnet_imagenet`;
* ``vgg9`` (VGG-9 with BatchNorm) -- :mod:`.vgg`; ``densenet121`` -- :mod:`.densenet`.

``resnet8``/``resnet8_noshort`` are not in the paper: the smallest CIFAR ResNets, for the demo and the tests.
All take 3x32x32 images normalised as in :func:`llmpi.compute.data.normalize` and return 10 logits.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable

import torch
from torch import nn

from . import densenet, resnet, resnet_imagenet, vgg

REGISTRY: dict[str, Callable[[], nn.Module]] = {
    **resnet.BUILDERS,
    **resnet_imagenet.BUILDERS,
    **vgg.BUILDERS,
    **densenet.BUILDERS,
}

# The paper calls the 56-layer net without shortcuts "VGG-56"; accept both names, store the canonical one.
ALIASES: dict[str, str] = {"vgg56": "resnet56_noshort"}


def names() -> list[str]:
    """The architecture names in natural order (resnet8 before resnet20 before resnet110)."""
    return sorted(REGISTRY, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])


def canonical_arch(name: str) -> str:
    """The registry name for ``name`` (resolving aliases), or a ValueError naming the nearest known arch (a job's
    loader adds the key to the message: this package knows nothing of job files)."""
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        known = names() + sorted(ALIASES)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ValueError(f"unknown architecture {name!r}; {hint}known: {', '.join(known)}")
    return name


def build(name: str) -> nn.Module:
    """A freshly initialised network ``name`` (an alias such as vgg56 works too), PyTorch's default init.

    Inside ``with torch.device("meta"):`` it allocates nothing: the way to inspect names and shapes cheaply.
    """
    return REGISTRY[canonical_arch(name)]()


@functools.cache
def parameter_count(name: str) -> int:
    """The number of trainable parameters of ``name`` (BatchNorm running statistics are buffers, not counted)."""
    with torch.device("meta"):
        model = build(name)
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def paper_init(model: nn.Module) -> nn.Module:
    """Re-initialise ``model`` as the paper's training script does, for runs meant to reproduce its minimisers.

    Convolutions: Kaiming normal (fan-in) weights, zero bias; BatchNorm: weight 1, bias 0; linear layers:
    N(0, 0.001^2) weights, zero bias. The tiny classifier weights start every net near uniform predictions.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1e-3)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model

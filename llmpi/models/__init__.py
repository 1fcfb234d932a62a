"""The networks of the paper, by name: ``llmpi.models.build("resnet56_noshort")``.

Parameter names follow the CIFAR ResNet layout of the paper's published code (conv1, bn1, layer1..3 of blocks
with conv1/bn1/conv2/bn2 and shortcut.0/shortcut.1 where shapes change, linear), so its checkpoints load.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import JobError
from . import resnet

REGISTRY: dict[str, Callable[[], nn.Module]] = {}
REGISTRY.update(resnet.BUILDERS)

# The paper calls the 56-layer net without shortcuts "VGG-56"; accept both names, store the canonical one.
ALIASES: dict[str, str] = {"vgg56": "resnet56_noshort"}


def names() -> list[str]:
    return sorted(REGISTRY)


def canonical_arch(name: str) -> str:
    """The registry name for ``name`` (resolving aliases), or a JobError naming the nearest known arch."""
    import difflib

    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        known = names() + sorted(ALIASES)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise JobError(f"model.arch: unknown architecture {name!r}; {hint}known: {', '.join(known)}")
    return name


def build(name: str) -> nn.Module:
    """A freshly initialised network ``name`` (an alias such as vgg56 works too)."""
    return REGISTRY[canonical_arch(name)]()

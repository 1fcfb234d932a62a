"""Directions in weight space, and the paper's normalisations of them (Li et al. 2018, section 4).

A direction is a dict ``{entry name: tensor}`` with the shapes of the network's parameters (``type: weights``) or
of its floating-point state_dict entries, BatchNorm running statistics included (``type: states``). Gaussian
entries come from a seeded CPU ``torch.Generator`` in float32, so a seed alone reproduces them anywhere.

Filter normalisation rescales every filter d_ij of the direction to the norm of the matching filter θ_ij:
d_ij <- d_ij / ‖d_ij‖ · ‖θ_ij‖, a filter being a slice along dim 0 of any tensor of two or more dimensions
(a conv kernel's output channel, a linear layer's output-neuron row). Entries of one dimension or less
(biases, BatchNorm parameters and statistics) get a zero direction with ``ignore: biasbn``, and otherwise
the weight itself (the paper's choice).
"""

from __future__ import annotations

import torch
from torch import nn

Direction = dict[str, torch.Tensor]

EPS = 1e-10  # keeps a (never seen) all-zero Gaussian slice finite; far below float32 resolution of any norm


def perturbed_entries(model: nn.Module, kind: str) -> dict[str, torch.Tensor]:
    """The live tensors a direction moves: parameters, or every floating-point state_dict entry. A tensor tied
    under two names (a language model's embedding and output layer) is moved once, under its first name."""
    if kind == "weights":
        return dict(model.named_parameters())
    if kind == "states":
        out, seen = {}, set()
        for k, v in model.state_dict(keep_vars=True).items():
            if v.is_floating_point() and id(v) not in seen:
                out[k] = v
                seen.add(id(v))
        return out
    raise ValueError(f"directions.type must be 'weights' or 'states', not {kind!r}")


def normalize(d: torch.Tensor, w: torch.Tensor, norm: str, ignore: str) -> torch.Tensor:
    """One entry of a direction scaled like its weight ``w`` (returns a new tensor)."""
    if d.dim() <= 1:
        if ignore == "biasbn":
            return torch.zeros_like(d)
        if ignore == "none":
            return w.detach().clone()
        raise ValueError(f"directions.ignore must be 'biasbn' or 'none', not {ignore!r}")
    if norm == "filter":
        d_norm = d.flatten(1).norm(dim=1)
        w_norm = w.detach().flatten(1).norm(dim=1)
        scale = (w_norm / (d_norm + EPS)).view(-1, *([1] * (d.dim() - 1)))
        return d * scale
    if norm == "layer":
        return d * (w.detach().norm() / (d.norm() + EPS))
    if norm == "weight":
        return d * w.detach()
    if norm == "none":
        return d.clone()
    raise ValueError(f"directions.norm must be one of filter, layer, weight, none; not {norm!r}")


def random_direction(weights: dict[str, torch.Tensor], generator: torch.Generator, norm: str, ignore: str) -> Direction:
    """A Gaussian direction shaped like ``weights`` (drawn in their order), normalised entry by entry."""
    out = {}
    for name, w in weights.items():
        d = torch.randn(w.shape, generator=generator, dtype=torch.float32)
        out[name] = normalize(d, w.detach().to("cpu", torch.float32), norm, ignore).contiguous()
    return out


def random_directions(
    weights: dict[str, torch.Tensor], seed: int, norm: str, ignore: str, count: int = 2
) -> list[Direction]:
    """``count`` directions from one generator seeded with ``seed``: x first, then y."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return [random_direction(weights, generator, norm, ignore) for _ in range(count)]

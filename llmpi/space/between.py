"""Directions between checkpoints: the 1D interpolation between two minimisers and the plane through three.

    base = {k: v.detach() for k, v in perturbed_entries(model, "states").items()}   # θ1, loaded from checkpoint
    line = interpolation(base, read_state_dict(checkpoint2))           # δ = θ2 − θ1; f(α) = L(θ1 + α·δ)
    plane = plane_through(base, read_state_dict(checkpoint2), read_state_dict(checkpoint3))
    plane.directions, plane.coordinates                                 # [δ, η]; {θ1: (0, 0), θ2: (1, 0), θ3: (0, 1)}

Interpolation (Goodfellow et al. 2015, the paper's small- vs large-batch figure): θ(α) = θ1 + α (θ2 − θ1) = (1 − α)
θ1 + α θ2, with α = 0 at the first checkpoint and α = 1 at the second; typically α ∈ [−0.5, 1.5]. The plane: origin
θ1, axes δ = θ2 − θ1 and η = θ3 − θ1, so the three models sit at (0, 0), (1, 0) and (0, 1). No normalisation:
the directions are the differences themselves.

What moves is what ``directions.type`` names (``llmpi.space.directions.perturbed_entries``): ``weights`` -- every
parameter, biases and BatchNorm affine parameters included (the BatchNorm running statistics stay θ1's, so at
α = 1 the network is θ2's parameters with θ1's statistics, not θ2 itself); ``states`` -- every floating-point
state_dict entry, running statistics included, so α = 1 *is* the second checkpoint (the paper's choice for its
interpolation figure). Integer buffers (``num_batches_tracked``) never move. Differences are taken in float64 and
stored in float32, so an endpoint reproduces its checkpoint to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .directions import Direction


def difference(
    base: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], label: str = "the checkpoint"
) -> Direction:
    """other − base over the entries of ``base`` (float32 from a float64 subtraction); names what does not fit."""
    missing = [k for k in base if k not in other]
    if missing:
        few = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise ValueError(f"{label} lacks entries of the first model: {few}; was it saved from another architecture?")
    out = {}
    for name, t in base.items():
        o = other[name]
        if o.shape != t.shape:
            raise ValueError(
                f"{label}: entry {name!r} has shape {tuple(o.shape)}, the first model {tuple(t.shape)}; was it saved "
                f"from another architecture?"
            )
        if not o.is_floating_point():
            raise ValueError(f"{label}: entry {name!r} is not floating-point ({o.dtype}); it cannot be interpolated")
        out[name] = (o.detach().cpu().double() - t.detach().cpu().double()).float().contiguous()
    return out


def interpolation(base: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor]) -> Direction:
    """The direction δ = θ2 − θ1 of the line through two checkpoints (α = 0 at ``base``, α = 1 at ``second``)."""
    return difference(base, second, "model.checkpoint2")


@dataclass(frozen=True)
class Plane:
    """A plane through three models: its two axes and the models' coordinates in it."""

    directions: list[Direction]
    coordinates: tuple[tuple[float, float], ...] = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))


def plane_through(
    base: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor], third: Mapping[str, torch.Tensor]
) -> Plane:
    """The plane with origin θ1 (``base``) and axes θ2 − θ1, θ3 − θ1; refuses three models on one line."""
    dx = difference(base, second, "model.checkpoint2")
    dy = difference(base, third, "model.checkpoint3")
    gram = torch.zeros(2, 2, dtype=torch.float64)
    for name in dx:
        a, b = dx[name].double().reshape(-1), dy[name].double().reshape(-1)
        gram += torch.stack([torch.stack([a @ a, a @ b]), torch.stack([b @ a, b @ b])])
    check_plane(gram.numpy())
    return Plane([dx, dy])


def check_plane(gram) -> None:
    """Refuse the Gram matrix (2 x 2, of δ = θ2 − θ1 and η = θ3 − θ1) of three models that span no plane."""
    for label, norm2 in (("model.checkpoint2", gram[0, 0]), ("model.checkpoint3", gram[1, 1])):
        if norm2 == 0:
            raise ValueError(f"{label} is the same model as model.checkpoint over the moved entries: no plane")
    cos2 = float(gram[0, 1] ** 2 / (gram[0, 0] * gram[1, 1]))
    if cos2 > 1 - 1e-10:
        raise ValueError("the three checkpoints lie on one line: they span no plane; use directions.kind: interpolate")

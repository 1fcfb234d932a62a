"""What rank 0 decides once per surface file, for each ``directions.kind``: the directions, and the datasets that
describe them (written with them, read back by plots and status).

    planned = plan_directions(job, model, ndim=2)        # model holds θ* (model.checkpoint), on the CPU
    planned.directions, planned.extras, planned.extra_attrs

- ``random``: Gaussian directions, normalised (``llmpi.directions``); nothing else to store.
- ``interpolate``: δ = θ2 − θ1 (``llmpi.paths.interpolation``); with ``type: states`` BatchNorm running statistics
  move too, so α = 1 is checkpoint2 itself. No normalisation.
- ``plane``: origin θ1, axes θ2 − θ1 and θ3 − θ1 (``llmpi.paths.plane_through``); stores ``model_coordinates``
  (3, 2), the three models' (α, β), with the checkpoint paths in its attribute ``names``.
- ``pca``: the top two principal components of the trajectory's snapshots minus θ* (``llmpi.pca``, never a dense
  snapshots × parameters matrix); stores ``explained_variance_ratio`` (2,) and the trajectory in the plane,
  ``trajectory/x`` and ``trajectory/y`` (snapshots,), in training order, with the snapshot file names in the
  attribute ``snapshots`` of ``trajectory/x``.

Errors a job can cause (checkpoints of another architecture, three models on a line, too few snapshots) come back
as ``JobError`` naming the key to change.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import JobError
from .store import Planned


def _numpy(direction: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().float().numpy() for k, v in direction.items()}


def _entries(model: nn.Module, kind: str) -> dict[str, torch.Tensor]:
    from .directions import perturbed_entries

    return {k: v.detach().cpu() for k, v in perturbed_entries(model, kind).items()}


def _other(job: Any, model: nn.Module, key: str) -> dict[str, torch.Tensor]:
    """The entries the directions move, of the checkpoint at ``model.<key>`` loaded into a copy of θ*'s network
    (so it fits however the network was built; a mismatch names the keys and the arch that would fit)."""
    from .checkpoint import load_into, read_state_dict

    path = getattr(job.model, key)
    other = copy.deepcopy(model).cpu()
    try:
        load_into(other, read_state_dict(path), job.model.label, path)
    except JobError as e:
        raise JobError(f"model.{key}: {e}") from None
    return _entries(other, job.directions.type)


def plan_directions(job: Any, model: nn.Module, ndim: int) -> Planned:
    """The directions of ``job.directions.kind`` around θ* (``model``), with what describes them."""
    from . import directions, paths, pca

    spec = job.directions
    base = _entries(model, spec.type)
    try:
        if spec.kind == "random":
            dirs = directions.random_directions(base, spec.seed, spec.norm, spec.ignore, count=ndim)
            return Planned([_numpy(d) for d in dirs])
        if spec.kind == "interpolate":
            return Planned([_numpy(paths.interpolation(base, _other(job, model, "checkpoint2")))])
        if spec.kind == "plane":
            plane = paths.plane_through(base, _other(job, model, "checkpoint2"), _other(job, model, "checkpoint3"))
            names = [job.model.checkpoint, job.model.checkpoint2, job.model.checkpoint3]
            return Planned(
                [_numpy(d) for d in plane.directions],
                {"model_coordinates": np.asarray(plane.coordinates, dtype=np.float64)},
                {"model_coordinates": {"names": names}},
            )
        if spec.kind == "pca":
            files = pca.snapshot_files(spec.trajectory)
            loaders = [lambda p=p: pca.load_snapshot(p) for p in files]
            result = pca.pca_directions(base, loaders, k=2, ignore=spec.ignore, rescale=spec.rescale)
            return Planned(
                [_numpy(d) for d in result.components],
                {
                    "explained_variance_ratio": np.asarray(result.explained_variance_ratio, dtype=np.float64),
                    "trajectory/x": np.asarray(result.coordinates[:, 0], dtype=np.float64),
                    "trajectory/y": np.asarray(result.coordinates[:, 1], dtype=np.float64),
                },
                {"trajectory/x": {"snapshots": [p.name for p in files]}},
            )
    except JobError:
        raise
    except ValueError as e:  # paths and pca refuse what does not fit by ValueError: the job's doing
        raise JobError(f"directions.kind {spec.kind}: {e}") from None
    raise AssertionError(f"unknown directions.kind {spec.kind!r} passed validation")

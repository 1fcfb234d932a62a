"""What rank 0 decides once per surface file, for each ``directions.kind``: the directions, and the datasets that
describe them (written with them, read back by plots and status).

    planned = plan_directions(job, model, ndim=2)        # model holds θ* (model.checkpoint), on the CPU
    planned.directions, planned.extras, planned.extra_attrs

- ``random``: Gaussian directions, normalised (``llmpi.space.directions``); nothing else to store.
- With ``directions.store: recipe`` (the default above ``LEAN_PARAMETERS``) the file gets how to make the
  directions instead (``llmpi.space.recipe``: a few MB whatever the network's size) and every rank makes them itself:
  random ones from the seed, those of ``interpolate`` and ``plane`` from the other checkpoints, which every rank
  reads (memory-mapped). ``pca`` stores its components in full.
- ``interpolate``: δ = θ2 − θ1 (``llmpi.space.between.interpolation``); with ``type: states`` BatchNorm running
  statistics move too, so α = 1 is checkpoint2 itself. No normalisation.
- ``plane``: origin θ1, axes θ2 − θ1 and θ3 − θ1 (``llmpi.space.between.plane_through``); stores ``model_coordinates``
  (3, 2), the three models' (α, β), with the checkpoint paths in its attribute ``names``.
- ``pca``: the top two principal components of the trajectory's snapshots minus θ* (``llmpi.space.pca``, never a dense
  snapshots × parameters matrix); stores ``explained_variance_ratio`` (2,) and the trajectory in the plane,
  ``trajectory/x`` and ``trajectory/y`` (snapshots,), in training order, with the snapshot file names in the
  attribute ``snapshots`` of ``trajectory/x``.
- ``hessian``: the top eigenvector of the Hessian at θ* (a line), or the top two (a plane), read from the spectrum
  file ``directions.spectrum`` (``python -m llmpi.spectrum``; the sweep computes one first when the key is null). The
  eigenvectors are unit vectors over the parameters the Hessian is over (zero on every other entry) with
  ``norm: none``, the default for this kind; ``filter`` (``layer``, ``weight``) rescales them like a random
  direction -- each filter to the norm of θ*'s, an entry of one dimension as a whole to its weight's norm -- so
  the axes compare with a random plane's (they are then no longer eigenvectors). Stores ``eigenvalues`` (ndim,),
  with the spectrum file in its attribute ``spectrum`` and the normalisation in ``norm``.

Errors a job can cause (checkpoints of another architecture, three models on a line, too few snapshots) come back
as ``JobError`` naming the key to change.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import torch
from torch import nn

from ..file.store import Planned
from ..job.errors import JobError
from ..job.memory import Given, given_part


def _numpy(direction: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().float().numpy() for k, v in direction.items()}


def _entries(model: nn.Module, kind: str) -> dict[str, torch.Tensor]:
    from .directions import perturbed_entries

    return {k: v.detach().cpu() for k, v in perturbed_entries(model, kind).items()}


def other_state(job: Any, key: str, given: Given | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the model at ``model.<key>``: its checkpoint file, or the network given in memory."""
    from .checkpoint import read_state_dict

    path = getattr(job.model, key)
    held = given_part(given, f"model.{key}", path)
    if held is not None:
        return {k: v.detach() for k, v in held.network(f"model.{key}", path).state_dict().items()}
    return read_state_dict(path)


def _other(job: Any, model: nn.Module, key: str, given: Given | None = None) -> dict[str, torch.Tensor]:
    """The entries the directions move, of the model at ``model.<key>`` loaded into a copy of θ*'s network (so it
    fits however the network was built; a mismatch names the keys and the arch that would fit)."""
    from .checkpoint import load_into

    path = getattr(job.model, key)
    other = copy.deepcopy(model).cpu()
    try:
        load_into(other, other_state(job, key, given), job.model.label, path)
    except JobError as e:
        raise JobError(f"model.{key}: {e}") from None
    return _entries(other, job.directions.type)


def store_mode(job: Any, model: nn.Module) -> str:
    """``directions.store`` resolved: ``auto`` is a recipe for random directions of networks above
    ``weights.LEAN_PARAMETERS`` (100 M) -- where full directions would cost 0.4 GB per direction and more -- and full
    below, where they are small and any script can read them from the file."""
    from .directions import perturbed_entries
    from .theta import LEAN_PARAMETERS

    spec = job.directions
    if spec.store != "auto":
        return spec.store
    if spec.kind in ("pca", "hessian"):  # components of a trajectory, eigenvectors: stored as they are
        return "full"
    parameters = sum(t.numel() for t in perturbed_entries(model, spec.type).values())
    return "recipe" if parameters > LEAN_PARAMETERS else "full"


def plan_directions(
    job: Any, model: nn.Module, ndim: int, store: str = "full", device: Any = "cpu", given: Given | None = None
) -> Planned:
    """The directions of ``job.directions.kind`` around θ* (``model``), with what describes them; with ``store``
    "recipe", the recipe of random directions, made entry by entry on ``device`` (rank 0's). ``given``: the other
    models of an interpolation or a plane, where they were given in memory."""
    from . import between as paths
    from . import directions, pca

    spec = job.directions
    if store == "recipe":
        return _plan_recipe(job, model, ndim, device, given)
    base = _entries(model, spec.type)
    try:
        if spec.kind == "random":
            dirs = directions.random_directions(base, spec.seed, spec.norm, spec.ignore, count=ndim)
            return Planned([_numpy(d) for d in dirs])
        if spec.kind == "interpolate":
            return Planned([_numpy(paths.interpolation(base, _other(job, model, "checkpoint2", given)))])
        if spec.kind == "plane":
            second, third = (_other(job, model, key, given) for key in ("checkpoint2", "checkpoint3"))
            plane = paths.plane_through(base, second, third)
            names = [job.model.checkpoint, job.model.checkpoint2, job.model.checkpoint3]
            return Planned(
                [_numpy(d) for d in plane.directions],
                {"model_coordinates": np.asarray(plane.coordinates, dtype=np.float64)},
                {"model_coordinates": {"names": names}},
            )
        if spec.kind == "hessian":
            return hessian_directions(job, model, ndim)
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


def hessian_directions(job: Any, model: nn.Module, ndim: int) -> Planned:
    """Kind hessian: the top ``ndim`` eigenvectors of the spectrum file ``directions.spectrum``, as directions of
    ``model``'s entries, normalised as ``directions.norm`` says (see the module docstring)."""
    from ..file.spectrum import read_eigenvectors, read_spectrum
    from .checkpoint import sha256_file
    from .directions import normalize

    spec = job.directions
    path = spec.spectrum
    try:
        entries, values, vectors = read_eigenvectors(path, ndim)
        fields = json.loads(read_spectrum(path).attrs["fingerprint_fields"])
    except JobError as e:
        raise JobError(f"directions.spectrum: {e}") from None
    if fields.get("checkpoint_sha256") not in (None, sha256_file(job.model.checkpoint)):
        raise JobError(
            f"directions.spectrum: {path} is the spectrum of another θ* than model.checkpoint "
            f"{job.model.checkpoint}; compute this one's (python -m llmpi.spectrum) or set directions.spectrum: null"
        )
    if fields.get("ignore") != spec.ignore:
        raise JobError(
            f"directions.spectrum: {path} is the Hessian over the parameters of ignore: {fields.get('ignore')}, the "
            f"job has directions.ignore: {spec.ignore}; make them agree"
        )
    base = _entries(model, spec.type)
    for name, shape in zip(entries.names, entries.shapes):
        if name not in base or tuple(base[name].shape) != tuple(shape):
            raise JobError(
                f"directions.spectrum: {path} holds eigenvectors of another network ({name} of shape {tuple(shape)} "
                f"is not one of {job.model.label}'s entries); compute this one's spectrum"
            )
    directions = []
    for vector in vectors:
        pieces = dict(zip(entries.names, np.split(vector, np.cumsum(entries.sizes)[:-1])))
        d = {}
        for name, w in base.items():
            if name not in pieces:
                d[name] = torch.zeros(w.shape, dtype=torch.float32)
                continue
            v = torch.from_numpy(pieces[name].reshape(w.shape)).float()
            if v.dim() > 1:
                d[name] = normalize(v, w.float(), spec.norm, spec.ignore)
            elif spec.norm == "none":  # ignore: none puts biases in the Hessian: their part of the eigenvector
                d[name] = v
            else:  # an entry of one dimension as a single filter: to its weight's norm
                norm = "layer" if spec.norm == "filter" else spec.norm
                d[name] = normalize(v.reshape(1, -1), w.float().reshape(1, -1), norm, spec.ignore).reshape(w.shape)
        directions.append(_numpy(d))
    attrs = {"spectrum": str(path), "norm": spec.norm}
    return Planned(directions, {"eigenvalues": np.asarray(values, dtype=np.float64)}, {"eigenvalues": attrs})


def stored_directions(store: Any) -> Any:
    """What an opened surface file gives every rank: its directions (a list of ``{entry: array}``) or its recipe
    (a ``llmpi.space.recipe.Recipe``)."""
    arrays = store.recipe()
    if arrays is None:
        return store.directions()
    from .recipe import Recipe

    try:
        return Recipe.from_arrays(arrays)
    except (ValueError, KeyError) as e:
        raise JobError(f"output {store.path}: its directions' recipe cannot be read ({e}); pass --restart") from None


def planned_directions(planned: Planned) -> Any:
    """What a just-planned file will give every rank: the same as ``stored_directions`` of the file made from it."""
    if planned.recipe is None:
        return list(planned.directions)
    from .recipe import Recipe

    return Recipe.from_arrays(planned.recipe)


def is_recipe(directions: Any) -> bool:
    from .recipe import Recipe

    return isinstance(directions, Recipe)


def check_recipe(recipe: Any, model: nn.Module, device: Any, job: Any, given: Given | None = None) -> None:
    """On every rank, before its first point: the recipe fits this network and this device makes its numbers
    (a difference recipe first attaches the other checkpoints, read here, or the models given in memory)."""
    from .directions import perturbed_entries

    if recipe.kind != "random":
        recipe.others = dict(recipe_sources(job, given))
    entries = perturbed_entries(model, recipe.type)
    try:
        recipe.check_entries(entries)
        recipe.verify(device, {k: v.detach() for k, v in entries.items()})
    except ValueError as e:
        raise JobError(f"directions: {e}") from None


SOURCES = {"interpolate": ("checkpoint2",), "plane": ("checkpoint2", "checkpoint3")}


def recipe_sources(job: Any, given: Given | None = None) -> list[tuple[str, dict]]:
    """The other checkpoints a difference recipe reads, (job key, state_dict), memory-mapped: every rank reads
    them itself (the page cache is shared by the ranks of a node), so no direction is ever sent. Models given in
    memory are each rank's own (an SPMD program's ranks hold the same: the sweep checks their hashes)."""
    out = []
    for key in SOURCES.get(job.directions.kind, ()):
        try:
            out.append((key, other_state(job, key, given)))
        except JobError as e:
            raise JobError(f"model.{key}: {e}") from None
    return out


def _plan_recipe(job: Any, model: nn.Module, ndim: int, device: Any, given: Given | None = None) -> Planned:
    """The recipe of the job's directions (random, or differences of checkpoints), made on ``device``."""
    from . import between as paths
    from .directions import perturbed_entries
    from .recipe import plan_difference, plan_random

    spec = job.directions
    entries = {k: v.detach() for k, v in perturbed_entries(model, spec.type).items()}
    if spec.kind == "random":
        recipe = plan_random(entries, spec.seed, spec.norm, spec.ignore, spec.type, ndim, device=device)
        return Planned([], recipe=recipe.to_arrays())
    assert spec.kind in SOURCES, "config refuses a recipe for pca"
    try:
        recipe, gram = plan_difference(entries, recipe_sources(job, given), spec.kind, spec.type, device=device)
        if spec.kind == "plane":
            paths.check_plane(gram)
    except ValueError as e:
        raise JobError(f"directions.kind {spec.kind}: {e}") from None
    if spec.kind == "interpolate":
        return Planned([], recipe=recipe.to_arrays())
    names = [job.model.checkpoint, job.model.checkpoint2, job.model.checkpoint3]
    coordinates = np.asarray(paths.Plane([]).coordinates, dtype=np.float64)
    return Planned(
        [], {"model_coordinates": coordinates}, {"model_coordinates": {"names": names}}, recipe=recipe.to_arrays()
    )

"""PCA directions of a training trajectory, and the trajectory projected onto them (Li et al. 2018, §7).

    files = snapshot_files("checkpoints/vgg9_bs128_wd5e-4")          # epoch_000.pt ... epoch_300.pt
    final = {k: v.detach() for k, v in perturbed_entries(model, "weights").items()}
    result = pca_directions(final, [lambda p=p: load_snapshot(p) for p in files], ignore="biasbn")
    result.components                 # [x direction, y direction], dicts shaped like ``final``
    result.explained_variance_ratio   # (2,)
    result.coordinates                # (snapshots, 2): the path in the plane, the final model at (0, 0)

The data are the rows d_i = θ_i − θ_final of the snapshots, flattened over the entries of ``final`` (parameters for
``type: weights``, every floating-point state_dict entry, BatchNorm running statistics included, for ``type:
states``). ``ignore: biasbn`` leaves entries of one dimension or less out of the analysis and zero in the
directions, as the paper's code does (with ``states`` that drops the running statistics too: use ``ignore: none``
to keep them). As in the paper's code (scikit-learn's PCA), the rows are centred before the decomposition
(``center=False`` decomposes the raw differences instead); the components are unit vectors, orthogonal to each
other, ordered by explained variance, and the explained variance ratio of component k is σ_k² / Σ σ².

The snapshots × parameters matrix D is never held in one piece. Its Gram matrix G = D Dᵀ (snapshots², float64) is
accumulated over blocks of parameters, each block of every snapshot read from files opened lazily (memory-mapped
when the file allows it), with at most ``max_block_bytes`` of D in memory at a time. With G = U Λ Uᵀ (centred:
G_c = C G C, C = I − 11ᵀ/n), the k-th component is c_k = Dᵀ u_k / σ_k, assembled block by block in a second
pass (skipped when all of D fits in one block), and the projection of d_i onto it is (G u_k)_i / σ_k -- the
paper's "cos" projection, from G alone. Each component's sign is chosen so that the largest-magnitude entry of
u_k is positive (deterministic, as scikit-learn does).

``rescale: filter`` (optional; the paper's published code uses the raw unit components) rescales each filter of
each component, as filter normalisation does for random directions: every slice along dim 0 of an entry of two
or more dimensions gets the norm of the matching slice of θ_final, and an entry of one dimension or less (kept
with ``ignore: none``) the norm of the whole entry. A surface drawn on rescaled components is comparable with the
paper's filter-normalised random surfaces. The directions are then no longer orthonormal, so the trajectory's
coordinates are the least-squares ones: the point a·x + b·y of the plane nearest to d_i.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .directions import EPS, Direction, normalize

Snapshot = Callable[[], Mapping[str, torch.Tensor]]  # loads one snapshot's tensors when called

SNAPSHOT_SUFFIXES = (".pt", ".pth", ".t7")


def snapshot_files(folder: str | Path) -> list[Path]:
    """The snapshots in ``folder``, in training order: files named ``<anything><number>.pt|.pth|.t7``.

    ``llmpi.train`` writes ``epoch_000.pt`` (the initialisation), ``epoch_<k>.pt`` every ``save_every`` epochs
    and ``resume.pt`` (no number, not a snapshot); the paper's code writes ``model_<epoch>.t7``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"trajectory folder {folder} does not exist; train with `python -m llmpi.train job.yaml --set "
            f"train.save_every=1` to write one"
        )
    numbered = []
    for path in folder.iterdir():
        match = re.search(r"(\d+)$", path.stem)
        if path.is_file() and path.suffix in SNAPSHOT_SUFFIXES and match and not path.name.startswith("."):
            numbered.append((int(match.group(1)), path.name, path))
    if not numbered:
        raise ValueError(f"no snapshots (epoch_<N>.pt files) in {folder}; was it trained with train.save_every?")
    return [path for _, _, path in sorted(numbered)]


def load_snapshot(path: str | Path) -> dict[str, torch.Tensor]:
    """A snapshot's state_dict, memory-mapped when the file format allows it (so blocks are read on demand)."""
    from ..job.errors import CheckpointError
    from .checkpoint import _strip_prefixes

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy format: read whole
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"snapshot {path} cannot be read ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"snapshot {path} holds no state_dict")
    return _strip_prefixes(dict(obj))


@dataclass
class PCAResult:
    """Top principal components of a trajectory, their variance share, and the trajectory in their frame."""

    components: list[Direction]  # float32, every entry of ``final`` (zeros where ignored)
    explained_variance_ratio: np.ndarray  # (k,)
    singular_values: np.ndarray  # (k,) of the (centred) snapshots-minus-final matrix
    coordinates: np.ndarray  # (snapshots, k): least-squares coordinates of θ_i − θ_final in the components


def _blocks(sizes: dict[str, int], limit: int) -> list[list[tuple[str, int, int]]]:
    """Groups of (entry, start, stop) flat slices, each group at most ``limit`` elements in all."""
    groups, current, used = [], [], 0
    for name, size in sizes.items():
        start = 0
        while start < size:
            take = min(size - start, limit - used)
            current.append((name, start, start + take))
            used += take
            start += take
            if used == limit:
                groups.append(current)
                current, used = [], 0
    if current:
        groups.append(current)
    return groups


def _read_block(
    snapshots: Sequence[Snapshot], final: Mapping[str, torch.Tensor], group: list[tuple[str, int, int]]
) -> np.ndarray:
    """Rows θ_i − θ_final restricted to one block of parameters, float64, (snapshots, block elements)."""
    width = sum(stop - start for _, start, stop in group)
    out = np.empty((len(snapshots), width))
    for i, load in enumerate(snapshots):
        state = load()
        offset = 0
        for name, start, stop in group:
            if name not in state:
                raise ValueError(f"snapshot {i} has no entry {name!r}: was it saved from another architecture?")
            if state[name].shape != final[name].shape:
                raise ValueError(
                    f"snapshot {i}: entry {name!r} has shape {tuple(state[name].shape)}, the final model "
                    f"{tuple(final[name].shape)}; was it saved from another architecture?"
                )
            piece = state[name].reshape(-1)[start:stop].double() - final[name].reshape(-1)[start:stop].double()
            out[i, offset : offset + stop - start] = piece.numpy()
            offset += stop - start
        del state
    return out


def pca_directions(
    final: Mapping[str, torch.Tensor],
    snapshots: Sequence[Snapshot],
    *,
    k: int = 2,
    ignore: str = "biasbn",
    center: bool = True,
    rescale: str = "none",
    max_block_bytes: int = 1 << 28,
) -> PCAResult:
    """The top-``k`` principal components of the snapshots' differences to ``final`` (see the module docstring)."""
    if ignore not in ("biasbn", "none"):
        raise ValueError(f"ignore must be 'biasbn' or 'none', not {ignore!r}")
    if rescale not in ("none", "filter"):
        raise ValueError(f"rescale must be 'none' or 'filter', not {rescale!r}")
    n = len(snapshots)
    if n < k + int(center):
        raise ValueError(
            f"{n} snapshot(s) cannot give {k} principal components{' of centred data' if center else ''}: need at "
            f"least {k + int(center)}; save snapshots more often (train.save_every)"
        )
    final = {name: t.detach().to("cpu") for name, t in final.items()}
    used = {name: t.numel() for name, t in final.items() if ignore == "none" or t.dim() > 1}
    if not used:
        raise ValueError("no entries to analyse: every entry has one dimension or less and ignore is 'biasbn'")
    groups = _blocks(used, max(1, max_block_bytes // (8 * n)))

    gram = np.zeros((n, n))
    cached = None
    for group in groups:
        block = _read_block(snapshots, final, group)
        gram += block @ block.T
        if len(groups) == 1:
            cached = block
    centring = np.eye(n) - (np.full((n, n), 1.0 / n) if center else 0.0)
    analysed = centring @ gram @ centring
    eigenvalues, vectors = np.linalg.eigh((analysed + analysed.T) / 2)
    order = np.argsort(eigenvalues)[::-1][:k]
    variances = np.clip(eigenvalues[order], 0.0, None)
    total = float(np.trace(analysed))
    if total <= 0 or variances[-1] <= 1e-12 * total:
        raise ValueError(
            f"the snapshots span fewer than {k} dimensions around {'their mean' if center else 'the final model'}; "
            f"are they copies of one model?"
        )
    u = vectors[:, order]
    flips = np.sign(u[np.abs(u).argmax(axis=0), np.arange(k)])
    u = u * flips
    sigma = np.sqrt(variances)
    weights = u / sigma  # c_k = Dᵀ (C u_k) / σ_k, and C u_k = u_k for the centred case

    flat = [np.zeros(sum(used.values())) for _ in range(k)]
    offsets = dict(zip(used, np.cumsum([0, *used.values()])))
    for group in groups:
        block = cached if cached is not None else _read_block(snapshots, final, group)
        contribution = block.T @ weights  # (block elements, k)
        offset = 0
        for name, start, stop in group:
            for c in range(k):
                flat[c][offsets[name] + start : offsets[name] + stop] = contribution[offset : offset + stop - start, c]
            offset += stop - start

    components: list[dict[str, torch.Tensor]] = []
    for c in range(k):
        direction = {}
        for name, t in final.items():
            if name in used:
                d = torch.from_numpy(flat[c][offsets[name] : offsets[name] + used[name]]).view(t.shape)
                direction[name] = _rescale(d, t.double()) if rescale == "filter" else d
            else:
                direction[name] = torch.zeros(t.shape, dtype=torch.float64)
        components.append(direction)

    if rescale == "none":
        coordinates = (gram @ u) / sigma  # orthonormal components: projection = least squares
    else:
        coordinates = _least_squares_coordinates(components, used, snapshots, final, groups, cached)
    return PCAResult(
        components=[{name: d.float().contiguous() for name, d in comp.items()} for comp in components],
        explained_variance_ratio=variances / total,
        singular_values=sigma,
        coordinates=coordinates,
    )


def _rescale(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Filter-wise (dim-0 slices) to the norms of ``w``; an entry of one dimension or less as a whole."""
    if d.dim() > 1:
        return normalize(d, w, "filter", "none")
    return d * (w.norm() / (d.norm() + EPS))


def _least_squares_coordinates(
    components: list[dict[str, torch.Tensor]],
    used: dict[str, int],
    snapshots: Sequence[Snapshot],
    final: Mapping[str, torch.Tensor],
    groups: list[list[tuple[str, int, int]]],
    cached: np.ndarray | None,
) -> np.ndarray:
    """argmin_c ‖d_i − Σ_k c_k x_k‖ for every snapshot: solve (XᵀX) c = Xᵀ d_i, Xᵀ D accumulated by blocks."""
    X = [np.concatenate([comp[name].reshape(-1).numpy() for name in used]) for comp in components]
    X = np.stack(X, axis=1)  # (used elements, k)
    offsets = dict(zip(used, np.cumsum([0, *used.values()])))
    inner = np.zeros((len(snapshots), X.shape[1]))
    for group in groups:
        block = cached if cached is not None else _read_block(snapshots, final, group)
        rows = np.concatenate([np.arange(offsets[name] + start, offsets[name] + stop) for name, start, stop in group])
        inner += block @ X[rows]
    return np.linalg.solve(X.T @ X, inner.T).T

"""Summary numbers of a loss surface: how deep, how sharp, how curved, how wide its basin, how convex.

    m = surface_metrics(s.x, s.y, s.values["train_loss"], s.done, eig_ratio=s.values.get("eig_ratio"))
    m.sharpness, m.curvature, m.basin_share, m.to_dict()

Coordinates are those of the grid (α along x, β along y), in the directions' units: with filter-normalised
directions α = 0.1 moves every filter by 10% of its norm, which is what makes these numbers comparable between
networks. Definitions (``DEFINITIONS`` holds them as text, for the README and ``python -m llmpi.status``):

- centre: the grid point nearest the origin (0, 0), where the swept model θ* sits (θ1 for interpolations and
  planes); ties go to the first in row-major order. ``centre_loss`` is the loss there.
- ``min_loss`` / ``min_at``: the lowest computed loss and where it is (the interpolation's other end, say).
- sharpness(r): max of the loss over computed points within distance r of the centre, minus the centre loss.
  NaN when no computed point but the centre lies within r (a radius below the grid step measures nothing);
  ``nearest`` is the distance from the centre to the nearest other grid point, the smallest radius that can work.
- curvature: the eigenvalues (ascending) of the Hessian of the least-squares quadratic
  c + gᵀu + ½ uᵀHu fitted to the computed points within ``fit_radius`` of the centre (u = offset from the
  centre). NaN when fewer points than the quadratic has coefficients (6 in 2D, 3 in 1D) or they do not determine it.
  ``neighbourhood`` is the radius of the centre's 3×3 block of grid points (3 points in 1D), the fewest that
  determine the quadratic; :func:`default_fit_radius` widens a radius to it, so the fit works on any grid.
- basin: the level is centre loss + ``threshold``. ``basin_share`` is the share of computed points in the
  connected region (4-neighbours) around the centre where the loss is at most the level -- the minimiser's own
  basin; ``basin_area`` is that region's size in coordinate units (points × cell area, a length in 1D);
  ``below_share`` is the share of all computed points at most the level, connected or not.
- ``convex_share``: the share of points with an eigen-ratio |λmin/λmax| below ``ratio_threshold`` (1%), i.e.
  without significant negative curvature; given ``min_eig`` too, points with λmin ≥ 0 count as convex whatever the
  ratio. NaN without eigen-ratios.

Points not computed (``done`` false, or NaN) are left out everywhere; shares are of computed points, and
``done_share`` says how many those are. A computed point whose loss is infinite counts (it is above any level).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

DEFINITIONS = {
    "centre_loss": "loss at the grid point nearest (0, 0), where the swept model sits",
    "min_loss": "lowest computed loss on the grid (min_at: its coordinates)",
    "sharpness": "max loss within distance `radius` of the centre minus the centre loss (n/a: only the centre)",
    "curvature": "eigenvalues of the Hessian of a least-squares quadratic fitted within `fit_radius` of the centre",
    "basin_share": "share of computed points in the connected region around the centre with loss <= centre + threshold",
    "basin_area": "that region's size in coordinate units (points x grid cell area)",
    "below_share": "share of computed points with loss <= centre + threshold, connected or not",
    "convex_share": "share of points whose Hessian eigen-ratio |min/max| is below `ratio_threshold`",
    "done_share": "share of grid points computed",
}


@dataclass(frozen=True)
class SurfaceMetrics:
    centre: tuple[float, ...]
    centre_loss: float
    min_loss: float
    min_at: tuple[float, ...]
    radius: float
    sharpness: float
    points_in_radius: int
    nearest: float
    fit_radius: float
    curvature: tuple[float, ...]
    fit_points: int
    neighbourhood: float
    threshold: float
    basin_share: float
    basin_area: float
    below_share: float
    ratio_threshold: float
    convex_share: float
    done_share: float

    def to_dict(self) -> dict:
        """Plain floats, ints and lists (JSON- and HDF5-attribute-friendly)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def surface_metrics(
    x: np.ndarray,
    y: np.ndarray | None,
    loss: np.ndarray,
    done: np.ndarray | None = None,
    *,
    eig_ratio: np.ndarray | None = None,
    min_eig: np.ndarray | None = None,
    radius: float = 0.1,
    fit_radius: float | None = None,
    threshold: float = 0.1,
    ratio_threshold: float = 0.01,
) -> SurfaceMetrics:
    """The metrics of a surface (see the module docstring); 2D arrays are (ny, nx), [j, i] = (x[i], y[j]).

    ``fit_radius`` None fits within ``radius``; ``python -m llmpi.status`` passes :func:`default_fit_radius`.
    """
    x = np.asarray(x, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    shape = (len(x),) if y is None else (len(y), len(x))
    if loss.shape != shape:
        raise ValueError(f"loss has shape {loss.shape}, the grid {shape}")
    if radius <= 0 or (fit_radius is not None and fit_radius <= 0):
        raise ValueError(f"radius and fit_radius must be positive, not {radius} and {fit_radius}")
    fit_radius = radius if fit_radius is None else fit_radius
    done = np.ones(shape, bool) if done is None else np.asarray(done).astype(bool).reshape(shape)
    computed = done & ~np.isnan(loss)
    usable = computed & np.isfinite(loss)
    if y is None:
        coords = x[:, None]
        cell = _spacing(x)
    else:
        y = np.asarray(y, dtype=np.float64)
        xx, yy = np.meshgrid(x, y)
        coords = np.stack([xx, yy], axis=-1)
        cell = _spacing(x) * _spacing(y)
    flat_coords = coords.reshape(-1, coords.shape[-1])
    flat_loss, flat_usable, flat_computed = loss.reshape(-1), usable.reshape(-1), computed.reshape(-1)
    n_computed = int(flat_computed.sum())

    centre = int(np.argmin(np.linalg.norm(flat_coords, axis=1)))
    centre_xy = flat_coords[centre]
    centre_loss = float(flat_loss[centre]) if flat_computed[centre] else math.nan
    if flat_usable.any():
        best = int(np.flatnonzero(flat_usable)[np.argmin(flat_loss[flat_usable])])
        min_loss, min_at = float(flat_loss[best]), tuple(float(c) for c in flat_coords[best])
    else:
        min_loss, min_at = math.nan, tuple(math.nan for _ in centre_xy)

    distance = np.linalg.norm(flat_coords - centre_xy, axis=1)
    near = flat_computed & (distance <= radius * (1 + 1e-9))
    others = near.copy()
    others[centre] = False
    if others.any() and not math.isnan(centre_loss):
        sharpness = float(np.max(flat_loss[near]) - centre_loss)
    else:  # the centre alone: a max over one point would read as a perfectly flat minimum
        sharpness = math.nan
    nearest = float(np.min(np.delete(distance, centre))) if len(distance) > 1 else math.nan

    in_fit = flat_usable & (distance <= fit_radius * (1 + 1e-9))
    curvature = _quadratic_fit_curvature(flat_coords[in_fit] - centre_xy, flat_loss[in_fit])

    if math.isnan(centre_loss) or n_computed == 0:
        basin_share = basin_area = below_share = math.nan
    else:
        level = centre_loss + threshold
        below = computed & (loss <= level)
        region = _connected(below, np.unravel_index(centre, shape))
        basin_share = region / n_computed
        basin_area = region * cell
        below_share = float(below.sum()) / n_computed

    convex_share = math.nan
    if eig_ratio is not None:
        ratio = np.asarray(eig_ratio, dtype=np.float64).reshape(shape)
        known = done & np.isfinite(ratio)
        convex = ratio < ratio_threshold
        if min_eig is not None:
            convex |= np.asarray(min_eig, dtype=np.float64).reshape(shape) >= 0
        if known.any():
            convex_share = float((convex & known).sum()) / float(known.sum())

    return SurfaceMetrics(
        centre=tuple(float(c) for c in centre_xy),
        centre_loss=centre_loss,
        min_loss=min_loss,
        min_at=min_at,
        radius=float(radius),
        sharpness=sharpness,
        points_in_radius=int(near.sum()),
        nearest=nearest,
        fit_radius=float(fit_radius),
        curvature=curvature,
        fit_points=int(in_fit.sum()),
        neighbourhood=neighbourhood_radius(x, y),
        threshold=float(threshold),
        basin_share=basin_share,
        basin_area=basin_area,
        below_share=below_share,
        ratio_threshold=float(ratio_threshold),
        convex_share=convex_share,
        done_share=n_computed / flat_loss.size,
    )


def neighbourhood_radius(x: np.ndarray, y: np.ndarray | None) -> float:
    """The distance from a grid point to the corners of its 3×3 block (to its two neighbours in 1D): the smallest
    fit radius that holds enough points to determine the quadratic around an interior centre."""
    steps = [_step(np.asarray(x, dtype=np.float64))]
    if y is not None:
        steps.append(_step(np.asarray(y, dtype=np.float64)))
    return float(math.hypot(*steps))


def default_fit_radius(x: np.ndarray, y: np.ndarray | None, radius: float) -> float:
    """``radius``, widened to :func:`neighbourhood_radius` where the grid is coarser: with the sharpness radius
    0.1 on the paper's 21×21 grid over [-1, 1] (step 0.1) the fit would hold 5 points, one short of determining
    the quadratic, and say n/a; widened to 0.141 it holds the 9 points of the centre's block."""
    return max(float(radius), neighbourhood_radius(x, y))


def _step(axis: np.ndarray) -> float:
    """The grid step along an axis, 0 for a single point (no neighbour along it)."""
    return _spacing(axis) if len(axis) > 1 else 0.0


def _spacing(axis: np.ndarray) -> float:
    """The grid step of an evenly spaced axis (1 for a single point, so areas stay counts along it)."""
    return float((axis[-1] - axis[0]) / (len(axis) - 1)) if len(axis) > 1 else 1.0


def _quadratic_fit_curvature(u: np.ndarray, f: np.ndarray) -> tuple[float, ...]:
    """Eigenvalues of H in the least-squares fit f ≈ c + gᵀu + ½ uᵀHu (NaNs when it is not determined)."""
    dim = u.shape[1]
    if dim == 1:
        design = np.column_stack([np.ones(len(u)), u[:, 0], 0.5 * u[:, 0] ** 2])
    else:
        a, b = u[:, 0], u[:, 1]
        design = np.column_stack([np.ones(len(u)), a, b, 0.5 * a**2, a * b, 0.5 * b**2])
    unknowns = design.shape[1]
    if len(u) < unknowns or np.linalg.matrix_rank(design) < unknowns:
        return tuple(math.nan for _ in range(dim))
    coef = np.linalg.lstsq(design, f, rcond=None)[0]
    if dim == 1:
        return (float(coef[2]),)
    hessian = np.array([[coef[3], coef[4]], [coef[4], coef[5]]])
    return tuple(float(v) for v in np.linalg.eigvalsh(hessian))


def _connected(mask: np.ndarray, start: tuple[int, ...]) -> int:
    """Size of the 4-connected (2-connected in 1D) component of ``mask`` containing ``start`` (0 if not in it)."""
    if not mask[start]:
        return 0
    seen = np.zeros(mask.shape, bool)
    seen[start] = True
    queue, size = deque([start]), 0
    steps = [(-1,), (1,)] if mask.ndim == 1 else [(-1, 0), (1, 0), (0, -1), (0, 1)]
    while queue:
        here = queue.popleft()
        size += 1
        for step in steps:
            there = tuple(h + s for h, s in zip(here, step))
            if all(0 <= t < n for t, n in zip(there, mask.shape)) and mask[there] and not seen[there]:
                seen[there] = True
                queue.append(there)
    return size

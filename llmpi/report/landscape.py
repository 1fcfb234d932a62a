"""What every picture needs from a surface file, said once: the values to draw, labels in the paper's terms, the
scale, the marks.

The paper writes a 2D landscape as f(α, β) = L(θ* + α·δ + β·η) and a 1D one as f(α) = L(θ* + α·δ); the axes of
every picture are labelled that way, θ* (the trained minimiser, at the origin) is marked, and a partial file (a
sweep still running or interrupted) draws its computed points only, its title saying "k of n points".

The other direction kinds are labelled in their own terms: an interpolation is f(α) = L(θ1 + α·(θ2 − θ1)) with
both checkpoints marked, a plane through three checkpoints marks the three models where the file says they sit
(``model_coordinates``), a PCA plane names its axes by their share of the trajectory's variance and draws the
training trajectory (``trajectory/x``, ``trajectory/y``) over the picture. Every backend draws the
:class:`Overlay` marks and paths :meth:`Landscape.overlays` returns.

Hessian maps (``max_eig``, ``min_eig``, ``eig_ratio`` = |λmin/λmax|) are values like the others; the eigen-ratio
map keeps the paper's colour scale, viridis from 0 to 0.5 (higher ratios clipped to the top colour), unless
``--vmin``/``--vmax`` say otherwise. Points whose Lanczos run stopped at ``hessian.max_hvps`` before converging
(``eig_converged`` 0) are marked on every Hessian picture and counted in its title: their values are inner bounds
of the spectrum's ends. ``eig_converged``, ``eig_residual`` and ``eig_hvps`` themselves are drawn only when asked
for (``--value eig_residual``). The trace map (``hessian.trace``: ``trace``) is a heat map too, unmarked: the trace
estimate is unbiased whether or not Lanczos converged; its standard error ``trace_se`` is drawn when asked for.
A plane of ``directions.kind: hessian`` names its axes by their eigenvectors and eigenvalues.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..file.store import Surface, read_surface
from ..job.errors import JobError

# The order pictures and menus list the values in; unknown ``<split>_<loss|acc>`` datasets follow, sorted.
PREFERRED = ("train_loss", "train_acc", "test_loss", "test_acc")

DEFAULT_LEVELS = 20  # contour levels when --levels is not given: enough to read a basin, few enough to label
LOSS_SPAN = 10.0  # default contour ceiling above the lowest loss, the paper's vmax=10 for CIFAR losses
MAX_LEVELS = 1000  # a --levels step finer than this is a typo, not a picture
EIG_NAMES = ("eig_ratio", "max_eig", "min_eig")  # metrics: [hessian]; drawn as heat maps by default
EIG_DIAGNOSTICS = ("eig_converged", "eig_residual", "eig_hvps")  # how Lanczos ended at each point: drawn when asked
TRACE_NAMES = ("trace",)  # hessian.trace: the trace map, drawn as a heat map by default (a curve in 1D)
TRACE_DIAGNOSTICS = ("trace_se",)  # its standard error: drawn only when asked for
EIG_WORDS = {
    "max_eig": "Hessian λmax",
    "min_eig": "Hessian λmin",
    "eig_ratio": "eigen-ratio |λmin/λmax|",
    "eig_converged": "Lanczos converged (1) or not (0)",
    "eig_residual": "Lanczos relative residual",
    "eig_hvps": "Hessian-vector products",
    "trace": "Hessian trace",
    "trace_se": "standard error of the Hessian trace",
}
UNCONVERGED_COLOUR = "#ff2d95"  # marks unconverged Hessian points: a colour viridis never takes
EIG_RATIO_SPAN = (0.0, 0.5)  # the paper's colour scale for |λmin/λmax| (its plot_2d_eig_ratio: vmin 0, vmax .5)
KIND_MARKS = ("*", "o", "s")  # the models of a plane: first, second, third checkpoint
KIND_COLOURS = ("#d62728", "#ff7f0e", "#e377c2")


def quantity(name: str) -> str:
    """'loss' or 'acc' (the part after the split); 'eig' for the Hessian's eigenvalues, 'ratio' for their ratio."""
    return name.split("_", 1)[-1]


def pretty(name: str) -> str:
    """'train_acc' -> 'train accuracy': the words a figure shows."""
    if name in EIG_WORDS:
        return EIG_WORDS[name]
    split, _, what = name.partition("_")
    return f"{split} {'accuracy' if what == 'acc' else what}"


def unit(name: str) -> str:
    """The unit the value is stored in: losses are mean cross-entropy (nats), accuracies percent."""
    return "%" if quantity(name) == "acc" else ""


def with_unit(name: str) -> str:
    return f"{pretty(name)} (%)" if unit(name) else pretty(name)


@dataclass(frozen=True)
class Overlay:
    """A mark or a path drawn over a landscape in the (α, β) plane; ``z`` is taken from the surface when None."""

    label: str
    x: np.ndarray
    y: np.ndarray
    kind: str = "point"  # "point" or "path"
    marker: str = "*"
    color: str = "#d62728"  # hex: matplotlib and the browser both read it
    tag: str = ""  # a short name written next to the mark in 3D views


@dataclass(frozen=True)
class Scale:
    """How values map to levels and colours (``--vmin --vmax --levels --log``); None means from the data."""

    vmin: float | None = None
    vmax: float | None = None
    step: float | None = None
    log: bool = False

    def __post_init__(self) -> None:
        if self.vmin is not None and self.vmax is not None and self.vmin >= self.vmax:
            raise JobError(f"--vmin {self.vmin:g} must be below --vmax {self.vmax:g}")
        if self.step is not None and not self.step > 0:
            raise JobError(f"--levels is the spacing between contour levels and must be positive, not {self.step:g}")
        if self.log and self.vmin is not None and self.vmin <= 0:
            raise JobError(f"--log needs a positive --vmin, not {self.vmin:g}")
        if self.log and self.vmax is not None and self.vmax <= 0:
            raise JobError(f"--log needs a positive --vmax, not {self.vmax:g}")

    @property
    def given(self) -> bool:
        """Whether any of the scale options was set (they then apply to the losses unless --value says else)."""
        return self.log or self.step is not None or self.vmin is not None or self.vmax is not None

    def resolve(self, name: str, values: np.ndarray) -> Levels:
        """The concrete range and levels for ``values`` of the dataset ``name`` (NaNs ignored)."""
        finite = values[np.isfinite(values)]
        if self.log:
            finite = finite[finite > 0]
        lo = self.vmin if self.vmin is not None else (float(finite.min()) if finite.size else None)
        hi = self.vmax if self.vmax is not None else (float(finite.max()) if finite.size else None)
        if name == "eig_ratio" and not self.log:  # the paper's scale, comparable between files
            lo = self.vmin if self.vmin is not None else EIG_RATIO_SPAN[0]
            hi = self.vmax if self.vmax is not None else EIG_RATIO_SPAN[1]
        if lo is None or hi is None:  # nothing computed yet: any range draws the blank picture
            lo, hi = (1.0, 10.0) if self.log else (0.0, 1.0)
        if self.vmax is None and not self.log and quantity(name) == "loss":
            hi = min(hi, lo + LOSS_SPAN)
        if hi <= lo:  # a flat surface (or a range the data sits outside): widen it so levels exist
            hi = lo * 10 if self.log else lo + max(abs(lo) * 1e-3, 1e-9)
        a, b = (math.log10(lo), math.log10(hi)) if self.log else (lo, hi)
        if self.step and (b - a) / self.step > MAX_LEVELS:
            raise JobError(
                f"--levels {self.step:g} gives {int((b - a) / self.step) + 1} contour levels between {lo:g} and "
                f"{hi:g}; choose a larger step"
            )
        ticks = np.arange(a, b + self.step * 1e-6, self.step) if self.step else _nice(a, b)
        levels = 10.0**ticks if self.log else ticks
        if len(levels) < 2:
            levels = np.array([lo, hi])
        return Levels(lo, hi, levels, self.log)


def _nice(lo: float, hi: float) -> np.ndarray:
    """About DEFAULT_LEVELS round-numbered levels covering [lo, hi]."""
    from matplotlib.ticker import MaxNLocator  # here: reading a surface (llmpi.surface's result) needs no matplotlib

    ticks = MaxNLocator(DEFAULT_LEVELS).tick_values(lo, hi)
    inside = ticks[(ticks >= lo - 1e-12 * abs(lo)) & (ticks <= hi + 1e-12 * abs(hi))]
    return inside if len(inside) >= 2 else np.linspace(lo, hi, DEFAULT_LEVELS)


@dataclass(frozen=True)
class Levels:
    """A resolved scale: values outside [lo, hi] are clipped to it (the paper's vmin/vmax)."""

    lo: float
    hi: float
    levels: np.ndarray
    log: bool

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Values clipped to [lo, hi] and, on a log scale, as log10 (for heights of 3D surfaces)."""
        clipped = np.clip(values, self.lo, self.hi)
        return np.log10(clipped) if self.log else clipped


class Landscape:
    """One surface file, seen as pictures see it."""

    def __init__(self, surface: Surface) -> None:
        self.surface = surface
        self.job = _job_mapping(surface.attrs.get("job"))

    @classmethod
    def read(cls, path: str | Path) -> Landscape:
        return cls(read_surface(path))

    # -- what is in it --------------------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.surface.path

    @property
    def label(self) -> str:
        """A short name for legends: the file name without its suffix."""
        return self.path.stem

    @property
    def name(self) -> str:
        """What titles call the landscape: the job's name (files from the paper's code have none: the file's)."""
        name = self.job.get("name")
        return str(name) if name else self.label

    @property
    def network(self) -> str | None:
        """The architecture's name for a title, None for a network built by a factory (its import path says
        nothing two different networks would not share)."""
        arch = self.surface.attrs.get("arch")
        factory = (self.job.get("model") or {}).get("factory") if isinstance(self.job.get("model"), dict) else None
        if not arch or factory or ":" in str(arch):
            return None
        return str(arch)

    @property
    def ndim(self) -> int:
        return 1 if self.surface.y is None else 2

    @property
    def x(self) -> np.ndarray:
        return self.surface.x

    @property
    def y(self) -> np.ndarray:
        assert self.surface.y is not None, "a 1D landscape has no β axis"
        return self.surface.y

    @property
    def names(self) -> list[str]:
        """The value datasets of the file, losses and accuracies of whichever splits it holds, in reading order."""
        shape = self.surface.done.shape
        present = [k for k, v in self.surface.values.items() if v.shape == shape]
        return [k for k in PREFERRED if k in present] + sorted(k for k in present if k not in PREFERRED)

    @property
    def losses(self) -> list[str]:
        return [k for k in self.names if quantity(k) == "loss"]

    def values(self, name: str) -> np.ndarray:
        """The dataset ``name`` with NaN wherever the point is not computed (blank in every picture)."""
        if name not in self.surface.values:
            have = ", ".join(self.names) or "none"
            raise JobError(f"{self.path} has no value {name!r} (it has: {have}); pick one with --value")
        return np.where(self.surface.done, self.surface.values[name], np.nan)

    @property
    def progress(self) -> tuple[int, int]:
        return int(self.surface.done.sum()), int(self.surface.done.size)

    def unconverged(self) -> np.ndarray | None:
        """Where the Hessian's Lanczos run stopped at ``hessian.max_hvps`` unconverged (computed points with
        ``eig_converged`` 0), as a mask of the grid's shape; None for a file without Hessian values."""
        flags = self.surface.values.get("eig_converged")
        if flags is None:
            return None
        return self.surface.done & (flags != 1.0)

    def unconverged_label(self) -> str:
        """The legend's words for the unconverged points' mark."""
        mask = self.unconverged()
        k = 0 if mask is None else int(mask.sum())
        return f"not converged ({k} point{'s' if k != 1 else ''}): λ may fall short of the extremes"

    @property
    def synthetic(self) -> bool:
        return bool(self.surface.attrs.get("synthetic", False))

    # -- words ----------------------------------------------------------------------------------------------------

    @property
    def directions_spec(self) -> dict:
        directions = self.job.get("directions")
        return directions if isinstance(directions, dict) else {}

    @property
    def kind(self) -> str:
        """How the directions were made: 'random' (also for files that do not say), 'interpolate', 'plane', 'pca',
        'hessian'."""
        return str(self.directions_spec.get("kind") or "random")

    @property
    def norm(self) -> str | None:
        """The direction normalisation ('filter', ...) from the job the file records, None if it records none."""
        return self.directions_spec.get("norm") if self.kind in ("random", "hessian") else None

    def axis_label(self, axis: str) -> str:
        """'α  (direction δ, filter-normalised)': the paper's names for the coordinates (in each kind's terms)."""
        letter, direction = {"x": ("α", "δ"), "y": ("β", "η")}[axis]
        if self.kind == "interpolate":
            return f"{letter}  (0: {self.model_names[0]}, 1: {self.model_names[1]})"
        if self.kind == "plane":
            other = self.model_names[1 if axis == "x" else 2]
            return f"{letter}  (direction θ{2 if axis == 'x' else 3} − θ1, towards {other})"
        if self.kind == "pca":
            k = 0 if axis == "x" else 1
            ratios = self.surface.extras.get("explained_variance_ratio")
            share = f", {100 * float(ratios[k]):.1f}% of the variance" if ratios is not None else ""
            rescaled = ", filter-rescaled" if self.directions_spec.get("rescale") == "filter" else ""
            return f"{letter}  (PCA component {k + 1} of the trajectory{share}{rescaled})"
        if self.kind == "hessian":
            k = 0 if axis == "x" else 1
            values = self.surface.extras.get("eigenvalues")
            value = f", λ{k + 1} = {float(values[k]):.4g}" if values is not None and len(values) > k else ""
            how = f"{self.norm}-normalised" if self.norm not in (None, "none") else "unit"
            return f"{letter}  (Hessian eigenvector v{k + 1}{value}, {how})"
        norm = self.norm
        how = f", {norm}-normalised" if norm and norm != "none" else ""
        return f"{letter}  (direction {direction}{how})"

    def formula(self) -> str:
        if self.kind == "interpolate":
            return "L(θ1 + α·(θ2 − θ1))"
        if self.kind == "plane":
            return "L(θ1 + α·(θ2 − θ1) + β·(θ3 − θ1))"
        if self.kind == "pca":
            return "L(θ* + α·PC1 + β·PC2)"
        if self.kind == "hessian":
            return "L(θ* + α·v1 + β·v2)" if self.ndim == 2 else "L(θ* + α·v1)"
        return "L(θ* + α·δ + β·η)" if self.ndim == 2 else "L(θ* + α·δ)"

    @property
    def model_names(self) -> list[str]:
        """Short names of the checkpoints the directions were made from (file stems), in the job's order."""
        stored = self.surface.extra_attrs.get("model_coordinates", {}).get("names")
        if stored:
            return [Path(str(n)).stem for n in stored]
        model = self.job.get("model") if isinstance(self.job.get("model"), dict) else {}
        keys = ("checkpoint", "checkpoint2", "checkpoint3")
        return [Path(str(model[k])).stem if model.get(k) else f"θ{i + 1}" for i, k in enumerate(keys)]

    def title(self, name: str | None = None) -> str:
        """One line for a figure: the job's name (and its architecture), value, data, how much is computed."""
        network = self.network
        parts = [self.name if network in (None, self.name) else f"{self.name} ({network})"]
        if name:
            parts.append(pretty(name))
        if self.synthetic:
            parts.append("SYNTHETIC data")
        done, total = self.progress
        if done < total:
            parts.append(f"{done} of {total} points")
        unconverged = self.unconverged()
        if name in (*EIG_NAMES, *EIG_DIAGNOSTICS) and unconverged is not None and unconverged.any():
            parts.append(f"{int(unconverged.sum())} of {done} not converged")
        return " — ".join(parts)

    # -- marks ----------------------------------------------------------------------------------------------------

    def lowest(self, name: str) -> tuple[float, ...] | None:
        """Coordinates of the smallest computed value of ``name`` (None before any point is computed)."""
        v = self.values(name)
        if not np.isfinite(v).any():
            return None
        k = np.unravel_index(np.nanargmin(v), v.shape)
        if self.ndim == 1:
            return (float(self.x[k[0]]),)
        return float(self.x[k[1]]), float(self.y[k[0]])

    def models(self) -> list[tuple[str, str, tuple[float, ...]]]:
        """The checkpoints that sit in the picture: (label, short tag, coordinates), those inside the grid only.

        random and pca: θ* at the origin; interpolate: θ1 at α = 0 and θ2 at α = 1; plane: the three models where
        ``model_coordinates`` says (the origin and the two unit points).
        """
        names = self.model_names
        if self.kind == "interpolate":
            found = [(f"θ1 = {names[0]} (α = 0)", "θ1", (0.0,)), (f"θ2 = {names[1]} (α = 1)", "θ2", (1.0,))]
        elif self.kind == "plane":
            coords = self.surface.extras.get("model_coordinates")
            coords = coords if coords is not None else np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
            found = [(f"θ{i + 1} = {names[i]}", f"θ{i + 1}", tuple(map(float, c))) for i, c in enumerate(coords)]
        else:
            label = "θ* (final model of the trajectory)" if self.kind == "pca" else "θ* (trained minimiser)"
            found = [(label, "θ*", (0.0,) * self.ndim)]
        return [m for m in found if self._inside(m[2])]

    def _inside(self, point: tuple[float, ...]) -> bool:
        axes = [self.x] if self.ndim == 1 else [self.x, self.y]
        return all(a.min() <= c <= a.max() for a, c in zip(axes, point))

    def trajectory(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The training trajectory projected onto a PCA plane (first snapshot first), None for other kinds."""
        tx, ty = self.surface.extras.get("trajectory/x"), self.surface.extras.get("trajectory/y")
        return None if tx is None or ty is None else (np.asarray(tx, float), np.asarray(ty, float))

    def overlays(self, name: str) -> list[Overlay]:
        """Marks drawn over the picture of ``name``: the checkpoints (θ*, or the models of an interpolation or a
        plane), a PCA plane's training trajectory, and the lowest computed loss where no checkpoint is."""
        marks = []
        path = self.trajectory()
        if path is not None and self.ndim == 2:
            marks.append(Overlay("training trajectory (first snapshot ▲)", *path, "path", ".", "#ff7f0e", "path"))
            marks.append(Overlay("first snapshot", path[0][:1], path[1][:1], "point", "^", "#ff7f0e", "start"))
        models = self.models()
        for i, (label, tag, at) in enumerate(models):
            style = i if self.kind in ("interpolate", "plane") else 0
            marks.append(Overlay(label, *_columns(at, self.ndim), "point", KIND_MARKS[style], KIND_COLOURS[style], tag))
        if quantity(name) == "loss":
            low = self.lowest(name)
            if low is not None and not any(np.allclose(low, at) for _, _, at in models):
                where = _columns(low, self.ndim)
                marks.append(Overlay(f"lowest {pretty(name)} on the grid", *where, "point", "X", "#000000", "lowest"))
        return marks


def names_of(lands: Sequence[Landscape], limit: int | None = None) -> str:
    """'a vs b', 'a, b and c', 'a, b and 3 more' (at most ``limit`` names, at least one): the landscapes of one
    figure by name -- their file names where two jobs share a name (one job swept twice with --set output=...)."""
    names = [land.name for land in lands]
    if len(set(names)) < len(names):
        names = [land.label for land in lands]
    shown = len(names) if limit is None else max(1, limit)
    if shown < len(names):
        return f"{', '.join(names[:shown])} and {len(names) - shown} more"
    if len(names) == 2:
        return f"{names[0]} vs {names[1]}"
    return f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]


def _columns(point: tuple[float, ...], ndim: int) -> tuple[np.ndarray, np.ndarray]:
    return np.array([point[0]]), np.array([point[1] if ndim == 2 else np.nan])


def _job_mapping(text: object) -> dict:
    """The job recorded in the file as a mapping; {} for files without one (e.g. from the paper's code)."""
    if not isinstance(text, str):
        return {}
    try:
        job = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return job if isinstance(job, dict) else {}


def names_to_draw(landscape: Landscape, wanted: list[str] | None, scale: Scale) -> list[str]:
    """The values a picture command draws: those asked for; else the losses when a scale was given (a loss range
    means nothing for accuracies); else all of them."""
    if wanted:
        for name in wanted:
            landscape.values(name)  # raises, naming what the file has
        return list(wanted)
    hidden = (*EIG_DIAGNOSTICS, *TRACE_DIAGNOSTICS)
    names = landscape.losses if scale.given else [n for n in landscape.names if n not in hidden]
    if not names:
        raise JobError(f"{landscape.path} holds no loss or accuracy values to draw")
    return names

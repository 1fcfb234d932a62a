"""A loss surface for people: what ``llmpi.surface`` returns and ``llmpi.open`` reads.

    s = llmpi.open("surfaces/vgg56.h5")      # also while a sweep still writes it
    s                                        # its grid, how much is computed, the lowest loss, where it lives
    s["train_loss"]                          # float64 (ny, nx), NaN where not computed; s.x, s.y its coordinates
    s.plot()                                 # a matplotlib Figure: contours (1D: the curves), inline in Jupyter
    s.plot(kind="surface", vmax=5, log=True)
    s.show()                                 # a plotly Figure: the offline viewer's 3D surface, interactive
    s.metrics(radius=0.1)                    # sharpness, curvature, basin (python -m llmpi.status --metrics)
    s.to_vtk("vgg56.vtk")                    # ParaView

The :class:`Surface` is the store's (``llmpi.file.store.Surface``: ``x``, ``y``, ``values``, ``done``, ``attrs``,
``extras``, ``directions``) with what people do with one. Its pictures are the command's (``llmpi.report.static``,
``viewer``, ``paraview``, through ``landscape.Landscape``), with the same words, marks and scales. A surface kept
in memory (``llmpi.surface(..., output=None)``) holds its directions (or their recipe) too, and has no file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..file import store
from ..job.errors import JobError
from .landscape import Landscape, Scale, pretty, quantity

KINDS_2D = ("contour", "contourf", "heat", "surface")
_SYMBOLS = {"X": "x", "o": "circle", "s": "square"}  # matplotlib's markers of the marks, as plotly's 3D names them


@dataclass(repr=False)
class Surface(store.Surface):
    """A loss surface: its values on the grid ``x`` (by ``y`` in 2D) as numpy arrays, ``s[name]`` with NaN where not
    computed (``name``: ``train_loss``, ``train_acc``, ``test_loss``, ``max_eig`` ...), and its pictures."""

    memory: bool = False  # kept in memory: no file behind it
    _recipe: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def of(
        cls,
        found: store.Surface,
        path: Path | None = None,
        directions: list[dict[str, np.ndarray]] | None = None,
        recipe: dict[str, np.ndarray] | None = None,
    ) -> Surface:
        """The surface ``found`` read from a file; ``path`` None: kept in memory (with its ``directions``, or their
        ``recipe``), named by its job."""
        memory = path is None
        if memory:
            path = Path(str(Landscape(found).name).replace("/", "_"))
        return cls(
            path, found.x, found.y, found.values, found.done, found.attrs, found.extras, found.extra_attrs,
            directions, memory, recipe,
        )  # fmt: skip

    @classmethod
    def open(cls, path: str | Path) -> Surface:
        """The surface file at ``path`` (never locks or disturbs a sweep writing it)."""
        return cls.of(store.read_surface(path), Path(path))

    # -- what it holds ----------------------------------------------------------------------------------------------

    @property
    def landscape(self) -> Landscape:
        return Landscape(self)

    @property
    def names(self) -> list[str]:
        """The values it holds, losses and accuracies first."""
        return self.landscape.names

    def __getitem__(self, name: str) -> np.ndarray:
        """The values of ``name`` on the grid, NaN wherever the point is not computed."""
        return self.landscape.values(name)

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def mesh(self) -> tuple[np.ndarray, ...]:
        """The coordinates of every grid point in the values' layout: ``(X, Y)`` as ``numpy.meshgrid(x, y)`` gives
        them (``s[name][j, i]`` is at ``(x[i], y[j])``), or ``(x,)`` in 1D."""
        return (self.x,) if self.y is None else tuple(np.meshgrid(self.x, self.y))

    @property
    def job(self) -> Any:
        """The job that made it, as a ``llmpi.Job`` (None for a file without one, from the paper's code). A surface
        kept in memory had no output: its job's is the default, ``surfaces/<name>.h5``."""
        from ..job.config import Job
        from .landscape import _job_mapping

        raw = _job_mapping(self.attrs.get("job"))
        if raw and self.memory:
            raw["output"] = None
        return Job.from_dict(raw) if raw else None

    @property
    def where(self) -> str:
        return "in memory" if self.memory else str(self.path)

    @property
    def recipe(self) -> dict[str, np.ndarray] | None:
        if self.memory:
            return self._recipe
        return super().recipe

    @property
    def directions(self) -> list[dict[str, np.ndarray]]:
        if self.memory and self._directions is None:
            raise JobError(
                "this surface kept in memory stores the recipe of its directions (directions.store: recipe), not "
                "the directions: sweep with output=PATH and write them out with python -m llmpi.directions "
                "materialise PATH -o FULL.h5"
            )
        return super().directions

    def lowest(self, name: str | None = None) -> tuple[float, tuple[float, ...]] | None:
        """The lowest computed value of ``name`` (default: the first loss) and its coordinates; None before any."""
        name = name or self._first_loss()
        at = self.landscape.lowest(name)
        if at is None:
            return None
        return float(np.nanmin(self[name])), at

    def _first_loss(self) -> str:
        land = self.landscape
        names = land.losses or land.names
        if not names:
            raise JobError(f"{self.where}: the surface holds no values")
        return names[0]

    def __repr__(self) -> str:
        land = self.landscape
        done, total = land.progress
        shape = f"{len(self.x)}" if self.y is None else f"{len(self.x)}×{len(self.y)}"
        extent = f"α ∈ [{self.x.min():g}, {self.x.max():g}]"
        if self.y is not None:
            extent += f", β ∈ [{self.y.min():g}, {self.y.max():g}]"
        lines = [
            f"llmpi.Surface {land.name!r}: {shape} grid, {extent}, f = {land.formula()}",
            f"  {done} of {total} points computed ({100 * done / max(total, 1):.0f}%)",
        ]
        for name in land.losses:
            low = self.lowest(name)
            if low is not None:
                at = ", ".join(f"{c:g}" for c in low[1])
                lines.append(f"  {name}: min {low[0]:.6g} at ({at})")
        if self.attrs.get("dataset"):
            lines.append(f"  data: {self.attrs['dataset']}")
        lines.append(f"  {self.where}")
        return "\n".join(lines)

    # -- pictures ---------------------------------------------------------------------------------------------------

    def plot(
        self,
        kind: str | None = None,
        value: str | list[str] | None = None,
        *,
        vmin: float | None = None,
        vmax: float | None = None,
        levels: float | None = None,
        log: bool = False,
    ) -> Any:
        """A matplotlib Figure (shown inline in Jupyter): ``kind`` contour (the default in 2D), contourf, heat or
        surface of ``value`` (default: the first loss), or for a 1D surface its curves (``value``: one name or a
        list; default all), as ``python -m llmpi.plot`` draws them; ``vmin``, ``vmax``, ``levels`` (the step
        between contour levels) and ``log`` as its options."""
        import matplotlib.pyplot as plt

        from . import static

        scale = Scale(vmin, vmax, levels, log)
        land = self.landscape
        if self.ndim == 1:
            if kind not in (None, "1d"):
                raise JobError(f"kind {kind!r} needs a 2D surface; this one is 1D: kind='1d' (the default)")
            names = [value] if isinstance(value, str) else value
            for name in names or ():
                land.values(name)  # raises, naming what the surface has
            fig = static.figure_1d([land], names, scale)
        else:
            kind = kind or "contour"
            if kind not in KINDS_2D:
                raise JobError(f"kind {kind!r} is not one of {', '.join(KINDS_2D)} (a 2D surface)")
            if not isinstance(value, (str, type(None))):
                raise JobError("value: one name for a 2D picture, e.g. value='train_loss'")
            name = value or self._first_loss()
            land.values(name)
            if kind == "surface":
                fig = static.figure_surface(land, name, scale)
            else:
                fig = static.figure_2d(land, name, kind, scale)
        plt.close(fig)  # out of pyplot's list: Jupyter shows the returned figure once, not twice
        return fig

    def show(self, value: str | None = None, *, vmax: float | None = None, log: bool = False) -> Any:
        """The offline viewer's figure (``python -m llmpi.plot --kind html``) as a plotly Figure: a 3D surface of
        ``value`` (default: the first loss; clipped to ``vmax``, or the command's suggested span) with θ* and the
        other marks, or the curves of a 1D surface. Interactive and inline in Jupyter (plotly.js is bundled: no
        network); ``fig.write_html(path)`` keeps it."""
        import plotly.graph_objects as go

        from .viewer import payload

        data = payload([self.landscape], Scale(vmax=vmax, log=log), [value] if value else None)
        layer = data["layers"][0]
        if data["ndim"] == 1:
            return self._curves(go, data, layer)
        name = value or data["initial"]["quantity"]
        z = np.array([[np.nan if v is None else v for v in row] for row in layer["values"][name]], dtype=float)
        top = data["initial"]["clip"].get(name) if quantity(name) == "loss" else None
        if top is not None:
            z = np.minimum(z, top)
        if log:
            z = np.log10(np.where(z > 0, z, np.nan))
        title = f"{'log10 ' if log else ''}{pretty(name)}"
        traces: list[Any] = [
            go.Surface(
                x=layer["x"], y=layer["y"], z=z, colorscale="Viridis", name=layer["label"], connectgaps=False,
                colorbar={"title": {"text": title, "side": "right"}, "thickness": 14, "len": 0.75},
                lighting={"ambient": 0.75, "diffuse": 0.6, "specular": 0.05, "roughness": 0.9},
            )
        ]  # fmt: skip
        finite = z[np.isfinite(z)]
        lift = 0.015 * (float(finite.max() - finite.min()) if finite.size else 1.0)
        for mark in layer["overlays"].get(name, []):
            xs, ys, zs = [], [], []
            for a, b in zip(mark["x"], mark["y"]):
                if b is None:
                    continue
                i, j = int(np.abs(self.x - a).argmin()), int(np.abs(self.y - b).argmin())
                if np.isfinite(z[j, i]):
                    xs.append(a), ys.append(b), zs.append(z[j, i] + lift)
            if xs:
                path = mark["kind"] == "path"
                traces.append(
                    go.Scatter3d(
                        x=xs, y=ys, z=zs, mode="lines+markers" if path else "markers+text", name=mark["label"],
                        text=None if path else [mark["tag"]] * len(xs), textposition="top center",
                        marker={"size": 6, "color": mark["color"], "symbol": _SYMBOLS.get(mark["marker"], "diamond")},
                        line={"color": mark["color"], "width": 4},
                    )
                )  # fmt: skip
        fig = go.Figure(traces)
        fig.update_layout(
            title={"text": layer["titles"].get(name, ""), "font": {"size": 13}},
            scene={
                "xaxis": {"title": {"text": data["axes"]["x"]}},
                "yaxis": {"title": {"text": data["axes"]["y"]}},
                "zaxis": {"title": {"text": title}},
                "aspectmode": "manual",
                "aspectratio": {"x": 1, "y": data["aspect"], "z": 0.6},
                "camera": data["camera"],
            },
            margin={"l": 0, "r": 0, "t": 40, "b": 0},
            legend={"orientation": "h"},
        )
        return fig

    def _curves(self, go: Any, data: dict, layer: dict) -> Any:
        fig = go.Figure()
        for name, values in layer["values"].items():
            acc = quantity(name) == "acc"
            clip = None if acc else data["initial"]["clip"].get(name)
            ys = [None if v is None else (min(v, clip) if clip is not None else v) for v in values]
            dash = (
                ("dashdot" if name.startswith("test") else "dot")
                if acc
                else ("dash" if name.startswith("test") else "solid")
            )
            fig.add_trace(go.Scatter(x=layer["x"], y=ys, mode="lines", name=pretty(name), yaxis="y2" if acc else "y",
                                     line={"dash": dash, "width": 2}))  # fmt: skip
        fig.update_layout(
            title={"text": layer["titles"]["none"], "font": {"size": 13}},
            xaxis={"title": {"text": data["axes"]["x"]}},
            yaxis={"title": {"text": "loss"}, "type": "log" if data["initial"]["log"] else "linear"},
            yaxis2={"title": {"text": "accuracy (%)"}, "overlaying": "y", "side": "right"},
            legend={"orientation": "h"},
        )
        return fig

    def to_vtk(
        self, path: str | Path, value: str | None = None, *, vmin: float | None = None, vmax: float | None = None,
        log: bool = False,
    ) -> Path:  # fmt: skip
        """Write ``value`` (default: the first loss) as a legacy VTK structured grid for ParaView, as ``python -m
        llmpi.plot --kind vtk`` does (every value travels along as field data); the path written."""
        from .paraview import write_vtk

        name = value or self._first_loss()
        self.landscape.values(name)
        return write_vtk(self.landscape, name, Scale(vmin, vmax, None, log), Path(path))

    def metrics(
        self,
        radius: float | None = None,
        fit_radius: float | None = None,
        threshold: float | None = None,
        ratio_threshold: float | None = None,
    ) -> dict:
        """Sharpness, curvature, basin and the other numbers of ``python -m llmpi.status --metrics`` for every loss:
        ``{"options": {...}, "train_loss": {"centre_loss": ..., "sharpness": ..., ...}}`` (README: Surface
        metrics)."""
        from .summary import surface_metrics

        options = {"radius": radius, "fit_radius": fit_radius, "threshold": threshold}
        return surface_metrics(self, **options, ratio_threshold=ratio_threshold)


def open(path: str | Path) -> Any:
    """``llmpi.open(path)``: the surface file at ``path`` as a :class:`Surface`, or a spectrum file
    (``python -m llmpi.spectrum``, ``llmpi.spectrum``) as a ``llmpi.Spectrum``."""
    from ..file.spectrum import is_spectrum

    if is_spectrum(path):
        from .spectrum import Spectrum

        return Spectrum.open(path)
    return Surface.open(path)

"""The paper's pictures with matplotlib (Agg, headless; never opens a window; a Jupyter kernel keeps its inline
backend): contour lines, filled contours, heatmap and 3D surface of a 2D landscape; loss and accuracy of 1D
landscapes on twin axes; the eigen-ratio |λmin/λmax| of 1D landscapes with Hessian values (2D eigen-ratio maps
are heat maps of ``eig_ratio``).

    fig = figure_2d(Landscape.read("surfaces/vgg56.h5"), "train_loss", "contour", Scale(log=True))
    save(fig, Path("surfaces/vgg56.h5_train_loss_2dcontour_log"), ("png", "pdf"))

Each ``figure_*`` returns the Figure (tests look inside it), :func:`save` writes it and closes it.
"""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # a Jupyter kernel keeps its own (inline) backend: llmpi.Surface.plot draws there
    matplotlib.use("Agg")  # before pyplot: no display, no window, whatever MPLBACKEND says
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from ..job.errors import JobError
from .landscape import (
    EIG_DIAGNOSTICS,
    EIG_NAMES,
    UNCONVERGED_COLOUR,
    Landscape,
    Levels,
    Scale,
    names_of,
    pretty,
    quantity,
    with_unit,
)

CMAP = "viridis"  # dark = low: the basin around a minimiser is the darkest region of every 2D picture
UNDONE = "#e4e4e4"  # the axes' own colour, seen where no point is computed yet
DPI = 150
# Margins are fixed rather than computed (constrained layout) on every save: these figures' layout is known in
# advance, and computing it cost about as much as drawing them.
KINDS_2D = {"contour": "2dcontour", "contourf": "2dcontourf", "heat": "2dheat", "surface": "3dsurface"}


def _norm(levels: Levels) -> Normalize:
    return LogNorm(levels.lo, levels.hi) if levels.log else Normalize(levels.lo, levels.hi)


def _titles(ax, land: Landscape, name: str | None) -> None:
    """The figure's title (what, on which data, how complete) and the dataset's own description under it."""
    ax.figure.suptitle(land.title(name), fontsize=10)
    dataset = land.surface.attrs.get("dataset")
    if dataset:
        ax.set_title(str(dataset), fontsize=7, color="0.35")


def _undone(ax, land: Landscape, z: np.ndarray) -> bool:
    """Shade the cells of the points not computed (or without a value); whether there are any."""
    blank = ~np.isfinite(z)
    if blank.any():
        X, Y = np.meshgrid(land.x, land.y)
        shade = np.ma.masked_array(np.zeros(z.shape), mask=~blank)
        ax.pcolormesh(X, Y, shade, shading="nearest", cmap=ListedColormap([UNDONE]), rasterized=True, zorder=0.5)
    return bool(blank.any())


def _draw_overlays(ax, land: Landscape, name: str) -> None:
    for mark in land.overlays(name):
        if mark.kind == "path":
            ax.plot(mark.x, mark.y, "-", marker=mark.marker, color=mark.color, markersize=4, linewidth=1.4,
                    label=mark.label, zorder=4)  # fmt: skip
            continue
        ax.plot(
            mark.x, mark.y, linestyle="none", marker=mark.marker, color=mark.color, markersize=11,
            markeredgecolor="white", markeredgewidth=0.8, label=mark.label, zorder=5,
        )  # fmt: skip


def figure_2d(land: Landscape, name: str, kind: str, scale: Scale) -> Figure:
    """Contour lines ('contour'), filled contours ('contourf') or a heatmap ('heat') of ``name``."""
    assert kind in ("contour", "contourf", "heat"), kind
    z = land.values(name)
    lv = scale.resolve(name, z)
    if lv.log:
        z = np.where(z > 0, z, np.nan)  # log10 of a non-positive value is undefined: blank, like undone
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.1, top=0.9)
    blank = _undone(ax, land, z)
    X, Y = np.meshgrid(land.x, land.y)
    drawn = np.isfinite(z).any()
    mappable = None
    if drawn and kind == "contour":
        cs = ax.contour(X, Y, z, levels=lv.levels, cmap=CMAP, norm=_norm(lv), linewidths=1.0)
        if len(cs.levels):
            ax.clabel(cs, inline=True, fontsize=7, fmt="%.3g")
        mappable = cs
    elif drawn and kind == "contourf":
        mappable = ax.contourf(X, Y, z, levels=lv.levels, cmap=CMAP, norm=_norm(lv), extend="both")
    elif drawn:
        mappable = ax.pcolormesh(
            X, Y, np.ma.masked_invalid(z), shading="nearest", cmap=CMAP, norm=_norm(lv), rasterized=True
        )
    if mappable is not None and kind != "contour":
        fig.colorbar(mappable, ax=ax, label=with_unit(name), extend="both" if kind == "heat" else "neither")
    _draw_overlays(ax, land, name)
    _mark_unconverged(ax, land, name)
    _frame(ax, land)
    handles, labels = ax.get_legend_handles_labels()
    if blank:
        handles.append(Patch(facecolor=UNDONE, edgecolor="0.6"))
        labels.append("not computed yet" if not land.surface.complete else "no value")
    if handles:
        ax.legend(handles, labels, loc="upper right", fontsize=7, framealpha=0.75)
    _titles(ax, land, name)
    return fig


def _mark_unconverged(ax, land: Landscape, name: str) -> None:
    """Cross out the points of a Hessian picture where Lanczos stopped unconverged (their values are inner bounds
    of the spectrum's ends, not the extremes)."""
    mask = land.unconverged()
    if name not in (*EIG_NAMES, *EIG_DIAGNOSTICS) or mask is None or not mask.any():
        return
    X, Y = np.meshgrid(land.x, land.y)
    ax.scatter(
        X[mask], Y[mask], marker="x", s=28, linewidths=1.2, color=UNCONVERGED_COLOUR, label=land.unconverged_label(),
        zorder=4.5,
    )  # fmt: skip


def _frame(ax, land: Landscape) -> None:
    """Axes spanning exactly the grid, in the paper's terms; equal units where the two ranges are comparable."""
    ax.set_xlim(land.x.min(), land.x.max())
    ax.set_ylim(land.y.min(), land.y.max())
    ax.set_xlabel(land.axis_label("x"))
    ax.set_ylabel(land.axis_label("y"))
    ratio = np.ptp(land.y) / np.ptp(land.x) if np.ptp(land.x) else 0
    if 0.25 <= ratio <= 4:
        ax.set_aspect("equal")


def figure_surface(land: Landscape, name: str, scale: Scale) -> Figure:
    """The 3D surface of ``name`` between the scale's range (log10 heights with --log): cut cleanly where it leaves
    the range -- a level edge at the cap rather than plateaus of clipped points -- and blank where undone."""
    raw = land.values(name)
    lv = scale.resolve(name, raw)
    if lv.log:
        raw = np.where(raw > 0, raw, np.nan)
    z = lv.transform(raw)  # clipped: the heights marks sit at
    fig = plt.figure(figsize=(7.0, 5.6))
    fig.subplots_adjust(left=0.0, right=0.98, bottom=0.02, top=0.92)
    ax = fig.add_subplot(projection="3d", computed_zorder=False)  # marks stay in front
    X, Y = np.meshgrid(land.x, land.y)
    top = lv.transform(np.array([lv.lo, lv.hi]))
    if np.isfinite(z).any():
        with np.errstate(divide="ignore", invalid="ignore"):
            heights = np.log10(raw) if lv.log else raw
        polygons = _cut_surface(X, Y, heights, float(top[0]), float(top[1]))
        norm = Normalize(*top)
        colours = plt.get_cmap(CMAP)(norm([p[:, 2].mean() for p in polygons]))
        # One vertex count for all (the last vertex repeated): mplot3d pads polygons of mixed sizes itself, and its
        # data limits then read the padding.
        most = max((len(p) for p in polygons), default=3)
        even = [np.concatenate([p, np.repeat(p[-1:], most - len(p), axis=0)]) for p in polygons]
        surface = Poly3DCollection(even, facecolors=colours, linewidths=0, antialiased=False, rasterized=True)
        ax.add_collection3d(surface)
        label = ("log10 " if lv.log else "") + with_unit(name)
        fig.colorbar(ScalarMappable(norm, CMAP), ax=ax, shrink=0.6, pad=0.1, label=label)
    for mark in land.overlays(name):
        if mark.kind == "path":  # drawn on the surface: each point at the height of its nearest grid point
            hz = [_height(land, z, float(a), float(b)) for a, b in zip(mark.x, mark.y)]
            hz = [np.nan if h is None else h for h in hz]
            ax.plot(mark.x, mark.y, hz, "-", marker=mark.marker, color=mark.color, markersize=3, label=mark.label,
                    zorder=9)  # fmt: skip
            continue
        at = _height(land, z, float(mark.x[0]), float(mark.y[0]))
        if at is not None:
            ax.scatter([mark.x[0]], [mark.y[0]], [at], marker=mark.marker, color=mark.color, s=80, label=mark.label,
                       depthshade=False, zorder=10)  # fmt: skip
    ax.set_xlim(land.x.min(), land.x.max())
    ax.set_ylim(land.y.min(), land.y.max())
    ax.set_zlim(*top)
    ax.set_xlabel(land.axis_label("x"), fontsize=7)
    ax.set_ylabel(land.axis_label("y"), fontsize=7)
    ax.set_zlabel(("log10 " if lv.log else "") + pretty(name), fontsize=8)
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=7)
    _titles(ax, land, name)
    return fig


def _cut_surface(X: np.ndarray, Y: np.ndarray, Z: np.ndarray, lo: float, hi: float) -> list[np.ndarray]:
    """The grid's cells as (k, 3) polygons, cut at the planes z = lo and z = hi.

    Cells whose four corners lie within [lo, hi] stay quads (as plot_surface draws them); a cell crossing a plane
    is split into two triangles, each cut along the plane (the new vertices on it, by linear interpolation along
    the edges), so the surface ends in a level edge; cells wholly outside, or with a corner not computed, are
    left out.
    """
    corners = np.stack(
        [np.stack([A[:-1, :-1], A[:-1, 1:], A[1:, 1:], A[1:, :-1]], axis=-1) for A in (X, Y, Z)], axis=-1
    )  # (ny-1, nx-1, 4 corners, xyz)
    z = corners[..., 2]
    computed = np.isfinite(z).all(-1)
    inside = computed & (z >= lo).all(-1) & (z <= hi).all(-1)
    polygons = list(corners[inside])
    for j, i in zip(*np.nonzero(computed & ~inside)):
        quad = corners[j, i]
        for triangle in (quad[[0, 1, 2]], quad[[0, 2, 3]]):
            piece = _keep_below(triangle, hi, 1.0)
            piece = _keep_below(piece, -lo, -1.0) if len(piece) else piece
            if len(piece) >= 3:
                polygons.append(piece)
    return polygons


def _keep_below(polygon: np.ndarray, level: float, sign: float) -> np.ndarray:
    """The part of a convex polygon where sign·z <= level (one step of Sutherland-Hodgman clipping)."""
    kept = []
    h = sign * polygon[:, 2]
    for k in range(len(polygon)):
        a, b = polygon[k], polygon[(k + 1) % len(polygon)]
        ha, hb = h[k], h[(k + 1) % len(polygon)]
        if ha <= level:
            kept.append(a)
        if (ha <= level) != (hb <= level):  # the edge crosses the plane: add the crossing point, exactly on it
            point = a + (b - a) * ((level - ha) / (hb - ha))
            point[2] = sign * level
            kept.append(point)
    return np.array(kept).reshape(-1, 3)


def _height(land: Landscape, z: np.ndarray, a: float, b: float) -> float | None:
    """The drawn height at the grid point nearest (a, b), None where that point is blank or off the grid."""
    if not (land.x.min() <= a <= land.x.max() and land.y.min() <= b <= land.y.max()):
        return None
    i = int(np.abs(land.x - a).argmin())
    j = int(np.abs(land.y - b).argmin())
    return float(z[j, i]) if np.isfinite(z[j, i]) else None


def figure_1d(lands: Sequence[Landscape], names: Sequence[str] | None, scale: Scale) -> Figure:
    """Loss (left axis) and accuracy (right axis) against α, for one file or several on one figure.

    One file keeps the paper's colours (loss blue, accuracy red; train solid, test dashed); several files get a
    colour each, line styles telling loss from accuracy and train from test.
    """
    fig, loss_ax = plt.subplots(figsize=(7.0, 4.8))
    fig.subplots_adjust(left=0.1, right=0.9, bottom=0.3, top=0.9)
    acc_ax = loss_ax.twinx()
    several = len(lands) > 1
    styles = {("train", "loss"): "-", ("test", "loss"): "--", ("train", "acc"): ":", ("test", "acc"): "-."}
    all_losses = []
    for n, land in enumerate(lands):
        file_colour = f"C{n % 10}"
        wanted = names or land.names
        done, total = land.progress
        tag = f"{land.label}: " if several else ""
        part = f" ({done} of {total} points)" if several and done < total else ""
        for name in wanted:
            if name not in land.names or quantity(name) not in ("loss", "acc"):
                continue  # Hessian values have their own figure (figure_1d_eig)
            split, what = name.split("_", 1)[0], quantity(name)
            ax = loss_ax if what == "loss" else acc_ax
            colour = file_colour if several else ("C0" if what == "loss" else "C3")
            style = styles.get((split, what), "-") if several else ("-" if split == "train" else "--")
            v = land.values(name)
            if what == "loss":
                all_losses.append(v)
            ax.plot(land.x, v, style, color=colour, linewidth=1.5, label=f"{tag}{pretty(name)}{part}")
    loss_names = [n for n in (names or ["train_loss"]) if quantity(n) == "loss"] or ["train_loss"]
    stacked = np.concatenate([v.ravel() for v in all_losses]) if all_losses else np.array([])
    lv = scale.resolve(loss_names[0], stacked)
    if lv.log:
        loss_ax.set_yscale("log")
    if scale.vmin is None and scale.vmax is None:  # a margin, so curves do not run along the frame
        pad = (lv.hi / lv.lo) ** 0.04 if lv.log else (lv.hi - lv.lo) * 0.04
        loss_ax.set_ylim(lv.lo / pad, lv.hi * pad) if lv.log else loss_ax.set_ylim(lv.lo - pad, lv.hi + pad)
    else:
        loss_ax.set_ylim(lv.lo, lv.hi)
    acc_ax.set_ylim(0, 100)
    xs = np.concatenate([land.x for land in lands])
    loss_ax.set_xlim(xs.min(), xs.max())
    _mark_models(loss_ax, lands)
    loss_ax.set_xlabel(lands[0].axis_label("x"))
    loss_ax.set_ylabel(
        f"loss  {lands[0].formula()}" + (", log scale" if lv.log else ""), color="k" if several else "C0"
    )
    acc_ax.set_ylabel("accuracy (%)", color="k" if several else "C3")
    if not several:
        loss_ax.tick_params(axis="y", colors="C0")
        acc_ax.tick_params(axis="y", colors="C3")
    h1, l1 = loss_ax.get_legend_handles_labels()
    h2, l2 = acc_ax.get_legend_handles_labels()
    _legend_below(fig, h1 + h2, l1 + l2, 4 if several else 5)
    if several:
        synthetic = " — SYNTHETIC data" if any(land.synthetic for land in lands) else ""
        _overlay_title(fig, lands, synthetic)
    else:
        _titles(loss_ax, lands[0], None)
    return fig


# The 1D figures' vertical layout in inches: title, plot, tick labels and axis label under it, then the legend.
TOP_IN, PLOT_IN, XLABEL_IN, PAD_IN = 0.5, 2.9, 0.6, 0.1


def _overlay_title(fig: Figure, lands: Sequence[Landscape], suffix: str) -> None:
    """The title of a figure of several landscapes: their names, as many as fit the figure's width on two lines."""
    renderer = fig.canvas.get_renderer()
    for shown in range(len(lands), 0, -1):
        text = f"{names_of(lands, shown)}{suffix}"
        for lines in (text, "\n".join(textwrap.wrap(text, math.ceil(len(text) / 2) + 8))):
            title = fig.suptitle(lines, fontsize=10)
            if lines.count("\n") <= 1 and title.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
                return


def _legend_below(fig: Figure, handles: list, labels: list[str], columns: int) -> None:
    """The legend under the plot and inside the figure, however many and however long its entries: fewer
    columns until it fits the width, and the figure as tall as the plot plus the legend's rows."""
    renderer = fig.canvas.get_renderer()
    for ncol in range(max(1, min(columns, len(labels))), 0, -1):
        legend = fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0), fontsize=7, ncol=ncol,
                            frameon=False)  # fmt: skip
        box = legend.get_window_extent(renderer)
        if box.width <= 0.98 * fig.bbox.width or ncol == 1:
            break
        legend.remove()
    below = XLABEL_IN + box.height / fig.dpi + PAD_IN
    height = TOP_IN + PLOT_IN + below
    fig.set_size_inches(fig.get_figwidth(), height)
    fig.subplots_adjust(top=1 - TOP_IN / height, bottom=below / height)


def _mark_models(ax, lands: Sequence[Landscape]) -> None:
    """Vertical lines where checkpoints sit: θ* at α = 0, or both ends of an interpolation (once per position)."""
    seen = set()
    for land in lands:
        for i, (label, _tag, at) in enumerate(land.models()):
            if at[0] in seen:
                continue
            seen.add(at[0])
            text = "θ* (α = 0)" if land.kind == "random" else label
            style = (0, (2, 3)) if i == 0 else (0, (5, 2))
            ax.axvline(at[0], color="0.5", linewidth=0.8, linestyle=style, label=text)


def figure_1d_eig(lands: Sequence[Landscape], scale: Scale) -> Figure:
    """The eigen-ratio |λmin/λmax| against α (left axis, the paper's 0 to 0.5 unless --vmin/--vmax), with λmax and
    λmin on the right axis: where the line is not convex along the sampled points."""
    fig, ratio_ax = plt.subplots(figsize=(7.0, 4.8))
    fig.subplots_adjust(left=0.1, right=0.88, bottom=0.3, top=0.9)
    eig_ax = ratio_ax.twinx()
    several = len(lands) > 1
    ratios = []
    for n, land in enumerate(lands):
        tag = f"{land.label}: " if several else ""
        colour = f"C{n % 10}" if several else "C2"
        if "eig_ratio" in land.names:
            v = land.values("eig_ratio")
            ratios.append(v)
            ratio_ax.plot(land.x, v, "-", color=colour, linewidth=1.6, label=f"{tag}{pretty('eig_ratio')}")
            mask = land.unconverged()
            if mask is not None and mask.any():
                ratio_ax.plot(land.x[mask], v[mask], "x", color=UNCONVERGED_COLOUR, markersize=7, mew=1.4,
                              label=f"{tag}{land.unconverged_label()}", zorder=5)  # fmt: skip
        for name, style, c in (("max_eig", "--", "C0"), ("min_eig", ":", "C3")):
            if name in land.names:
                eig_ax.plot(land.x, land.values(name), style, color=colour if several else c, linewidth=1.2,
                            label=f"{tag}{pretty(name)}")  # fmt: skip
    stacked = np.concatenate([r.ravel() for r in ratios]) if ratios else np.array([])
    lv = scale.resolve("eig_ratio", stacked)
    top = lv.hi
    finite = stacked[np.isfinite(stacked)]
    if scale.vmax is None and finite.size and finite.max() > top:  # a line, unlike a map, can show it all
        top = float(finite.max()) * 1.05
    ratio_ax.set_ylim(lv.lo, top)
    xs = np.concatenate([land.x for land in lands])
    ratio_ax.set_xlim(xs.min(), xs.max())
    _mark_models(ratio_ax, lands)
    eig_ax.axhline(0.0, color="0.8", linewidth=0.6)
    ratio_ax.set_xlabel(lands[0].axis_label("x"))
    ratio_ax.set_ylabel("|λmin / λmax|")
    eig_ax.set_ylabel("Hessian eigenvalue")
    h1, l1 = ratio_ax.get_legend_handles_labels()
    h2, l2 = eig_ax.get_legend_handles_labels()
    _legend_below(fig, h1 + h2, l1 + l2, 3)
    if several:
        _overlay_title(fig, lands, ": Hessian eigen-ratio")
    else:
        _titles(ratio_ax, lands[0], "eig_ratio")
    return fig


def figure_1d_trace(lands: Sequence[Landscape]) -> Figure:
    """The Hessian trace against α (``hessian.trace``), with a band of two standard errors (``trace_se``)."""
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    fig.subplots_adjust(left=0.12, right=0.95, bottom=0.3, top=0.9)
    several = len(lands) > 1
    for n, land in enumerate(lands):
        colour = f"C{n % 10}" if several else "C0"
        tag = f"{land.label}: " if several else ""
        v = land.values("trace")
        ax.plot(land.x, v, "-", color=colour, linewidth=1.5, label=f"{tag}{pretty('trace')}")
        if "trace_se" in land.names:
            se = land.values("trace_se")
            ax.fill_between(land.x, v - 2 * se, v + 2 * se, color=colour, alpha=0.2, linewidth=0,
                            label=f"{tag}± 2 standard errors")  # fmt: skip
    xs = np.concatenate([land.x for land in lands])
    ax.set_xlim(xs.min(), xs.max())
    _mark_models(ax, lands)
    ax.axhline(0.0, color="0.8", linewidth=0.6)
    ax.set_xlabel(lands[0].axis_label("x"))
    ax.set_ylabel("tr H")
    handles, labels = ax.get_legend_handles_labels()
    _legend_below(fig, handles, labels, 2)
    if several:
        _overlay_title(fig, lands, ": Hessian trace")
    else:
        _titles(ax, lands[0], "trace")
    return fig


def save(fig: Figure, base: Path, formats: Sequence[str]) -> list[Path]:
    """Write ``fig`` as ``base.<format>`` for each format and close it; the written paths."""
    out = []
    try:
        for fmt in formats:
            path = base.with_name(f"{base.name}.{fmt}")
            fig.savefig(path, dpi=DPI)
            out.append(path)
    finally:
        plt.close(fig)
    return out


def contour(path: str | Path, value: str | None = None, out: str | Path | None = None) -> Path:
    """Contour lines of one value of a 2D surface file as a PNG (default: the first loss, next to the file)."""
    land = Landscape.read(path)
    if land.ndim != 2:
        raise JobError(f"{path} is a 1D surface; contours need a 2D grid (use --kind 1d)")
    name = value or (land.losses or land.names)[0]
    target = Path(out) if out else Path(f"{path}_{name}_2dcontour.png")
    fig = figure_2d(land, name, "contour", Scale())
    return save(fig, target.with_suffix(""), [target.suffix.lstrip(".") or "png"])[0]

"""Pictures of surface files: every picture of the paper's workflow, a ParaView file and an interactive viewer.

    python -m llmpi.plot surfaces/vgg56.h5                  # all default pictures next to the file
    python -m llmpi.plot surfaces/vgg56.h5 --kind contour --vmin 0.1 --vmax 10 --levels 0.5 --log
    python -m llmpi.plot surfaces/*.h5 --kind html -o compare.html   # one viewer, several landscapes overlaid
    python -m llmpi.plot surfaces/vgg56.h5 --kind vtk       # ParaView
    python -m llmpi.plot spectra/resnet20.h5                # a spectrum: its density and per-layer traces

Kinds contour, contourf, heat, surface and vtk write one output per file and value; 1d and html draw all their
files into one output (an overlay); all (the default) does every kind that applies to each file -- Hessian values
(``max_eig``, ``min_eig``, ``eig_ratio``) as heat maps only, the paper's eigen-ratio maps, and in 1D as one
eigen-ratio figure beside the loss/accuracy one; a trace map (``hessian.trace``) as a heat map, in 1D as a curve
with its error band. A spectrum file gets its eigenvalue density (``density``: log scale, the top eigenvalues
marked, PyHessian's figure) and its per-layer traces (``layers``: bars with two standard errors); drawn by
``llmpi.report.spectrum``. Paths are printed as they are written. Bad input prints one
``llmpi: error: ...`` line and exits 2, a failing disk likewise with 74 (``llmpi.job.exits``).

Headless (matplotlib's Agg backend): never opens a window. Surface files are read only through
``llmpi.file.store.read_surface``, also while a sweep is still writing them (undone points are blank). The pictures
themselves are drawn in ``llmpi.report``: ``landscape`` (what pictures need from a file), ``static`` (matplotlib),
``paraview`` (legacy VTK), ``viewer`` (the self-contained plotly HTML viewer).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .job.errors import JobError
from .report.landscape import EIG_NAMES, LOSS_SPAN, TRACE_NAMES, Landscape, Scale, names_to_draw, quantity

PICTURE_FORMATS = ("png", "pdf")
PICTURE_SUFFIXES = ("png", "pdf", "svg")
KINDS = ("contour", "contourf", "heat", "surface", "1d", "html", "vtk")
SPECTRUM_KINDS = ("density", "layers")  # of a spectrum file (python -m llmpi.spectrum)


@dataclass
class Output:
    """One thing to write: its default path without extension, the extensions it may take, how to draw it."""

    base: Path
    extensions: tuple[str, ...]
    draw: Callable[[Path, tuple[str, ...]], list[Path]]

    def default_extensions(self) -> tuple[str, ...]:
        return PICTURE_FORMATS if self.extensions == PICTURE_SUFFIXES else self.extensions[:1]


def _picture(make: Callable[[], object]) -> Callable[[Path, tuple[str, ...]], list[Path]]:
    from .report.static import save

    return lambda base, formats: save(make(), base, formats)


def _overlay_base(lands: Sequence[Landscape], suffix: str) -> Path:
    first = lands[0].path
    more = f"_and_{len(lands) - 1}_more" if len(lands) > 1 else ""
    return first.with_name(f"{first.name}{more}_{suffix}")


def plan(lands: Sequence[Landscape], kinds: Sequence[str], values: list[str] | None, scale: Scale) -> list[Output]:
    """The outputs the command writes, in order; an explicit kind that cannot apply to a file is an error."""
    from .report import static

    lenient = "all" in kinds
    kinds = KINDS if lenient else tuple(dict.fromkeys(kinds))
    log = "_log" if scale.log else ""
    out: list[Output] = []
    for kind in kinds:
        if kind in static.KINDS_2D:
            for land in lands:
                if land.ndim != 2:
                    if lenient:
                        continue
                    raise JobError(f"{land.path} is a 1D surface; --kind {kind} needs a 2D grid (use --kind 1d)")
                if min(len(land.x), len(land.y)) < 2:
                    if lenient:
                        continue
                    raise JobError(f"{land.path} has a single point along one axis; --kind {kind} needs 2 or more")
                for name in names_to_draw(land, values, scale):
                    if lenient and name in (*EIG_NAMES, *TRACE_NAMES) and kind != "heat":
                        continue  # contour lines of an eigen-ratio say little; the paper draws heat maps
                    base = land.path.with_name(f"{land.path.name}_{name}_{static.KINDS_2D[kind]}{log}")
                    if kind == "surface":
                        make = lambda land=land, name=name: static.figure_surface(land, name, scale)
                    else:
                        make = lambda land=land, name=name, kind=kind: static.figure_2d(land, name, kind, scale)
                    out.append(Output(base, PICTURE_SUFFIXES, _picture(make)))
        elif kind == "1d":
            flat = [land for land in lands if land.ndim == 1]
            if not lenient and len(flat) < len(lands):
                bad = next(land for land in lands if land.ndim == 2)
                raise JobError(f"{bad.path} is a 2D surface; --kind 1d draws 1D files (try --kind contour or surface)")
            if flat:
                for land in flat:
                    for name in values or ():
                        land.values(name)  # raises, naming what the file has
                curves = None if values is None else [v for v in values if v not in (*EIG_NAMES, *TRACE_NAMES)]
                if curves is None or curves:
                    make = lambda flat=flat, curves=curves: static.figure_1d(flat, curves, scale)
                    out.append(Output(_overlay_base(flat, f"1d_loss_acc{log}"), PICTURE_SUFFIXES, _picture(make)))
                eig = [land for land in flat if any(n in land.names for n in EIG_NAMES)]
                if eig and (values is None or any(v in EIG_NAMES for v in values)):
                    make = lambda eig=eig: static.figure_1d_eig(eig, scale)
                    out.append(Output(_overlay_base(eig, "1d_eig_ratio"), PICTURE_SUFFIXES, _picture(make)))
                traced = [land for land in flat if "trace" in land.names]
                if traced and (values is None or "trace" in values):
                    make = lambda traced=traced: static.figure_1d_trace(traced)
                    out.append(Output(_overlay_base(traced, "1d_trace"), PICTURE_SUFFIXES, _picture(make)))
        elif kind == "html":
            for ndim in (2, 1):
                group = [land for land in lands if land.ndim == ndim]
                if group:
                    out.append(Output(_overlay_base(group, "viewer"), ("html", "htm"), _html(group, scale, values)))
        elif kind == "vtk":
            for land in lands:
                names = values or [n for n in land.names if quantity(n) == "loss"] or land.names
                for name in names:
                    land.values(name)  # raises, naming what the file has
                    base = land.path.with_name(f"{land.path.name}_{name}{log}")
                    out.append(Output(base, ("vtk",), _vtk(land, name, scale)))
    return out


def plan_spectra(views: Sequence, kinds: Sequence[str], surfaces: Sequence[Landscape]) -> list[Output]:
    """The pictures of spectrum files: the density (log scale, top eigenvalues marked) and the per-layer traces.
    An explicit kind that does not apply (a surface's kind for a spectrum, or the other way round) is an error."""
    from .report import spectrum

    lenient = "all" in kinds
    wanted = SPECTRUM_KINDS if lenient else [k for k in dict.fromkeys(kinds) if k in SPECTRUM_KINDS]
    if not lenient:
        if views and len(wanted) < len(set(kinds)):
            other = next(k for k in kinds if k not in SPECTRUM_KINDS)
            raise JobError(f"{views[0].path} is a spectrum file; --kind {other} draws surfaces (try --kind density)")
        if surfaces and wanted:
            raise JobError(f"{surfaces[0].path} is a surface file; --kind {wanted[0]} draws spectrum files")
    out = []
    for view in views:
        for kind in wanted:
            why = view.can_draw(kind)
            if why is not None:
                if lenient:
                    continue
                raise JobError(why)
            figure = spectrum.figure_density if kind == "density" else spectrum.figure_layers
            base = view.path.with_name(f"{view.path.name}_{kind}")
            out.append(Output(base, PICTURE_SUFFIXES, _picture(lambda view=view, figure=figure: figure(view))))
    return out


def _html(group: Sequence[Landscape], scale: Scale, values: list[str] | None):
    from .report.viewer import write_html

    return lambda base, ext: [write_html(group, scale, base.with_name(f"{base.name}.{ext[0]}"), values)]


def _vtk(land: Landscape, name: str, scale: Scale):
    from .report.paraview import write_vtk

    return lambda base, ext: [write_vtk(land, name, scale, base.with_name(f"{base.name}.{ext[0]}"))]


def run(
    files: Sequence[str], kinds: Sequence[str], values: list[str] | None, scale: Scale, out: str | None
) -> list[Path]:
    """Draw and write; the written paths, each printed as soon as it exists."""
    from .file.spectrum import is_spectrum
    from .report.spectrum import SpectrumView

    views = [SpectrumView.read(f) for f in files if is_spectrum(f)]
    lands = [Landscape.read(f) for f in files if not is_spectrum(f)]
    surface_kinds = [k for k in kinds if k not in SPECTRUM_KINDS]
    outputs = plan(lands, surface_kinds, values, scale) if lands and surface_kinds else []
    outputs += plan_spectra(views, kinds, lands)
    if not outputs:
        raise JobError("nothing to draw: no file fits the kinds asked for")
    target = Path(out) if out else None
    into_dir = target is not None and (target.is_dir() or out.endswith(os.sep))
    if target is not None and not into_dir:
        if len(outputs) > 1:
            raise JobError(
                f"-o {out} names one file but this command writes {len(outputs)} outputs; pick one with --kind and "
                f"--value, or give -o an existing directory (or one ending in '/')"
            )
        ext = target.suffix.lstrip(".").lower()
        if ext not in outputs[0].extensions:
            raise JobError(f"-o {out}: this output is written as .{' or .'.join(outputs[0].extensions)}")
        if not target.parent.is_dir():
            raise JobError(f"-o {out}: the directory {target.parent} does not exist")
    written = []
    for item in outputs:
        if target is None:
            base, exts = item.base, item.default_extensions()
        elif into_dir:
            target.mkdir(parents=True, exist_ok=True)
            base, exts = target / item.base.name, item.default_extensions()
        else:
            base, exts = target.with_suffix(""), (target.suffix.lstrip(".").lower(),)
        for path in item.draw(base, exts):
            print(path, flush=True)
            written.append(path)
    return written


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, the project's way, instead of argparse's usage block
        self.exit(2, f"llmpi: error: {message} (see python -m llmpi.plot --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m llmpi.plot",
        description="Draw surface files: contours, heatmaps, 3D surfaces, 1D curves, a ParaView file and an "
        "interactive HTML viewer. Outputs go next to their surface file (an overlay of several files next to the "
        "first one) unless -o says otherwise.",
    )
    p.add_argument(
        "files", nargs="+", help="surface files (.h5) written by python -m llmpi.sweep, or spectrum files "
        "(python -m llmpi.spectrum)",
    )  # fmt: skip
    p.add_argument(
        "--kind", action="append", choices=(*KINDS, *SPECTRUM_KINDS, "all"),
        help="what to draw (repeatable; default all): contour lines, filled contours, heat map, 3D surface "
        "(PNG and PDF each), 1d loss/accuracy curves, the html viewer, a vtk file for ParaView; of a spectrum "
        "file: its eigenvalue density (log scale, top eigenvalues marked) and its per-layer traces",
    )  # fmt: skip
    p.add_argument(
        "--value", action="append", metavar="NAME",
        help="value dataset to draw, e.g. train_loss or test_acc (repeatable; default: all of them, or the "
        "losses when a scale option is given)",
    )  # fmt: skip
    p.add_argument("--vmin", type=float, help="lowest value drawn (default: the lowest computed)")
    p.add_argument(
        "--vmax", type=float,
        help=f"highest value drawn, higher ones clipped (default: the highest computed; losses at most "
        f"{LOSS_SPAN:g} above their lowest, like the paper's vmax)",
    )  # fmt: skip
    p.add_argument(
        "--levels", type=float, metavar="STEP",
        help="spacing between contour levels in the value's units, like the paper's vlevel (with --log: in "
        "decades, e.g. 0.25 = four levels per factor of ten); default: about 20 round-numbered levels",
    )  # fmt: skip
    p.add_argument("--log", action="store_true", help="log scale for values, colours and heights")
    p.add_argument("-o", "--output", help="output file (when one output is written) or directory")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def main(argv: list[str] | None = None) -> int:
    from .job.exits import run as run_command

    args = parser().parse_args(argv)

    def command() -> None:
        scale = Scale(args.vmin, args.vmax, args.levels, args.log)
        run(args.files, args.kind or ["all"], args.value, scale, args.output)

    return run_command(command, debug=args.debug)


if __name__ == "__main__":
    import sys

    sys.exit(main())

"""The landscape as a VTK file for ParaView (or any VTK reader): a structured grid whose height is the loss.

    python -m llmpi.plot surfaces/vgg56.h5 --kind vtk [--log] [--vmax 10]     # -> surfaces/vgg56.h5_train_loss.vtk

The legacy VTK format (binary, big-endian), ``DATASET STRUCTURED_GRID`` with dimensions (nx, ny, 1): point
(i, j) sits at (α_i, β_j, height) -- x fastest, the order of the surface arrays' rows -- so the file reads back
as the same grid everywhere. ``height`` (the value drawn, clipped, log10 with --log) is the active scalar array;
every value dataset travels along as field data in its own units (NaN where not computed), with ``done``. Points
not computed yet are hidden through VTK's standard ``vtkGhostType`` array (HIDDENPOINT), so ParaView blanks the
cells around them instead of drawing a pit; their height is set to the lowest drawn one so they never stretch the
bounds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .landscape import Landscape, Levels, Scale

HIDDEN_POINT = 2  # vtkDataSetAttributes::HIDDENPOINT


def heights(land: Landscape, name: str, scale: Scale) -> tuple[np.ndarray, np.ndarray]:
    """(height, shown) of every grid point: the value clipped to --vmin/--vmax (only if given: ParaView users
    clip interactively) and log10 with --log; shown is False where the point is undone or has no height."""
    raw = land.values(name)
    usable = np.isfinite(raw) & ((raw > 0) if scale.log else True)
    finite = raw[usable]
    lo = scale.vmin if scale.vmin is not None else (float(finite.min()) if finite.size else 1.0)
    hi = scale.vmax if scale.vmax is not None else (float(finite.max()) if finite.size else 1.0)
    z = Levels(lo, max(hi, lo), np.array([lo, hi]), scale.log).transform(np.where(usable, raw, lo))
    floor = float(z[usable].min()) if usable.any() else 0.0
    return np.where(usable, z, floor), usable


def write_vtk(land: Landscape, name: str, scale: Scale, out: Path) -> Path:
    """Write the landscape of ``name`` as a legacy binary VTK structured grid to ``out``."""
    z, shown = heights(land, name, scale)
    x = land.x
    y = land.y if land.ndim == 2 else np.zeros(1)
    X, Y = np.meshgrid(x, y)
    points = np.stack([X.ravel(), Y.ravel(), z.ravel()], axis=1)
    n = len(points)
    title = f"llmpi landscape {land.label} {name}{' log10' if scale.log else ''}: {land.title(name)}"
    header = (
        "# vtk DataFile Version 3.0\n"
        f"{title.encode('ascii', 'replace').decode()[:250]}\n"
        "BINARY\n"
        "DATASET STRUCTURED_GRID\n"
        f"DIMENSIONS {len(x)} {len(y)} 1\n"
        f"POINTS {n} double\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(points.astype(">f8").tobytes() + b"\n")
        f.write(f"POINT_DATA {n}\nSCALARS height double 1\nLOOKUP_TABLE default\n".encode())
        f.write(z.astype(">f8").ravel().tobytes() + b"\n")
        # the other arrays as field data: VTK's legacy reader reads every FIELD array, but only the first SCALARS
        arrays = [(k, land.values(k).astype(">f8"), "double") for k in land.names]
        arrays += [("done", land.surface.done.astype(np.uint8), "unsigned_char")]
        arrays += [("vtkGhostType", np.where(shown, 0, HIDDEN_POINT).astype(np.uint8), "unsigned_char")]
        f.write(f"FIELD FieldData {len(arrays)}\n".encode())
        for key, values, kind in arrays:
            f.write(f"{key} 1 {n} {kind}\n".encode() + values.ravel().tobytes() + b"\n")
    return out

"""Pictures of surface files: every picture of the paper's workflow, a ParaView file and an interactive viewer.

    python -m llmpi.plot surfaces/vgg56.h5                  # all default pictures next to the file
    python -m llmpi.plot surfaces/vgg56.h5 --kind contour --vmin 0.1 --vmax 10 --levels 0.5 --log
    python -m llmpi.plot surfaces/*.h5 --kind html -o compare.html   # one viewer, several landscapes overlaid
    python -m llmpi.plot surfaces/vgg56.h5 --kind vtk       # ParaView

Headless (matplotlib's Agg backend): never opens a window. Surface files are read only through
``llmpi.store.read_surface``, also while a sweep is still writing them (undone points are blank).

* ``landscape`` -- what pictures need from a file: values, labels in the paper's terms, scales, marks (overlays);
* ``static``    -- matplotlib: contour, contourf, heat, 3D surface, 1D curves (PNG and PDF);
* ``paraview``  -- a legacy VTK structured grid;
* ``viewer``    -- the self-contained plotly HTML viewer (``viewer.html`` and ``viewer.js`` beside it);
* ``cli``       -- the command line.
"""

from .cli import main
from .landscape import Landscape, Overlay, Scale
from .static import contour, figure_1d, figure_2d, figure_surface, save

__all__ = ["Landscape", "Overlay", "Scale", "contour", "figure_1d", "figure_2d", "figure_surface", "main", "save"]

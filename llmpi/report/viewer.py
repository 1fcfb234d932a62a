"""The interactive viewer: one self-contained HTML file (plotly.js inline, no CDN, nothing fetched) that shows
one or several landscapes as 3D surfaces, or 1D landscapes as curves.

    python -m llmpi.plot surfaces/*.h5 --kind html -o compare.html

Rotate, zoom and pan with the mouse; toggle each landscape, the wireframe, the surface, the floor contours, log
scale and loss clipping; hover a point for its (α, β, loss, accuracy) in the file's own units. Landscapes on
different grids overlay in the shared (α, β) plane: each surface keeps its own coordinates. The page works
offline and as an e-mail attachment; the page's script (``viewer.js``) redraws from the raw values embedded as
JSON, so every toggle is exact rather than a re-styled picture.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from ..job.errors import JobError
from ..job.version import __version__
from .landscape import LOSS_SPAN, Landscape, Scale, quantity

CAMERA = {
    "eye": {"x": -1.5, "y": -1.5, "z": 1.1},
    "up": {"x": 0, "y": 0, "z": 1},
    "center": {"x": 0, "y": 0, "z": -0.1},
}


def plotly_js() -> str:
    """The plotly.js bundle of the plotly Python package, through its public API (so the page needs no network)."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError as e:
        raise JobError(f"the HTML viewer needs the plotly package ({e}); pip install plotly") from None
    return get_plotlyjs()


def _nulls(a: np.ndarray) -> list:
    """A float array as nested lists, NaN/inf as null (plotly leaves those points blank)."""
    a = np.asarray(a, dtype=np.float64)
    out = a.astype(object)
    out[~np.isfinite(a)] = None
    return out.tolist()


def _range(a: np.ndarray) -> str:
    return f"[{a.min():g}, {a.max():g}]"


def payload(lands: Sequence[Landscape], scale: Scale, names: Sequence[str] | None = None) -> dict:
    """Everything the page draws from, as JSON-able data: raw values (NaN -> null), labels, marks, initial state."""
    dims = {land.ndim for land in lands}
    if len(dims) != 1:
        raise JobError("one viewer shows either 2D or 1D landscapes; pass the 1D and the 2D files separately")
    ndim = dims.pop()
    quantities = []
    for land in lands:
        quantities += [n for n in land.names if n not in quantities]
    if names:
        for land in lands:
            if not any(n in land.names for n in names):
                raise JobError(f"{land.path} has none of {', '.join(names)} (it has: {', '.join(land.names)})")
        quantities = list(names)
    if not quantities:
        raise JobError("none of the files holds loss or accuracy values to draw")
    first = next((n for n in quantities if quantity(n) == "loss"), quantities[0])
    layers = []
    for land in lands:
        values = {n: _nulls(land.values(n)) for n in land.names if n in quantities}
        done, total = land.progress
        grid = f"{len(land.x)}" + (f"×{len(land.y)}" if ndim == 2 else "")
        extent = f"α ∈ {_range(land.x)}" + (f", β ∈ {_range(land.y)}" if ndim == 2 else "")
        description = f"{land.path} — {grid} grid, {extent}"
        if land.surface.attrs.get("dataset"):
            description += f" — {land.surface.attrs['dataset']}"
        layers.append(
            {
                "label": land.label,
                "x": land.x.tolist(),
                "y": land.y.tolist() if ndim == 2 else None,
                "values": values,
                "done": done,
                "total": total,
                "description": description,
                "titles": {n: land.title(n) for n in values} | {"none": land.title(None)},
                "overlays": {
                    n: [
                        {"label": o.label, "x": o.x.tolist(), "y": _nulls(o.y), "kind": o.kind,
                         "marker": o.marker, "color": o.color, "tag": o.tag}
                        for o in land.overlays(n)
                    ]
                    for n in values
                },
            }
        )  # fmt: skip
    suggested, clip = {}, {}
    for n in quantities:
        stacked = np.concatenate([land.values(n).ravel() for land in lands if n in land.names])
        finite = stacked[np.isfinite(stacked)]
        if quantity(n) == "loss" and finite.size:
            top = scale.vmax if scale.vmax is not None else float(finite.min()) + LOSS_SPAN
            suggested[n] = float(f"{top:.4g}")
            clip[n] = suggested[n] if (scale.vmax is not None or top < finite.max()) else None
        else:
            clip[n] = None
    x_span = max(float(np.ptp(land.x)) for land in lands) or 1.0
    y_span = max(float(np.ptp(land.y)) for land in lands) if ndim == 2 else 1.0
    return {
        "ndim": ndim,
        "formula": ("f(α, β) = " if ndim == 2 else "f(α) = ") + lands[0].formula(),
        "axes": {"x": lands[0].axis_label("x"), "y": lands[0].axis_label("y") if ndim == 2 else ""},
        "aspect": min(max(y_span / x_span, 0.25), 4.0),
        "camera": CAMERA,
        "synthetic": any(land.synthetic for land in lands),
        "quantities": quantities,
        "layers": layers,
        "initial": {"quantity": first, "log": scale.log, "clip": clip, "suggestedClip": suggested},
    }


def _script_safe(text: str) -> str:
    """Text that cannot end the <script> element it sits in."""
    return re.sub(r"</(script)", r"<\\/\1", text, flags=re.IGNORECASE)


def render_html(lands: Sequence[Landscape], scale: Scale, names: Sequence[str] | None = None) -> str:
    data = payload(lands, scale, names)
    title = " vs ".join(land.label for land in lands) + " — llmpi landscape viewer"
    parts = {
        "VERSION": html.escape(__version__),
        "TITLE": html.escape(title),
        "PLOTLY": _script_safe(plotly_js()),
        "DATA": json.dumps(data, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c"),
        "VIEWER": _script_safe(_asset("viewer.js")),
    }
    return re.sub(r"@([A-Z]+)@", lambda m: parts[m.group(1)], _asset("viewer.html"))


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def write_html(lands: Sequence[Landscape], scale: Scale, out: Path, names: Sequence[str] | None = None) -> Path:
    """Write the viewer of ``lands`` to ``out`` (one file, about 5 MB of which plotly.js is most)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(lands, scale, names), encoding="utf-8")
    return out

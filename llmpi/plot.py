"""Pictures of a surface file (headless; never opens a window).

    python -m llmpi.plot surfaces/vgg56.h5          # a contour PNG next to the file

(Issue #4 extends this into every picture of the paper's workflow and an interactive viewer.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .errors import JobError
from .store import read_surface


def contour(path: str | Path, value: str | None = None, out: str | Path | None = None) -> Path:
    s = read_surface(path)
    if s.y is None:
        raise JobError(f"{path} is a 1D surface; contours need a 2D grid")
    value = value or next(k for k in s.values if k.endswith("_loss"))
    z = np.where(s.done, s.values[value], np.nan)
    out = Path(out) if out else Path(str(path) + f"_{value}_2dcontour.png")
    fig, ax = plt.subplots(figsize=(5.5, 5))
    X, Y = np.meshgrid(s.x, s.y)
    finite = z[np.isfinite(z)]
    if finite.size:
        levels = np.linspace(finite.min(), min(finite.max(), finite.min() + 10), 30)
        cs = ax.contour(X, Y, z, levels=levels, cmap="summer")
        ax.clabel(cs, inline=True, fontsize=7, fmt="%.2f")
    ax.plot([0], [0], "r*", markersize=10, label="minimiser θ*")
    title = f"{s.attrs.get('arch', '')} {value}"
    if s.attrs.get("synthetic"):
        title += " (SYNTHETIC data)"
    if not s.complete:
        title += f" — {int(s.done.sum())} of {s.done.size} points"
    ax.set_title(title)
    ax.set_xlabel("α (direction δ)")
    ax.set_ylabel("β (direction η)")
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(out, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmpi.plot", description="Draw a surface file.")
    p.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    try:
        for f in args.files:
            print(contour(f))
    except JobError as e:
        print(f"llmpi: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

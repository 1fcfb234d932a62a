"""What a surface file holds and how far its sweep is -- safe to run while a sweep writes the file.

    python -m llmpi.status surfaces/vgg56.h5
    python -m llmpi.status surfaces/vgg56.h5 --json

Reads the file without locking it (never blocks or disturbs the writer), ``<file>.run.json`` for what the last or
current run is doing (per-rank throughput, ETA), and ``<file>.lock`` to tell whether a sweep is live on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from .errors import JobError
from .store import WriterLock, read_run_info, read_surface


def summarize(path: str | Path) -> dict:
    """Everything ``status`` reports, as plain data."""
    path = Path(path)
    s = read_surface(path)
    job = yaml.safe_load(s.attrs.get("job", "")) or {}
    done = int(s.done.sum())
    values = {}
    for name, array in s.values.items():
        sel = array[s.done]
        values[name] = {
            "nan": int(np.isnan(sel).sum()),
            "inf": int(np.isinf(sel).sum()),
            "min": float(np.nanmin(sel)) if np.isfinite(sel).any() else None,
            "max": float(np.nanmax(sel[np.isfinite(sel)])) if np.isfinite(sel).any() else None,
        }
    live = WriterLock.is_held(path)
    run = read_run_info(path)
    state = run.get("state") if run else None
    if run and state == "running" and not live:
        state = "stopped without finishing (killed or lost): rerun the same command to resume"
    return {
        "file": str(path),
        "job": job.get("name"),
        "arch": s.attrs.get("arch"),
        "data": s.attrs.get("dataset"),
        "synthetic": bool(s.attrs.get("synthetic", False)),
        "directions": job.get("directions"),
        "grid": [len(s.x)] if s.y is None else [len(s.x), len(s.y)],
        "x": [float(s.x[0]), float(s.x[-1])],
        "y": None if s.y is None else [float(s.y[0]), float(s.y[-1])],
        "points_done": done,
        "points_total": int(s.done.size),
        "values": values,
        "live": live,
        "writer": WriterLock.holder(path) if live else None,
        "last_run": run,
        "last_run_state": state,
        "version": s.attrs.get("llmpi_version"),
    }


def render(info: dict) -> str:
    from .sweep import duration

    lines = [f"{info['file']}: {info['job']} -- {info['arch']} on {info['data']}"]
    d = info["directions"] or {}
    if d:
        lines.append(
            f"  directions: {d.get('kind')} (seed {d.get('seed')}), {d.get('norm')} norm, ignore "
            f"{d.get('ignore')}, {d.get('type')}"
        )
    grid = " x ".join(map(str, info["grid"]))
    span = f"[{info['x'][0]:g}, {info['x'][1]:g}]" + (f" x [{info['y'][0]:g}, {info['y'][1]:g}]" if info["y"] else "")
    lines.append(f"  grid: {grid} over {span} = {info['points_total']} points")
    pct = 100.0 * info["points_done"] / max(1, info["points_total"])
    lines.append(f"  done: {info['points_done']} / {info['points_total']} ({pct:.1f}%)")
    for name, v in info["values"].items():
        rng = f"{v['min']:.4g} .. {v['max']:.4g}" if v["min"] is not None else "no finite values"
        lines.append(f"  {name}: {rng}; non-finite: {v['nan']} NaN, {v['inf']} inf")
    if info["live"]:
        w = info["writer"] or {}
        lines.append(
            f"  live: a sweep is writing it now (host {w.get('host', '?')}, pid {w.get('pid', '?')}, "
            f"since {w.get('since', '?')})"
        )
    else:
        lines.append("  live: no sweep is writing it")
    run = info["last_run"]
    if run:
        eta = run.get("eta_seconds")
        lines.append(
            f"  last run: {info['last_run_state']}, started {run['started']}, updated {run['updated']}, "
            f"{run['ranks']} rank(s), {run['points_this_run']} points at {run['points_per_second']:.2f} "
            f"points/s" + (f", ETA {duration(eta)}" if eta is not None and info["live"] else "")
        )
        for r in run.get("per_rank", []):
            rate = r["points"] / r["seconds"] if r["seconds"] else 0.0
            lines.append(
                f"    rank {r['rank']} on {r['host']} ({r['device']}): {r['points']} points in "
                f"{r['blocks']} blocks, {rate:.2f} points/s while computing"
            )
        if run.get("error"):
            lines.append("  last error:\n    " + run["error"].strip().replace("\n", "\n    "))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmpi.status", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="surface files (.h5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    try:
        infos = [summarize(f) for f in args.files]
    except JobError as e:
        print(f"llmpi: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(infos if len(infos) > 1 else infos[0], indent=1))
    else:
        print("\n\n".join(render(i) for i in infos))
    return 0


if __name__ == "__main__":
    sys.exit(main())

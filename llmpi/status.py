"""What a surface file holds and how far its sweep is -- safe to run while a sweep writes the file.

    python -m llmpi.status surfaces/vgg56.h5
    python -m llmpi.status surfaces/vgg56.h5 --json
    python -m llmpi.status surfaces/vgg56.h5 --metrics --radius 0.2 --threshold 0.5

Reads the file without locking it (never blocks or disturbs the writer), ``<file>.run.json`` for what the last or
current run is doing (per-rank throughput, ETA), and ``<file>.lock`` to tell whether a sweep is live on it.

``--metrics`` adds the surface's summary numbers (``llmpi.metrics``: loss at the centre and the minimiser,
sharpness within a radius, curvature of a local quadratic fit, basin share and area below a threshold, the share
of nearly convex points when the file has eigen-ratios) for every loss in the file, and stores them in the file's
root attribute ``metrics`` (JSON, with the options used) -- unless a sweep is writing the file, in which case they
are printed only (a warning says so); rerun once the sweep has finished to store them.
"""

from __future__ import annotations

import argparse
import json
import math
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
        "directions_store": s.direction_store,  # full: the tensors are in the file; recipe: how to make them
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


METRIC_OPTIONS = ("radius", "fit_radius", "threshold", "ratio_threshold")


def _plain(value: object) -> object:
    """NaN as None (JSON has no NaN), tuples as lists, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def surface_metrics(path: str | Path, **options: float | None) -> dict:
    """``llmpi.metrics.surface_metrics`` of every loss in the file: ``{"options": {...}, "train_loss": {...}}``."""
    from .metrics import surface_metrics as compute

    s = read_surface(path)
    losses = [k for k in s.values if k.endswith("_loss")]
    if not losses:
        raise JobError(f"{path} holds no loss values (datasets named <split>_loss) to take metrics of")
    given = {k: v for k, v in options.items() if v is not None}
    out: dict = {}
    for name in losses:
        m = compute(
            s.x, s.y, s.values[name], s.done, eig_ratio=s.values.get("eig_ratio"), min_eig=s.values.get("min_eig"),
            **given,
        )  # fmt: skip
        out[name] = _plain(m.to_dict())
    first = out[losses[0]]
    out = {"options": {k: first[k] for k in METRIC_OPTIONS}, **out}
    return out


def store_metrics(path: str | Path, metrics: dict) -> str | None:
    """Store ``metrics`` in the file's attributes; the reason when it cannot (a live sweep), else None."""
    from .store import write_attrs

    if WriterLock.is_held(Path(path)):
        return "a sweep is writing the file"
    try:
        write_attrs(path, {"metrics": json.dumps(metrics)})
    except JobError as e:
        return str(e)
    return None


def render_metrics(metrics: dict) -> str:
    from .metrics import DEFINITIONS

    o = metrics["options"]
    lines = [
        f"  metrics (radius {o['radius']:g}, fit radius {o['fit_radius']:g}, threshold {o['threshold']:g}, "
        f"eig-ratio threshold {o['ratio_threshold']:g}):"
    ]

    def fmt(v: object) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, list):
            return "(" + ", ".join(fmt(x) for x in v) + ")"
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    for name, m in metrics.items():
        if name == "options":
            continue
        lines.append(f"    {name}:")
        rows = [
            ("centre_loss", f"{fmt(m['centre_loss'])} at {fmt(m['centre'])}"),
            ("min_loss", f"{fmt(m['min_loss'])} at {fmt(m['min_at'])}"),
            ("sharpness", f"{fmt(m['sharpness'])} ({m['points_in_radius']} points within {fmt(m['radius'])})"),
            ("curvature", f"{fmt(m['curvature'])} ({m['fit_points']} points fitted)"),
            ("basin_share", fmt(m["basin_share"])),
            ("basin_area", fmt(m["basin_area"])),
            ("below_share", fmt(m["below_share"])),
            ("convex_share", fmt(m["convex_share"])),
            ("done_share", fmt(m["done_share"])),
        ]
        for key, text in rows:
            lines.append(f"      {key:<13} {text:<34} {DEFINITIONS[key]}")
    return "\n".join(lines)


def render(info: dict) -> str:
    from .sweep import duration

    lines = [f"{info['file']}: {info['job']} -- {info['arch']} on {info['data']}"]
    d = info["directions"] or {}
    if d:
        lines.append(
            f"  directions: {d.get('kind')} (seed {d.get('seed')}), {d.get('norm')} norm, ignore "
            f"{d.get('ignore')}, {d.get('type')}"
            + (
                "; stored as a recipe (python -m llmpi.directions materialise writes them out)"
                if info.get("directions_store") == "recipe"
                else ""
            )
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
    if "metrics" in info:
        lines.append(render_metrics(info["metrics"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmpi.status", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="surface files (.h5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--metrics", action="store_true",
        help="summary metrics of every loss (see the README's 'Surface metrics'), also stored in the file's attrs",
    )  # fmt: skip
    p.add_argument("--radius", type=float, help="sharpness: max loss within this distance of the centre (0.1)")
    p.add_argument("--fit-radius", type=float, help="curvature: fit the quadratic within this distance (= radius)")
    p.add_argument("--threshold", type=float, help="basin: loss at most the centre's plus this (0.1)")
    p.add_argument("--ratio-threshold", type=float, help="convex share: eig-ratio |min/max| below this (0.01)")
    args = p.parse_args(argv)
    options = {k: getattr(args, k) for k in METRIC_OPTIONS}
    if not args.metrics and any(v is not None for v in options.values()):
        p.error("--radius, --fit-radius, --threshold and --ratio-threshold go with --metrics")
    try:
        infos = [summarize(f) for f in args.files]
        for info in infos if args.metrics else ():
            info["metrics"] = surface_metrics(info["file"], **options)
            why = store_metrics(info["file"], info["metrics"])
            info["metrics_stored"] = why is None
            if why is not None:
                print(f"llmpi: warning: metrics of {info['file']} printed, not stored: {why}", file=sys.stderr)
    except ValueError as e:  # a JobError, or llmpi.metrics refusing an option (e.g. a non-positive radius)
        print(f"llmpi: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(infos if len(infos) > 1 else infos[0], indent=1))
    else:
        print("\n\n".join(render(i) for i in infos))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a surface file says, for people: how far its sweep is, what its directions are, its summary metrics, and
the text ``python -m llmpi.status`` prints. Reads the file without locking it (``llmpi.file.store``), so it is
safe while a sweep writes it.

    info = summarize("surfaces/vgg56.h5")     # plain data: grid, done share, values' ranges, the run's record
    print(render(info))                       # the status report
    metrics = surface_metrics("surfaces/vgg56.h5", radius=0.2)   # llmpi.report.metrics of every loss
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import yaml

from ..file.spectrum import is_spectrum
from ..file.store import Surface, WriterLock, read_run_info, read_surface
from ..job.errors import JobError


def duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def summarize(path: str | Path) -> dict:
    """Everything ``status`` reports, as plain data (a spectrum file's: ``llmpi.report.spectrum.summary``)."""
    path = Path(path)
    if is_spectrum(path):
        from .spectrum import summary

        return summary(path)
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
    hessian = (job.get("hessian") or {}) if isinstance(job.get("hessian"), dict) else {}
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
        "directions_described": describe_directions(job, s.extras),
        "directions_store": s.direction_store,  # full: the tensors are in the file; recipe: how to make them
        "grid": [len(s.x)] if s.y is None else [len(s.x), len(s.y)],
        "x": [float(s.x[0]), float(s.x[-1])],
        "y": None if s.y is None else [float(s.y[0]), float(s.y[-1])],
        "points_done": done,
        "points_total": int(s.done.size),
        "values": values,
        "hessian": convergence(s.values, s.done, hessian),
        "live": live,
        "writer": WriterLock.holder(path) if live else None,
        "last_run": run,
        "last_run_state": state,
        "version": s.attrs.get("llmpi_version"),
    }


def convergence(values: dict[str, np.ndarray], done: np.ndarray, spec: dict) -> dict | None:
    """How the Hessian's Lanczos runs ended over the computed points: how many stopped at ``hessian.max_hvps``
    unconverged, and the largest relative residual (``eig_residual``); None for a file without them."""
    if "eig_converged" not in values:
        return None
    flags = values["eig_converged"][done]
    residual = values["eig_residual"][done] if "eig_residual" in values else np.array([])
    finite = residual[np.isfinite(residual)]
    hvps = values["eig_hvps"][done] if "eig_hvps" in values else np.array([])  # files before it have none
    return {
        "points": int(flags.size),
        "unconverged": int((flags != 1.0).sum()),
        "max_residual": float(finite.max()) if finite.size else None,
        "tol": spec.get("tol"),
        "max_hvps": spec.get("max_hvps"),
        "hvps": {"mean": float(hvps.mean()), "max": int(hvps.max()), "total": int(hvps.sum())} if hvps.size else None,
    }


def describe_convergence(h: dict) -> str:
    """One line on the Hessian's convergence, saying what unconverged points mean and what to do."""
    limits = f"hessian.tol {h['tol']:g}, max_hvps {h['max_hvps']}" if h["tol"] is not None else "its settings"
    if not h["points"]:
        return f"no point computed yet ({limits})"
    cost = h.get("hvps")
    limits += f"; {cost['mean']:.1f} Hessian-vector products per point, at most {cost['max']}" if cost else ""
    if not h["unconverged"]:
        return f"all {h['points']} computed points converged ({limits})"
    worst = f", relative residual up to {h['max_residual']:.3g}" if h["max_residual"] is not None else ""
    return (
        f"{h['unconverged']} of {h['points']} computed points did not converge ({limits}{worst}): their max_eig and "
        f"min_eig lie inside the spectrum but may fall short of its extremes (eig_converged = 0 marks them); "
        f"for exact extremes raise hessian.max_hvps, in a new output or with --restart"
    )


def describe_directions(job: dict, extras: dict) -> str | None:
    """The directions of the file's job in the terms of its kind: only the settings that kind uses (an
    interpolation has no seed and no normalisation), with what the file stores about them."""
    d = job.get("directions")
    if not isinstance(d, dict):
        return None
    model = job.get("model") if isinstance(job.get("model"), dict) else {}
    kind = d.get("kind") or "random"
    stats = (
        "BatchNorm running statistics move with the weights (type states)"
        if d.get("type") == "states"
        else "weights only (type weights)"
    )
    if kind == "interpolate":
        return (
            f"interpolate: the line from {model.get('checkpoint')} (α = 0) to {model.get('checkpoint2')} (α = 1), "
            f"unnormalised; {stats}"
        )
    if kind == "plane":
        where = extras.get("model_coordinates")
        at = [f"({a:g}, {b:g})" for a, b in where] if where is not None else ["(0, 0)", "(1, 0)", "(0, 1)"]
        models = [model.get(k) for k in ("checkpoint", "checkpoint2", "checkpoint3")]
        return f"plane through {', '.join(f'{m} at {c}' for m, c in zip(models, at))}, unnormalised; {stats}"
    if kind == "pca":
        ratios = extras.get("explained_variance_ratio")
        share = (
            f", {100 * float(ratios[0]):.1f}% and {100 * float(ratios[1]):.1f}% of the variance"
            if ratios is not None and len(ratios) >= 2
            else ""
        )
        rescale = "filter-rescaled" if d.get("rescale") == "filter" else "unit components"
        return (
            f"pca: the top two principal components of the trajectory {d.get('trajectory')}{share}, {rescale}, "
            f"ignore {d.get('ignore')}; {stats}"
        )
    if kind == "hessian":
        values = extras.get("eigenvalues")
        which = "v1 and v2" if values is not None and len(values) > 1 else "v1"
        at = f" (λ = {', '.join(f'{float(v):.6g}' for v in values)})" if values is not None else ""
        how = "unit" if d.get("norm") in (None, "none") else f"{d.get('norm')}-normalised"
        return (
            f"hessian: the top eigenvector(s) {which} of the Hessian at θ*{at}, {how}, from "
            f"{d.get('spectrum')}; ignore {d.get('ignore')}; {stats}"
        )
    return f"random (seed {d.get('seed')}), {d.get('norm')} norm, ignore {d.get('ignore')}; {stats}"


METRIC_OPTIONS = ("radius", "fit_radius", "threshold", "ratio_threshold")
DEFAULT_RADIUS = 0.1  # llmpi.report.metrics.surface_metrics' own default: 10% of every filter's norm


def _plain(value: object) -> object:
    """NaN as None (JSON has no NaN), tuples as lists, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def surface_metrics(path: str | Path | Surface, **options: float | None) -> dict:
    """``llmpi.report.metrics.surface_metrics`` of every loss in the file (or a surface already read):
    ``{"options": {...}, "train_loss": {...}}``."""
    from .metrics import default_fit_radius
    from .metrics import surface_metrics as compute

    s = path if isinstance(path, Surface) else read_surface(path)
    losses = [k for k in s.values if k.endswith("_loss")]
    if not losses:
        raise JobError(f"{s.path} holds no loss values (datasets named <split>_loss) to take metrics of")
    given = {k: v for k, v in options.items() if v is not None}
    if "fit_radius" not in given:  # a fit that holds enough points on this grid, whatever its step
        given["fit_radius"] = default_fit_radius(s.x, s.y, given.get("radius", DEFAULT_RADIUS))
    out: dict = {}
    for name in losses:
        m = compute(
            s.x, s.y, s.values[name], s.done, eig_ratio=s.values.get("eig_ratio"), min_eig=s.values.get("min_eig"),
            **given,
        )  # fmt: skip
        out[name] = _plain(m.to_dict())
    first = out[losses[0]]
    out = {"options": {k: first[k] for k in METRIC_OPTIONS}, **out}
    job = yaml.safe_load(s.attrs.get("job", "")) or {}
    hessian = convergence(s.values, s.done, job.get("hessian") if isinstance(job.get("hessian"), dict) else {})
    if hessian is not None:  # convex_share counts unconverged points' ratios too: say how many there are
        out["hessian_convergence"] = hessian
    return out


def store_metrics(path: str | Path, metrics: dict) -> str | None:
    """Store ``metrics`` in the file's attributes; the reason when it cannot (a live sweep), else None."""
    from ..file.store import write_attrs

    if WriterLock.is_held(Path(path)):
        return "a sweep is writing the file"
    try:
        write_attrs(path, {"metrics": json.dumps(metrics)})
    except JobError as e:
        return str(e)
    return None


def _round_up(value: float, digits: int = 3) -> float:
    """``value`` rounded up to ``digits`` significant digits: a radius suggested from it still reaches the point."""
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    return math.ceil(value * scale * (1 - 1e-12)) / scale


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
        if name in ("options", "hessian_convergence"):
            continue
        lines.append(f"    {name}:")
        sharpness = f"{fmt(m['sharpness'])} ({m['points_in_radius']} points within {fmt(m['radius'])})"
        if m["sharpness"] is None and m.get("nearest") is not None and m["nearest"] > m["radius"]:
            sharpness += f"; --radius {_round_up(m['nearest']):g} reaches the nearest grid point"
        curvature = f"{fmt(m['curvature'])} ({m['fit_points']} points fitted)"
        if None in m["curvature"] and m.get("neighbourhood") and m["neighbourhood"] > m["fit_radius"]:
            curvature += f"; --fit-radius {_round_up(m['neighbourhood']):g} holds the centre's 3x3 block"
        rows = [
            ("centre_loss", f"{fmt(m['centre_loss'])} at {fmt(m['centre'])}"),
            ("min_loss", f"{fmt(m['min_loss'])} at {fmt(m['min_at'])}"),
            ("sharpness", sharpness),
            ("curvature", curvature),
            ("basin_share", fmt(m["basin_share"])),
            ("basin_area", fmt(m["basin_area"])),
            ("below_share", fmt(m["below_share"])),
            ("convex_share", fmt(m["convex_share"])),
            ("done_share", fmt(m["done_share"])),
        ]
        for key, text in rows:
            lines.append(f"      {key:<13} {text:<34} {DEFINITIONS[key]}")
    if "hessian_convergence" in metrics:
        lines.append(f"    Hessian: {describe_convergence(metrics['hessian_convergence'])}")
    return "\n".join(lines)


def render(info: dict) -> str:
    if info.get("kind") == "spectrum":
        from .spectrum import render as render_spectrum

        return render_spectrum(info)
    lines = [f"{info['file']}: {info['job']} -- {info['arch']} on {info['data']}"]
    if info.get("directions_described"):
        recipe = info.get("directions_store") == "recipe"
        note = "; stored as a recipe (python -m llmpi.directions materialise writes them out)" if recipe else ""
        lines.append(f"  directions: {info['directions_described']}{note}")
    grid = " x ".join(map(str, info["grid"]))
    span = f"[{info['x'][0]:g}, {info['x'][1]:g}]" + (f" x [{info['y'][0]:g}, {info['y'][1]:g}]" if info["y"] else "")
    lines.append(f"  grid: {grid} over {span} = {info['points_total']} points")
    pct = 100.0 * info["points_done"] / max(1, info["points_total"])
    lines.append(f"  done: {info['points_done']} / {info['points_total']} ({pct:.1f}%)")
    for name, v in info["values"].items():
        rng = f"{v['min']:.4g} .. {v['max']:.4g}" if v["min"] is not None else "no finite values"
        lines.append(f"  {name}: {rng}; non-finite: {v['nan']} NaN, {v['inf']} inf")
    if info.get("hessian"):
        lines.append(f"  Hessian: {describe_convergence(info['hessian'])}")
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
        if info["live"]:  # what the ranks are at right now (the record is rewritten every 2 s while running)
            for r in run.get("running", []):
                start, stop = r["points"]
                what = f"point {start}" if stop - start == 1 else f"points {start}-{stop - 1}"
                lines.append(f"    rank {r['rank']} computing {what} for {duration(r['seconds'])}")
        for r in run.get("per_rank", []):
            rate = r["points"] / r["seconds"] if r["seconds"] else 0.0
            device = r["device"] + (f" {r['gpu']}" if r.get("gpu") else "")  # the GPU's UUID, from newer runs
            lines.append(
                f"    rank {r['rank']} on {r['host']} ({device}): {r['points']} points in "
                f"{r['blocks']} blocks, {rate:.2f} points/s while computing"
            )
        if run.get("error"):
            lines.append("  last error:\n    " + run["error"].strip().replace("\n", "\n    "))
    if "metrics" in info:
        lines.append(render_metrics(info["metrics"]))
    return "\n".join(lines)

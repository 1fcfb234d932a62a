"""What a spectrum file says, for people: its numbers (``status``) and its pictures (``plot``), read through
``llmpi.file.spectrum`` without locking, so also while ``llmpi.spectrum`` writes it.

    view = SpectrumView.read("spectra/resnet20.h5")
    view.trace()                                   # (value, standard error, probes) -- the running one if unfinished
    figure_density(view); figure_layers(view)      # matplotlib figures (save with llmpi.report.static.save)

For people in Python, :class:`Spectrum` is what ``llmpi.spectrum(model, data, ...)`` returns and ``llmpi.open``
reads from a spectrum file: the eigenvalues, eigenvectors, trace, per-layer traces and density as numpy arrays,
``.plot("density")``/``.plot("layers")`` as matplotlib Figures, and a one-glance ``repr``.

The density figure is PyHessian's: the eigenvalue density on a log scale, with the top eigenvalues marked; a file
whose runs are not all done shows the finished runs' Ritz nodes and weights instead (the density is stored once
every run is in). The per-layer figure puts each parameter entry's share of the trace on a bar, with two standard
errors either side.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # a Jupyter kernel keeps its own (inline) backend: Spectrum.plot draws there
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import yaml
from matplotlib.figure import Figure

from ..file.spectrum import Spectrum as Stored
from ..file.spectrum import read_eigenvectors, read_spectrum
from ..job.errors import JobError


@dataclass
class SpectrumView:
    """A spectrum file read for people: the stored values, and what follows from them."""

    spectrum: Stored

    @classmethod
    def read(cls, path: str | Path) -> SpectrumView:
        return cls(read_spectrum(path))

    @property
    def path(self) -> Path:
        return self.spectrum.path

    @property
    def job(self) -> dict:
        try:
            job = yaml.safe_load(str(self.spectrum.attrs.get("job", "")))
        except yaml.YAMLError:
            return {}
        return job if isinstance(job, dict) else {}

    @property
    def name(self) -> str:
        return str(self.job.get("name") or self.path.stem)

    def title(self, what: str) -> str:
        parts = [f"{self.name} ({self.spectrum.attrs.get('arch', '?')})", what]
        if self.spectrum.attrs.get("synthetic"):
            parts.append("SYNTHETIC data")
        return " — ".join(parts)

    # -- the numbers ------------------------------------------------------------------------------------------

    def topk(self) -> dict | None:
        s = self.spectrum
        if "topk/done" not in s.values:
            return None
        values = s.get("topk/values")
        top = len(values) if s.attrs.get("topk_top") is None else int(s.attrs["topk_top"])
        out = {"done": s.topk_done, "asked": len(values)}
        if s.topk_done:
            scale = float(np.abs(values).max()) if len(values) else 0.0
            out |= {
                "values": values.tolist(),
                "residuals": s.get("topk/residuals").tolist(),
                "relative_residual": float(s.get("topk/residuals").max() / scale) if scale else 0.0,
                "converged": int(s.get("topk/converged").sum()),
                "hvps": int(s.get("topk/hvps")[0]),
                "top": top,
            }
        return out

    def trace(self) -> dict | None:
        """The trace: final (the stopping rule met) or running (from the probes done so far)."""
        s = self.spectrum
        if "trace/done" not in s.values:
            return None
        done = s.get("trace/done").astype(bool)
        have = int(np.argmin(done)) if not done.all() else len(done)
        exact = float(s.get("trace/exact")[0]) if s.get("trace/exact_done")[0] else 0.0
        used = s.trace_used
        out: dict = {"probes_done": have, "probe_cap": len(done), "final": bool(used), "used": used}
        out["deflated"] = bool(s.get("trace/exact_done")[0] and exact != 0.0)
        out["exact_part"] = exact
        if used:
            out["value"], out["se"] = float(s.get("trace/value")[0]), float(s.get("trace/se")[0])
            out["layers"], out["layers_se"] = s.get("trace/layers").tolist(), s.get("trace/layers_se").tolist()
        elif have >= 2:  # the estimate so far: the deflated part plus the mean of the samples, and its error
            samples, entries = s.get("trace/samples")[:have], s.get("trace/entries")[:have]
            out["value"] = exact + float(samples.mean())
            out["se"] = float(samples.std(ddof=1) / math.sqrt(have))
            layers = s.get("trace/exact_entries") if s.get("trace/exact_done")[0] else np.zeros(entries.shape[1])
            out["layers"] = (layers + entries.mean(axis=0)).tolist()
            out["layers_se"] = (entries.std(axis=0, ddof=1) / math.sqrt(have)).tolist()
        if "value" in out:
            out["relative_se"] = out["se"] / abs(out["value"]) if out["value"] else math.inf
        return out

    def density(self) -> dict | None:
        s = self.spectrum
        if "density/done" not in s.values:
            return None
        done = s.get("density/done").astype(bool)
        out: dict = {"runs_done": int(done.sum()), "runs": len(done), "complete": s.density_complete}
        out["steps"] = int(s.get("density/nodes").shape[1])
        nodes = s.get("density/nodes")[done]
        if np.isfinite(nodes).any():
            out["nodes_min"], out["nodes_max"] = float(np.nanmin(nodes)), float(np.nanmax(nodes))
        if s.density_complete:
            out["sigma"] = float(s.get("density/sigma")[0])
        return out

    # -- the pictures -----------------------------------------------------------------------------------------

    def can_draw(self, kind: str) -> str | None:
        """Why ``kind`` ('density', 'layers') cannot be drawn from this file yet, or None when it can."""
        if kind == "density":
            d = self.density()
            if d is None:
                return f"{self.path} holds no density (its analyses: {', '.join(self.spectrum.analyses)})"
            if not d["runs_done"]:
                return f"{self.path}: no run of its density is done yet"
        if kind == "layers":
            t = self.trace()
            if t is None:
                return f"{self.path} holds no trace (its analyses: {', '.join(self.spectrum.analyses)})"
            if "layers" not in t:
                return f"{self.path}: fewer than two probes of its trace are done yet"
        return None


def figure_density(view: SpectrumView) -> Figure:
    """The eigenvalue density on a log scale with the top eigenvalues marked (finished runs' nodes while partial)."""
    s = view.spectrum
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    fig.subplots_adjust(left=0.12, right=0.96, bottom=0.14, top=0.86)
    d = view.density()
    if d is None or not d["runs_done"]:
        raise JobError(view.can_draw("density"))
    if d["complete"]:
        grid, values = s.get("density/grid"), s.get("density/values")
        floor = values[values > 0].min() if (values > 0).any() else 1e-300
        ax.semilogy(grid, np.maximum(values, floor), color="C0", linewidth=1.2, label=f"density, σ = {d['sigma']:.3g}")
        ax.set_ylim(max(floor, values.max() * 1e-12), values.max() * 3)
        sub = f"{d['runs']} runs × {d['steps']} steps of stochastic Lanczos quadrature"
    else:
        done = s.get("density/done").astype(bool)
        nodes, weights = s.get("density/nodes")[done], s.get("density/weights")[done]
        keep = np.isfinite(nodes)
        ax.vlines(nodes[keep], 1e-300, weights[keep] / d["runs_done"], color="C0", linewidth=1.0)
        ax.semilogy(nodes[keep], weights[keep] / d["runs_done"], "o", color="C0", markersize=3,
                    label="Ritz nodes (weights) of the finished runs")  # fmt: skip
        positive = weights[keep][weights[keep] > 0]
        if positive.size:
            ax.set_ylim(positive.min() / d["runs_done"] / 3, 2)
        sub = f"{d['runs_done']} of {d['runs']} runs done: the density is drawn once every run is in"
    topk = view.topk()
    if topk and topk["done"]:
        for k, value in enumerate(topk["values"][: topk["top"]]):
            ax.axvline(value, color="C3", linewidth=0.8, linestyle="--", label="top eigenvalues" if k == 0 else None)
            ax.annotate(f"λ{k + 1}", (value, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                        textcoords="offset points", fontsize=7, color="C3")  # fmt: skip
    ax.set_xlabel("eigenvalue of the Hessian")
    ax.set_ylabel("density (log scale)")
    ax.legend(loc="upper center", fontsize=8, frameon=False)
    fig.suptitle(view.title("eigenvalue spectral density"), fontsize=10)
    ax.set_title(f"{s.attrs.get('dataset', '')}; {sub}", fontsize=7, color="0.35")
    return fig


def figure_layers(view: SpectrumView) -> Figure:
    """Each parameter entry's trace (its diagonal block of H) as a bar, with two standard errors either side."""
    t = view.trace()
    if t is None or "layers" not in t:
        raise JobError(view.can_draw("layers"))
    names = list(view.spectrum.entries.names)
    values, se = np.asarray(t["layers"]), np.asarray(t["layers_se"])
    height = max(3.0, 0.22 * len(names) + 1.4)
    fig, ax = plt.subplots(figsize=(7.5, height))
    fig.subplots_adjust(left=0.32, right=0.96, bottom=0.75 / height, top=1 - 0.75 / height)
    rows = np.arange(len(names))
    ax.barh(rows, values, xerr=2 * np.nan_to_num(se), color="C0", ecolor="0.3", capsize=2)
    ax.set_yticks(rows, names, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0.0, color="0.6", linewidth=0.6)
    ax.set_xlabel("trace of the entry's diagonal block of H (± 2 standard errors)")
    state = f"{t['used']} probes" if t["final"] else f"running: {t['probes_done']} probes so far"
    fig.suptitle(view.title("Hessian trace per layer"), fontsize=10)
    ax.set_title(
        f"total {t['value']:.5g} ± {t['se']:.2g} ({100 * t['relative_se']:.2f}%), {state}", fontsize=7, color="0.35"
    )
    return fig


def summary(path: str | Path) -> dict:
    """Everything ``status`` reports of a spectrum file, as plain data."""
    from ..file.store import WriterLock

    view = SpectrumView.read(path)
    s = view.spectrum
    live = WriterLock.is_held(Path(path))
    return {
        "file": str(path),
        "kind": "spectrum",
        "job": view.job.get("name"),
        "arch": s.attrs.get("arch"),
        "data": s.attrs.get("dataset"),
        "synthetic": bool(s.attrs.get("synthetic", False)),
        "images": s.attrs.get("images"),
        "parameters": int(s.attrs.get("parameters", 0)),
        "entries": list(s.entries.names),
        "ignore": (view.job.get("hessian") or {}).get("ignore") or (view.job.get("directions") or {}).get("ignore"),
        "analyses": s.analyses,
        "computed": json.loads(s.attrs.get("computed", "{}")),
        "topk": view.topk(),
        "trace": view.trace(),
        "density": view.density(),
        "live": live,
        "writer": WriterLock.holder(Path(path)) if live else None,
        "version": s.attrs.get("llmpi_version"),
    }


def render(info: dict, layers: int = 10) -> str:
    """The status text of a spectrum file (``layers``: the entries with the largest traces shown)."""
    lines = [f"{info['file']}: spectrum {info['job']} -- {info['arch']} on {info['data']}"]
    lines.append(
        f"  Hessian over {info['parameters']:,} parameters in {len(info['entries'])} entries (ignore "
        f"{info['ignore']}), {info['images']} samples; analyses: {', '.join(info['analyses'])}"
    )
    topk = info["topk"]
    if topk is not None:
        if topk["done"]:
            top = topk["top"]
            shown = ", ".join(f"{v:.6g}" for v in topk["values"][:top])
            bottom = topk["values"][top:]
            more = f"; most negative {', '.join(f'{v:.6g}' for v in bottom)}" if bottom else ""
            unconverged = topk["asked"] - topk["converged"]
            flag = f"; {unconverged} not converged" if unconverged else ""
            lines.append(
                f"  top-{top} eigenvalues: {shown}{more} (relative residual <= {topk['relative_residual']:.2g}, "
                f"{topk['hvps']} products{flag})"
            )
        else:
            lines.append(f"  top-k: not done yet ({topk['asked']} eigenpairs asked for)")
    t = info["trace"]
    if t is not None:
        deflated = f"; exact part {t['exact_part']:.6g} from the top-k" if t["deflated"] else ""
        if t["final"]:
            lines.append(
                f"  trace: {t['value']:.6g} ± {t['se']:.3g} ({100 * t['relative_se']:.2f}% standard error), "
                f"{t['used']} probes{deflated}"
            )
        elif "value" in t:
            lines.append(
                f"  trace: running {t['value']:.6g} ± {t['se']:.3g} ({100 * t['relative_se']:.2f}%) after "
                f"{t['probes_done']} of at most {t['probe_cap']} probes{deflated}"
            )
        else:
            lines.append(f"  trace: {t['probes_done']} of at most {t['probe_cap']} probes done")
        if "layers" in t:
            order = np.argsort(-np.abs(t["layers"]))[:layers]
            total = t["value"] or math.nan
            lines.append(f"  trace per entry (the {min(layers, len(order))} largest of {len(t['layers'])}):")
            for i in order:
                v, e = t["layers"][i], t["layers_se"][i]
                share = f"{100 * v / total:5.1f}%" if math.isfinite(total) else ""
                lines.append(f"    {info['entries'][i]:<40} {v:>12.5g} ± {e:<9.2g} {share}")
    d = info["density"]
    if d is not None:
        span = f", Ritz nodes {d['nodes_min']:.6g} .. {d['nodes_max']:.6g}" if "nodes_min" in d else ""
        state = f"complete (σ = {d['sigma']:.3g})" if d["complete"] else f"{d['runs_done']} of {d['runs']} runs done"
        lines.append(f"  density: {d['runs']} runs x {d['steps']} steps, {state}{span}")
    if info["live"]:
        w = info["writer"] or {}
        lines.append(f"  live: being written now (host {w.get('host', '?')}, pid {w.get('pid', '?')})")
    else:
        lines.append("  live: no run is writing it")
    return "\n".join(lines)


@dataclass(repr=False)
class Spectrum:
    """The Hessian's spectrum at θ*, for people (``llmpi.spectrum(model, data)``, ``llmpi.open(path)``).

    ``eigenvalues`` (k,) the top-k, descending (``bottom``: the most negative, ascending), with ``residuals``
    ‖Hv − λv‖ and ``converged``; ``eigenvectors`` (k, n) unit vectors over the parameters ``names`` (flattened in
    that order; ``eigenvector(i)`` as a mapping name -> array of the parameter's shape); ``trace`` and
    ``trace_se`` (Hutchinson's, with ``layer_traces``: name -> (trace, standard error)); ``density``:
    (grid, values) of the spectral density, with ``nodes`` and ``weights`` of every SLQ run. ``None`` for what the
    job did not ask for (or has not finished: a file read while it is written). ``path``: the file, None when kept
    in memory."""

    view: SpectrumView
    path: Path | None = None
    vectors: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path, memory: bool = False) -> Spectrum:
        """The spectrum file at ``path`` (also while it is written: what is finished); ``memory``: keep nothing of
        the file but its values (it is about to go)."""
        view = SpectrumView.read(path)
        vectors = None
        top = view.topk()
        if top and top["done"] and top["top"]:
            vectors = read_eigenvectors(path)[2]
        return cls(view, None if memory else Path(path), vectors)

    # -- the numbers -------------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The parameters the Hessian is over, in the order of every flat vector."""
        return list(self.view.spectrum.entries.names)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(shape) for shape in self.view.spectrum.entries.shapes]

    def _topk(self, key: str, part: str = "top") -> np.ndarray | None:
        top = self.view.topk()
        if not top or not top["done"]:
            return None
        values = np.asarray(top[key])
        return values[: top["top"]] if part == "top" else values[top["top"] :]

    @property
    def eigenvalues(self) -> np.ndarray | None:
        return self._topk("values")

    @property
    def bottom(self) -> np.ndarray | None:
        """The most negative eigenvalues, ascending (``spectrum.topk.bottom`` of them)."""
        return self._topk("values", "bottom")

    @property
    def residuals(self) -> np.ndarray | None:
        return self._topk("residuals")

    @property
    def converged(self) -> np.ndarray | None:
        got = self.view.spectrum.get("topk/converged")
        top = self.view.topk()
        return None if got is None or not top or not top["done"] else got[: top["top"]].astype(bool)

    @property
    def eigenvectors(self) -> np.ndarray | None:
        return self.vectors

    def eigenvector(self, i: int = 0) -> dict[str, np.ndarray]:
        """The ``i``-th top eigenvector as a mapping parameter name -> array of that parameter's shape."""
        if self.vectors is None:
            raise JobError("this spectrum holds no eigenvectors: ask for them with analyses including 'topk'")
        if not 0 <= i < len(self.vectors):
            raise JobError(f"i: this spectrum holds {len(self.vectors)} eigenvectors (0 .. {len(self.vectors) - 1})")
        out, at = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = int(np.prod(shape, dtype=np.int64))
            out[name] = self.vectors[i, at : at + size].reshape(shape)
            at += size
        return out

    def _trace(self) -> dict | None:
        t = self.view.trace()
        return t if t is not None and t["final"] else None

    @property
    def trace(self) -> float | None:
        t = self._trace()
        return None if t is None else t["value"]

    @property
    def trace_se(self) -> float | None:
        t = self._trace()
        return None if t is None else t["se"]

    @property
    def layer_traces(self) -> dict[str, tuple[float, float]] | None:
        """Each parameter's trace (its diagonal block of H) and standard error; they sum to ``trace``."""
        t = self._trace()
        if t is None:
            return None
        return {name: (v, e) for name, v, e in zip(self.names, t["layers"], t["layers_se"])}

    @property
    def density(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(grid, values): the eigenvalue density on its grid (Gaussian width ``sigma``), once every run is in."""
        s = self.view.spectrum
        if not s.density_complete:
            return None
        return s.get("density/grid"), s.get("density/values")

    @property
    def sigma(self) -> float | None:
        d = self.view.density()
        return d.get("sigma") if d else None

    @property
    def nodes(self) -> np.ndarray | None:
        """(runs, steps) the Ritz values of every SLQ run (NaN where a run stopped early)."""
        return self.view.spectrum.get("density/nodes")

    @property
    def weights(self) -> np.ndarray | None:
        return self.view.spectrum.get("density/weights")

    # -- for people --------------------------------------------------------------------------------------------

    def plot(self, kind: str = "density") -> Figure:
        """A matplotlib Figure (inline in Jupyter): ``density`` (log scale, the top eigenvalues marked) or
        ``layers`` (per-layer traces as bars), as ``python -m llmpi.plot`` draws them."""
        draw = {"density": figure_density, "layers": figure_layers}
        if kind not in draw:
            raise JobError(f"kind {kind!r} is not one of {', '.join(draw)} (a spectrum's pictures)")
        fig = draw[kind](self.view)
        plt.close(fig)  # out of pyplot's list: Jupyter shows the returned figure once, not twice
        return fig

    def summary(self) -> str:
        """What ``python -m llmpi.status`` says of it."""
        return render(summary(self.view.path)) if self.path is not None else repr(self)

    def __repr__(self) -> str:
        s = self.view.spectrum
        head = f"Spectrum of {self.view.name} ({s.attrs.get('arch', '?')}): Hessian over {s.entries.n:,} parameters"
        lines = [f"{head}, {s.attrs.get('images', '?')} samples"]
        if self.eigenvalues is not None:
            lines.append(f"  top eigenvalues {np.array2string(self.eigenvalues, precision=6, separator=', ')}")
        if self.trace is not None:
            lines.append(f"  trace {self.trace:.6g} ± {self.trace_se:.2g}")
        d = self.view.density()
        if d is not None:
            state = "complete" if d["complete"] else f"{d['runs_done']} of {d['runs']} runs done"
            lines.append(f"  density {d['runs']} runs x {d['steps']} steps, {state}")
        lines.append(f"  {'in ' + str(self.path) if self.path is not None else 'in memory'}")
        return "\n".join(lines)

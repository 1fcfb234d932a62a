"""The Hessian section of the bench: Hessian-vector products against their limit, and llmpi's spectrum against
PyHessian at equal accuracy, measured side by side in one run (``python -m bench`` runs it at the profile's size).

    python -m bench.hessian                                            # CPU: resnet20 on 512 images, SmallCNN
    python -m bench.hessian --pyhessian .venv-pyhessian/bin/python     # PyHessian beside it (bench/README.md)
    python -m bench.hessian --profile tiny --json out.json             # the test suite's size

1. **Products per second.** The limit of a Hessian-vector product on this network and data is the bare loop that
   any product needs: per batch one forward, one backward with graph and one double backward, nothing else,
   at its best batch size. Beside it, in interleaved rounds: llmpi's ``HessianOperator`` (float64 accumulation,
   the same batches), llmpi's several-vectors-per-pass product (``many``, ``block`` vectors: one forward and
   backward per batch for all of them) per vector, and forward-over-reverse (``torch.func.jvp`` of the gradient)
   per vector. Vectors per second and the ratio to the limit.
2. **The top eigenvalue at equal accuracy.** A tight reference (llmpi's Lanczos at tol 1e-6, residual measured);
   then each tool at a ladder of its own tolerance, loosest first, until its value is within 1e-3 (relative) of the
   reference: wall time and products of that run, and the ratio. llmpi's run is what ``llmpi.spectrum`` does
   (Lanczos, then one more product to measure the residual).
3. **The trace at equal accuracy**, on ``SmallCNN`` whose dense Hessian gives the exact trace. The target: a
   standard error of ``TRACE_TARGET`` (1e-3) of the trace (within 1e-3 at one standard error; 95% confidence costs
   both tools four times the probes, the ratio alike). llmpi (as ``llmpi.spectrum`` runs it: top-5, its basis's
   20 Ritz vectors deflated) is run to that target with its own stopping rule: its wall time, top-k included, and
   its error against the exact trace. PyHessian's estimator (plain Hutchinson) is timed on a fixed number of
   probes; the probes it needs for the same standard error follow from its measured variance, and its time from
   its measured time per probe (extrapolated when that exceeds what was run, and said so). Its own stopping
   rule's answer (tol 1e-3) and error are reported as well. Then the same on the main network (resnet20), where no
   exact trace exists and neither tool can reach 1e-3 here (millions of products): each one's per-probe spread
   and time per probe, measured on the same number of probes, and the time each needs for a 1% standard error,
   llmpi's top-k and deflation products included.
4. **The density** of ``SmallCNN`` by llmpi's SLQ against its dense spectrum: the Wasserstein-1 distance of the two
   spectral measures, the L1 distance of both smoothed alike, the moments; and PyHessian's ``density()`` where it
   runs (on torch 2.x it calls the removed ``torch.eig``).
5. **Spread.** ``python -m llmpi.spectrum`` under ``mpirun -n 2`` with the trace's probes and the density's runs
   split over the ranks' data (``spread: data``) against whole on each rank (``whole``), interleaved: wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llmpi.compute import runtime
from llmpi.compute.hessian import HessianOperator
from llmpi.compute.spectrum import (
    Deflation,
    auto_sigma,
    density,
    density_grid,
    probe_values,
    rademacher,
    running,
    slq,
    slq_start,
    stopping_count,
    top_eigenpairs,
    verified,
)

from . import fixtures
from .hessian_nets import build, train

REPO = Path(__file__).resolve().parents[1]
WITHIN = 1e-3  # equal accuracy: each tool's value within this (relative) of the reference
TRACE_TARGET = 1e-3  # the trace's standard error aimed at (relative): within WITHIN at one standard error
SECTIONS = ("products", "top", "trace", "spread")


@dataclass(frozen=True)
class HessianProfile:
    arch: str  # products and top eigenvalue
    images: int
    small_arch: str  # trace and density: a network small enough for its dense Hessian
    epochs: int  # training before the Hessian (on 4 x images)
    rounds: int  # interleaved rounds of the products
    block: int
    small_images: int  # SmallCNN: trace and density
    small_epochs: int
    topk: int  # the trace's deflation: Ritz vectors of the top-5's Lanczos basis (spectrum.trace.deflate)
    density_runs: int
    density_steps: int
    trace_cap: int  # llmpi's probes at most (the target is usually met long before)
    pyhessian_probes: int  # PyHessian's trace run for its variance and time per probe (SmallCNN)
    main_probes: int  # each tool's probes on the main network, for its spread and time per probe


PROFILES = {
    "tiny": HessianProfile("resnet8", 32, "tinycnn", 1, 1, 2, 64, 2, 4, 2, 6, 100, 6, 4),
    "cpu": HessianProfile("resnet20", 512, "smallcnn", 3, 3, 4, 256, 8, 20, 10, 50, 20000, 40, 16),
}


def say(text: str) -> None:
    print(text, flush=True)


def _normalised(root: Path, images: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    _, x, y = fixtures.resident(root, images, device)
    return x, y


def trained(arch: str, root: Path, images: int, epochs: int, work: Path, device: torch.device) -> torch.nn.Module:
    """``arch`` trained ``epochs`` epochs on 4 x ``images`` images (the first ``images`` are the Hessian's)."""
    path = work / f"{arch}_{images}_{epochs}.pt"
    model = build(arch)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.to(device).eval()
    x, y = _normalised(root, 4 * images, torch.device("cpu"))
    train(model, x, y, epochs)
    torch.save(model.state_dict(), path)
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------------------------
# 1. products per second


def limit_product(model, x, y, params, v, batch) -> list[torch.Tensor]:
    """The bare product: per batch one forward, one backward with graph, one double backward, summed in place."""
    out = [torch.zeros_like(p) for p in params]
    n = len(y)
    for s in range(0, n, batch):
        loss = F.cross_entropy(model(x[s : s + batch]), y[s : s + batch], reduction="sum") / n
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * u).sum() for g, u in zip(grads, v))
        for o, h in zip(out, torch.autograd.grad(dot, params)):
            o += h
    return out


def jvp_product(model, x, y, names, v, batch) -> dict[str, torch.Tensor]:
    """Forward-over-reverse: the directional derivative (jvp) of the gradient, per batch."""
    from torch.func import functional_call, grad, jvp

    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    n = len(y)
    out = {k: torch.zeros_like(params[k]) for k in names}
    tangent = dict(zip(names, v))
    for s in range(0, n, batch):
        xb, yb = x[s : s + batch], y[s : s + batch]

        def loss(chosen, xb=xb, yb=yb):
            return F.cross_entropy(functional_call(model, {**params, **chosen, **buffers}, (xb,)), yb, reduction="sum")

        _, hv = jvp(grad(loss), ({k: params[k] for k in names},), (tangent,))
        for k in names:
            out[k] += hv[k] / n
    return out


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def products(profile: HessianProfile, model, x, y, device) -> dict:
    """Vectors per second of each way, at the limit's best batch (and llmpi at its automatic batch)."""
    named = {k: p for k, p in model.named_parameters()}
    names = list(named)
    params = [named[k] for k in names]
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g).to(device) for p in params]
    n = len(y)
    candidates = [b for b in (32, 64, 128, 256) if b < n] + [n]
    scan = {b: timed(lambda b=b: limit_product(model, x, y, params, v, b)) for b in candidates}
    best = min(scan, key=scan.get)
    auto = min(runtime.default_batch_size(device, n), 512)
    op = HessianOperator(model, x, y, best, ignore="none")
    op_auto = HessianOperator(model, x, y, auto, ignore="none")
    flat = torch.cat([t.reshape(-1) for t in v]).double()
    block = flat.repeat(profile.block, 1)
    ways = {
        "limit": (lambda: limit_product(model, x, y, params, v, best), 1),
        "llmpi": (lambda: op(flat), 1),
        "llmpi_auto_batch": (lambda: op_auto(flat), 1),
        f"llmpi_block{profile.block}": (lambda: op.many(block), profile.block),
        "forward_over_reverse": (lambda: jvp_product(model, x, y, names, v, best), 1),
    }
    seconds: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(profile.rounds):
        for name, (fn, count) in ways.items():
            seconds[name].append(timed(fn) / count)
    per_vector = {k: statistics.median(s) for k, s in seconds.items()}
    # the same product, whichever way: llmpi's float64 sums against the bare loop's float32 ones
    bare = torch.cat([t.reshape(-1) for t in limit_product(model, x, y, params, v, best)]).double()
    agree = float((op(flat) - bare).norm() / bare.norm())
    result = {
        "batch": best,
        "auto_batch": auto,
        "scan_s": scan,
        "per_vector_s": per_vector,
        "rounds_s": seconds,
        "vectors_per_s": {k: 1 / s for k, s in per_vector.items()},
        "over_limit": {k: per_vector["limit"] / s for k, s in per_vector.items()},
        "llmpi_vs_bare_relative_difference": agree,
    }
    say(f"  products ({len(y)} images, batch {best}, the limit's best of {candidates}; median of {profile.rounds}):")
    for k in ways:
        say(f"    {k:<22} {result['vectors_per_s'][k]:8.3f} vectors/s  {result['over_limit'][k]:5.2f} x the limit")
    say(f"    llmpi's product against the bare loop's: {agree:.1e} relative")
    return result


# ----------------------------------------------------------------------------------------------------------------
# 2. the top eigenvalue


def llmpi_top(op: HessianOperator, tol: float) -> dict:
    t0 = time.perf_counter()
    pairs = verified(op.many, top_eigenpairs(op.many, op.n, top=1, tol=tol, basis=20, seed=0), tol)
    return {
        "tol": tol,
        "value": float(pairs.values[0]),
        "seconds": time.perf_counter() - t0,
        "hvps": pairs.hvps,
        "residual": float(pairs.residuals[0]),
    }


def top_eigenvalue(op: HessianOperator, side: dict | None) -> dict:
    reference = llmpi_top(op, 1e-6)
    ref = reference["value"]
    say(
        f"  top eigenvalue: reference {ref:.9g} (Lanczos at tol 1e-6, residual {reference['residual']:.2g}, "
        f"{reference['hvps']} products)"
    )
    ladder = []
    for tol in (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4):
        run = llmpi_top(op, tol)
        run["error"] = abs(run["value"] - ref) / abs(ref)
        ladder.append(run)
        if run["error"] <= WITHIN:
            break
    out: dict = {"reference": reference, "llmpi": ladder}
    mine = ladder[-1]
    say(
        f"    llmpi     tol {mine['tol']:g}: {mine['value']:.7g} (error {mine['error']:.1e}), {mine['hvps']} "
        f"products, {mine['seconds']:.1f} s"
    )
    if side is not None:
        runs = side["eigenvalue"]
        if isinstance(runs, dict):
            out["pyhessian_error"] = runs
            say(f"    PyHessian failed: {runs['error']}")
            return out
        for run in runs:
            run["error"] = abs(run["value"] - ref) / abs(ref)
        out["pyhessian"] = runs
        theirs = next((r for r in runs if r["error"] <= WITHIN), None)
        if theirs is None:
            say(f"    PyHessian never came within {WITHIN:g} (tightest: {runs[-1]})")
        else:
            out["pyhessian_over_llmpi"] = theirs["seconds"] / mine["seconds"]
            say(
                f"    PyHessian tol {theirs['tol']:g}: {theirs['value']:.7g} (error {theirs['error']:.1e}), "
                f"{theirs['hvps']} products, {theirs['seconds']:.1f} s  -> llmpi {out['pyhessian_over_llmpi']:.2f}x "
                f"faster"
            )
    return out


# ----------------------------------------------------------------------------------------------------------------
# 3. the trace, 4. the density (SmallCNN: its dense Hessian is the reference)


def dense(op: HessianOperator, block: int = 64) -> np.ndarray:
    """The dense Hessian, one product per column (symmetrised: its rounding halves averaged)."""
    columns = []
    eye = torch.eye(op.n, dtype=torch.float64, device=op.device)
    for s in range(0, op.n, block):
        columns.append(op.many(eye[s : s + block]).cpu().numpy())
    H = np.concatenate(columns)
    return 0.5 * (H + H.T)


def llmpi_trace(op: HessianOperator, profile: HessianProfile, deflate: bool, probes: int | None = None) -> dict:
    """llmpi's estimator run to the target with its own stopping rule (top-k first when deflated), or for exactly
    ``probes`` probes (to measure its variance)."""
    t0 = time.perf_counter()
    hvps = 0
    if deflate:  # as llmpi.spectrum with --set spectrum.topk.tol=1e-3: top-5, its basis's Ritz vectors deflated
        top = min(5, profile.topk)
        pairs = top_eigenpairs(op.many, op.n, top=top, tol=1e-3, basis=max(40, 2 * profile.topk), ritz=profile.topk)
        pairs = verified(op.many, pairs, 1e-3)
        Q = pairs.ritz_vectors
        W = torch.cat([op.many(Q[s : s + profile.block]) for s in range(0, len(Q), profile.block)])
        flat = Deflation.of(Q, W, op.sizes)
        hvps += pairs.hvps + len(Q)
    else:
        flat = Deflation.none(op.n, len(op.sizes), op.device)
    samples: list[float] = []
    used = None
    while used is None:
        Z = flat.project(
            torch.stack([rademacher(op.n, 0, len(samples) + i, device=op.device) for i in range(profile.block)])
        )
        values, _ = probe_values(Z, op.many(Z), op.sizes)
        samples += list(values)
        hvps += len(values)
        if probes is not None:
            used = probes if len(samples) >= probes else None
        else:
            used = stopping_count(np.array(samples), flat.exact, TRACE_TARGET, 10, profile.trace_cap)
    mean, se = running(np.array(samples[:used]), flat.exact)
    return {
        "value": float(mean[-1]),
        "se": float(se[-1]),
        "probes": used,
        "hvps": hvps,
        "seconds": time.perf_counter() - t0,
        "per_probe_std": float(np.std(samples[:used], ddof=1)),
        "exact_part": flat.exact,
        "reached": bool(se[-1] <= TRACE_TARGET * abs(mean[-1])),
    }


def trace_spread(profile: HessianProfile, op: HessianOperator, side: dict | None, target: float = 0.01) -> dict:
    """The trace on the main network: llmpi's deflated and plain spreads per probe against PyHessian's, measured on
    ``main_probes`` probes each, and the time each needs for a standard error of ``target`` of the trace."""
    deflated = llmpi_trace(op, profile, deflate=True, probes=profile.main_probes)
    plain = llmpi_trace(op, profile, deflate=False, probes=profile.main_probes)
    trace = deflated["value"]
    probes = profile.main_probes
    fixed = deflated["hvps"] - probes  # top-k, its verification and the deflation products
    per_product = deflated["seconds"] / deflated["hvps"]

    def needed(std: float) -> int:
        return max(10, math.ceil((std / (target * abs(trace))) ** 2))

    out = {"trace": trace, "target": target, "probes": probes, "llmpi_fixed_products": fixed}
    out["llmpi_deflated"] = {**deflated, "probes_needed": needed(deflated["per_probe_std"])}
    out["llmpi_deflated"]["seconds_needed"] = (fixed + out["llmpi_deflated"]["probes_needed"]) * per_product
    out["llmpi_plain"] = {**plain, "probes_needed": needed(plain["per_probe_std"])}
    out["llmpi_plain"]["seconds_needed"] = out["llmpi_plain"]["probes_needed"] * plain["seconds"] / probes
    say(
        f"  trace on {profile.arch} ({len(op.labels)} images), {probes} probes each: {trace:.6g}; per-probe spread "
        f"{deflated['per_probe_std'] / abs(trace):.1%} deflated (top-5, {profile.topk} Ritz vectors: {fixed} products"
        f" first), {plain['per_probe_std'] / abs(trace):.1%} plain"
    )
    say(
        f"    for a {target:.0%} standard error: llmpi {out['llmpi_deflated']['probes_needed']} probes, "
        f"{out['llmpi_deflated']['seconds_needed']:.0f} s; plain {out['llmpi_plain']['probes_needed']} probes, "
        f"{out['llmpi_plain']['seconds_needed']:.0f} s (extrapolated from {probes} probes)"
    )
    if side is not None and isinstance(side.get("trace"), dict) and "samples" in side["trace"]:
        t = side["trace"]
        std = float(np.std(t["samples"], ddof=1))
        per_probe = t["seconds"] / len(t["samples"])
        count = needed(std)
        out["pyhessian"] = {
            "per_probe_std": std,
            "per_probe_s": per_probe,
            "probes_needed": count,
            "seconds_needed": count * per_probe,
        }
        out["pyhessian_over_llmpi"] = count * per_probe / out["llmpi_deflated"]["seconds_needed"]
        say(
            f"    PyHessian: per-probe spread {std / abs(trace):.1%}, {per_probe:.1f} s per probe: {count} probes, "
            f"{count * per_probe:.0f} s (extrapolated)  -> llmpi {out['pyhessian_over_llmpi']:.1f}x faster"
        )
    return out


def trace_and_density(profile: HessianProfile, op: HessianOperator, side: dict | None) -> dict:
    """Sections 3 and 4 on the small network, against its dense Hessian."""
    t0 = time.perf_counter()
    H = dense(op)
    eig = np.linalg.eigvalsh(H)
    exact = float(np.trace(H))
    say(
        f"  {profile.small_arch} ({op.n} parameters, {len(op.labels)} images): dense Hessian in "
        f"{time.perf_counter() - t0:.0f} s, trace {exact:.7g}, λ from {eig[0]:.4g} to {eig[-1]:.4g}"
    )
    out: dict = {"parameters": op.n, "exact_trace": exact, "eigenvalues": [float(eig[0]), float(eig[-1])]}
    mine = llmpi_trace(op, profile, deflate=True)
    mine["error"] = abs(mine["value"] - exact) / abs(exact)
    state = "" if mine["reached"] else f" (the cap of {profile.trace_cap} probes before the target)"
    say(
        f"    llmpi (top-5, {profile.topk} deflated)  {mine['value']:.7g} ± {mine['se']:.2g} "
        f"(error {mine['error']:.1e}) from {mine['probes']} probes, {mine['hvps']} products with the top-k, "
        f"{mine['seconds']:.1f} s{state}"
    )
    out["llmpi_deflated"] = mine
    plain = llmpi_trace(op, profile, deflate=False, probes=profile.pyhessian_probes)
    plain_needed = math.ceil((plain["per_probe_std"] / (TRACE_TARGET * abs(exact))) ** 2)
    plain["probes_needed"], plain["seconds_needed"] = plain_needed, plain_needed * plain["seconds"] / plain["probes"]
    out["llmpi_plain"] = plain
    say(
        f"    llmpi plain (PyHessian's estimator): per-probe std {plain['per_probe_std']:.3g} against "
        f"{mine['per_probe_std']:.3g} deflated: {plain_needed} probes for the target, {plain['seconds_needed']:.0f} s "
        f"(extrapolated from {plain['probes']} probes)"
    )
    if side is not None and isinstance(side.get("trace"), dict) and "samples" in side["trace"]:
        t = side["trace"]
        samples = np.array(t["samples"])
        per_probe = t["seconds"] / len(samples)
        std = float(samples.std(ddof=1))
        needed = math.ceil((std / (TRACE_TARGET * abs(exact))) ** 2)
        seconds = needed * per_probe
        out["pyhessian"] = {
            "probes_run": len(samples),
            "seconds_run": t["seconds"],
            "per_probe_s": per_probe,
            "per_probe_std": std,
            "probes_needed": needed,
            "seconds_needed": seconds,
            "extrapolated": needed > len(samples),
        }
        extrapolated = f" (extrapolated from {len(samples)} probes)" if needed > len(samples) else ""
        verdict = "llmpi did not reach the target: no ratio"
        if mine["reached"]:
            out["pyhessian_over_llmpi"] = seconds / mine["seconds"]
            verdict = f"llmpi {out['pyhessian_over_llmpi']:.1f}x faster"
        say(
            f"    PyHessian  {per_probe:.3f} s per probe, per-probe std {std:.3g}: {needed} probes for the same "
            f"standard error, {seconds:.0f} s{extrapolated}  -> {verdict}"
        )
        default = side.get("trace_default", {})
        if "samples" in default:
            value = float(np.mean(default["samples"]))
            out["pyhessian_default"] = {
                "value": value,
                "probes": len(default["samples"]),
                "seconds": default["seconds"],
                "error": abs(value - exact) / abs(exact),
            }
            say(
                f"    PyHessian's own rule (tol 1e-3): {value:.7g} after {len(default['samples'])} probes, error "
                f"{out['pyhessian_default']['error']:.1e}"
            )
    # the density against the dense spectrum, smoothed alike
    t0 = time.perf_counter()
    starts = torch.stack([slq_start(op.n, 0, r, op.device) for r in range(profile.density_runs)])
    nodes, weights = slq(op.many, starts, profile.density_steps)
    seconds = time.perf_counter() - t0
    out["density"] = compare_density(nodes, weights, eig)
    out["density"] |= {"runs": profile.density_runs, "steps": profile.density_steps, "seconds": seconds}
    d = out["density"]
    say(
        f"    density: {profile.density_runs} x {profile.density_steps} SLQ in {seconds:.1f} s against the dense "
        f"spectrum: Wasserstein-1 {d['wasserstein'] / d['span']:.2e} of the span, L1 of the densities at "
        f"σ = span/100 {d['l1_smoothed']:.3f} (of at most 2), moments 1-4 within "
        f"{max(d['moment_errors']):.1e}"
    )
    if side is not None and "density" in side:
        out["pyhessian_density"] = side["density"]
        if "error" in side["density"]:
            say(f"    PyHessian's density: {side['density']['error'].splitlines()[0]}")
    return out


def compare_density(nodes: list, weights: list, eig: np.ndarray) -> dict:
    """SLQ's spectral measure (the runs' mean of their weighted nodes) against the dense spectrum's (1/n at each
    eigenvalue): the Wasserstein-1 distance (the area between the two distribution functions), the L1 distance of
    both smoothed with a Gaussian of a hundredth of the span, and the relative errors of the moments
    E[λᵖ] = tr(Hᵖ)/n for p = 1..4 (SLQ's are exact in expectation)."""
    theta = np.concatenate(nodes)
    tau = np.concatenate(weights) / len(nodes)
    span = float(eig[-1] - eig[0])
    points = np.sort(np.concatenate([theta, eig]))
    cdf_slq = np.array([tau[theta <= t].sum() for t in points])
    cdf_dense = np.searchsorted(eig, points, side="right") / len(eig)
    wasserstein = float(np.sum(np.abs(cdf_slq - cdf_dense)[:-1] * np.diff(points)))
    sigma = span / 100
    grid = density_grid([theta, eig], sigma, 20000)
    smoothed = np.trapezoid(
        np.abs(density(nodes, weights, grid, sigma) - density([eig], [np.full(len(eig), 1 / len(eig))], grid, sigma)),
        grid,
    )
    moments = [abs(np.sum(tau * theta**p) - np.mean(eig**p)) / np.mean(np.abs(eig) ** p) for p in range(1, 5)]
    return {
        "wasserstein": wasserstein,
        "span": span,
        "l1_smoothed": float(smoothed),
        "sigma_auto": auto_sigma(nodes),
        "moment_errors": [float(m) for m in moments],
    }


# ----------------------------------------------------------------------------------------------------------------
# 5. how the ranks share the trace's probes and the density's runs: data or whole


def spread(profile: HessianProfile, root: Path, work: Path, ranks: int = 2) -> dict:
    """``mpirun -n ranks python -m llmpi.spectrum`` with ``spectrum.spread`` data, then whole, then data and whole
    again (interleaved): a fixed number of probes and runs (``min_probes = max_probes``, no top-k), wall time from
    start to exit, and whether the two give the same values."""
    from llmpi.file.spectrum import read_spectrum

    from .__main__ import run_command

    launcher = Path(sys.executable).parent / "mpirun"
    mpirun = [str(launcher) if launcher.exists() else "mpirun", "-n", str(ranks)]

    ckpt = work / f"{profile.arch}_spread.pt"
    torch.save(
        {
            "state_dict": trained(
                profile.arch, root, profile.images, profile.epochs, work, torch.device("cpu")
            ).state_dict()
        },
        ckpt,
    )
    probes = ranks * profile.block  # a round of whole probes on every rank; data mode takes them a block at a time
    times: dict[str, list[float]] = {"data": [], "whole": []}
    values = {}
    for _ in range(2):
        for mode in ("data", "whole"):
            out = work / f"spread_{mode}.h5"
            job = fixtures.write_job(
                work / f"spread_{mode}.yaml",
                name=f"spread_{mode}",
                model={"arch": profile.arch, "checkpoint": str(ckpt)},
                data={"dataset": "cifar10", "root": str(root), "split": "train", "subset": profile.images, "seed": 0},
                directions={"ignore": "none"},
                runtime={"device": "cpu", "threads": 1},
                spectrum={
                    "analyses": ["trace", "density"],
                    "output": str(out),
                    "spread": mode,
                    "block": profile.block,
                    "trace": {"deflate": 0, "min_probes": probes, "max_probes": probes, "rel_se": 1e-9},
                    "density": {"runs": 2 * ranks, "steps": 2 * profile.block, "points": 100},
                },
            )
            t0 = time.perf_counter()
            done = run_command([*mpirun, sys.executable, "-m", "llmpi.spectrum", str(job), "--restart"], 7200)
            if done.returncode != 0:
                raise RuntimeError(f"llmpi.spectrum failed:\n{done.stdout}\n{done.stderr}")
            times[mode].append(time.perf_counter() - t0)
            s = read_spectrum(out)
            values[mode] = (float(s.get("trace/value")[0]), s.get("density/nodes"))
    data_s, whole_s = statistics.median(times["data"]), statistics.median(times["whole"])
    trace_gap = abs(values["data"][0] - values["whole"][0]) / abs(values["whole"][0])
    nodes_gap = float(np.nanmax(np.abs(values["data"][1] - values["whole"][1])) / np.nanmax(np.abs(values["whole"][1])))
    say(
        f"  spread over {ranks} ranks ({probes} probes, {2 * ranks} runs x {2 * profile.block} steps, "
        f"{profile.arch} on {profile.images} images): data {data_s:.0f} s, whole {whole_s:.0f} s (median of 2 "
        f"each) -> whole/data {whole_s / data_s:.2f}; values differ by {trace_gap:.1e} (trace), {nodes_gap:.1e} "
        f"(nodes)"
    )
    return {
        "ranks": ranks,
        "seconds": times,
        "whole_over_data": whole_s / data_s,
        "trace_relative_gap": trace_gap,
        "nodes_relative_gap": nodes_gap,
    }


# ----------------------------------------------------------------------------------------------------------------


def pyhessian_side(python: str, request: dict, work: Path) -> dict:
    """Run bench/pyhessian_side.py under ``python`` (a virtualenv with PyHessian); its JSON answer."""
    path = work / f"pyhessian-{request['arch']}.json"
    path.write_text(json.dumps(request))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [python, str(REPO / "bench" / "pyhessian_side.py"), str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=6 * 3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"PyHessian's side failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def save_inputs(model, x, y, work: Path, name: str) -> tuple[str, str]:
    weights, data_path = work / f"{name}.pt", work / f"{name}.npz"
    torch.save(model.state_dict(), weights)
    np.savez(data_path, x=x.cpu().numpy(), y=y.cpu().numpy())
    return str(weights), str(data_path)


def run(
    profile: HessianProfile, work: Path, pyhessian: str | None, threads: int, sections: tuple[str, ...] = SECTIONS
) -> dict:
    """The sections asked for (``SECTIONS``), one after another; every figure, as a dict."""
    device = torch.device("cpu")
    torch.set_num_threads(threads)
    root = fixtures.write_dataset(work / "data", max(4 * profile.images, 4 * profile.small_images, 2048))
    results: dict = {"profile": profile.__dict__, "threads": threads, "torch": torch.__version__}
    say(f"[hessian] {profile.arch} on {profile.images} images, SmallCNN on {profile.small_images}; {threads} thread(s)")
    model = trained(profile.arch, root, profile.images, profile.epochs, work, device)
    x, y = _normalised(root, profile.images, device)
    batch = min(runtime.default_batch_size(device, len(y)), 512)
    if "products" in sections:
        results["products"] = products(profile, model, x, y, device)
        batch = results["products"]["batch"]
    op = HessianOperator(model, x, y, batch, ignore="none")  # PyHessian's Hessian: every parameter
    tasks = []
    if "top" in sections:
        tasks.append(
            {
                "name": "eigenvalue",
                "tols": [1e-2, 1e-3, 1e-4, 1e-5, 1e-6],
                "max_iter": 500,
                "reference": llmpi_top(op, 1e-6)["value"],
                "stop_within": WITHIN,
            }
        )
    if "trace" in sections:
        tasks.append({"name": "trace", "probes": profile.main_probes, "tol": 0.0})
    side = None
    if pyhessian and tasks:
        weights, data_path = save_inputs(model, x, y, work, profile.arch)
        request = {
            "arch": profile.arch,
            "weights": weights,
            "data": data_path,
            "batch_size": batch,
            "threads": threads,
            "tasks": tasks,
        }
        side = pyhessian_side(pyhessian, request, work)
    if "top" in sections:
        results["top_eigenvalue"] = top_eigenvalue(op, side)
    if "trace" in sections:
        results["trace_main"] = trace_spread(profile, op, side)
        small = trained(profile.small_arch, root, profile.small_images, profile.small_epochs, work, device)
        sx, sy = _normalised(root, profile.small_images, device)
        small_op = HessianOperator(small, sx, sy, min(512, len(sy)), ignore="none")
        side = None
        if pyhessian:
            weights, data_path = save_inputs(small, sx, sy, work, profile.small_arch)
            tasks = [
                {"name": "trace", "probes": profile.pyhessian_probes, "tol": 0.0},
                {"name": "trace_default", "probes": 100, "tol": 1e-3},
                {"name": "density", "runs": 1, "steps": 20},
            ]
            request = {
                "arch": profile.small_arch,
                "weights": weights,
                "data": data_path,
                "batch_size": small_op.batch_size,
                "threads": threads,
                "tasks": tasks,
            }
            side = pyhessian_side(pyhessian, request, work)
        results["trace"] = trace_and_density(profile, small_op, side)
    if "spread" in sections:
        results["spread"] = spread(profile, root, work)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hessian", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=list(PROFILES), default="cpu")
    p.add_argument("--pyhessian", help="the Python of a virtualenv with PyHessian (bench/README.md says how)")
    p.add_argument("--threads", type=int, help="torch threads for both tools (default: the usable cores)")
    p.add_argument("--images", type=int, help="override the profile's images for the products and top eigenvalue")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument("--work", type=Path, help="keep data and checkpoints here (default: a temp dir)")
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"which to run, comma-separated (default all: {','.join(SECTIONS)})",
    )
    args = p.parse_args(argv)
    profile = PROFILES[args.profile]
    if args.images:
        from dataclasses import replace

        profile = replace(profile, images=args.images)
    work = args.work or Path(tempfile.mkdtemp(prefix="llmpi-bench-hessian-"))
    work.mkdir(parents=True, exist_ok=True)
    sections = tuple(x.strip() for x in args.sections.split(","))
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    results = run(profile, work, args.pyhessian, args.threads or runtime.usable_cores(), sections)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Curvature beyond the extremes: the top-k eigenpairs, the trace by Hutchinson (and the trace of every parameter
entry from the same probes), and the spectral density by stochastic Lanczos quadrature. Numerics only: no MPI,
no file; ``llmpi.ranks.spectrum`` spreads them over ranks and stores what they find.

    op = HessianOperator(model, images, labels, batch_size=128)       # llmpi.compute.hessian
    pairs = top_eigenpairs(op.many, op.n, top=5, tol=1e-6, max_hvps=500, basis=40, seed=0)
    pairs = verified(op.many, pairs, tol=1e-6)                          # H·v formed again: residuals measured
    flat = Deflation.of(pairs.vectors, pairs.products, op.sizes)        # the top-k's exact share of the trace
    z = flat.project(rademacher(op.n, seed=0, index=7))
    totals, entries = probe_values(z[None], op.many(z[None]), op.sizes) # one Hutchinson sample, and per entry
    nodes, weights = slq(op.many, starts, steps=50)                      # Gauss quadrature nodes and weights
    phi = density(nodes, weights, grid, sigma)

Every function takes the operator as ``matvec``: a map from vectors in rows, (k, n) float64, to their products
with the symmetric matrix H, (k, n) float64 -- one rank's ``HessianOperator.many``, or the sum over ranks.

**Top-k eigenpairs** (``top_eigenpairs``): Lanczos with full reorthogonalisation and thick restarts, as
``llmpi.compute.hessian.extreme_eigenvalues``, but keeping the ``top`` largest (and the ``bottom`` most negative)
Ritz pairs and a buffer of their neighbours at each restart. A pair counts as converged when its residual
‖H y − θ y‖ ≤ tol · max|θ| (the largest Ritz value in magnitude: an estimate of ‖H‖ from below). Then
``verified`` forms H·y for every returned vector (k more products): the stored value is the Rayleigh quotient
yᵀHy, the stored residual the measured ‖Hy − (yᵀHy)·y‖, and the products themselves are kept for the trace.
Each value is within its residual of an eigenvalue of H. A single-vector Krylov space sees an eigenvalue of
multiplicity > 1 once: a degenerate top-k shows one copy and the next distinct eigenvalue.

**Trace** (``probe_values``, ``Deflation``, ``estimate``): Hutchinson's estimator with Rademacher probes z
(entries ±1, ``rademacher``: a function of the seed and the probe's index only, so any rank makes the same probe),
E[zᵀHz] = tr(H). Its variance, 2(‖H‖²_F − Σ H²_ii), is dominated by the few large outlying eigenvalues of a
network's Hessian; with orthonormal vectors Q (rows) and W = HQ known, the trace splits exactly as
tr(H) = tr(QᵀHQ) + tr(PHP), P = I − QᵀQ, and only the second part is estimated, with the projected probes Pz
(Hutch++'s idea, here with the Ritz vectors of largest |θ| that the top-k's Lanczos basis holds anyway: any
orthonormal Q keeps the estimator unbiased, and the better Q spans the outliers, the less variance is left).
Per parameter entry e (a tensor, "per layer"), the trace of H's diagonal block is estimated from the same probes:
Σ_{x∈e} (Pz)_x (HPz)_x, plus the block's exact share of the deflated part, Σ_{x∈e} [(QᵀMQ)_xx + 2 (Qᵀ(PW))_xx] with
M = QᵀW. The entries' traces
add up to the total in every sample. ``estimate`` gives the running mean and its standard error, and the probe
count at which the relative standard error first reaches its target.

**Spectral density** (``slq``, ``density``): for a unit start vector v (a normalised Rademacher vector), m steps of
Lanczos with full reorthogonalisation give T = VᵀHV; its eigenvalues θ_i (the nodes) and the squared first
components of its eigenvectors τ_i (the weights, summing to 1) are the m-point Gauss quadrature of v's spectral
measure, so Σ τ_i θ_iᵖ = vᵀHᵖv exactly for p ≤ 2m − 1; averaged over runs, E = tr(Hᵖ)/n. The density on a grid is
the runs' mean of Σ τ_i N(t; θ_i, σ²): a probability density (it integrates to 1; times n it counts eigenvalues).
A run whose Krylov space becomes invariant (β ≈ 0, only in small problems) stops early: its quadrature is then exact.

Memory: the Lanczos bases are float64 on the operator's device: (basis + 1) · n · 8 bytes for the top-k, and
b · (steps + 1) · n · 8 for b SLQ runs in one block (10 runs of 50 steps over resnet20's 0.27 M parameters: 1.1 GB).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

Matvec = Callable[[torch.Tensor], torch.Tensor]

# Streams of the seeded generators, so that the probes of the trace and the start vectors of the density never
# coincide for one seed.
TRACE_STREAM, DENSITY_STREAM = 1, 2


# ----------------------------------------------------------------------------------------------------------------
# Top-k eigenpairs


@dataclass
class Eigenpairs:
    """Ritz pairs: the ``top`` largest first (descending), then the ``bottom`` most negative (ascending)."""

    values: np.ndarray  # (k,) float64
    vectors: torch.Tensor  # (k, n) float64, orthonormal rows
    residuals: np.ndarray  # (k,) ‖H y − θ y‖ (Lanczos' estimate; measured after ``verified``)
    converged: np.ndarray  # (k,) bool: residual <= tol · scale
    hvps: int  # products spent (``verified``'s included once it ran)
    top: int
    bottom: int
    products: torch.Tensor | None = None  # (k, n) H·y, set by ``verified``
    ritz_vectors: torch.Tensor | None = None  # (d, n) the final basis's Ritz vectors of largest |θ| (``ritz=d``)
    ritz_values: np.ndarray | None = None  # (d,) their Ritz values

    @property
    def scale(self) -> float:
        """max |θ|: the magnitude the tolerance is relative to."""
        return float(np.abs(self.values).max()) if len(self.values) else 0.0


def _check_counts(n: int, top: int, bottom: int, basis: int) -> int:
    if top < 0 or bottom < 0 or top + bottom < 1:
        raise ValueError(f"ask for at least one eigenpair (top {top}, bottom {bottom})")
    if top + bottom > n:
        raise ValueError(
            f"{top + bottom} eigenpairs asked for, but the Hessian has only {n} parameters (its dimension): ask for "
            f"at most {n}"
        )
    m = min(basis, n)
    if m < n and m < top + bottom + 2:
        raise ValueError(
            f"basis {basis} cannot hold {top + bottom} eigenpairs and room to restart: give a basis of at least "
            f"{top + bottom + 2} (about 3 x k is a good choice)"
        )
    return m


def top_eigenpairs(
    matvec: Matvec,
    n: int,
    *,
    top: int,
    bottom: int = 0,
    tol: float = 1e-6,
    max_hvps: int = 1000,
    basis: int = 40,
    seed: int = 0,
    device: torch.device | str = "cpu",
    resume: LanczosState | None = None,
    on_restart: Callable[[LanczosState], None] | None = None,
    ritz: int = 0,
) -> Eigenpairs:
    """The ``top`` largest and ``bottom`` most negative eigenpairs of the symmetric operator (module docstring).

    ``on_restart`` receives the state after every thick restart (the kept Ritz vectors, the residual direction,
    the projected matrix, the products spent, the generator): what a run killed later resumes from, handed back as
    ``resume`` -- it then continues with the same bits as if it had never stopped. ``ritz``: also return that many
    Ritz vectors of the final basis, those of largest |θ| (orthonormal; the wanted pairs' vectors among them when
    ritz covers them): the trace's deflation space, which costs no product more than the basis did."""
    if not 1e-14 <= tol < 1:
        raise ValueError(f"tol must be in [1e-14, 1), not {tol}")
    m = _check_counts(n, top, bottom, basis)
    if max_hvps < top + bottom:
        raise ValueError(f"max_hvps {max_hvps} cannot find {top + bottom} eigenpairs: give at least that many")
    free = max(0, m - 1 - top - bottom)  # Ritz vectors beyond the wanted ones kept at a restart, split between ends
    keep_top = top + (free // 4 if bottom else free // 2) if top else 0
    keep_bottom = bottom + (free // 4 if top else free // 2) if bottom else 0
    device = torch.device(device)

    generator = torch.Generator(device="cpu").manual_seed(seed)
    V = torch.empty((m + 1, n), dtype=torch.float64, device=device)
    T = np.zeros((m, m))
    if resume is None:
        start = torch.randn(n, generator=generator, dtype=torch.float64)
        V[0] = (start / start.norm()).to(device)
        k, hvps = 1, 0
    else:
        k, hvps = len(resume.basis), resume.hvps
        if resume.basis.shape[1] != n or k > m:
            raise ValueError(f"a Lanczos state of {tuple(resume.basis.shape)} cannot resume a basis of {m} x {n}")
        V[:k] = torch.as_tensor(resume.basis).to(device)
        T[: k - 1, : k - 1] = resume.projected
        generator.set_state(torch.as_tensor(resume.generator, dtype=torch.uint8))
    while True:
        j = k - 1
        w = matvec(V[j].unsqueeze(0))[0]
        hvps += 1
        w, h = _orthogonalise(V[:k], w)
        T[:k, j] = h
        T[j, :k] = h
        beta = float(w.norm())
        theta, S = np.linalg.eigh(T[:k, :k])
        residuals = np.abs(beta * S[k - 1, :])
        wanted = _wanted(k, top, bottom)
        scale = float(np.abs(theta).max())
        ok = residuals[wanted] <= tol * scale
        invariant = beta <= 1e-14 * max(scale, 1e-300) * math.sqrt(n)
        complete = len(wanted) == top + bottom  # a basis smaller than k holds too few pairs to stop on
        if k == n or (invariant and complete):
            ok[:] = True  # the Krylov space is invariant: its Ritz pairs are eigenpairs
        if (complete and ok.all()) or hvps >= max_hvps or k == n:
            vectors = torch.from_numpy(np.ascontiguousarray(S[:, wanted].T)).to(device) @ V[:k]
            largest = np.argsort(-np.abs(theta), kind="stable")[: min(ritz, k)]
            ritz_vectors = torch.from_numpy(np.ascontiguousarray(S[:, largest].T)).to(device) @ V[:k]
            return Eigenpairs(
                values=theta[wanted].copy(),
                vectors=_fix_signs(vectors),
                residuals=residuals[wanted].copy(),
                converged=ok.copy(),
                hvps=hvps,
                top=top,
                bottom=bottom,
                ritz_vectors=ritz_vectors if ritz else None,
                ritz_values=theta[largest].copy() if ritz else None,
            )
        if invariant:  # an invariant subspace smaller than the pairs asked for: go on from a fresh direction
            fresh = torch.randn(n, generator=generator, dtype=torch.float64).to(device)
            w, _ = _orthogonalise(V[:k], fresh)
            beta = float(w.norm())
            if k < m:
                T[k, :k] = T[:k, k] = 0.0
        if k < m:
            V[k] = w / beta
            k += 1
            continue
        # Thick restart: the kept Ritz vectors at each wanted end, then the residual direction.
        chosen = np.r_[np.arange(keep_bottom), np.arange(k - keep_top, k)].astype(int)
        Sk = torch.from_numpy(np.ascontiguousarray(S[:, chosen])).to(device)
        for c in range(0, n, 1 << 20):  # in column chunks: the rotation needs no second basis in memory
            V[: len(chosen), c : c + (1 << 20)] = Sk.T @ V[:k, c : c + (1 << 20)]
        r = len(chosen)
        V[r] = w / beta
        T[:] = 0.0
        T[np.arange(r), np.arange(r)] = theta[chosen]
        T[r, :r] = T[:r, r] = beta * S[k - 1, chosen]
        k = r + 1
        if on_restart is not None:
            on_restart(LanczosState(V[:k].cpu().numpy().copy(), T[:r, :r].copy(), hvps, generator.get_state().numpy()))


@dataclass
class LanczosState:
    """Where a thick-restarted Lanczos run stands right after a restart: the basis (the kept Ritz vectors, then the
    residual direction whose product is next), the projected matrix of the kept vectors, the products spent and
    the generator's state (it makes fresh directions should the Krylov space become invariant)."""

    basis: np.ndarray  # (k, n) float64
    projected: np.ndarray  # (k - 1, k - 1): diag(θ) of the kept Ritz values
    hvps: int
    generator: np.ndarray  # uint8, torch.Generator.get_state()


def _wanted(k: int, top: int, bottom: int) -> np.ndarray:
    """Indices into ascending Ritz values: the top ones descending, then the bottom ones ascending (as many of each
    as the basis has, when it is smaller than asked)."""
    t = min(top, k)
    b = min(bottom, k - t)
    return np.r_[np.arange(k - 1, k - 1 - t, -1), np.arange(b)].astype(int)


def _orthogonalise(basis: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """``w`` minus its components along the orthonormal rows of ``basis`` (classical Gram-Schmidt twice: "twice
    is enough"), and those components (a column of VᵀHV when w = H·v_j)."""
    h = basis @ w
    w = w - basis.T @ h
    h2 = basis @ w
    w = w - basis.T @ h2
    return w, (h + h2).cpu().numpy()


def _fix_signs(vectors: torch.Tensor) -> torch.Tensor:
    """Each eigenvector's sign chosen so that its entry of largest magnitude is positive (reproducible pictures)."""
    if vectors.numel() == 0:
        return vectors
    index = vectors.abs().argmax(dim=1)
    signs = torch.sign(vectors.gather(1, index.unsqueeze(1)))
    signs[signs == 0] = 1.0
    return vectors * signs


def verified(matvec: Matvec, pairs: Eigenpairs, tol: float) -> Eigenpairs:
    """The pairs with H·y formed for every vector: Rayleigh quotients as values, measured residuals, products kept.

    Converged now means the measured residual meets the rule, so a value the Lanczos recurrence believed in but
    rounding spoiled is flagged."""
    W = matvec(pairs.vectors)
    values = (pairs.vectors * W).sum(dim=1).cpu().numpy()
    residuals = (W - values_tensor(values, W) * pairs.vectors).norm(dim=1).cpu().numpy()
    scale = float(np.abs(values).max()) if len(values) else 0.0
    return Eigenpairs(
        values=values,
        vectors=pairs.vectors,
        residuals=residuals,
        converged=residuals <= tol * scale,
        hvps=pairs.hvps + len(values),
        top=pairs.top,
        bottom=pairs.bottom,
        products=W,
        ritz_vectors=pairs.ritz_vectors,
        ritz_values=pairs.ritz_values,
    )


def values_tensor(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).unsqueeze(1)


# ----------------------------------------------------------------------------------------------------------------
# Trace


def rademacher(n: int, seed: int, index: int, stream: int = TRACE_STREAM, device: torch.device | str = "cpu"):
    """Probe ``index`` of the trace (or start vector of the density, ``stream``): entries ±1 in float64, made on
    the CPU from (seed, stream, index) alone, so every rank and every run makes the same one."""
    rng = np.random.default_rng([seed, stream, index])
    bits = rng.integers(0, 2, size=n, dtype=np.int8)
    return torch.from_numpy(2.0 * bits - 1.0).to(device)


def segment_sums(rows: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Sums of each row over consecutive segments of the given sizes: (k, n) -> (k, len(sizes)) float64."""
    return torch.stack([piece.sum(dim=1) for piece in torch.split(rows, list(sizes), dim=1)], dim=1)


@dataclass
class Deflation:
    """The trace's exact part, from orthonormal vectors Q (rows) and their products W = HQ."""

    Q: torch.Tensor
    exact: float  # tr(QᵀHQ) = Σ_i q_i·w_i
    exact_entries: np.ndarray  # each entry's share of the deflated part (they add up to ``exact``)

    @classmethod
    def of(cls, Q: torch.Tensor, W: torch.Tensor, sizes: Sequence[int]) -> Deflation:
        M = Q @ W.T  # QᵀHQ in the rows' terms: M_ij = q_i·H q_j
        M = 0.5 * (M + M.T)  # symmetric as H is; the rounding of the two halves averaged
        PW = W - M @ Q  # (I − QᵀQ)·w_i: W's part outside the span of Q
        # diag(QᵀMQ) + 2·diag(Qᵀ(PW)), summed per entry: the block traces of the deflated part
        diagonal = (Q * (M @ Q)).sum(dim=0) + 2.0 * (Q * PW).sum(dim=0)
        entries = segment_sums(diagonal.unsqueeze(0), sizes)[0].cpu().numpy()
        return cls(Q, float(torch.trace(M)), entries)

    @classmethod
    def none(cls, n: int, entries: int, device: torch.device | str = "cpu") -> Deflation:
        return cls(torch.zeros((0, n), dtype=torch.float64, device=device), 0.0, np.zeros(entries))

    def project(self, Z: torch.Tensor) -> torch.Tensor:
        """(I − QᵀQ)·z for the rows z of ``Z``."""
        if len(self.Q) == 0:
            return Z
        return Z - (Z @ self.Q.T) @ self.Q


def probe_values(Z: torch.Tensor, HZ: torch.Tensor, sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Hutchinson samples of probes in rows (already projected), from their products: zᵀHz per probe (k,), and
    its terms summed per entry (k, entries) -- the entries' samples add up to the probe's."""
    products = Z * HZ
    return products.sum(dim=1).cpu().numpy(), segment_sums(products, sizes).cpu().numpy()


def deflated_trace(
    matvec: Matvec, basis: torch.Tensor, projected: np.ndarray, probes: int, seed: int
) -> tuple[float, float]:
    """The trace from an orthonormal basis V (rows) with T = V H Vᵀ already known (a Lanczos run's, as the sweep's
    ``hessian.trace`` has at every point): tr(T) exactly, plus Hutchinson on the rest with ``probes`` probes
    (indices 0, 1, ... of ``seed``: the same probes wherever it is called). (trace, standard error)."""
    if probes < 2:
        raise ValueError(f"probes must be at least 2 for a standard error, not {probes}")
    n = basis.shape[1]
    flat = Deflation(basis, float(np.trace(projected)), np.zeros(1))
    Z = flat.project(torch.stack([rademacher(n, seed, i, device=basis.device) for i in range(probes)]))
    samples = (Z * matvec(Z)).sum(dim=1).cpu().numpy()
    return flat.exact + float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(probes))


@dataclass
class TraceEstimate:
    """The trace from the first ``used`` samples: its value, standard error, per entry; the running values."""

    value: float
    se: float
    used: int
    entries: np.ndarray  # (entries,) per-entry traces
    entries_se: np.ndarray
    running_mean: np.ndarray  # (samples,) the estimate after 1, 2, ... probes
    running_se: np.ndarray  # (samples,) its standard error (NaN for one probe)

    @property
    def relative_se(self) -> float:
        return self.se / abs(self.value) if self.value != 0 else math.inf


def running(samples: np.ndarray, exact: float) -> tuple[np.ndarray, np.ndarray]:
    """The estimate exact + mean(samples[:k]) and its standard error std(samples[:k], ddof=1)/√k, for every k."""
    samples = np.asarray(samples, dtype=np.float64)
    k = np.arange(1, len(samples) + 1)
    mean = np.cumsum(samples) / k
    # the sample variance by the two-pass formula per prefix would be O(k²); Welford's update is exact enough
    var = np.full(len(samples), np.nan)
    m, s = 0.0, 0.0
    for i, x in enumerate(samples):
        delta = x - m
        m += delta / (i + 1)
        s += delta * (x - m)
        if i > 0:
            var[i] = s / i
    return exact + mean, np.sqrt(var / k)


def stopping_count(samples: np.ndarray, exact: float, rel_se: float, min_probes: int, max_probes: int) -> int | None:
    """The number of probes the trace stops at: the first k ≥ ``min_probes`` whose relative standard error is at
    most ``rel_se``, else ``max_probes`` once that many samples exist; None while neither is reached."""
    mean, se = running(samples, exact)
    for k in range(max(min_probes, 2), len(samples) + 1):
        value = mean[k - 1]
        if value != 0 and se[k - 1] <= rel_se * abs(value):
            return k
        if se[k - 1] == 0:  # identical samples (a probe-independent quadratic form): nothing left to average
            return k
    return max_probes if len(samples) >= max_probes else None


def estimate(samples: np.ndarray, entries: np.ndarray, deflation_exact: float, exact_entries: np.ndarray, used: int):
    """The trace estimate from the first ``used`` samples (and per entry), with the running values of all."""
    samples = np.asarray(samples, dtype=np.float64)
    mean, se = running(samples, deflation_exact)
    used = min(used, len(samples))
    chosen = np.asarray(entries, dtype=np.float64)[:used]
    entries_mean = exact_entries + chosen.mean(axis=0) if used else np.full(len(exact_entries), np.nan)
    entries_se = chosen.std(axis=0, ddof=1) / math.sqrt(used) if used > 1 else np.full(len(exact_entries), np.nan)
    return TraceEstimate(
        value=float(mean[used - 1]) if used else math.nan,
        se=float(se[used - 1]) if used else math.nan,
        used=used,
        entries=entries_mean,
        entries_se=entries_se,
        running_mean=mean,
        running_se=se,
    )


# ----------------------------------------------------------------------------------------------------------------
# Spectral density: stochastic Lanczos quadrature


def slq_start(n: int, seed: int, index: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Run ``index``'s start vector: a Rademacher vector (its own stream) divided by √n, a unit vector."""
    return rademacher(n, seed, index, DENSITY_STREAM, device) / math.sqrt(n)


def slq(
    matvec: Matvec, starts: torch.Tensor, steps: int, check: Callable[[], None] | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``steps`` Lanczos steps from each unit start vector in the rows of ``starts``, all runs advancing together
    (one ``matvec`` of every unfinished run per step); each run's Gauss quadrature nodes and weights.

    ``check`` is called after every one of the ``min(steps, n)`` steps, also those left once every run stopped
    early (ranks computing runs of their own keep in step through it)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    b, n = starts.shape
    m = min(steps, n)
    V = torch.empty((b, m + 1, n), dtype=torch.float64, device=starts.device)
    V[:, 0] = starts
    T = np.zeros((b, m, m))
    length = np.zeros(b, dtype=int)  # steps each run has taken
    active = list(range(b))
    for j in range(m):
        if not active:  # every run has stopped early; with ``check``, the steps are still taken in step with others
            if check is None:
                break
            check()
            continue
        W = matvec(V[active, j])
        still = []
        for row, r in enumerate(active):
            w, h = _orthogonalise(V[r, : j + 1], W[row])
            T[r, : j + 1, j] = h
            T[r, j, : j + 1] = h
            length[r] = j + 1
            beta = float(w.norm())
            scale = float(np.abs(np.linalg.eigvalsh(T[r, : j + 1, : j + 1])).max())
            if j + 1 < m and beta > 1e-12 * max(scale, 1e-300):
                V[r, j + 1] = w / beta
                still.append(r)
        active = still
        if check is not None:
            check()
    nodes, weights = [], []
    for r in range(b):
        theta, S = np.linalg.eigh(T[r, : length[r], : length[r]])
        nodes.append(theta)
        weights.append(S[0, :] ** 2)
    return nodes, weights


def auto_sigma(nodes: Sequence[np.ndarray]) -> float:
    """The Gaussian width when the job leaves it to llmpi: √(10⁻⁵ · max(1, span)), span the nodes' range -- the
    width PyHessian's density figures use, so the pictures compare."""
    every = np.concatenate([np.asarray(v, dtype=np.float64) for v in nodes])
    span = float(every.max() - every.min()) if every.size else 0.0
    return math.sqrt(1e-5 * max(1.0, span))


def density_grid(nodes: Sequence[np.ndarray], sigma: float, points: int) -> np.ndarray:
    """``points`` equally spaced values from 5σ below the smallest node to 5σ above the largest."""
    every = np.concatenate([np.asarray(v, dtype=np.float64) for v in nodes])
    return np.linspace(every.min() - 5 * sigma, every.max() + 5 * sigma, points)


def density(nodes: Sequence[np.ndarray], weights: Sequence[np.ndarray], grid: np.ndarray, sigma: float) -> np.ndarray:
    """The runs' mean of Σ_i τ_i N(t; θ_i, σ²) at the grid's points: a density in t that integrates to 1."""
    if not sigma > 0:
        raise ValueError(f"the Gaussian width sigma must be positive, not {sigma}")
    if not len(nodes):
        raise ValueError("no runs to make a density of")
    grid = np.asarray(grid, dtype=np.float64)
    out = np.zeros_like(grid)
    for theta, tau in zip(nodes, weights):
        z = (grid[:, None] - np.asarray(theta)[None, :]) / sigma
        out += np.exp(-0.5 * z * z) @ np.asarray(tau)
    return out / (len(nodes) * sigma * math.sqrt(2 * math.pi))

"""The extreme eigenvalues of the loss Hessian at a point, for the paper's eigen-ratio maps (Li et al. 2018, §6).

    op = HessianOperator(model, images, labels, batch_size=256, ignore="biasbn")
    result = extreme_eigenvalues(op, tol=1e-3, max_hvps=300, seed=0)
    result.max_eig, result.min_eig, result.ratio        # λmax, λmin, |λmin/λmax|

The Hessian is that of the mean cross-entropy L(θ) = (1/N) Σ_i ℓ_i(θ) over the resident images, in eval mode
(BatchNorm uses its running statistics, as in the sweep), with respect to the parameters a direction may move:
``ignore: biasbn`` takes the tensors of two or more dimensions only (the paper's code: biases and BatchNorm
parameters left out), ``ignore: none`` takes every parameter. It is never formed: Lanczos needs only products H·v.

Hessian-vector products (``HessianOperator``) by double backward: per batch b, g_b = ∇(Σ_{i∈b} ℓ_i / N) with
``create_graph``, then H_b·v = ∇(g_b·v). The per-batch products are computed in the model's dtype and summed over
batches, in batch order, in float64, so H·v is the Hessian of the *mean over all images*, whatever the batch
size (the paper's code sums per-batch *mean* losses, which multiplies every eigenvalue by the number of batches;
its ratios are unaffected). Batching changes only float rounding inside a batch.

Eigenvalues (``extreme_eigenvalues``): Lanczos with full reorthogonalisation ("twice is enough" classical
Gram-Schmidt against the whole basis) and thick restarts. The basis holds at most ``basis`` vectors of float64
on the model's device, (basis + 1) × params × 8 bytes: 40 vectors of resnet56 (0.85 M parameters) take 280 MB.
When the basis is full it restarts from the ``basis // 4`` Ritz vectors at each end of the spectrum, so both
extremes keep improving in bounded memory. It stops when both extreme Ritz pairs have residual
‖H y − θ y‖ ≤ tol · max(|θmax|, |θmin|). What that guarantees: each returned value is within that distance of an
eigenvalue of H (the residual bound for symmetric matrices), and Ritz values never leave the spectrum
(θmax ≤ λmax, θmin ≥ λmin). Lanczos converges to the extremes first, so in practice the returned values are the
extremes to within tol·|λmax| (the ratio |λmin/λmax| to about ``tol``); with a coarse tol and an extreme
eigenvalue at the edge of a dense band, the smallest value can stop short of λmin by more (tests measure both).
``converged`` and the residuals say whether the rule was met within ``max_hvps`` (the sweep stores both at every
point: ``eig_converged``, and ``eig_residual`` = ``relative_residual``). Unconverged values still lie inside the
spectrum, so they are inner bounds of its ends, never beyond them. The start
vector comes from a CPU generator seeded with ``seed`` in float64, so the result depends only on the point,
the data, the seed and the tolerance -- never on which rank computes it.

Cost per grid point: ``hvps`` products, each a forward, a backward with graph and a double backward over the
selected data. Measured on resnet8 (77 k parameters, 256 images, one CPU thread): 2.5-3.9 s per product, 8-12
times one loss evaluation; at a trained minimiser 19 products at tol 1e-3 (λmax 28.3, λmin −0.454), at
(0.5, 0.5) on filter-normalised directions 21. The same minimiser at tol 1e-2 stopped after 6 products with
λmin −0.0007: the ratio fell from 1.6% to 0.002%, across the 1% line of the convex share -- hence the default
1e-3. ``max_hvps`` caps the cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..job.errors import JobError
from .oom import retry_halving


def hessian_parameters(model: nn.Module, ignore: str) -> dict[str, nn.Parameter]:
    """The parameters the Hessian is taken over: those of two or more dimensions (``biasbn``) or all (``none``)."""
    if ignore == "biasbn":
        return {k: p for k, p in model.named_parameters() if p.dim() > 1}
    if ignore == "none":
        return dict(model.named_parameters())
    raise ValueError(f"hessian ignore must be 'biasbn' or 'none', not {ignore!r}")


class HessianOperator:
    """v -> H·v for the mean loss over resident data at the model's current weights (flat float64 vectors).

    ``loss``: ``"crossentropy"`` (the default, the sweep's), ``"mse"`` (``llmpi.compute.losses``' convention), or a
    ``llmpi.compute.losses.FactoryLoss`` whose function returns ``(summed loss, samples, correct)`` with the summed
    loss a tensor that autograd can differentiate twice. ``total``: the number the summed losses are divided by --
    by default the samples held here; the sum of every rank's when each rank holds a share of the data (then each
    rank's product is its share of H·v, and the shares add up to the product of the whole selection).
    ``many(V)`` multiplies several vectors with one forward and one backward per batch (the double backward is
    per vector): the per-vector results are the same bits as ``__call__``'s."""

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        ignore: str = "biasbn",
        shrink_on_oom: bool = False,
        *,
        loss: Any = "crossentropy",
        total: int | None = None,
        batch_key: str = "hessian.batch_size",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        if len(labels) == 0:
            raise ValueError("the Hessian needs at least one image")
        if isinstance(loss, str) and loss not in ("crossentropy", "mse"):
            raise ValueError(f"loss must be 'crossentropy', 'mse' or a loss factory, not {loss!r}")
        self.model, self.loss = model, loss
        self.images, self.labels, self.batch_size, self.shrink_on_oom = images, labels, batch_size, shrink_on_oom
        self.params = list(hessian_parameters(model, ignore).values())
        if not self.params:
            raise ValueError("the model has no parameters to take the Hessian over")
        self.sizes = [p.numel() for p in self.params]
        self.n = sum(self.sizes)
        self.device = self.params[0].device
        if total is not None and total < 1:
            raise ValueError(f"total must be a positive number of samples, not {total}")
        self.total = total
        self.batch_key = batch_key  # the job key an out-of-memory message tells the user to set
        self.products = 0

    def count(self) -> int:
        """The samples the losses here are sums over: the labels held, or what a loss factory counts (one forward
        pass without gradients over the data)."""
        if isinstance(self.loss, str):
            return len(self.labels)
        from .losses import factory_result

        self.model.eval()
        n = 0
        with torch.no_grad():
            for start in range(0, len(self.labels), self.batch_size):
                batch = (self.images[start : start + self.batch_size], self.labels[start : start + self.batch_size])
                n += factory_result(self.loss.spec, self._call_factory(batch))[1]
        return n

    def __call__(self, v: torch.Tensor, between_batches: Callable[[], None] | None = None) -> torch.Tensor:
        """H·v (float64, on the model's device); ``between_batches`` is called before each batch (for stops).

        Out of device memory (``llmpi.compute.oom.retry_halving``): with ``shrink_on_oom`` the batch halves and the
        product starts over (its value then may differ in the last bits); otherwise the error says what to set."""
        if v.shape != (self.n,):
            raise ValueError(f"expected a vector of {self.n} entries, got shape {tuple(v.shape)}")
        return self.many(v.unsqueeze(0), between_batches)[0]

    def many(self, V: torch.Tensor, between_batches: Callable[[], None] | None = None) -> torch.Tensor:
        """H·V for the rows of ``V`` (k, n): (k, n) float64 on the model's device. One forward and one backward
        with graph per batch serve every row; each row then takes its own double backward."""
        if V.dim() != 2 or V.shape[1] != self.n or V.shape[0] < 1:
            raise ValueError(f"expected vectors of {self.n} entries in rows, got shape {tuple(V.shape)}")
        if self.total is None:
            self.total = self.count()
            if self.total < 1:
                raise ValueError("the loss counted no samples: there is no mean loss to take the Hessian of")
        self.model.eval()
        pieces = [
            [chunk.view_as(p).to(p.dtype) for chunk, p in zip(torch.split(v.to(self.device), self.sizes), self.params)]
            for v in V
        ]
        frozen = [p for p in self.params if not p.requires_grad]  # a caller may have frozen them for speed
        for p in frozen:
            p.requires_grad_(True)

        def product() -> torch.Tensor:
            out = torch.zeros((len(pieces), self.n), dtype=torch.float64, device=self.device)
            self._accumulate(pieces, out, self.total, between_batches)
            return out

        def shrink() -> str | None:
            if not self.shrink_on_oom or self.batch_size == 1:
                return None
            self.batch_size //= 2
            return f"with Hessian batch {2 * self.batch_size}; retrying the product with {self.batch_size}"

        def advice() -> str:
            fixed = "" if self.shrink_on_oom else f"set {self.batch_key} smaller or to auto, or "
            return (
                f"a Hessian-vector product over batches of {self.batch_size} images does not fit; {fixed}use a "
                "larger device"
            )

        try:
            out = retry_halving(product, shrink, self.device, advice)
        finally:
            for p in frozen:
                p.requires_grad_(False)
        self.products += len(pieces)
        return out

    def _call_factory(self, batch: tuple[torch.Tensor, torch.Tensor]) -> Any:
        from ..job.factories import invoke
        from .losses import FACTORY_KEY

        return invoke(self.loss.function, self.loss.spec, FACTORY_KEY, self.model, batch)

    def _summed_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """The batch's summed loss as a differentiable tensor (None when a loss factory counted no samples)."""
        if not isinstance(self.loss, str):
            result = self._call_factory((x, y))
            from .losses import factory_result

            _, count, _ = factory_result(self.loss.spec, result)  # its shape and count checked as for a sweep
            summed = result[0]
            if not isinstance(summed, torch.Tensor) or not summed.requires_grad:
                raise JobError(
                    f"loss.factory: {self.loss.spec!r} returned a summed loss without a graph ("
                    f"{'a tensor that does not require grad' if isinstance(summed, torch.Tensor) else 'a number'}): "
                    "the Hessian differentiates it twice, so compute it from the model's output without "
                    "torch.no_grad(), .item(), .detach() or float()"
                )
            return summed if count else None
        logits = self.model(x)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # a softmax in half precision would lose the small eigenvalues
        if self.loss == "crossentropy":
            return F.cross_entropy(logits, y, reduction="sum")
        probabilities = torch.softmax(logits, dim=-1)  # mse: the paper's code's softmax against one-hot targets
        return (probabilities - F.one_hot(y, logits.shape[-1]).to(probabilities.dtype)).square().mean(dim=-1).sum()

    def _accumulate(
        self,
        pieces: list[list[torch.Tensor]],
        out: torch.Tensor,
        total: int,
        between_batches: Callable[[], None] | None,
    ) -> None:
        with torch.enable_grad():
            for start in range(0, len(self.labels), self.batch_size):
                if between_batches is not None:
                    between_batches()
                x = self.images[start : start + self.batch_size]
                y = self.labels[start : start + self.batch_size]
                summed = self._summed_loss(x, y)
                if summed is None:
                    continue
                loss = summed / total
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                for row, vector in enumerate(pieces):
                    dot = sum((g * u).sum() for g, u in zip(grads, vector) if g is not None)
                    if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
                        break  # the loss is linear in every parameter here: this batch adds nothing
                    hv = torch.autograd.grad(dot, self.params, allow_unused=True, retain_graph=row < len(pieces) - 1)
                    out[row] += torch.cat(
                        [(h if h is not None else torch.zeros_like(p)).reshape(-1) for h, p in zip(hv, self.params)]
                    ).double()


@dataclass(frozen=True)
class EigenResult:
    """The extreme Ritz values, their residual norms, and what they cost."""

    max_eig: float
    min_eig: float
    max_residual: float
    min_residual: float
    converged: bool
    hvps: int
    tol: float

    @property
    def ratio(self) -> float:
        """|λmin / λmax|, the paper's measure of non-convexity (NaN when λmax is zero)."""
        return abs(self.min_eig / self.max_eig) if self.max_eig != 0 else math.nan

    @property
    def relative_residual(self) -> float:
        """The larger residual of the two extreme Ritz pairs over max(|λmax|, |λmin|): the quantity the stopping
        rule holds to ``tol`` (converged means it is at most ``tol``). 0 for an exact zero operator."""
        residual = max(self.max_residual, self.min_residual)
        scale = max(abs(self.max_eig), abs(self.min_eig))
        if scale == 0:
            return 0.0 if residual == 0 else math.inf
        return residual / scale


def extreme_eigenvalues(
    op: Callable[[torch.Tensor], torch.Tensor] | HessianOperator,
    n: int | None = None,
    *,
    tol: float = 1e-3,
    max_hvps: int = 300,
    basis: int = 40,
    seed: int = 0,
    device: torch.device | str | None = None,
    between_batches: Callable[[], None] | None = None,
) -> EigenResult:
    """The largest and smallest eigenvalues of the symmetric operator ``op`` (see the module docstring).

    ``op`` maps a float64 vector of length ``n`` to its product with the matrix; for a ``HessianOperator``,
    ``n`` and ``device`` come from it and ``between_batches`` is handed on to every product.
    """
    return extremes_and_basis(
        op, n, tol=tol, max_hvps=max_hvps, basis=basis, seed=seed, device=device, between_batches=between_batches
    )[0]


def extremes_and_basis(
    op: Callable[[torch.Tensor], torch.Tensor] | HessianOperator,
    n: int | None = None,
    *,
    tol: float = 1e-3,
    max_hvps: int = 300,
    basis: int = 40,
    seed: int = 0,
    device: torch.device | str | None = None,
    between_batches: Callable[[], None] | None = None,
) -> tuple[EigenResult, torch.Tensor, np.ndarray]:
    """``extreme_eigenvalues``, with the Lanczos basis it ended with: its orthonormal rows V (k, n) and the
    projected matrix T = V H Vᵀ (k, k), exact to rounding (``hessian.trace`` takes tr(T) as the trace's share in
    the span of V, llmpi.compute.spectrum.deflated_trace)."""
    if isinstance(op, HessianOperator):
        n, device = op.n, op.device
        hessian = op
        op = lambda v: hessian(v, between_batches)
    if n is None or n < 1:
        raise ValueError(f"the operator's dimension n must be a positive integer, not {n}")
    if not 1e-12 <= tol < 1:
        raise ValueError(f"tol must be in [1e-12, 1), not {tol}")
    if max_hvps < 1:
        raise ValueError(f"max_hvps must be at least 1, not {max_hvps}")
    if basis < 3:
        raise ValueError(f"basis must hold at least 3 vectors, not {basis}")
    m = min(basis, n)  # a Krylov space never exceeds the dimension
    keep = max(1, m // 4)
    device = torch.device(device) if device is not None else torch.device("cpu")

    generator = torch.Generator(device="cpu").manual_seed(seed)
    start = torch.randn(n, generator=generator, dtype=torch.float64)
    V = torch.empty((m + 1, n), dtype=torch.float64, device=device)
    V[0] = (start / start.norm()).to(device)
    T = np.zeros((m, m))  # V^T H V, the projected matrix
    k = 1  # vectors in the basis; the last one still needs its product
    hvps = 0
    while True:
        j = k - 1
        w = op(V[j])
        hvps += 1
        basis_k = V[:k]
        h = basis_k @ w
        w = w - basis_k.T @ h
        h2 = basis_k @ w  # reorthogonalise once more: rounding left components of the basis in w
        w = w - basis_k.T @ h2
        h = (h + h2).cpu().numpy()
        T[:k, j] = h
        T[j, :k] = h
        beta = float(w.norm())
        theta, S = np.linalg.eigh(T[:k, :k])
        residuals = np.abs(beta * S[k - 1, :])
        scale = max(abs(theta[0]), abs(theta[-1]))
        converged = bool(residuals[0] <= tol * scale and residuals[-1] <= tol * scale)
        if converged or hvps >= max_hvps or k == n:
            result = EigenResult(
                max_eig=float(theta[-1]),
                min_eig=float(theta[0]),
                max_residual=float(residuals[-1]),
                min_residual=float(residuals[0]),
                converged=converged or k == n,  # a full basis of R^n: the Ritz values are the eigenvalues
                hvps=hvps,
                tol=tol,
            )
            return result, V[:k], T[:k, :k].copy()
        if k < m:
            V[k] = w / beta
            k += 1
            continue
        # Thick restart: keep the Ritz vectors at both ends, and the residual direction as the next vector.
        chosen = np.r_[np.arange(keep), np.arange(k - keep, k)]
        Sk = torch.from_numpy(np.ascontiguousarray(S[:, chosen])).to(device)
        for c in range(0, n, 1 << 20):  # in column chunks, so the rotation needs no second basis in memory
            V[: len(chosen), c : c + (1 << 20)] = Sk.T @ V[:k, c : c + (1 << 20)]
        r = len(chosen)
        V[r] = w / beta
        T[:] = 0.0
        T[np.arange(r), np.arange(r)] = theta[chosen]
        T[r, :r] = T[:r, r] = beta * S[k - 1, chosen]
        k = r + 1

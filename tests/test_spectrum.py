"""The spectrum's mathematics (llmpi.compute.spectrum) against independent computations: dense float64 Hessians of
tiny networks (torch.autograd.functional.hessian, itself checked against finite differences in test_hessian) with
numpy's eigh, and matrices of known spectrum."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_hessian import conv_problem, dense_hessian, known_spectrum, mlp_problem, reference_hessian

from llmpi.compute.hessian import HessianOperator, hessian_parameters
from llmpi.compute.losses import FactoryLoss
from llmpi.compute.spectrum import (
    Deflation,
    auto_sigma,
    density,
    density_grid,
    estimate,
    probe_values,
    rademacher,
    running,
    segment_sums,
    slq,
    slq_start,
    stopping_count,
    top_eigenpairs,
    verified,
)
from llmpi.job.errors import JobError


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def matvec_of(A: torch.Tensor):
    return lambda V: V @ A  # A symmetric: rows of V times A are rows of (A V^T)^T


def hadamard(n: int) -> np.ndarray:
    """Sylvester's ±1 Hadamard matrix of order n (a power of two): its rows are orthogonal, Σ_i h_i h_iᵀ = n I."""
    H = np.ones((1, 1))
    while len(H) < n:
        H = np.block([[H, H], [H, -H]])
    return H


# -- top-k ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", [mlp_problem, conv_problem])
@pytest.mark.parametrize("ignore", ["none", "biasbn"])
def test_top_k_eigenpairs_match_the_dense_hessian(problem, ignore):
    model, x, y = problem()
    H = reference_hessian(problem, ignore)
    values, vectors = np.linalg.eigh(H)
    op = HessianOperator(model, x, y, batch_size=7, ignore=ignore)
    pairs = top_eigenpairs(op.many, op.n, top=5, bottom=2, tol=1e-10, max_hvps=2000, basis=30, seed=1)
    pairs = verified(op.many, pairs, tol=1e-10)
    assert pairs.converged.all()
    expected = np.r_[values[::-1][:5], values[:2]]
    scale = abs(values).max()
    assert np.allclose(pairs.values, expected, rtol=1e-6, atol=1e-9 * scale)
    for got, index in zip(pairs.vectors.numpy(), [*range(len(H) - 1, len(H) - 6, -1), 0, 1]):
        assert abs(got @ vectors[:, index]) == pytest.approx(1.0, abs=1e-6)  # the same line
    assert torch.allclose(pairs.vectors @ pairs.vectors.T, torch.eye(7, dtype=torch.float64), atol=1e-10)
    measured = np.linalg.norm(H @ pairs.vectors.numpy().T - pairs.vectors.numpy().T * pairs.values, axis=0)
    assert np.allclose(pairs.residuals, measured, rtol=1e-6, atol=1e-12 * scale)
    assert np.allclose(pairs.products.numpy(), pairs.vectors.numpy() @ H, atol=1e-10 * scale)


@pytest.mark.parametrize("basis", [12, 30, 500])
def test_top_k_with_restarts_on_a_known_spectrum(basis):
    """A Hessian-like spectrum in 400 dimensions: a few outliers over a dense band; thick restarts must keep them."""
    n = 400
    rng = np.random.default_rng(4)
    spectrum = np.concatenate([[50.0, 31.0, 30.5, 12.0, 9.0], rng.uniform(-0.5, 3.0, n - 7), [-2.0, -1.5]])
    A = known_spectrum(n, spectrum, seed=5)
    pairs = top_eigenpairs(matvec_of(A), n, top=5, bottom=2, tol=1e-9, max_hvps=5000, basis=basis, seed=0)
    assert pairs.converged.all() and pairs.hvps < 5000
    assert np.allclose(pairs.values, [50.0, 31.0, 30.5, 12.0, 9.0, -2.0, -1.5], rtol=1e-8, atol=1e-8)
    assert (pairs.residuals <= 1e-9 * 50.0).all()


def test_eigenvector_signs_are_fixed_and_runs_reproducible():
    model, x, y = conv_problem()
    op = HessianOperator(model, x, y, batch_size=8, ignore="none")
    a = top_eigenpairs(op.many, op.n, top=2, tol=1e-8, basis=20, seed=3)
    b = top_eigenpairs(op.many, op.n, top=2, tol=1e-8, basis=20, seed=3)
    assert torch.equal(a.vectors, b.vectors) and np.array_equal(a.values, b.values)
    c = top_eigenpairs(op.many, op.n, top=2, tol=1e-8, basis=20, seed=4)  # another start: the same lines and signs
    assert torch.allclose(a.vectors, c.vectors, atol=1e-5)
    for v in a.vectors:
        assert v[v.abs().argmax()] > 0


def test_an_invariant_subspace_smaller_than_k_does_not_stop_the_search():
    """A matrix with three distinct eigenvalues: the Krylov space of one start vector has dimension 3, yet the
    top four pairs exist (two of them share an eigenvalue)."""
    spectrum = np.array([5.0, 5.0, 2.0] + [-1.0] * 13)
    A = known_spectrum(16, spectrum, seed=0)
    pairs = top_eigenpairs(matvec_of(A), 16, top=4, tol=1e-10, basis=16, seed=0)
    assert np.allclose(pairs.values, [5.0, 5.0, 2.0, -1.0], atol=1e-9)


def test_bad_counts_are_refused_by_name():
    A = torch.eye(6, dtype=torch.float64)
    with pytest.raises(ValueError, match="only 6 parameters"):
        top_eigenpairs(matvec_of(A), 6, top=7, tol=1e-6)
    with pytest.raises(ValueError, match="at least one eigenpair"):
        top_eigenpairs(matvec_of(A), 6, top=0, tol=1e-6)
    with pytest.raises(ValueError, match="basis 5 cannot hold"):
        top_eigenpairs(matvec_of(torch.eye(50, dtype=torch.float64)), 50, top=4, tol=1e-6, basis=5)
    with pytest.raises(ValueError, match="max_hvps"):
        top_eigenpairs(matvec_of(A), 6, top=3, tol=1e-6, max_hvps=2)


# -- products ---------------------------------------------------------------------------------------------------


def test_several_vectors_per_pass_are_the_same_bits_as_one_at_a_time():
    model, x, y = conv_problem(dtype=torch.float32)
    op = HessianOperator(model.float(), x.float(), y, batch_size=10, ignore="none")
    V = torch.randn(4, op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    together = op.many(V)
    for i in range(4):
        assert torch.equal(together[i], op(V[i]))
    assert torch.equal(op.many(V[[2, 0]]), together[[2, 0]])  # whatever the other rows of the block
    assert op.products == 4 + 4 + 2


def dense_of(loss_of_logits, model, x, y):
    """The dense Hessian of (1/N) Σ loss over all parameters, by autograd.functional on functional_call."""
    from torch.func import functional_call

    names = [k for k, _ in model.named_parameters()]
    params = {k: v.detach() for k, v in model.named_parameters()}
    sizes = [params[k].numel() for k in names]

    def loss(flat):
        moved = {k: c.view(params[k].shape) for k, c in zip(names, torch.split(flat, sizes))}
        return loss_of_logits(functional_call(model, moved, (x,)), y)

    return torch.autograd.functional.hessian(loss, torch.cat([params[k].reshape(-1) for k in names]))


def test_products_of_the_mse_loss_and_of_a_loss_factory_match_dense_hessians():
    model, x, y = mlp_problem()

    def mse(logits, targets):
        p = torch.softmax(logits, -1)
        return (p - F.one_hot(targets, 4).double()).square().mean(-1).mean()

    v = torch.randn(160, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    H = dense_of(mse, model, x, y)
    assert torch.allclose(HessianOperator(model, x, y, 16, "none", loss="mse")(v), H @ v, rtol=1e-9, atol=1e-12)

    def factory(net, batch):  # a regression-style loss: summed squared logits minus a target, per sample
        inputs, targets = batch
        out = net(inputs)
        return ((out - targets[:, None].double()) ** 2).sum(), len(targets), None

    H = dense_of(lambda out, t: ((out - t[:, None].double()) ** 2).sum() / len(t), model, x, y)
    op = HessianOperator(model, x, y, 16, "none", loss=FactoryLoss("tests:factory", factory))
    assert torch.allclose(op(v), H @ v, rtol=1e-9, atol=1e-12)
    assert op.total == 40


def test_a_loss_factory_without_a_graph_is_one_clear_message():
    model, x, y = mlp_problem()

    def detached(net, batch):
        with torch.no_grad():
            return F.cross_entropy(net(batch[0]), batch[1], reduction="sum"), len(batch[1]), None

    op = HessianOperator(model, x, y, 16, "none", loss=FactoryLoss("mine:detached", detached))
    with pytest.raises(JobError, match=r"'mine:detached' returned a summed loss without a graph.*torch.no_grad"):
        op(torch.ones(op.n, dtype=torch.float64))
    as_number = lambda net, batch: (float(F.cross_entropy(net(batch[0]), batch[1], reduction="sum")), 16, None)
    op = HessianOperator(model, x, y, 16, "none", loss=FactoryLoss("mine:number", as_number))
    with pytest.raises(JobError, match="a number"):
        op(torch.ones(op.n, dtype=torch.float64))


def test_shares_of_the_data_add_up_to_the_whole_product():
    """What every rank computes in data mode: its batches, divided by the count of the whole selection."""
    model, x, y = conv_problem()
    v = torch.randn(363, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    whole = HessianOperator(model, x, y, 5, "none")(v)
    parts = [HessianOperator(model, x[a:b], y[a:b], 5, "none", total=24)(v) for a, b in [(0, 10), (10, 15), (15, 24)]]
    assert torch.allclose(parts[0] + parts[1] + parts[2], whole, rtol=1e-12, atol=1e-15)


# -- trace ------------------------------------------------------------------------------------------------------


def test_probes_are_a_function_of_seed_and_index():
    a, b = rademacher(1000, 3, 7), rademacher(1000, 3, 7)
    assert torch.equal(a, b) and set(a.unique().tolist()) == {-1.0, 1.0}
    assert not torch.equal(a, rademacher(1000, 3, 8)) and not torch.equal(a, rademacher(1000, 4, 7))
    assert not torch.equal(a, rademacher(1000, 3, 7, stream=2))


@pytest.mark.parametrize("deflate", [0, 4])
def test_hutchinson_is_exact_when_the_probes_span_the_space(deflate):
    """Hadamard rows as probes: Σ_z zzᵀ = n·I, so the estimator (deflated or not) gives the trace, and every
    block's trace, to rounding -- the estimator is unbiased with nothing left to average."""
    n, sizes = 64, [10, 30, 24]
    rng = np.random.default_rng(0)
    spectrum = np.r_[[40.0, 20.0, 10.0, 5.0], rng.uniform(-1, 2, n - 4)]
    A = known_spectrum(n, spectrum, seed=1)
    pairs = top_eigenpairs(matvec_of(A), n, top=deflate, tol=1e-12, basis=40) if deflate else None
    flat = Deflation.of(pairs.vectors, pairs.vectors @ A, sizes) if deflate else Deflation.none(n, len(sizes))
    Z = flat.project(torch.from_numpy(hadamard(n)))
    values, entries = probe_values(Z, Z @ A, sizes)
    assert np.allclose(values, entries.sum(axis=1), rtol=1e-12, atol=1e-9)  # per-entry samples add up
    result = estimate(values, entries, flat.exact, flat.exact_entries, used=n)
    assert result.value == pytest.approx(spectrum.sum(), rel=1e-10)
    blocks = [np.trace(A.numpy()[a:b, a:b]) for a, b in [(0, 10), (10, 40), (40, 64)]]
    assert np.allclose(result.entries, blocks, rtol=1e-9, atol=1e-9)
    assert flat.exact_entries.sum() == pytest.approx(flat.exact, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("problem", [mlp_problem, conv_problem])
def test_hutchinson_on_networks_is_within_three_standard_errors(problem):
    model, x, y = problem()
    H = reference_hessian(problem, "none")
    op = HessianOperator(model, x, y, 12, "none")
    sizes = op.sizes
    bounds = np.cumsum([0, *sizes])
    blocks = np.array([np.trace(H[a:b, a:b]) for a, b in itertools.pairwise(bounds)])
    pairs = verified(op.many, top_eigenpairs(op.many, op.n, top=3, tol=1e-8, basis=20), 1e-8)
    for flat in (Deflation.none(op.n, len(sizes)), Deflation.of(pairs.vectors, pairs.products, sizes)):
        Z = flat.project(torch.stack([rademacher(op.n, 5, i) for i in range(200)]))
        values, entries = probe_values(Z, op.many(Z), sizes)
        result = estimate(values, entries, flat.exact, flat.exact_entries, used=200)
        assert abs(result.value - np.trace(H)) <= 3 * result.se
        assert np.all(np.abs(result.entries - blocks) <= 3 * result.entries_se + 1e-12)
        assert result.entries.sum() == pytest.approx(result.value, rel=1e-10)


def test_deflation_cuts_the_variance_of_an_outlier_spectrum():
    """Like a network's Hessian: a few large eigenvalues over a bulk near zero. Taking the top ones out exactly
    leaves a far smaller variance to average away (here 100 times and more)."""
    n = 300
    rng = np.random.default_rng(1)
    A = known_spectrum(n, np.r_[[80.0, 50.0, 30.0, 20.0, 10.0], rng.normal(0, 0.05, n - 5)], seed=2)
    pairs = top_eigenpairs(matvec_of(A), n, top=5, tol=1e-10, basis=30)
    spread = {}
    for name, flat in [
        ("plain", Deflation.none(n, 1)),
        ("deflated", Deflation.of(pairs.vectors, pairs.vectors @ A, [n])),
    ]:
        Z = flat.project(torch.stack([rademacher(n, 0, i) for i in range(100)]))
        values, _ = probe_values(Z, Z @ A, [n])
        spread[name] = values.std()
        result = estimate(values, values[:, None], flat.exact, flat.exact_entries, 100)
        assert abs(result.value - np.trace(A.numpy())) <= 4 * max(result.se, 1e-12)
    assert spread["deflated"] * 100 < spread["plain"]


def test_running_estimate_and_the_stopping_rule():
    samples = np.array([3.0, 5.0, 4.0, 4.5, 3.5, 4.0, 4.2, 3.8])
    mean, se = running(samples, exact=10.0)
    for k in range(2, len(samples) + 1):
        assert mean[k - 1] == pytest.approx(10.0 + samples[:k].mean())
        assert se[k - 1] == pytest.approx(samples[:k].std(ddof=1) / math.sqrt(k))
    assert math.isnan(se[0])
    k = stopping_count(samples, 10.0, rel_se=0.02, min_probes=3, max_probes=100)
    assert k is not None and se[k - 1] <= 0.02 * mean[k - 1] and all(se[3 - 1 : k - 1] > 0.02 * mean[2 : k - 1])
    assert stopping_count(samples[:4], 10.0, rel_se=1e-6, min_probes=3, max_probes=100) is None
    assert stopping_count(samples, 10.0, rel_se=1e-6, min_probes=3, max_probes=8) == 8  # the cap
    assert stopping_count(np.full(5, 2.0), 0.0, rel_se=1e-9, min_probes=2, max_probes=9) == 2


def test_segment_sums():
    rows = torch.arange(12, dtype=torch.float64).reshape(2, 6)
    assert segment_sums(rows, [1, 2, 3]).tolist() == [[0, 3, 12], [6, 15, 30]]


# -- density ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [3, 6])
def test_slq_quadrature_is_exact_for_moments_up_to_2m_minus_1(steps):
    """Per run Σ τ θᵖ = vᵀHᵖv for p ≤ 2m − 1 (Gauss quadrature), so over Hadamard start vectors the mean is
    tr(Hᵖ)/n exactly; and on a real network per run against its dense Hessian."""
    n = 32
    spectrum = np.r_[[6.0, 3.0, 2.5], np.linspace(-1.0, 1.0, n - 3)]
    A = known_spectrum(n, spectrum, seed=3)
    starts = torch.from_numpy(hadamard(n)) / math.sqrt(n)
    nodes, weights = slq(matvec_of(A), starts, steps)
    for p in range(2 * steps):
        per_run = [np.sum(w * t**p) for t, w in zip(nodes, weights)]
        exact = [float(v @ np.linalg.matrix_power(A.numpy(), p) @ v) for v in starts.numpy()]
        assert np.allclose(per_run, exact, rtol=1e-9, atol=1e-12)
        assert np.mean(per_run) == pytest.approx(np.sum(spectrum**p) / n, rel=1e-9, abs=1e-12)
    assert all(w.sum() == pytest.approx(1.0) for w in weights)

    model, x, y = conv_problem()
    H = reference_hessian(conv_problem, "biasbn")
    op = HessianOperator(model, x, y, 8, "biasbn")
    starts = torch.stack([slq_start(op.n, 0, r) for r in range(2)])
    nodes, weights = slq(op.many, starts, steps)
    for p in range(2 * steps):
        for t, w, v in zip(nodes, weights, starts.numpy()):
            exact = v @ np.linalg.matrix_power(H, p) @ v
            assert np.sum(w * t**p) == pytest.approx(exact, rel=1e-8, abs=1e-12 * abs(exact) + 1e-15)


def test_slq_stops_a_run_early_when_its_krylov_space_is_invariant():
    A = known_spectrum(8, np.array([3.0, 3.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), seed=0)
    checks = []
    nodes, weights = slq(matvec_of(A), slq_start(8, 0, 0)[None], steps=6, check=lambda: checks.append(1))
    assert len(nodes[0]) == 3 and np.allclose(np.sort(nodes[0]), [0.0, 1.0, 3.0], atol=1e-10)
    assert weights[0].sum() == pytest.approx(1.0)
    assert len(checks) == 6  # the remaining steps still taken (in step with other ranks)


def test_density_is_a_probability_density_with_the_stated_width():
    nodes = [np.array([-1.0, 0.0, 5.0]), np.array([0.5, 2.0])]
    weights = [np.array([0.2, 0.5, 0.3]), np.array([0.4, 0.6])]
    sigma = 0.1
    grid = density_grid(nodes, sigma, 20001)
    phi = density(nodes, weights, grid, sigma)
    assert np.trapezoid(phi, grid) == pytest.approx(1.0, rel=1e-6)
    peak = phi[np.argmin(abs(grid - 5.0))]  # one node alone: weight 0.3 of one run of two, a Gaussian's peak
    assert peak == pytest.approx(0.15 / (sigma * math.sqrt(2 * math.pi)), rel=1e-3)
    assert grid[0] == pytest.approx(-1.5) and grid[-1] == pytest.approx(5.5)
    assert auto_sigma(nodes) == pytest.approx(math.sqrt(1e-5 * 6.0))
    with pytest.raises(ValueError, match="sigma"):
        density(nodes, weights, grid, 0.0)


def test_the_hessian_parameters_follow_ignore():
    model, _, _ = conv_problem()
    assert sum(p.numel() for p in hessian_parameters(model, "biasbn").values()) == 108 + 216 + 18
    H, _, _ = dense_hessian(model, list(hessian_parameters(model, "none")), *conv_problem()[1:])
    assert H.shape == (363, 363)


def test_a_top_k_resumed_from_a_restart_state_is_bitwise_the_uninterrupted_run():
    n = 200
    rng = np.random.default_rng(7)
    A = known_spectrum(n, np.r_[[9.0, 7.0, 6.5, 4.0], rng.uniform(-1, 2, n - 5), [-3.0]], seed=8)
    states = []
    kwargs = dict(top=3, bottom=1, tol=1e-10, max_hvps=3000, basis=10, seed=2)
    whole = top_eigenpairs(matvec_of(A), n, on_restart=states.append, **kwargs)
    assert len(states) > 3 and states[1].basis.shape[1] == n
    later = top_eigenpairs(matvec_of(A), n, resume=states[2], **kwargs)
    assert np.array_equal(later.values, whole.values) and torch.equal(later.vectors, whole.vectors)
    assert later.hvps == whole.hvps

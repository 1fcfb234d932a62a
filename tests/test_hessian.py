"""Hessian eigenvalues against dense Hessians of tiny models, built independently (torch.func + autograd's dense
hessian, itself checked against finite differences of gradients), and Lanczos against numpy on known spectra."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from llmpi.compute import data
from llmpi.compute.hessian import EigenResult, HessianOperator, extreme_eigenvalues, hessian_parameters
from llmpi.space import checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny double-backward passes: threads only add contention (the machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TinyMLP(nn.Module):
    """8 -> 12 (tanh) -> 4: smooth, 160 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class TinyConvBN(nn.Module):
    """A 2-layer conv net with BatchNorm, ReLU and max-pooling on 3x8x8 inputs: 363 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        out = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        out = F.relu(self.conv2(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def mlp_problem(dtype=torch.float64, n=40):
    torch.manual_seed(0)
    model = TinyMLP().to(dtype)
    x = torch.randn(n, 8, dtype=dtype)
    y = torch.randint(0, 4, (n,))
    return model, x, y


def conv_problem(dtype=torch.float64, n=24):
    torch.manual_seed(1)
    model = TinyConvBN()
    with torch.no_grad():  # BatchNorm statistics and affine parameters away from their defaults
        model.bn1.running_mean.normal_(0, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.weight.uniform_(0.5, 1.5)
        model.bn1.bias.normal_(0, 0.2)
    model = model.to(dtype).eval()
    x = torch.randn(n, 3, 8, 8, dtype=dtype)
    y = torch.randint(0, 3, (n,))
    return model, x, y


def dense_hessian(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The full Hessian of the mean cross-entropy w.r.t. the named parameters, by torch.autograd.functional."""
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        moved = dict(params)
        for k, chunk, shape in zip(names, torch.split(flat, sizes), shapes):
            moved[k] = chunk.view(shape)
        return F.cross_entropy(functional_call(model, {**moved, **buffers}, (x,)), y)

    flat0 = torch.cat([params[k].reshape(-1) for k in names])
    return torch.autograd.functional.hessian(loss, flat0), loss, flat0


_DENSE: dict = {}


def reference_hessian(problem, ignore: str) -> np.ndarray:
    """The dense float64 Hessian over ``hessian_parameters(model, ignore)``: a submatrix of the full one."""
    if problem not in _DENSE:
        model, x, y = problem()
        H, _, _ = dense_hessian(model, [k for k, _ in model.named_parameters()], x, y)
        _DENSE[problem] = H.numpy()
    model, _, _ = problem()
    chosen = hessian_parameters(model, ignore)
    index = np.concatenate(
        [
            np.arange(start, start + p.numel())
            for (name, p), start in zip(
                model.named_parameters(), np.cumsum([0] + [p.numel() for p in model.parameters()])
            )
            if name in chosen
        ]
    )
    return _DENSE[problem][np.ix_(index, index)]


def test_dense_reference_agrees_with_finite_differences_of_gradients():
    """The reference itself, checked: central differences of autograd gradients in float64 (smooth MLP)."""
    model, x, y = mlp_problem()
    names = [k for k, _ in model.named_parameters()]
    H, loss, flat0 = dense_hessian(model, names, x, y)
    grad = lambda p: torch.autograd.functional.jacobian(loss, p)
    h = 1e-5
    fd = torch.stack([(grad(flat0 + h * e) - grad(flat0 - h * e)) / (2 * h) for e in torch.eye(len(flat0))], dim=1)
    assert torch.allclose(H, fd, atol=1e-8)


@pytest.mark.parametrize("problem", [mlp_problem, conv_problem])
@pytest.mark.parametrize("ignore", ["none", "biasbn"])
def test_eigenvalues_match_the_dense_hessian_float64(problem, ignore):
    model, x, y = problem()
    H = reference_hessian(problem, ignore)
    expected = np.linalg.eigvalsh(H)
    op = HessianOperator(model, x, y, batch_size=7, ignore=ignore)
    assert op.n == len(H)
    result = extreme_eigenvalues(op, tol=1e-10, max_hvps=len(H) + 5, seed=0)
    assert result.converged
    scale = max(abs(expected[0]), abs(expected[-1]))
    assert result.max_eig == pytest.approx(expected[-1], abs=1e-9 * scale)
    assert result.min_eig == pytest.approx(expected[0], abs=1e-9 * scale)
    assert result.ratio == pytest.approx(abs(expected[0] / expected[-1]), rel=1e-6)


@pytest.mark.parametrize("problem", [mlp_problem, conv_problem])
def test_eigenvalues_in_float32_are_within_the_stated_tolerance(problem):
    """The sweep's case: a float32 model. Errors stay within tol·|λmax| of the float64 dense answer."""
    model64, x64, y = problem()
    expected = np.linalg.eigvalsh(reference_hessian(problem, "biasbn"))
    model32 = model64.float()
    tol = 1e-3
    result = extreme_eigenvalues(HessianOperator(model32, x64.float(), y, batch_size=16), tol=tol, seed=3)
    assert result.converged
    scale = abs(expected[-1])
    assert abs(result.max_eig - expected[-1]) <= tol * scale
    assert abs(result.min_eig - expected[0]) <= tol * scale


def test_products_match_the_dense_hessian_whatever_the_batching():
    model, x, y = conv_problem()
    H = torch.from_numpy(reference_hessian(conv_problem, "none"))
    v = torch.randn(len(H), dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected = H @ v
    for batch in (1, 5, 24, 100):
        hv = HessianOperator(model, x, y, batch_size=batch, ignore="none")(v)
        assert torch.allclose(hv, expected, rtol=1e-10, atol=1e-12), batch


def test_the_paper_excludes_biases_and_batchnorm():
    model, _, _ = conv_problem()
    assert list(hessian_parameters(model, "biasbn")) == ["conv1.weight", "conv2.weight", "fc.weight"]
    assert len(hessian_parameters(model, "none")) == 8
    with pytest.raises(ValueError, match="ignore"):
        hessian_parameters(model, "bias")


def test_resnet_products_are_symmetric_in_eval_mode(fixture_data):
    """A real architecture, too large for a dense Hessian: u·Hv = v·Hu, and Hv is linear in v."""
    model = checkpoint.load_model(fixture_data.arch, fixture_data.checkpoint).double()
    im, lab, _ = data.load_images("cifar10", fixture_data.root, "train", 16, 0)
    x = data.normalize(im, dtype=torch.float64)
    y = torch.as_tensor(lab)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    op = HessianOperator(model, x, y, batch_size=8, ignore="biasbn")
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(op.n, dtype=torch.float64, generator=g), torch.randn(op.n, dtype=torch.float64, generator=g)
    hu, hv = op(u), op(v)
    assert float(u @ hv) == pytest.approx(float(v @ hu), rel=1e-9)
    assert torch.allclose(op(2 * u - v), 2 * hu - hv, rtol=1e-9, atol=1e-12)
    assert not model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # eval mode: running statistics untouched


def test_frozen_parameters_are_handled_and_stay_frozen():
    model, x, y = mlp_problem()
    for p in model.parameters():
        p.requires_grad_(False)
    H = torch.from_numpy(reference_hessian(mlp_problem, "none"))
    v = torch.ones(len(H), dtype=torch.float64)
    assert torch.allclose(HessianOperator(model, x, y, 40, ignore="none")(v), H @ v, rtol=1e-10)
    assert not any(p.requires_grad for p in model.parameters())


def test_out_of_memory_halves_an_automatic_batch_and_gives_the_same_product():
    model, x, y = mlp_problem()
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    expected = HessianOperator(model, x, y, batch_size=10, ignore="none")(v)

    def fail_above(module, args):  # an injected allocation failure for batches of more than 10 inputs
        if args[0].shape[0] > 10:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB")

    model.register_forward_pre_hook(fail_above)
    op = HessianOperator(model, x, y, batch_size=40, ignore="none", shrink_on_oom=True)
    with pytest.warns(RuntimeWarning) as caught:
        got = op(v)
    assert [str(w.message) for w in caught] == [
        "out of memory on cpu with Hessian batch 40; retrying the product with 20",
        "out of memory on cpu with Hessian batch 20; retrying the product with 10",
    ]
    assert op.batch_size == 10 and op.products == 1
    assert torch.allclose(got, expected, rtol=1e-12, atol=0)  # the same sum over the same batches of 10
    fixed = HessianOperator(model, x, y, batch_size=40, ignore="none")
    with pytest.raises(MemoryError, match="set hessian.batch_size smaller or to auto"):
        fixed(v)


def test_between_batches_is_called_before_every_batch_of_every_product():
    model, x, y = mlp_problem(n=40)
    calls = []
    op = HessianOperator(model, x, y, batch_size=16, ignore="none")
    result = extreme_eigenvalues(op, tol=1e-6, max_hvps=4, between_batches=lambda: calls.append(1))
    assert result.hvps == 4 and op.products == 4
    assert len(calls) == 4 * 3  # 40 images in batches of 16


def test_result_is_a_function_of_the_seed_alone():
    model, x, y = conv_problem()
    op = HessianOperator(model.float(), x.float(), y, batch_size=8)
    a = extreme_eigenvalues(op, tol=1e-4, seed=11)
    b = extreme_eigenvalues(op, tol=1e-4, seed=11)
    c = extreme_eigenvalues(op, tol=1e-4, seed=12)
    assert a == b  # bitwise: every rank computing this point gets the same numbers
    assert c.max_eig == pytest.approx(a.max_eig, abs=2e-4 * abs(a.max_eig))
    assert c.min_eig == pytest.approx(a.min_eig, abs=2e-4 * abs(a.max_eig))


def known_spectrum(n: int, eigenvalues: np.ndarray, seed: int) -> torch.Tensor:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return torch.from_numpy((q * eigenvalues) @ q.T)


@pytest.mark.parametrize("basis", [8, 20, 400])
@pytest.mark.parametrize("tol", [1e-2, 1e-4, 1e-7])
def test_lanczos_meets_its_stated_guarantee_with_and_without_restarts(basis, tol):
    """A Hessian-like spectrum (one large outlier, a dense band, a small negative end) in 400 dimensions.

    Always: each value within its residual (≤ tol·scale) of an eigenvalue, and inside the spectrum. At
    tol ≤ 1e-4 also within tol·λmax of the extremes themselves; at 1e-2 the smallest value may stop inside
    the band, which is why the default is 1e-3."""
    n = 400
    rng = np.random.default_rng(2)
    spectrum = np.concatenate([[20.0, 7.0], rng.uniform(-0.3, 2.0, n - 3), [-0.45]])
    A = known_spectrum(n, spectrum, seed=3)
    result = extreme_eigenvalues(lambda v: A @ v, n, tol=tol, max_hvps=2000, basis=basis, seed=1)
    assert result.converged and result.hvps < 2000
    bound = tol * max(abs(result.max_eig), abs(result.min_eig))
    assert max(result.max_residual, result.min_residual) <= bound
    for value, residual in [(result.max_eig, result.max_residual), (result.min_eig, result.min_residual)]:
        assert np.abs(spectrum - value).min() <= residual * (1 + 1e-9) + 1e-12
    assert -0.45 - 1e-12 <= result.min_eig < result.max_eig <= 20.0 + 1e-12
    assert abs(result.max_eig - 20.0) <= tol * 20.0
    if tol <= 1e-4:
        assert abs(result.min_eig + 0.45) <= tol * 20.0


def test_unconverged_results_are_flagged_and_bound_the_spectrum():
    n = 300
    spectrum = np.linspace(-1.0, 1.0, n)  # no gaps to speak of: slow convergence
    A = known_spectrum(n, spectrum, seed=4)
    result = extreme_eigenvalues(lambda v: A @ v, n, tol=1e-8, max_hvps=6, basis=10)
    assert not result.converged and result.hvps == 6
    assert result.max_residual > 1e-8 or result.min_residual > 1e-8
    assert -1.0 <= result.min_eig < result.max_eig <= 1.0  # Ritz values never leave the spectrum


def test_a_full_krylov_space_is_exact():
    spectrum = np.array([-2.0, 0.5, 1.0, 3.0])
    A = known_spectrum(4, spectrum, seed=0)
    result = extreme_eigenvalues(lambda v: A @ v, 4, tol=1e-12, max_hvps=50)
    assert result.converged and result.hvps <= 4
    assert result.max_eig == pytest.approx(3.0, abs=1e-12) and result.min_eig == pytest.approx(-2.0, abs=1e-12)


def test_ratio_and_bad_arguments():
    assert EigenResult(4.0, -0.02, 0, 0, True, 1, 1e-3).ratio == pytest.approx(0.005)
    assert np.isnan(EigenResult(0.0, 0.0, 0, 0, True, 1, 1e-3).ratio)
    A = torch.eye(3, dtype=torch.float64)
    for kwargs, word in [({"tol": 0.0}, "tol"), ({"max_hvps": 0}, "max_hvps"), ({"basis": 2}, "basis")]:
        with pytest.raises(ValueError, match=word):
            extreme_eigenvalues(lambda v: A @ v, 3, **kwargs)
    model, x, y = mlp_problem()
    with pytest.raises(ValueError, match="batch_size"):
        HessianOperator(model, x, y, batch_size=0)
    with pytest.raises(ValueError, match="entries"):
        HessianOperator(model, x, y, batch_size=4)(torch.zeros(3, dtype=torch.float64))

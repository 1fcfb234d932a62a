"""llmpi.spectrum from Python: the Hessian's spectrum at θ* of a network in memory, against a dense Hessian computed
here; θ* untouched; a file that a second call resumes without a product; llmpi.open of a spectrum file; errors as
exceptions; and an SPMD program under mpirun whose ranks all get the one-process values."""

from __future__ import annotations

import copy
import subprocess

import numpy as np
import pytest
import torch
from conftest import REPO, rank_rows, run_script
from torch import nn

import llmpi
from llmpi.ranks import spectrum as ranks_spectrum

SPEC = {"topk": {"k": 3, "tol": 1e-6}, "trace": {"rel_se": 0.05, "min_probes": 8}, "density": {"runs": 3, "steps": 8}}
KW = {"runtime": {"threads": 1}, "hessian_ignore": "none", "spectrum": SPEC}


def network_and_data() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    return model, (torch.randn(90, 5), torch.randint(0, 3, (90,)))


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """The float64 Hessian of the mean cross-entropy w.r.t. every parameter (torch.func, not llmpi's products)."""
    twin = copy.deepcopy(model).double()
    double = {n: p.detach() for n, p in twin.named_parameters()}
    names, shapes = list(double), [p.shape for p in double.values()]
    sizes = [p.numel() for p in double.values()]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        weights = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        out = torch.func.functional_call(twin, weights, (x.double(),))
        return nn.functional.cross_entropy(out, y)

    flat = torch.cat([p.reshape(-1) for p in double.values()])
    return torch.func.hessian(loss)(flat).numpy()


def test_the_spectrum_of_a_network_in_memory_matches_its_dense_hessian_and_leaves_it_untouched():
    model, (x, y) = network_and_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    h = llmpi.spectrum(model, (x, y), analyses=["topk", "trace", "density"], **KW)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # θ* bit for bit
    H = dense_hessian(model, x, y)
    exact = np.linalg.eigvalsh(H)[::-1]
    assert np.allclose(h.eigenvalues, exact[:3], rtol=1e-6, atol=0), (h.eigenvalues, exact[:3])
    assert h.converged.all() and (h.residuals <= 1e-5 * abs(exact[0])).all()
    v = h.eigenvectors[0]  # a unit eigenvector of the dense Hessian (up to sign)
    assert abs(np.linalg.norm(v) - 1) < 1e-9 and np.linalg.norm(H @ v - exact[0] * v) < 1e-5
    assert h.eigenvector(0)["0.weight"].shape == (7, 5)
    assert abs(h.trace - np.trace(H)) <= 3 * h.trace_se, (h.trace, np.trace(H), h.trace_se)
    assert h.trace_se <= 0.05 * abs(h.trace) * 1.0001
    assert sum(v for v, _ in h.layer_traces.values()) == pytest.approx(h.trace, rel=1e-12)
    grid, values = h.density
    assert grid.shape == values.shape and (values >= 0).all() and h.nodes.shape == (3, 8)
    assert h.path is None and "in memory" in repr(h) and "top eigenvalues" in repr(h)
    assert h.plot("density").axes and h.plot("layers").axes
    with pytest.raises(llmpi.JobError, match="kind 'bars'"):
        h.plot("bars")


def test_llmpi_spectrum_is_the_command_and_the_function_alike():
    """Importing the command's module sets the package's attribute ``spectrum``: the module is the callable API."""
    import importlib

    command = importlib.import_module("llmpi.spectrum")
    assert llmpi.spectrum is command and callable(command) and callable(command.main)
    model, data = network_and_data()
    h = llmpi.spectrum(model, data, analyses="topk", **{**KW, "spectrum": {"topk": {"k": 1}}})
    assert len(h.eigenvalues) == 1


def test_a_file_is_resumed_by_a_second_call_without_a_product_and_opened_by_llmpi_open(tmp_path, monkeypatch):
    model, data = network_and_data()
    path = tmp_path / "spectrum.h5"
    first = llmpi.spectrum(model, data, analyses=["topk", "trace"], output=path, **KW)
    assert first.path == path and path.exists()

    def no_product(*args, **kwargs):
        raise AssertionError("a complete file recomputed a Hessian-vector product")

    monkeypatch.setattr(ranks_spectrum.Products, "data", no_product)
    monkeypatch.setattr(ranks_spectrum.Products, "alone", no_product)
    again = llmpi.spectrum(model, data, analyses=["topk", "trace"], output=path, **KW)
    assert np.array_equal(again.eigenvalues, first.eigenvalues) and again.trace == first.trace
    opened = llmpi.open(path)
    assert isinstance(opened, llmpi.Spectrum) and np.array_equal(opened.eigenvectors, first.eigenvectors)
    assert opened.density is None and str(path) in repr(opened)
    with torch.no_grad():  # another θ*: the file is another job's, refused by name
        model[0].weight[0, 0] += 1.0
    with pytest.raises(llmpi.JobError, match="restart"):
        llmpi.spectrum(model, data, analyses=["topk", "trace"], output=path, **KW)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"spectrum": {"topk": {"k": 70, "basis": 200}}}, "at most 66"),
        ({"spectrum": {"topk": {"kk": 3}}}, "did you mean 'k'"),
        ({"spectrum": {"trace": {"max_probes": 0}}}, "max_probes"),
        ({"loss": lambda model, batch: (torch.tensor(1.0), len(batch[1]), None)}, "graph"),
    ],
    ids=["k-too-large", "misspelled", "zero-probes", "loss-without-graph"],
)
def test_bad_input_is_one_job_error_never_system_exit(tmp_path, change, words):
    model, data = network_and_data()
    keys = {**KW, **change, "output": tmp_path / "s.h5"}
    with pytest.raises(llmpi.JobError, match=words):
        llmpi.spectrum(model, data, **keys)
    assert not (tmp_path / "s.h5").exists() or words == "graph"


SCRIPT = REPO / "tests" / "spmd_spectrum.py"


def run(*args: str, ranks: int | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, *args, ranks=ranks, timeout=timeout)


@pytest.mark.mpi
def test_two_ranks_give_every_rank_the_one_process_spectrum(tmp_path):
    two = run(str(tmp_path / "two.h5"), ranks=2)
    assert two.returncode == 0, two.stderr
    one = run(str(tmp_path / "one.h5"))
    assert one.returncode == 0, one.stderr
    got, alone = rank_rows(two.stdout), rank_rows(one.stdout)[0]
    assert sorted(got) == [0, 1] and got[0] == {**got[1], "rank": 0}  # the same Spectrum on every rank
    # the products are sums of the ranks' shares: the last bits may differ from one process, nothing more
    assert np.allclose(got[0]["eigenvalues"], alone["eigenvalues"], rtol=1e-6, atol=0)
    assert got[0]["trace"] == pytest.approx(alone["trace"], rel=1e-6)
    assert np.allclose(got[0]["nodes"], alone["nodes"], rtol=1e-6, atol=1e-9)


@pytest.mark.mpi
def test_a_rank_whose_network_differs_is_named(tmp_path):
    result = run(str(tmp_path / "s.h5"), "--differ", "1", ranks=2, timeout=120)
    assert result.returncode != 0
    assert "rank 1 of 2 holds other weights (θ*) than rank 0" in result.stderr + result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch sees no GPU here")
def test_the_spectrum_of_a_network_on_the_gpu_matches_the_cpus():
    model, (x, y) = network_and_data()
    keys = {**KW, "runtime": {"threads": 1, "precision": "fp32"}}
    cpu = llmpi.spectrum(model, (x, y), analyses=["topk"], **keys, runtime_device="cpu")
    gpu = llmpi.spectrum(model.cuda(), (x.cuda(), y.cuda()), analyses=["topk"], **keys, runtime_device="cuda")
    assert next(model.parameters()).is_cuda  # left where it was
    assert np.allclose(gpu.eigenvalues, cpu.eigenvalues, rtol=1e-5, atol=0)

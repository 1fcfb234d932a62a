"""llmpi from Python (``llmpi.surface``, ``llmpi.open``, ``llmpi.Job``), in this process: the same file and bits as
the command line on the same job, θ* untouched, the error catalogue raised as ``llmpi.JobError`` before any work,
nothing left behind (signal handlers, torch settings, threads, communicators, locks), and the Surface's
pictures and numbers. The SPMD runs under mpirun are in test_api_mpi.py, the notebook and the kernel interrupt in
test_notebook.py.

MPI starts here as a singleton, in the pytest process, as it does in a notebook's kernel.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, job_dict, run_cli, write_job
from torch import nn

import llmpi
from llmpi.compute import data as cifar
from llmpi.file.store import WriterLock, read_directions, read_run_info, read_surface
from llmpi.space import checkpoint

# one batch and the eager path on both sides: the choices "auto" leaves to timing are made alike
FIXED = {"data": {"batch_size": 32}, "runtime": {"device": "cpu", "threads": 1, "compile": False, "fold": False}}
KW = {"data_batch_size": 32, "runtime": FIXED["runtime"]}  # the same as llmpi.surface's keywords


def cli_job(fx, out: Path, **sections) -> dict:
    job = job_dict(fx, out, **sections)
    for key, value in FIXED.items():
        job[key] = {**job[key], **value}
    return job


def in_memory(fx):
    """The fixture's network and all 500 training images as tensors, normalised as the command normalises them."""
    model = checkpoint.load_model(fx.arch, fx.checkpoint)
    images, labels = cifar.load_cifar10(fx.root, "train", download=False)
    return model, (cifar.normalize(images), torch.as_tensor(labels))


def same_values(a, b) -> None:
    assert a.values.keys() == b.values.keys()
    for key in a.values:
        assert np.array_equal(a.values[key], b.values[key], equal_nan=True), key
    assert np.array_equal(a.done, b.done)


@pytest.fixture(scope="module")
def cli_surface(fixture_data, tmp_path_factory):
    """The command line's file of the fixture job (output ``surface.h5``, relative: run in its own folder), with the
    batch and forward path fixed."""
    d = tmp_path_factory.mktemp("cli")
    job = write_job(d / "job.yaml", cli_job(fixture_data, Path("surface.h5")))
    result = run_cli("llmpi.sweep", str(job), cwd=d)
    assert result.returncode == 0, result.stderr
    return d / "surface.h5", job


def test_import_llmpi_loads_neither_torch_nor_mpi_nor_h5py_nor_matplotlib():
    code = (
        "import sys, llmpi\n"
        "assert llmpi.__version__ and 'surface' in dir(llmpi) and 'surface' in llmpi.__all__\n"
        "print([m for m in ('torch', 'mpi4py', 'h5py', 'matplotlib', 'numpy') if m in sys.modules])\n"
        "llmpi.Job, llmpi.JobError, llmpi.interpolate\n"
        "print([m for m in ('torch', 'mpi4py', 'h5py', 'matplotlib', 'numpy') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "[]"]  # the job tree needs yaml alone


@pytest.mark.slow  # the command line in a subprocess, resnet8
def test_api_on_a_job_of_files_writes_the_commands_file_byte_for_byte(cli_surface, tmp_path, monkeypatch):
    """The same job file run by llmpi.surface in this process and by python -m llmpi.sweep, each in its own folder:
    the same bytes (structure, attributes, fingerprint, directions, values)."""
    path, job_file = cli_surface
    monkeypatch.chdir(tmp_path)
    s = llmpi.surface(job=llmpi.Job.from_yaml(job_file))
    assert s.complete and s.where == "surface.h5"
    assert (tmp_path / "surface.h5").read_bytes() == path.read_bytes()


@pytest.mark.slow  # the command line in a subprocess, resnet8
def test_model_and_data_in_memory_give_the_commands_bits_and_leave_theta_untouched(
    fixture_data, cli_surface, tmp_path
):  # fmt: skip
    """resnet8 (with BatchNorm) and the images as tensors in memory, in train mode and with gradients as a training
    loop leaves them: the values and directions bitwise the command's on the equivalent job; the network's
    parameters, buffers, mode, flags and gradients bit for bit as before."""
    path, _ = cli_surface
    model, pair = in_memory(fixture_data)
    model(pair[0][:8]).sum().backward()  # gradients, as a training step leaves them (eval mode: statistics kept)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    handler = signal.getsignal(signal.SIGINT)
    threads_before = torch.get_num_threads()
    s = llmpi.surface(
        model, pair, grid=((-1, 1, 5), (-1, 1, 4)), directions={"seed": 3}, data_subset=64,
        grid_block=2, output=tmp_path / "memory.h5", **KW,
    )  # fmt: skip
    same_values(read_surface(tmp_path / "memory.h5"), read_surface(path))
    for a, b in zip(read_directions(tmp_path / "memory.h5"), read_directions(path), strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(grads[k], p.grad) for k, p in model.named_parameters())
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert signal.getsignal(signal.SIGINT) is handler and torch.get_num_threads() == threads_before
    assert not WriterLock.is_held(tmp_path / "memory.h5")
    job = s.job
    assert job.model.factory == "in memory: CifarResNet" and job.data.factory == "in memory: tensors"
    assert json.loads(s.attrs["fingerprint_fields"])["model"]["factory"]["structure_sha256"]


@pytest.mark.slow  # the command line in a subprocess, resnet8
def test_a_rerun_resumes_and_a_changed_model_is_refused(fixture_data, tmp_path, monkeypatch):
    model, pair = in_memory(fixture_data)
    kw = dict(grid=(-1, 1, 5), data_subset=32, output=tmp_path / "r.h5", **KW)
    first = llmpi.surface(model, pair, **kw)
    again = llmpi.surface(model, pair, **kw)
    assert read_run_info(tmp_path / "r.h5")["points_this_run"] == 0
    same_values(first, again)
    before = (tmp_path / "r.h5").read_bytes()
    with torch.no_grad():
        next(model.parameters())[0, 0, 0, 0] += 1e-6
    with pytest.raises(llmpi.JobError, match=r"holds another job's surface \(checkpoint_sha256: file '"):
        llmpi.surface(model, pair, **kw)
    assert (tmp_path / "r.h5").read_bytes() == before
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where a surface kept in memory is swept
    mem = llmpi.surface(model, pair, **{**kw, "output": None})
    assert mem.where == "in memory" and mem.complete and len(mem.directions) == 1
    file = llmpi.surface(model, pair, **{**kw, "output": tmp_path / "changed.h5"})
    same_values(mem, file)
    assert all(np.array_equal(mem.directions[0][k], file.directions[0][k]) for k in file.directions[0])
    assert not list(tmp_path.glob("llmpi-surface-*"))  # its temporary file is gone
    assert mem.job.output == "surfaces/CifarResNet.h5"


# The error catalogue: each is one llmpi.JobError (a ValueError) with the command's message, raised before any
# point is computed, the output untouched; never SystemExit.


class Buffers(nn.Module):
    """A network without parameters: only a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(3))

    def forward(self, x):
        return x[:, :3] * self.scale


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _pair(features: int = 6):
    g = torch.Generator().manual_seed(0)
    return torch.randn(48, features, generator=g), torch.randint(0, 3, (48,), generator=g)


CATALOGUE = [
    ("a model without parameters", dict(model=Buffers()), "model: in memory: Buffers has no parameters"),
    (
        "data whose shapes the model refuses",
        dict(data=_pair(features=5)),
        "the network in memory: Sequential cannot take the data: on 2 samples of a tensor of shape (2, 5)",
    ),
    (
        "a loss returning the wrong shape",
        dict(loss=lambda model, batch: model(batch[0]).sum(dim=1)),
        "returned a tensor of shape (2,), not (summed loss, number of samples, number correct or None)",
    ),
    ("a grid with no points", dict(grid=(-1, 1, 0)), "grid.x: num must be at least 1, not 0"),
    (
        "an unknown keyword",
        dict(runtime_thread=1),
        "unknown job keyword 'runtime_thread'; did you mean 'runtime_threads'",
    ),
    (
        "an unknown key in a section",
        dict(runtime={"thread": 1}),
        "unknown key 'runtime.thread'; did you mean 'threads'",
    ),
    ("a bad value", dict(data_subset=0), "data.subset must be null or a positive number of images, not 0"),
    ("a subset larger than the data", dict(data_subset=1000), "data.subset is 1000 but the split has only 48"),
    ("one data set for two splits", dict(data_split="both"), "data.split: both evaluates a train and a test split"),
    ("a split not given", dict(data={"train": _pair()}, data_split="test"), "the job evaluates the test split, but"),
    ("a mapping of unknown splits", dict(data={"valid": _pair()}), "a mapping of splits takes 'train' and 'test'"),
    ("a bad grid", dict(grid="wide"), "grid: (min, max, num) for a line"),
    ("hessian with a loss function", dict(metrics=["hessian"], loss=lambda m, b: (0.0, 1, None)), "metrics: [hessian]"),
]


@pytest.mark.parametrize("case", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_the_error_catalogue_is_one_job_error_before_any_work(tmp_path, case):
    _, change, expected = case
    args = {"model": _mlp(), "data": _pair(), "grid": (-1, 1, 3), "output": tmp_path / "s.h5", **KW, **change}
    with pytest.raises(llmpi.JobError) as caught:
        llmpi.surface(**args)
    assert expected in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert not (tmp_path / "s.h5").exists()


def test_an_output_another_job_wrote_is_refused_untouched(tmp_path):
    args = {"grid": (-1, 1, 3), "output": tmp_path / "s.h5", **KW}
    llmpi.surface(_mlp(), _pair(), **args)
    before = (tmp_path / "s.h5").read_bytes()
    with pytest.raises(llmpi.JobError, match=r"holds another job's surface \(directions.seed: file 0, job 4\)"):
        llmpi.surface(_mlp(), _pair(), directions={"seed": 4}, **args)
    assert (tmp_path / "s.h5").read_bytes() == before


@pytest.mark.slow  # the command line in a subprocess
@pytest.mark.parametrize(
    "change", [{"grid": {"y": [1.0, -1.0, 3]}}, {"data": {"subset": 5000}}], ids=["in the job", "in the set-up"]
)
def test_the_same_bad_job_says_the_same_through_the_command_and_the_api(fixture_data, tmp_path, change):
    raw = cli_job(fixture_data, tmp_path / "s.h5", **change)
    result = run_cli("llmpi.sweep", str(write_job(tmp_path / "job.yaml", raw)))
    assert result.returncode == 2
    with pytest.raises(llmpi.JobError) as caught:
        llmpi.surface(job=tmp_path / "job.yaml")
    assert f"llmpi: error: {caught.value}\n" in result.stderr


def test_interpolation_and_plane_with_models_in_memory(tmp_path):
    model, others = _mlp(), []
    for seed in (1, 2):
        torch.manual_seed(seed)
        others.append(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)))
    x, y = _pair()
    line = llmpi.surface(model, (x, y), directions=llmpi.interpolate(others[0]), grid=(0, 1, 3), **KW)
    loss = nn.functional.cross_entropy
    with torch.no_grad():
        assert line["train_loss"][0] == pytest.approx(loss(model(x), y).item(), rel=1e-6)
        assert line["train_loss"][-1] == pytest.approx(loss(others[0](x), y).item(), rel=1e-5)
    plane = llmpi.surface(model, (x, y), directions=llmpi.plane(*others), grid=((0, 1, 2), (0, 1, 2)), **KW)
    with torch.no_grad():
        assert plane["train_loss"][1, 0] == pytest.approx(loss(others[1](x), y).item(), rel=1e-5)
    assert plane.job.model.checkpoint3 == "in memory: Sequential (third model)"
    assert "model_coordinates" in plane.extras


def test_a_job_with_parts_in_memory_says_how_to_write_it_out(tmp_path):
    def summed(model, batch):
        return nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="sum"), len(batch[1]), None

    s = llmpi.surface(_mlp(), _pair(), loss=summed, grid=(-1, 1, 3), **KW)
    with pytest.raises(llmpi.JobError) as caught:
        s.job.to_yaml()
    text = str(caught.value)
    assert "model.factory, data.factory and loss.factory were given in memory" in text
    assert "torch.save({'state_dict': model.state_dict()}, 'theta.pt')" in text and "loss.factory: package" in text
    job = s.job.replace(
        model={"factory": "examples.tinylm:model", "checkpoint": "theta.pt"},
        data={"factory": "examples.tinylm:data"},
        loss="examples.tinylm:loss",
        name="written",
    )
    out = job.to_yaml(tmp_path / "job.yaml")
    again = llmpi.Job.from_yaml(tmp_path / "job.yaml")
    assert yaml.safe_load(out) == again.to_dict() and again.output == "surfaces/written.h5"
    assert again.model.factory == "examples.tinylm:model" and again.loss.factory == "examples.tinylm:loss"
    # a label without its object (a job copied from a file's attribute) says what to do instead
    copied = llmpi.Job.from_dict(yaml.safe_load(s.attrs["job"]))
    with pytest.raises(llmpi.JobError, match=r"model.factory: .in memory: Sequential. names a part given"):
        llmpi.surface(job=copied)


def test_no_thread_handler_setting_or_communicator_is_left_behind(tmp_path):
    from mpi4py import MPI

    class Counting(MPI.Intracomm):
        live = 0

        def Dup(self, *args):
            Counting.live += 1
            return super().Dup(*args)

        def Split_type(self, *args, **kwargs):
            Counting.live += 1
            return Counting(super().Split_type(*args, **kwargs))

        def Free(self):
            Counting.live -= 1
            super().Free()

    threads = set(threading.enumerate())
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)]
    settings = (torch.get_num_threads(), torch.backends.cudnn.benchmark, torch.backends.mkldnn.deterministic)
    for _ in range(2):  # a second call in the same process works too
        llmpi.surface(_mlp(), _pair(), grid=(-1, 1, 3), comm=Counting(MPI.COMM_WORLD), **KW)
    assert Counting.live == 0
    assert set(threading.enumerate()) == threads
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)] == handlers
    assert (torch.get_num_threads(), torch.backends.cudnn.benchmark, torch.backends.mkldnn.deterministic) == settings


def test_the_docstring_lists_every_key_of_the_command():
    from llmpi.job.schema import keys

    for key in keys(llmpi.Job):
        assert f"{key.path}:" in llmpi.surface.__doc__, key.path


def test_keywords_reach_every_key():
    base = llmpi.Job.from_dict({"name": "k", "model": {"arch": "resnet8", "checkpoint": "c.pt"}})
    job = base.replace(
        data_placement="host", runtime={"threads": 2}, **{"hessian.max_hvps": 50}, grid=((-2, 2, 3), (-1, 1, 5)),
        loss="mse", evaluation_bn_batches=3,
    )  # fmt: skip
    assert job.data.placement == "host" and job.runtime.threads == 2 and job.hessian.max_hvps == 50
    assert job.grid.x == (-2.0, 2.0, 3) and job.grid.y == (-1.0, 1.0, 5) and job.loss.name == "mse"
    assert job.evaluation.bn_batches == 3 and job.output == "surfaces/k.h5"
    assert base.replace(name="other").output == "surfaces/other.h5"


# The Surface: values with coordinates, pictures, numbers, repr


@pytest.fixture(scope="module")
def plane_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("plane")
    llmpi.surface(_mlp(), _pair(), grid=((-1, 1, 5), (-1, 1, 4)), output=d / "p.h5", name="plane", **KW)
    return d / "p.h5"


def test_open_gives_values_with_their_coordinates_and_a_useful_repr(plane_file):
    s = llmpi.open(plane_file)
    assert s["train_loss"].shape == (4, 5) and len(s.x) == 5 and len(s.y) == 4
    X, Y = s.mesh
    assert X.shape == (4, 5) and X[0, 3] == s.x[3] and Y[2, 0] == s.y[2]
    low, at = s.lowest()
    assert low == np.nanmin(s["train_loss"]) and len(at) == 2
    text = repr(s)
    assert "llmpi.Surface 'plane': 5×4 grid" in text and "20 of 20 points computed (100%)" in text
    assert f"train_loss: min {low:.6g}" in text and str(plane_file) in text and "tensors in memory" in text


def test_plot_show_metrics_and_vtk(plane_file, tmp_path):
    from matplotlib.figure import Figure
    from plotly.graph_objects import Figure as PlotlyFigure

    from llmpi.report.summary import surface_metrics

    s = llmpi.open(plane_file)
    for kind in ("contour", "contourf", "heat", "surface"):
        assert isinstance(s.plot(kind=kind), Figure)
    fig = s.plot(value="train_acc", vmax=90)
    assert "plane — train accuracy" in fig.get_suptitle()
    with pytest.raises(llmpi.JobError, match="has no value 'test_loss'"):
        s.plot(value="test_loss")
    shown = s.show()
    assert isinstance(shown, PlotlyFigure) and shown.data[0].type == "surface"
    assert np.allclose(np.asarray(shown.data[0].z, float), np.minimum(s["train_loss"], np.nanmin(s["train_loss"]) + 10))
    assert any(t.type == "scatter3d" for t in shown.data)  # θ* marked
    assert s.metrics() == surface_metrics(plane_file)
    out = s.to_vtk(tmp_path / "p.vtk")
    assert out.read_bytes().startswith(b"# vtk DataFile")


def test_a_one_dimensional_surface_plots_its_curves():
    from matplotlib.figure import Figure

    s = llmpi.surface(_mlp(), _pair(), grid=(-1, 1, 5), **KW)
    assert isinstance(s.plot(), Figure) and s.plot(value="train_loss")
    shown = s.show()
    assert [t.type for t in shown.data] == ["scatter", "scatter"]
    with pytest.raises(llmpi.JobError, match="needs a 2D surface"):
        s.plot(kind="contour")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch sees no GPU here")
def test_a_network_and_data_on_the_gpu_stay_there_untouched():
    model = _mlp().cuda()
    x, y = (t.cuda() for t in _pair())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    device = torch.cuda.current_device()
    gpu = {"data_batch_size": 32, "runtime": {"device": "cuda", "threads": 1, "compile": False, "fold": False}}
    s = llmpi.surface(model, (x, y), grid=(-1, 1, 5), **gpu)
    on_cpu = llmpi.surface(_mlp(), _pair(), grid=(-1, 1, 5), **KW)
    assert np.allclose(s["train_loss"], on_cpu["train_loss"], rtol=1e-5)  # fp32 without TF32 on both
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).is_cuda and x.is_cuda and torch.cuda.current_device() == device


def test_a_dataset_and_a_shuffling_loader_give_the_pairs_bits():
    """Items are selected and held as the command holds data: a Dataset's items in order, a DataLoader's dataset
    (its shuffling and batching play no part), the same subset of each."""
    from torch.utils.data import DataLoader, TensorDataset

    x, y = _pair()
    args = {"grid": (-1, 1, 5), "data_subset": 40, **KW}
    pair = llmpi.surface(_mlp(), (x, y), **args)
    dataset = llmpi.surface(_mlp(), TensorDataset(x, y), **args)
    loader = llmpi.surface(_mlp(), DataLoader(TensorDataset(x, y), batch_size=7, shuffle=True), **args)
    same_values(pair, dataset)
    same_values(pair, loader)
    assert "DataLoader of TensorDataset in memory" in loader.attrs["dataset"]


def test_pca_directions_of_a_trajectory_around_a_network_in_memory(tmp_path):
    """directions=llmpi.pca(folder): the trajectory's snapshots from files, θ* (its end) in memory."""
    model = _mlp()
    folder = tmp_path / "trajectory"
    folder.mkdir()
    x, y = _pair()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for epoch in range(5):
        torch.save({"state_dict": model.state_dict()}, folder / f"epoch_{epoch:03d}.pt")
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    torch.save({"state_dict": model.state_dict()}, folder / "epoch_005.pt")
    s = llmpi.surface(model, (x, y), directions=llmpi.pca(folder), grid=((-1, 1, 3), (-1, 1, 3)), **KW)
    assert s.complete and s.extras["trajectory/x"].shape == (6,) and s.job.directions.kind == "pca"
    assert s.extras["explained_variance_ratio"].sum() <= 1 + 1e-9

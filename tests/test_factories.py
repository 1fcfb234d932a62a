"""Users' own model, data and loss, and BatchNorm recalibration: real sweeps under mpirun -n 2 against
independent plain-torch computations written here, plus the pieces in-process."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import REPO, run_cli, write_job

from llmpi.compute import data, losses
from llmpi.file.store import read_directions, read_surface
from llmpi.job.config import DataSpec, from_dict
from llmpi.job.errors import JobError

PACKAGE = {
    "__init__.py": "",
    "nets.py": """
        import torch
        from torch import nn

        def build(width=12, classes=4):
            return nn.Sequential(nn.Linear(16, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, classes))
    """,
    "sets.py": """
        import torch

        def tensors(split, n=96):
            centres = 2 * torch.randn(4, 16, generator=torch.Generator().manual_seed(5))
            g = torch.Generator().manual_seed(0 if split == "train" else 1)
            y = torch.randint(0, 4, (n,), generator=g)
            return centres[y] + torch.randn(n, 16, generator=g), y

        class Pairs(torch.utils.data.Dataset):
            def __init__(self, x, y):
                self.x, self.y = x, y
            def __len__(self):
                return len(self.y)
            def __getitem__(self, i):
                return self.x[i], int(self.y[i])

        def dataset(split, n=96):
            return Pairs(*tensors(split, n))
    """,
    "lossfn.py": """
        import torch.nn.functional as F

        def summed_ce(model, batch):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="none").double().sum(), len(y), None
    """,
}


@pytest.fixture(scope="module")
def userpkg(tmp_path_factory):
    """A user's package (model, data, loss factories) in a folder of its own, and a checkpoint of its model."""
    root = tmp_path_factory.mktemp("user")
    (root / "i7pkg").mkdir()
    for name, text in PACKAGE.items():
        (root / "i7pkg" / name).write_text(textwrap.dedent(text))
    sys.path.insert(0, str(root))
    from i7pkg import nets, sets

    torch.manual_seed(0)
    model = nets.build()
    x, y = sets.tensors("train")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save({"state_dict": model.state_dict()}, root / "net.pt")
    yield root
    sys.path.remove(str(root))


def user_job(root, output, **sections) -> dict:
    job = {
        "name": "user",
        "model": {"factory": "i7pkg.nets:build", "checkpoint": str(root / "net.pt")},
        "data": {"factory": "i7pkg.sets:tensors", "kwargs": {"n": 96}, "split": "train", "batch_size": 32},
        "directions": {"seed": 1},
        "grid": {"x": [-1.0, 1.0, 3], "y": [-1.0, 1.0, 2]},
        "output": str(output),
        "runtime": {"device": "cpu", "threads": 1},
    }
    for key, value in sections.items():
        job[key] = {**job.get(key, {}), **value}
    return job


def sweep(root, job: dict, name: str, ranks: int | None = 2, cwd=None):
    path = write_job(root / f"{name}.yaml", job)
    result = run_cli("llmpi.sweep", str(path), ranks=ranks, cwd=cwd or root)
    assert result.returncode == 0, result.stderr
    return read_surface(job["output"]), result


def perturbed(state: dict, directions: list[dict], point) -> dict:
    """θ* + a·δ + b·η formed by hand in float64 from the stored directions."""
    out = {}
    for name, value in state.items():
        v = value.double() if value.is_floating_point() else value
        for c, d in zip(point, directions):
            if name in d:
                v = v + c * torch.as_tensor(d[name]).double()
        out[name] = v.float() if value.is_floating_point() else v
    return out


def points(surface):
    for j, b in enumerate(surface.y):
        for i, a in enumerate(surface.x):
            yield (j, i), (a, b)


def user_model_at(root, directions, point):
    from i7pkg import nets

    model = nets.build()
    model.load_state_dict(perturbed(torch.load(root / "net.pt")["state_dict"], directions, point))
    return model.eval().double()


# ----------------------------------------------------------------------------------------------------------------
# Real sweeps


@pytest.mark.mpi
def test_model_and_data_factories_with_mse_under_two_ranks(userpkg, tmp_path):
    """model.factory + data.factory (tensors) + the mse loss: every point equals the paper's formula in float64."""
    from i7pkg import sets

    job = user_job(userpkg, tmp_path / "mse.h5", loss={"name": "mse"})
    s, result = sweep(tmp_path, job, "mse", cwd=userpkg)
    assert s.complete and "i7pkg.nets:build on i7pkg.sets:tensors (data.factory)" in result.stdout
    dirs = read_directions(tmp_path / "mse.h5")
    x, y = sets.tensors("train")
    for (j, i), point in points(s):
        with torch.no_grad():
            p = torch.softmax(user_model_at(userpkg, dirs, point)(x.double()), dim=1)
        mse = torch.nn.MSELoss()(p, F.one_hot(y, 4).double()).item()  # the paper's code: mean over classes, samples
        acc = 100.0 * (p.argmax(1) == y).double().mean().item()
        assert s.values["train_loss"][j, i] == pytest.approx(mse, rel=1e-5)
        assert s.values["train_acc"][j, i] == pytest.approx(acc, abs=1e-9)

    # The loss, a factory's kwargs and the BatchNorm handling are in the fingerprint: a resume is refused.
    path = write_job(tmp_path / "other.yaml", {**job, "loss": {"name": "crossentropy"}, "data": {**job["data"]}})
    refused = run_cli("llmpi.sweep", str(path), "--set", "data.kwargs={n: 90}", cwd=userpkg)
    assert refused.returncode == 2 and "another job's surface" in refused.stderr, refused.stderr
    assert "loss.name: file 'mse', job 'crossentropy'" in refused.stderr
    assert "data_factory.kwargs.n: file 96, job 90" in refused.stderr


@pytest.mark.mpi
def test_loss_factory_without_accuracy_and_dataset_subset(userpkg, tmp_path):
    """A Dataset from the data factory (subset picked as for CIFAR) and a loss factory counting no hits: the file
    holds the loss (Σ summed loss / Σ n) and no accuracy dataset at all."""
    from i7pkg import sets

    job = user_job(
        userpkg,
        tmp_path / "f.h5",
        data={"factory": "i7pkg.sets:dataset", "subset": 40, "seed": 4, "batch_size": 16},
        loss={"factory": "i7pkg.lossfn:summed_ce"},
    )
    s, _ = sweep(tmp_path, job, "f", cwd=userpkg)
    assert s.complete and set(s.values) == {"train_loss"}
    dirs = read_directions(tmp_path / "f.h5")
    x, y = sets.tensors("train")
    pick = np.random.default_rng(4).permutation(96)[:40]
    for (j, i), point in points(s):
        with torch.no_grad():
            logits = user_model_at(userpkg, dirs, point)(x[pick].double())
        expected = -torch.log_softmax(logits, 1)[torch.arange(40), y[pick]].mean().item()
        assert s.values["train_loss"][j, i] == pytest.approx(expected, rel=1e-5)


@pytest.mark.mpi
def test_batchnorm_recalibration_is_rank_count_independent_and_exact(userpkg, tmp_path):
    """evaluation.bn: recalibrate, evaluated on the test split: 1 rank and 2 ranks give the same bits, and each
    point equals statistics recomputed by hand (mean of the per-batch means and unbiased variances of the first
    3 x 16 training samples of the data.seed permutation, at that point's weights)."""
    from i7pkg import sets

    job = user_job(
        userpkg,
        tmp_path / "two.h5",
        data={"split": "test", "seed": 2},
        evaluation={"bn": "recalibrate", "bn_batches": 3, "bn_batch_size": 16},
    )
    two, _ = sweep(tmp_path, job, "two", cwd=userpkg)
    one, _ = sweep(tmp_path, {**job, "output": str(tmp_path / "one.h5")}, "one", ranks=None, cwd=userpkg)
    for name in ("test_loss", "test_acc"):
        assert np.array_equal(one.values[name], two.values[name])

    dirs = read_directions(tmp_path / "two.h5")
    train_x, _ = sets.tensors("train")
    bn_x = train_x[np.random.default_rng(2).permutation(96)[:48]].double()
    x, y = sets.tensors("test")
    eval_only = []
    for (j, i), point in points(two):
        model = user_model_at(userpkg, dirs, point)
        with torch.no_grad():
            eval_only.append(F.cross_entropy(model(x.double()), y).item())
            h = [model[0](bn_x[k : k + 16]) for k in range(0, 48, 16)]
            model[1].running_mean.copy_(torch.stack([b.mean(0) for b in h]).mean(0))
            model[1].running_var.copy_(torch.stack([b.var(0, unbiased=True) for b in h]).mean(0))
            logits = model(x.double())
        assert two.values["test_loss"][j, i] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
        hits = (logits.argmax(1) == y).double().mean().item()
        assert two.values["test_acc"][j, i] == pytest.approx(100 * hits, abs=1e-9)
    assert not np.allclose(two.values["test_loss"].ravel(), eval_only, rtol=1e-3)  # recalibration did something


@pytest.mark.mpi
def test_tinylm_example_trains_and_sweeps_under_two_ranks(tmp_path):
    """examples/tinylm: trained for a few steps, swept under mpirun -n 2 from the example's own job file; every
    point is the mean next-token cross-entropy (and next-token accuracy) computed here in float64."""
    from examples import tinylm

    job = yaml.safe_load((REPO / "examples" / "tinylm.yaml").read_text())
    job["model"]["checkpoint"] = str(tmp_path / "tinylm.pt")
    job["data"]["subset"] = 24
    job["grid"] = {"x": [-0.5, 0.5, 3], "y": [-0.5, 0.5, 3]}
    job["output"] = str(tmp_path / "tinylm.h5")
    job["runtime"] = {"threads": 1}
    path = write_job(tmp_path / "tinylm.yaml", job)
    tinylm.train(str(path), steps=40)
    s, result = sweep(tmp_path, job, "tinylm", cwd=REPO)
    assert s.complete and "examples.tinylm:model" in result.stdout

    dirs = read_directions(tmp_path / "tinylm.h5")
    inputs, targets = tinylm.data("train", **job["data"]["kwargs"])
    pick = np.random.default_rng(0).permutation(len(inputs))[:24]
    inputs, targets = inputs[pick], targets[pick]
    state = torch.load(tmp_path / "tinylm.pt")["state_dict"]
    for (j, i), point in points(s):
        model = tinylm.model(**job["model"]["kwargs"])
        model.load_state_dict(perturbed(state, dirs, point))
        with torch.no_grad():
            logits = model.eval()(inputs).double()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1))
        assert s.values["train_loss"][j, i] == pytest.approx(-logp.mean().item(), rel=1e-5)
        hits = (logits.argmax(-1) == targets).double().mean().item()
        assert s.values["train_acc"][j, i] == pytest.approx(100 * hits, abs=1e-9)
    assert s.values["train_loss"].argmin() == 4  # the centre, θ*, is the grid's minimum: it was trained


# ----------------------------------------------------------------------------------------------------------------
# The pieces, in-process


def test_mse_is_the_papers_convention():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(7, 5, generator=g), torch.randint(0, 5, (7,), generator=g)
    per = losses.per_sample("mse", logits, targets)
    p = torch.softmax(logits.double(), 1)
    assert per.shape == (7,) and per.dtype == torch.float32
    assert per.double().mean().item() == pytest.approx(torch.nn.MSELoss()(p, F.one_hot(targets, 5).double()).item())
    ce = losses.per_sample("crossentropy", logits, targets)
    assert torch.equal(ce, F.cross_entropy(logits, targets, reduction="none"))


def test_data_factory_dataset_and_tensors_select_the_same_samples(userpkg):
    from i7pkg import sets

    both = [
        data.load_samples(from_dict(DataSpec, {"factory": f"i7pkg.sets:{fn}", "subset": 10, "seed": 3}))
        for fn in ("tensors", "dataset")
    ]
    x, y = both[0].inputs, both[0].targets
    for s in both:
        assert torch.equal(s.inputs, x) and torch.equal(s.targets, y)
        assert s.info.count == 10 and s.info.total == 96 and s.info.factory
        assert "i7pkg.sets:" in s.info.describe() and "10 of 96 samples" in s.info.describe()
    full_x, full_y = sets.tensors("train")
    pick = np.random.default_rng(3).permutation(96)[:10]
    assert torch.equal(x, full_x[pick]) and torch.equal(y, full_y[pick])
    assert both[0].info.sha256 == both[1].info.sha256 == data.tensor_identity(x, y)
    assert data.tensor_identity(x, y) != data.tensor_identity(x, y.int())  # the dtype is part of the identity


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ("'nope'", "returned a str, not a torch Dataset"),
        ("(torch.zeros(3, 2), torch.zeros(4))", "both need one row per sample"),
        ("[1, 2, 3]", "item 0 of its Dataset is int, not (input, target)"),
        ("(torch.zeros(0, 2), torch.zeros(0))", "returned no samples"),
    ],
)
def test_data_factory_wrong_return_names_the_path(tmp_path, monkeypatch, returned, message):
    (tmp_path / "i7bad.py").write_text(f"import torch\ndef load(split):\n    return {returned}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "i7bad", raising=False)
    with pytest.raises(JobError, match=r"data\.factory: 'i7bad:load'") as e:
        data.load_samples(from_dict(DataSpec, {"factory": "i7bad:load"}))
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (3.0, "returned a float, not (summed loss"),
        ((1.0, 2), "returned a tuple of 2"),
        (("x", 2, 1), "as the summed loss, not a number"),
        ((1.0, -1, None), "-1 as the number of samples"),
        ((1.0, 2, 3), "3 as the number correct"),
    ],
)
def test_loss_factory_result_is_checked(result, message):
    with pytest.raises(JobError, match=r"^loss\.factory: 'p:f' returned") as e:
        losses.factory_result("p:f", result)
    assert message in str(e.value)
    assert losses.factory_result("p:f", (torch.tensor(2.5), 4, torch.tensor(3))) == (2.5, 4, 3)


def test_factory_tally_is_exact_and_consistent():
    tally = losses.FactoryTally("p:f")
    for v in (1e16, 1.0, -1e16, 1.0):  # naive left-to-right float64 sum gives 1.0
        tally.add(v, 1, 1)
    assert tally.result() == (0.5, 100.0)
    with pytest.raises(JobError, match="None as the number correct for some batches"):
        tally.add(1.0, 1, None)

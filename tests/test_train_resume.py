"""Training: an interrupted run resumed from its last state ends bitwise equal to an uninterrupted one; snapshots
form a PCA trajectory; a resume state from another run is refused; the paper's job files say what the paper did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, run_cli

from llmpi.job import config
from llmpi.job.errors import JobError
from llmpi.job.training import TrainJob
from llmpi.space.pca import load_snapshot, pca_directions, snapshot_files
from llmpi.train import train


def tiny_job(output: Path, **train_keys) -> TrainJob:
    raw = {
        "name": "tiny",
        "model": {"arch": "resnet8"},
        "data": {"dataset": "synthetic", "subset": 64},
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.05, "save_every": 1, **train_keys},
        "output": str(output),
        "runtime": {"device": "cpu", "threads": 1},
    }
    return config.from_dict(TrainJob, raw)


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_bits(tmp_path):
    whole = train(tiny_job(tmp_path / "a" / "run.pt"), log=lambda m: None)

    class Interrupted(Exception):
        pass

    def stop_in_epoch_two(message: str) -> None:
        if message.startswith("epoch 2/3"):  # logged after epoch 2's steps, before its files are written
            raise Interrupted

    job = tiny_job(tmp_path / "b" / "run.pt")
    with pytest.raises(Interrupted):
        train(job, log=stop_in_epoch_two)
    assert not (tmp_path / "b" / "run.pt").exists()
    assert [p.name for p in snapshot_files(tmp_path / "b" / "run")] == ["epoch_000.pt", "epoch_001.pt"]
    messages = []
    resumed = train(job, log=messages.append)
    assert any("resuming from" in m and "(epoch 1)" in m for m in messages)
    assert tensors_equal(resumed["state_dict"], whole["state_dict"])
    assert resumed["acc"] == whole["acc"]
    for a, b in zip(snapshot_files(tmp_path / "a" / "run"), snapshot_files(tmp_path / "b" / "run"), strict=True):
        sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        assert a.name == b.name and sa["epoch"] == sb["epoch"]
        assert tensors_equal(sa["state_dict"], sb["state_dict"])
    final = torch.load(tmp_path / "b" / "run.pt", weights_only=True)
    last = torch.load(tmp_path / "b" / "run" / "epoch_003.pt", weights_only=True)
    assert tensors_equal(final["state_dict"], last["state_dict"])  # the trajectory ends at the final model
    assert set(final) == {"state_dict", "epoch", "acc", "arch"}  # snapshots stay lean: no optimiser state

    # a finished run rerun changes nothing
    again = train(job, log=lambda m: None)
    assert tensors_equal(again["state_dict"], whole["state_dict"])

    # the folder is a PCA trajectory: its principal directions are numpy's SVD of the dense differences
    files = snapshot_files(tmp_path / "b" / "run")
    weights = {k: v for k, v in final["state_dict"].items() if v.dim() > 1}
    result = pca_directions(weights, [lambda p=p: load_snapshot(p) for p in files])
    D = np.stack(
        [
            np.concatenate(
                [(load_snapshot(p)[k].double() - v.double()).reshape(-1).numpy() for k, v in weights.items()]
            )
            for p in files
        ]
    )
    _, sv, vt = np.linalg.svd(D - D.mean(axis=0), full_matrices=False)
    got = np.concatenate([result.components[0][k].double().reshape(-1).numpy() for k in weights])
    assert abs(float(got @ vt[0])) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(result.explained_variance_ratio, sv[:2] ** 2 / (sv**2).sum())
    assert np.allclose(result.coordinates[-1], 0.0)


@pytest.mark.slow
def test_snapshots_every_k_epochs_and_the_initialisation(tmp_path):
    """Epoch 3 is not a multiple of 2: no snapshot, but the final model and the resume state are written."""
    train(tiny_job(tmp_path / "run.pt", epochs=3, save_every=2, init="torch"), log=lambda m: None)
    assert [p.name for p in snapshot_files(tmp_path / "run")] == ["epoch_000.pt", "epoch_002.pt"]
    assert (tmp_path / "run" / "resume.pt").exists() and (tmp_path / "run.pt").exists()


def test_the_paper_init_is_used_by_default(tmp_path):
    train(tiny_job(tmp_path / "run.pt", epochs=1), log=lambda m: None)
    init = torch.load(tmp_path / "run" / "epoch_000.pt", weights_only=True)["state_dict"]
    assert float(init["linear.weight"].std()) == pytest.approx(1e-3, rel=0.2)  # N(0, 0.001²), not PyTorch's
    assert torch.equal(init["bn1.weight"], torch.ones(16)) and not init["linear.bias"].any()


@pytest.mark.slow
def test_a_resume_state_from_another_run_is_refused(tmp_path):
    train(tiny_job(tmp_path / "run.pt", epochs=1), log=lambda m: None)
    with pytest.raises(JobError, match=r"different training run \(train\.batch_size \(16 there, 32 here\)\).*delete"):
        train(tiny_job(tmp_path / "run.pt", epochs=1, batch_size=32), log=lambda m: None)
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "model": {"arch": "resnet8"},
                "data": {"dataset": "synthetic", "subset": 32},
                "train": {"epochs": 1, "batch_size": 16, "save_every": 1},
                "output": str(tmp_path / "run.pt"),
                "runtime": {"device": "cpu", "threads": 1},
            }
        )
    )
    result = run_cli("llmpi.train", str(job), timeout=300)
    assert result.returncode == 2, result.stderr
    assert "llmpi: error:" in result.stderr and "the training images" in result.stderr
    assert "Traceback" not in result.stderr


PAPER_JOBS = {
    "vgg9_bs128_wd5e-4": ("vgg9", 128, 5e-4),
    "vgg9_bs128_wd0": ("vgg9", 128, 0.0),
    "vgg9_bs8192_wd5e-4": ("vgg9", 8192, 5e-4),
    "vgg9_bs8192_wd0": ("vgg9", 8192, 0.0),
    "resnet56_bs128_wd5e-4": ("resnet56", 128, 5e-4),
    "resnet56_noshort_bs128_wd5e-4": ("resnet56_noshort", 128, 5e-4),
}


@pytest.mark.parametrize("name", sorted(PAPER_JOBS))
def test_paper_job_files_hold_the_papers_settings(name):
    job = config.load(TrainJob, REPO / "jobs" / "train" / f"{name}.yaml")
    arch, batch, wd = PAPER_JOBS[name]
    t = job.train
    assert (job.model.arch, t.batch_size, t.weight_decay) == (arch, batch, wd)
    assert (job.data.dataset, job.data.subset) == ("cifar10", None)
    assert (t.epochs, t.lr, t.momentum, t.nesterov, t.gamma, t.init, t.augment) == (
        300,
        0.1,
        0.9,
        True,
        0.1,
        "paper",
        True,
    )
    assert sorted({round(m * t.epochs) for m in t.milestones}) == [150, 225, 275]
    assert job.output == f"checkpoints/{name}.pt"
    if arch == "vgg9":
        assert t.save_every == 1  # the paper's VGG-9 runs kept every epoch: its PCA trajectories

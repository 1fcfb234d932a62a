"""Shared fixtures: a CIFAR-format dataset written in the release's pickle format, a small trained checkpoint,
job files, and a runner for the real command lines (under mpirun, with a time limit so a deadlock fails)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from mpilaunch import REPO, mpirun  # every launcher detail is in tests/mpilaunch.py
from mpilaunch import env as launch_env


@dataclass
class Fixture:
    root: Path  # holds cifar-10-batches-py/
    checkpoint: Path
    arch: str


def cifar_like(n_train: int, n_test: int, seed: int) -> tuple[dict, dict]:
    """Small CIFAR-format splits cut from the synthetic set (learnable, so the checkpoint is a real minimiser)."""
    from llmpi.data import synthetic_images

    images, labels = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        im, lab = synthetic_images(split, seed=seed)
        images[split], labels[split] = im[:n], lab[:n]
    return images, labels


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory) -> Fixture:
    """A CIFAR-10-format folder (500 train, 100 test images) and a resnet8 trained on it for two epochs."""
    import torch

    from llmpi import data, models

    base = tmp_path_factory.mktemp("fixture")
    images, labels = cifar_like(500, 100, seed=7)
    data.write_cifar10_batches(base, images, labels)
    torch.manual_seed(0)
    model = models.build("resnet8")
    x = data.normalize(images["train"])
    y = torch.as_tensor(labels["train"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(2):
        for s in range(0, len(y), 50):
            loss = torch.nn.functional.cross_entropy(model(x[s : s + 50]), y[s : s + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    checkpoint = base / "resnet8.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 2, "acc": 0.0, "arch": "resnet8"}, checkpoint)
    return Fixture(base, checkpoint, "resnet8")


def job_dict(fx: Fixture, output: Path, **sections) -> dict:
    """A small sweep job on the fixture; keyword sections update the defaults (``grid={'x': [...]}``)."""
    job = {
        "name": "fixture",
        "model": {"arch": fx.arch, "checkpoint": str(fx.checkpoint)},
        "data": {"dataset": "cifar10", "root": str(fx.root), "split": "train", "subset": 64, "seed": 0},
        "directions": {"kind": "random", "seed": 3, "norm": "filter", "ignore": "biasbn", "type": "weights"},
        "grid": {"x": [-1.0, 1.0, 5], "y": [-1.0, 1.0, 4], "block": 2},
        "output": str(output),
        "runtime": {"device": "cpu", "threads": 1},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(job.get(key), dict):
            job[key] = {**job[key], **value}
        else:
            job[key] = value
    return job


def write_job(path: Path, job: dict) -> Path:
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def run_cli(
    module: str, *args: str, ranks: int | None = None, timeout: float = 180, env: dict | None = None, cwd=None
) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` (under ``mpirun -n ranks`` if given); a hang past ``timeout`` fails the test."""
    cmd = [sys.executable, "-m", module, *args]
    if ranks is not None:
        cmd = [*mpirun(ranks), *cmd]
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=launch_env(env), cwd=cwd or REPO
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout} s (deadlock?)\n{e.stdout}\n{e.stderr}")


def brute_force(
    fx: Fixture,
    directions: list[dict[str, np.ndarray]],
    point: tuple[float, ...],
    subset: int = 64,
    seed: int = 0,
    split: str = "train",
) -> tuple[float, float]:
    """The loss at a point, computed the obvious way, independently of llmpi.evaluate: perturb a state_dict by
    hand in float64, load it, and average the per-image cross-entropy of one big batch in float64."""
    import torch

    from llmpi import checkpoint, data, models

    state = checkpoint.read_state_dict(fx.checkpoint)
    perturbed = {}
    for name, value in state.items():
        if value.is_floating_point():
            v = value.double()
            for c, d in zip(point, directions):
                if name in d:
                    v = v + c * torch.as_tensor(d[name]).double()
            perturbed[name] = v.float()
        else:
            perturbed[name] = value
    model = models.build(fx.arch)
    model.load_state_dict(perturbed)
    model.eval()
    images, labels = data.load_cifar10(fx.root, split, download=False)
    index = np.random.default_rng(seed).permutation(len(labels))[:subset]
    mean = np.array([125.3, 123.0, 113.9]) / 255
    std = np.array([63.0, 62.1, 66.7]) / 255
    x = ((images[index] / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    with torch.no_grad():
        logits = model(torch.as_tensor(x, dtype=torch.float32)).double()
    y = torch.as_tensor(labels[index])
    loss = torch.nn.functional.cross_entropy(logits, y, reduction="mean").item()
    acc = 100.0 * (logits.argmax(1) == y).double().mean().item()
    return loss, acc


@pytest.fixture(scope="session")
def other_minimisers(fixture_data, tmp_path_factory) -> list[Path]:
    """Two more minimisers trained on from the fixture's (other learning rates and orders: other weights and other
    BatchNorm statistics), for interpolations and planes."""
    import torch

    from llmpi import checkpoint, data

    folder = tmp_path_factory.mktemp("others")
    images, labels = data.load_cifar10(fixture_data.root, "train", download=False)
    x, y = data.normalize(images[:200]), torch.as_tensor(labels[:200])
    paths = []
    for i, (lr, seed) in enumerate([(0.05, 1), (0.02, 2)], start=2):
        torch.manual_seed(seed)
        model = checkpoint.load_model(fixture_data.arch, fixture_data.checkpoint).train()
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        for s in torch.randperm(200).split(40):
            loss = torch.nn.functional.cross_entropy(model(x[s]), y[s])
            opt.zero_grad()
            loss.backward()
            opt.step()
        path = folder / f"model{i}.pt"
        torch.save({"state_dict": model.state_dict()}, path)
        paths.append(path)
    return paths

"""What the benchmark measures on: a CIFAR-format data folder, checkpoints, job files.

The images are the synthetic CIFAR-shaped set (llmpi.compute.data.synthetic_images), written in the CIFAR-10 pickle
format so the sweep reads them exactly as it reads CIFAR-10; larger sets (50,000 for the GPU section) stack the
synthetic set drawn with further content seeds. Networks are freshly initialised with a seed and their BatchNorm
statistics recomputed on the data, so activations have realistic scales (speed does not depend on training).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from llmpi import models
from llmpi.compute import data
from llmpi.compute.data import SYNTHETIC_CONTENT_SEED, synthetic_images


def write_dataset(root: Path, train_images: int) -> Path:
    """A CIFAR-10-format folder under ``root`` with ``train_images`` training images (the test split: 2,000)."""
    marker = root / f".bench-{train_images}"
    if marker.exists():
        return root
    parts, labels, seed = [], [], SYNTHETIC_CONTENT_SEED
    while sum(len(p) for p in parts) < train_images:
        im, lab = synthetic_images("train", seed=seed)
        parts.append(im)
        labels.append(lab)
        seed += 1
    train = np.concatenate(parts)[:train_images]
    train_labels = np.concatenate(labels)[:train_images]
    test, test_labels = synthetic_images("test")
    data.write_cifar10_batches(root, {"train": train, "test": test}, {"train": train_labels, "test": test_labels})
    marker.touch()
    return root


def write_checkpoint(path: Path, arch: str, root: Path, seed: int = 0) -> Path:
    """A seeded ``arch`` whose BatchNorm running statistics are averages over (up to) 512 training images."""
    if path.exists():
        return path
    torch.manual_seed(seed)
    model = models.build(arch)
    if list(model.buffers()):
        total = len(data.load_images("cifar10", root, "train", None, seed)[1])
        images, _, _ = data.load_images("cifar10", root, "train", min(512, total), seed)
        x = data.normalize(images)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches below
        model.train()
        with torch.no_grad():
            for s in range(0, len(x), 128):
                model(x[s : s + 128])
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.1
    torch.save({"state_dict": model.state_dict(), "arch": arch}, path)
    return path


def write_job(path: Path, **sections: dict) -> Path:
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def sweep_job(
    path: Path,
    arch: str,
    checkpoint: Path,
    root: Path,
    images: int,
    grid: int,
    output: Path,
    device: str,
    threads: int | str,
    precision: str = "fp32",
    forward: dict | None = None,
) -> Path:
    """A ``grid`` x ``grid`` sweep over [-1, 1]^2 on the first ``images`` of the seeded permutation; ``forward``:
    runtime keys (fold, compile) of the path to run, none for the defaults."""
    return write_job(
        path,
        name=path.stem,
        model={"arch": arch, "checkpoint": str(checkpoint)},
        data={"dataset": "cifar10", "root": str(root), "split": "train", "subset": images, "seed": 0},
        directions={"seed": 0, "norm": "filter", "ignore": "biasbn"},
        grid={"x": [-1.0, 1.0, grid], "y": [-1.0, 1.0, grid]},
        output=str(output),
        runtime={"device": device, "threads": threads, "precision": precision, **(forward or {})},
    )


def resident(root: Path, images: int, device: torch.device) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The sweep's images (uint8, as stored) and the same normalised on ``device``, with labels."""
    u8, labels, _ = data.load_images("cifar10", root, "train", images, 0)
    return u8, data.normalize(u8, device=device), torch.as_tensor(labels, device=device)

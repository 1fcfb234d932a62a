"""The common way a loss surface is computed, as the baseline: what most loss-landscape code does per point.

Per point: deep-copy the state_dict, add a·δ + b·η to it, ``load_state_dict`` it into the network, move it to
the device; then iterate a ``torch.utils.data.DataLoader`` (batch 128) over a Dataset that turns each uint8 HWC
image into a normalised float CHW tensor one sample at a time (as ToTensor + Normalize do), copy each batch to the
device, and average ``cross_entropy`` weighted by batch length with ``.item()`` per batch. Same images, same
network, same directions as the llmpi run it is compared with; written here, not imported.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from llmpi.compute.data import CIFAR_MEAN, CIFAR_STD


class NormalisedImages(Dataset):
    """uint8 (N, 32, 32, 3) -> per-sample float (3, 32, 32) normalised with the CIFAR statistics."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels
        self.mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div(255.0)
        return (x - self.mean) / self.std, int(self.labels[i])


def surface(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    directions: Sequence[dict[str, np.ndarray]],
    points: Sequence[Sequence[float]],
    images: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    batch_size: int = 128,
    workers: int = 0,
) -> tuple[list[tuple[float, float]], float]:
    """(loss, acc) per point, and the seconds it took (from the first point to the last value)."""
    loader_args = {"batch_size": batch_size, "shuffle": False, "num_workers": workers}
    if device.type == "cuda":
        loader_args["pin_memory"] = True
    dataset = NormalisedImages(images, labels)
    out = []
    t0 = time.perf_counter()
    for point in points:
        perturbed = copy.deepcopy(state)
        for name, value in perturbed.items():
            for c, d in zip(point, directions):
                if name in d:
                    value += c * torch.as_tensor(d[name])
        model.load_state_dict(perturbed)
        model.to(device).eval()
        total, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for x, y in DataLoader(dataset, **loader_args):
                x, y = x.to(device), y.to(device)
                logits = model(x)
                total += F.cross_entropy(logits, y).item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                count += len(y)
        out.append((total / count, 100.0 * correct / count))
    return out, time.perf_counter() - t0

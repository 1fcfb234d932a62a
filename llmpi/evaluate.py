"""The loss surface itself: f(a, b) = L(θ* + a·δ + b·η), mean cross-entropy and accuracy over resident data.

    ev = Evaluator(model, [dx, dy], images, labels, batch_size=256)
    loss, acc = ev((0.25, -0.5))

Each point starts from a pristine copy of θ* (never by accumulating steps), in eval mode, without gradients.
The mean loss is exact and independent of how the data is batched or which rank computes it: per-image losses
are kept in float32 as the network produced them and summed with ``math.fsum``, which returns the correctly
rounded sum whatever the order. Accuracy is an integer count. So the stored value depends only on the point,
the per-image losses and nothing else; a different batch size may change per-image losses in their last bits
(other kernels), never the meaning of the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .directions import Direction, perturbed_entries


class Evaluator:
    """Evaluates points of one surface on one device; holds the base weights, directions and data there."""

    def __init__(
        self,
        model: nn.Module,
        directions: Sequence[Direction],
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        kind: str = "weights",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        self.model = model.eval()
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        entries = perturbed_entries(model, kind)
        for d in directions:
            if d.keys() != entries.keys():
                raise ValueError("a direction's entries do not match the model's; was it made for another arch?")
        # Entries every direction leaves at zero (biases, BN with ignore: biasbn) are never touched.
        names = [n for n in entries if any(bool(d[n].any()) for d in directions)]
        device = images.device
        self.targets = [entries[n] for n in names]
        self.base = [t.detach().clone() for t in self.targets]
        self.directions = [[d[n].to(device=device, dtype=entries[n].dtype) for n in names] for d in directions]
        self.per_image = torch.empty(len(labels), dtype=torch.float32, device=device)

    @torch.no_grad()
    def move_to(self, coords: Sequence[float]) -> None:
        """Set the network's weights to θ* + Σ coords[k]·direction[k], from the untouched base."""
        if len(coords) != len(self.directions):
            raise ValueError(f"expected {len(self.directions)} coordinates, got {len(coords)}")
        torch._foreach_copy_(self.targets, self.base)
        for c, d in zip(coords, self.directions):
            if c != 0.0:
                torch._foreach_add_(self.targets, d, alpha=float(c))

    @torch.no_grad()
    def __call__(
        self, coords: Sequence[float], between_batches: Callable[[], None] | None = None
    ) -> tuple[float, float]:
        """(mean cross-entropy, accuracy in percent) at ``coords``; calls ``between_batches`` before each batch."""
        self.move_to(coords)
        n, bs = len(self.labels), self.batch_size
        correct = torch.zeros((), dtype=torch.int64, device=self.labels.device)
        for start in range(0, n, bs):
            if between_batches is not None:
                between_batches()
            x, y = self.images[start : start + bs], self.labels[start : start + bs]
            logits = self.model(x).float()
            self.per_image[start : start + bs] = F.cross_entropy(logits, y, reduction="none")
            correct += (logits.argmax(dim=1) == y).sum()
        total = math.fsum(self.per_image.double().cpu().tolist())
        return total / n, 100.0 * int(correct) / n

    @torch.no_grad()
    def restore(self) -> None:
        """Put θ* back into the network."""
        torch._foreach_copy_(self.targets, self.base)

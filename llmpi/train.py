"""Train the minimiser to sweep around, with the paper's recipe.

    python -m llmpi.train jobs/train/resnet56_noshort.yaml
    python -m llmpi.train jobs/train/demo.yaml --set train.epochs=2

SGD with Nesterov momentum 0.9, batch 128, learning rate 0.1 divided by 10 at 50%, 75% and 92% of the epochs,
weight decay 5e-4, random crop (4-pixel padding) and horizontal flip -- the defaults below. Writes
``{'state_dict', 'epoch', 'acc', 'arch'}`` to ``output``; with ``train.save_every: k`` it also keeps a snapshot
every k epochs in ``<output without .pt>/epoch_NNN.pt`` (for PCA trajectories), and a rerun resumes from the
newest snapshot.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import DataSpec, ModelSpec, RuntimeSpec, _why
from .errors import JobError


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = _why(300, "the paper trains 300 epochs")
    batch_size: int = _why(128, "the paper's small-batch setting (8192 for its large-batch one)")
    lr: float = _why(0.1, "the paper's initial learning rate")
    momentum: float = _why(0.9, "the paper's momentum")
    nesterov: bool = _why(True, "the paper uses Nesterov momentum")
    weight_decay: float = _why(5e-4, "the paper's weight decay (0 is its other setting)")
    milestones: list[float] = _why([0.5, 0.75, 0.92], "lr x gamma at these fractions of the epochs")
    gamma: float = _why(0.1, "the paper divides the learning rate by 10")
    augment: bool = _why(True, "random crop and flip, the standard CIFAR augmentation")
    seed: int = _why(0, "initialisation and batch order")
    save_every: int = _why(0, "0: final checkpoint only; k: a snapshot every k epochs, for PCA trajectories")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise JobError(f"train.{name} must be at least 1, not {getattr(self, name)}")
        if self.save_every < 0:
            raise JobError(f"train.save_every must be 0 or positive, not {self.save_every}")
        if any(not 0 < m < 1 for m in self.milestones):
            raise JobError(f"train.milestones are fractions of the epochs in (0, 1), not {self.milestones}")


@dataclass(frozen=True)
class TrainJob:
    name: str = _why(None, "required: names the run")
    model: ModelSpec = _why(ModelSpec(), "")
    data: DataSpec = _why(DataSpec(), "")
    train: TrainSpec = _why(TrainSpec(), "")
    output: str | None = _why(None, "checkpoints/<name>.pt")
    runtime: RuntimeSpec = _why(RuntimeSpec(), "")

    def __post_init__(self) -> None:
        if self.model.arch is None:
            raise JobError("missing required key 'model.arch'")
        if self.output is None:
            object.__setattr__(self, "output", f"checkpoints/{self.name}.pt")

    @property
    def snapshot_dir(self) -> Path:
        return Path(self.output).with_suffix("")


def augment(x, generator):
    """Random 4-pixel-padded crop and horizontal flip of a normalised NCHW batch, on its device."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    dx, dy = (torch.randint(0, 9, (2, n), generator=generator)).tolist()
    crops = torch.stack([padded[k, :, dy[k] : dy[k] + 32, dx[k] : dx[k] + 32] for k in range(n)])
    flip = torch.rand(n, generator=generator) < 0.5
    crops[flip.to(x.device)] = crops[flip.to(x.device)].flip(3)
    return crops


def evaluate(model, images, labels, batch: int = 500) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(labels), batch):
            correct += int((model(images[s : s + batch]).argmax(1) == labels[s : s + batch]).sum())
    return 100.0 * correct / max(1, len(labels))


def latest_snapshot(folder: Path) -> Path | None:
    found = sorted(folder.glob("epoch_*.pt"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
    return found[-1] if found else None


def train(job: TrainJob, log=print) -> dict:
    import torch
    import torch.nn.functional as F

    from . import data, models, runtime

    device = runtime.pick_device(job.runtime.device, 0)
    runtime.configure(device, runtime.pick_threads(job.runtime.threads, 1))
    torch.manual_seed(job.train.seed)
    images, labels, info = data.load_images(job.data.dataset, job.data.root, "train", job.data.subset, job.data.seed)
    test_images, test_labels, _ = data.load_images(job.data.dataset, job.data.root, "test", None, 0)
    x = data.normalize(images, device=device)
    y = torch.as_tensor(labels, device=device)
    tx = data.normalize(test_images, device=device)
    ty = torch.as_tensor(test_labels, device=device)

    model = models.build(job.model.arch).to(device)
    t = job.train
    # Like the paper's code, weight decay applies to every parameter, BatchNorm and biases included.
    optimizer = torch.optim.SGD(
        model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay
    )
    milestones = sorted({max(1, round(m * t.epochs)) for m in t.milestones})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=t.gamma)
    generator = torch.Generator().manual_seed(t.seed)
    start_epoch = 0
    snapshot = latest_snapshot(job.snapshot_dir) if t.save_every else None
    if snapshot is not None:
        state = torch.load(snapshot, map_location=device, weights_only=True)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start_epoch = int(state["epoch"])
        log(f"llmpi train {job.name}: resuming from {snapshot} (epoch {start_epoch})")
    log(
        f"llmpi train {job.name}: {job.model.arch} on {info.describe()}, {t.epochs} epochs, batch {t.batch_size}, "
        f"{device.type}"
    )
    acc = float("nan")
    for epoch in range(start_epoch, t.epochs):
        model.train()
        t0 = time.monotonic()
        order = torch.randperm(len(y), generator=generator).to(device)
        total, seen = 0.0, 0
        for s in range(0, len(y), t.batch_size):
            idx = order[s : s + t.batch_size]
            xb = augment(x[idx], generator) if t.augment else x[idx]
            loss = F.cross_entropy(model(xb), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        scheduler.step()
        acc = evaluate(model, tx, ty)
        log(
            f"epoch {epoch + 1}/{t.epochs}: train loss {total / seen:.4f}, test acc {acc:.2f}%, "
            f"{time.monotonic() - t0:.1f} s"
        )
        if t.save_every and (epoch + 1) % t.save_every == 0:
            job.snapshot_dir.mkdir(parents=True, exist_ok=True)
            _save_atomic(
                {
                    "state_dict": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "epoch": epoch + 1,
                    "acc": acc,
                    "arch": job.model.arch,
                },
                job.snapshot_dir / f"epoch_{epoch + 1:03d}.pt",
            )
    result = {
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "epoch": t.epochs,
        "acc": acc,
        "arch": job.model.arch,
    }
    out = Path(job.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(result, out)
    log(f"llmpi train {job.name}: test accuracy {acc:.2f}% -> {out}")
    return result


def _save_atomic(obj: dict, path: Path) -> None:
    import os

    import torch

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    from . import config

    p = argparse.ArgumentParser(prog="python -m llmpi.train", description=__doc__.split("\n\n")[0])
    p.add_argument("job", help="the training job (YAML), e.g. jobs/train/resnet56_noshort.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    try:
        job = config.load(TrainJob, args.job, args.overrides)
        train(job, log=lambda m: print(m, flush=True))
    except JobError as e:
        if args.debug:
            raise
        print(f"llmpi: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

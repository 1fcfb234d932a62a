"""A training job's keys (``python -m llmpi.train JOB.yaml``): the paper's recipe as validated defaults.

    job = load(TrainJob, "jobs/train/vgg9_bs128_wd5e-4.yaml", ["train.epochs=2"])

The same dataclass machinery as a sweep's job (``llmpi.job.config``), and the same sections where they mean the
same thing (``model``, ``data``, ``runtime``); ``train`` holds the optimiser and its schedule. ``llmpi.train`` runs
it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .config import DataSpec, ModelSpec, RuntimeSpec, _required, _why
from .errors import JobError


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = _why(300, "the paper trains 300 epochs")
    batch_size: int = _why(128, "the paper's small-batch setting (8192 for its large-batch one)")
    lr: float = _why(0.1, "the paper's initial learning rate")
    momentum: float = _why(0.9, "the paper's momentum")
    nesterov: bool = _why(True, "the paper uses Nesterov momentum")
    weight_decay: float = _why(5e-4, "the paper's weight decay (0 is its other setting)")
    milestones: list[float] = _why(
        [0.5, 0.75, 0.9167], "lr x gamma at these fractions of the epochs: the paper's 150, 225, 275 of 300"
    )
    gamma: float = _why(0.1, "the paper divides the learning rate by 10")
    augment: bool = _why(True, "random crop and flip, the standard CIFAR augmentation")
    seed: int = _why(0, "initialisation and batch order")
    init: Literal["paper", "torch"] = _why("paper", "the paper's initialisation (models.paper_init), or PyTorch's")
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
    name: str = _required("names the run in messages and in the default output path")
    model: ModelSpec = _why(ModelSpec, "the network to train (model.checkpoint is not used)")
    data: DataSpec = _why(DataSpec, "the training images; the test split is evaluated after every epoch")
    train: TrainSpec = _why(TrainSpec, "the optimiser and its schedule: the paper's recipe")
    output: str | None = _why(None, "null: checkpoints/<name>.pt")
    runtime: RuntimeSpec = _why(RuntimeSpec, "device and threads")

    def __post_init__(self) -> None:
        if self.output is None:
            object.__setattr__(self, "output", f"checkpoints/{self.name}.pt")

    @property
    def snapshot_dir(self) -> Path:
        return Path(self.output).with_suffix("")

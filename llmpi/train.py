"""Train the minimiser to sweep around, with the paper's recipe -- and the paper's variants.

    python -m llmpi.train jobs/train/vgg9_bs128_wd5e-4.yaml
    python -m llmpi.train jobs/train/demo.yaml --set train.epochs=2

The defaults are the paper's code (github.com/tomgoldstein/loss-landscape, cifar10/main.py): its initialisation
(``models.paper_init``), SGD with Nesterov momentum 0.9, batch 128, learning rate 0.1 divided by 10 at epochs
150, 225 and 275 of 300, weight decay 5e-4 on every parameter, random crop (4-pixel padding) and flip. Its
variants are plain keys: ``train.batch_size: 8192`` (the large-batch runs; the paper keeps lr 0.1 -- its run
folders read ``vgg9_sgd_lr=0.1_bs=8192_wd=...`` -- with no linear scaling and no warm-up, so neither is done
here), ``train.weight_decay: 0``, and shortcuts by architecture (``resnet56`` vs ``resnet56_noshort``).

Files, for ``output: checkpoints/x.pt``:

    checkpoints/x.pt                  the final model: {'state_dict', 'epoch', 'acc', 'arch'}
    checkpoints/x/epoch_000.pt        with train.save_every: k, the initialisation and every k-th epoch
    checkpoints/x/epoch_<NNN>.pt      (same keys as the final model): the trajectory ``directions.kind: pca`` reads
    checkpoints/x/resume.pt           the whole training state after the last finished epoch

A rerun of the same job resumes from ``resume.pt`` (written atomically after every epoch) and ends bitwise where
an uninterrupted run would on the same machine: model, optimiser, schedule and the generator of batch order and
augmentation are all restored. A ``resume.pt`` from a different job (another batch size, data, arch ...) is
refused, naming the difference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .job.errors import JobError
from .job.training import TrainJob


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


def identity(job: TrainJob, data_sha256: str) -> dict:
    """What makes two runs the same run: a resume state from a run that differs in any of these is refused."""
    from .job.config import to_dict

    return {"arch": job.model.arch, "images_sha256": data_sha256, "train": to_dict(job.train)}


def _differences(theirs: dict, ours: dict) -> list[str]:
    out = []
    for key in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(key), ours.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{d}" for d in _differences(a, b)]
        elif a != b:
            out.append(f"{key} ({a!r} there, {b!r} here)" if key != "images_sha256" else "the training images")
    return out


def train(job: TrainJob, log=print) -> dict:
    import torch
    import torch.nn.functional as F

    from . import models
    from .compute import data, runtime
    from .space import checkpoint

    device = runtime.pick_device(job.runtime.device, 0)
    runtime.configure(device, runtime.pick_threads(job.runtime.threads))
    torch.manual_seed(job.train.seed)
    images, labels, info = data.load_images(job.data.dataset, job.data.root, "train", job.data.subset, job.data.seed)
    test_images, test_labels, _ = data.load_images(job.data.dataset, job.data.root, "test", None, 0)
    x = data.normalize(images, device=device)
    y = torch.as_tensor(labels, device=device)
    tx = data.normalize(test_images, device=device)
    ty = torch.as_tensor(test_labels, device=device)

    model = checkpoint.build_model(job.model)
    if job.train.init == "paper":
        models.paper_init(model)
    model = model.to(device)
    t = job.train
    # Like the paper's code, weight decay applies to every parameter, BatchNorm and biases included.
    optimizer = torch.optim.SGD(
        model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay
    )
    milestones = sorted({max(1, round(m * t.epochs)) for m in t.milestones})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=t.gamma)
    generator = torch.Generator().manual_seed(t.seed)
    run = identity(job, info.sha256)
    folder = job.snapshot_dir
    resume = folder / "resume.pt"
    start_epoch = 0
    acc = float("nan")
    if resume.exists():
        state = torch.load(resume, map_location="cpu", weights_only=True)  # the generator state stays on the CPU
        differences = _differences(state.get("identity", {}), run)
        if differences:
            raise JobError(
                f"{resume} is the state of a different training run ({'; '.join(differences)}); delete {folder} to "
                f"start this one over, or set output to another path"
            )
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start_epoch, acc = int(state["epoch"]), float(state["acc"])
        log(f"llmpi train {job.name}: resuming from {resume} (epoch {start_epoch})")
    log(
        f"llmpi train {job.name}: {job.model.arch} on {info.describe()}, {t.epochs} epochs, batch {t.batch_size}, "
        f"lr {t.lr}, weight decay {t.weight_decay}, {device.type}"
    )

    def model_file(epoch: int) -> dict:
        return {
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "epoch": epoch,
            "acc": acc,
            "arch": job.model.arch,
        }

    if t.save_every and start_epoch == 0:
        folder.mkdir(parents=True, exist_ok=True)
        _save_atomic(model_file(0), folder / "epoch_000.pt")  # the trajectory starts at the initialisation
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
        folder.mkdir(parents=True, exist_ok=True)
        if t.save_every and (epoch + 1) % t.save_every == 0:
            _save_atomic(model_file(epoch + 1), folder / f"epoch_{epoch + 1:03d}.pt")
        _save_atomic(
            {
                **model_file(epoch + 1),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "identity": run,
            },
            resume,
        )
    result = model_file(t.epochs)
    out = Path(job.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(result, out)
    log(f"llmpi train {job.name}: test accuracy {acc:.2f}% -> {out}")
    return result


def _save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` through :func:`llmpi.file.atomic.atomic_replace`: a kill or a full disk leaves the previous file
    (the last epoch's ``resume.pt``) as it was. Saved into a Python file object, whose failed write is an OSError
    with its errno, where ``torch.save(obj, path)`` reports a full disk as a bare RuntimeError."""
    import torch

    from .file.atomic import atomic_replace
    from .job.errors import disk_error

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    try:
        atomic_replace(path, write)
    except OSError as e:
        disk = disk_error(e, path, "saving", then=f"rerun the same command ({RESUMES})")
        if disk is None:
            raise
        raise disk from None


RESUMES = "training resumes from the last epoch saved"


def main(argv: list[str] | None = None) -> int:
    from .job import config
    from .job import exits as cli

    p = argparse.ArgumentParser(prog="python -m llmpi.train", description=__doc__.split("\n\n")[0])
    p.add_argument("job", nargs="?", help="the training job (YAML), e.g. jobs/train/resnet56_noshort.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--keys", action="store_true", help="list every job key with its type, default and reason; exit")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    if args.keys:
        from .job.schema import print_keys

        return print_keys("train-job")
    if args.job is None:
        p.error("the following arguments are required: job")

    def command() -> None:
        train(config.load(TrainJob, args.job, args.overrides), log=lambda m: print(m, flush=True))

    return cli.run(command, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())

"""Whether a surface file may be resumed: the fingerprint of everything that determines its values.

    fields = fingerprint(job, Identity(checkpoint_sha256, {"train": info}, bn=None))
    SurfaceStore.open(path, grid, names, fields, ...)       # refuses a file whose fields differ, naming them

The fingerprint holds what changes the stored values and nothing that does not. In: the network (arch, or a
factory's import path with the SHA-256 of its module's source and its kwargs), θ*'s bytes, the data's identity
(SHA-256 of the selected samples of each split), the loss, the BatchNorm handling, the precision (tf32 and bf16
change values by far more than rounding), the directions' spec, the grid, and what a direction kind or a metric
adds (the other checkpoints' and the trajectory's bytes, the Hessian settings). Out: the rank count, batch size,
the forward path chosen (eager, compiled, folded), the output path -- these change per-image losses in their last
bits at most, or nothing.

Parts given in memory (``llmpi.surface``, ``llmpi.job.memory``) take the place of the files and factories they
replace: a network's ``model.factory`` identity is its label with the hash of its structure and code, its weights'
hash stands for the checkpoint's SHA-256, a loss function's identity is its label with the hash of its code, data
is identified by its selected samples (as a factory's), another model of an interpolation or a plane by its
weights' hash. A job of files gets exactly the fields it always got, so its files keep resuming.

A file written by an older llmpi whose fingerprint lacks a field added since is refused with the field named;
``--restart`` starts it anew.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..compute.data import DatasetInfo
from ..job.config import Job, to_dict
from ..job.errors import JobError

FORMAT = 1


@dataclass(frozen=True)
class Identity:
    """The bytes a job's values come from, as rank 0 found them: θ*'s file, each evaluated split's selected
    samples, and the training samples BatchNorm is recalibrated on (None unless ``evaluation.bn: recalibrate``)."""

    checkpoint_sha256: str
    splits: Mapping[str, DatasetInfo]
    bn: DatasetInfo | None = None
    sources: Mapping[str, dict] = field(default_factory=dict)  # factory key -> identity, for parts in memory
    others: Mapping[str, str] = field(default_factory=dict)  # checkpoint2/3 given in memory -> weights' hash


def fingerprint(job: Job, identity: Identity, store: str = "full") -> dict:
    """The fingerprint fields of ``job`` (JSON-able; the store keeps them and their hash in the file); ``store``:
    how the file keeps its directions (``llmpi.space.plan.store_mode``), full or recipe."""
    from ..job.factories import identity as source_identity

    model, data, loss = job.model, job.data, job.loss
    infos = list(identity.splits.values())
    images = infos[0].sha256 if len(infos) == 1 else {split: info.sha256 for split, info in identity.splits.items()}

    def source(key: str, spec: str | None) -> dict | None:
        return spec and (identity.sources.get(key) or source_identity(spec))

    fields = {
        "format": FORMAT,
        "arch": model.arch,
        "model": {"factory": source("model.factory", model.factory), "kwargs": model.kwargs},
        "data_factory": {"factory": source("data.factory", data.factory), "kwargs": data.kwargs},
        "loss": {
            "name": None if loss.factory else loss.name,
            "factory": source("loss.factory", loss.factory),
        },
        "evaluation": _evaluation(job, identity.bn),
        "precision": job.runtime.precision,
        "checkpoint_sha256": identity.checkpoint_sha256,
        "data": {
            "dataset": None if data.factory else data.dataset,
            "split": data.split,
            "subset": data.subset,
            "seed": data.seed,
            "images_sha256": images,
        },
        "directions": directions_fields(job, store),
        "grid": {"x": list(job.grid.x), "y": None if job.grid.y is None else list(job.grid.y)},
    }
    fields.update(_kind_and_metrics(job, identity.others))
    return fields


def directions_fields(job: Job, store: str) -> dict:
    """The directions section: the job's keys, without ``store`` for full files (as before the key existed, so
    their files resume) and with ``store: recipe`` for a recipe, whose generator makes other numbers than the full
    directions' one."""
    fields = to_dict(job.directions)
    del fields["store"]
    if store == "recipe":
        fields["store"] = "recipe"
    del fields["spectrum"]  # kind hessian: what determines its eigenvectors is added by _kind_and_metrics
    return fields


def _evaluation(job: Job, bn: DatasetInfo | None) -> dict:
    ev = job.evaluation
    if ev.bn == "eval":
        return {"bn": ev.bn}
    assert bn is not None, "recalibration needs the identity of its samples"
    return {"bn": ev.bn, "bn_batches": ev.bn_batches, "bn_batch_size": ev.bn_batch_size, "bn_sha256": bn.sha256}


def _kind_and_metrics(job: Job, others: Mapping[str, str]) -> dict:
    """What the direction kind and the metrics add (nothing for a random-direction loss sweep, so that files of
    that kind written before the other kinds existed still resume): the other checkpoints' and the trajectory's
    bytes (``others``: the weights' hashes of those given in memory), the metrics and the Hessian's settings."""
    from ..space.checkpoint import sha256_file

    out: dict = {}
    for key in ("checkpoint2", "checkpoint3"):
        path = getattr(job.model, key)
        if path is not None:
            out[f"{key}_sha256"] = others[key] if key in others else sha256_file(path)
    if job.directions.kind == "pca":
        from ..space.pca import snapshot_files

        try:
            files = snapshot_files(job.directions.trajectory)
        except ValueError as e:
            raise JobError(f"directions.trajectory: {e}") from None
        h = hashlib.sha256()
        for path in files:
            h.update(f"{path.name}:{sha256_file(path)}\n".encode())
        out["trajectory"] = {"snapshots": len(files), "sha256": h.hexdigest()}
    if job.directions.kind == "hessian":  # what determines the eigenvectors: the spectrum file's own fingerprint
        from ..file.spectrum import read_spectrum

        try:
            out["spectrum"] = read_spectrum(job.directions.spectrum).attrs["fingerprint"]
        except JobError as e:
            raise JobError(f"directions.spectrum: {e}") from None
    if job.metrics:
        out["metrics"] = list(job.metrics)
        hessian = to_dict(job.hessian)
        # The parameter set follows directions.ignore (in the fingerprint already) unless the job says otherwise:
        # only a rule of its own is recorded, so files made before the key existed resume.
        if job.hessian.parameters(job.directions) == job.directions.ignore:
            del hessian["ignore"]
        else:
            hessian["ignore"] = job.hessian.parameters(job.directions)
        if not job.hessian.trace:  # as before the trace existed, so that those files resume
            del hessian["trace"], hessian["trace_probes"]
        out["hessian"] = hessian
    return out


def spectrum_fingerprint(job: Job, identity: Identity) -> dict:
    """The fingerprint fields of a spectrum file (``python -m llmpi.spectrum``): the network, θ*, the data of the
    job's first split, the loss, the precision, the parameters the Hessian is over, and the analyses' settings.
    Out: the batch size, ``spectrum.block`` and ``spread``, the rank count, the output (last bits at most)."""
    from ..job.factories import identity as source_identity

    model, data, loss, spec = job.model, job.data, job.loss, job.spectrum

    def source(key: str, path: str | None) -> dict | None:  # a part given in memory: its identity, found by rank 0
        return path and (identity.sources.get(key) or source_identity(path))

    split = job.splits[0]
    settings: dict = {"analyses": list(spec.analyses), "images": spec.images, "seed": spec.seed}
    for analysis in spec.analyses:
        settings[analysis] = to_dict(getattr(spec, analysis))
    return {
        "format": FORMAT,
        "kind": "spectrum",
        "arch": model.arch,
        "model": {"factory": source("model.factory", model.factory), "kwargs": model.kwargs},
        "data_factory": {"factory": source("data.factory", data.factory), "kwargs": data.kwargs},
        "loss": {
            "name": None if loss.factory else loss.name,
            "factory": source("loss.factory", loss.factory),
        },
        "precision": job.runtime.precision,
        "checkpoint_sha256": identity.checkpoint_sha256,
        "data": {
            "dataset": None if data.factory else data.dataset,
            "split": split,
            "subset": data.subset,
            "seed": data.seed,
            "images_sha256": identity.splits[split].sha256,
        },
        "ignore": job.hessian.parameters(job.directions),  # the Hessian's parameter set
        "spectrum": settings,
    }

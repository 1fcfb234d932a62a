"""What one rank loads and computes for a surface: its data, θ*, the loss, and the values at a group of points.
Numerics only, no MPI: ``llmpi.ranks.run`` wires this to the protocol.

    cache = DataCache()
    loaded = load(job, device, cache)                      # θ*, the loss, each split's samples (cached by identity)
    values = PointValues.build(job, loaded, directions)    # one evaluator per split, the Hessian if asked for
    tuning = tune(job, values, todo_points=400, ranks=3)   # rank 0 only; every rank then calls values.settle(tuning)
    rows = values([(0.25, -0.5), ...], check)              # per point: floats in job.value_names() order

A rank keeps the surfaces it computes in a small cache (``Loaded`` objects and their evaluators) and the data in a
``DataCache`` keyed by the data's spec, so that several jobs over the same images load them once.
"""

from __future__ import annotations

import os
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..compute.data import Samples
from ..compute.evaluate import Tuning
from ..job.config import DataSpec, Job
from ..job.errors import JobError
from ..job.memory import Given, given_part, is_memory
from . import placement


class DataCache:
    """Samples by what selects them (data spec, split, subset): jobs that differ elsewhere share their data."""

    def __init__(self) -> None:
        self._samples: dict[tuple, Samples] = {}

    @staticmethod
    def key(spec: DataSpec, split: str, subset: int | None, given: Given | None = None) -> tuple:
        kwargs = tuple(sorted((k, repr(v)) for k, v in spec.kwargs.items()))
        source = (spec.factory, kwargs) if spec.factory else (spec.dataset, str(spec.root))
        if is_memory(spec.factory):  # data given in memory: the objects themselves, not their label
            source = (spec.factory, id(given and given.data))
        return (*source, split, subset, spec.seed)

    def samples(
        self,
        spec: DataSpec,
        split: str,
        subset: int | None = None,
        too_many: str | None = None,
        given: Given | None = None,
    ) -> Samples:
        from ..compute.data import load_samples

        subset = spec.subset if subset is None else subset
        key = self.key(spec, split, subset, given)
        if key not in self._samples:
            self._samples[key] = load_samples(spec, split, subset, too_many=too_many, given=given)
        return self._samples[key]

    def __len__(self) -> int:
        return len(self._samples)


@dataclass
class Loaded:
    """A surface's inputs on one rank: θ* in its network (on the CPU), the loss, each evaluated split's samples, and
    the training samples BatchNorm is recalibrated on (``evaluation.bn: recalibrate`` only)."""

    job: Job
    device: torch.device
    model: nn.Module
    loss: Any  # "crossentropy", "mse" or a losses.FactoryLoss
    has_accuracy: bool  # False for a loss factory that counts no correct predictions: no <split>_acc dataset
    splits: dict[str, Samples]
    bn_samples: Samples | None = None
    given: Given | None = None  # the parts of the job held in memory (llmpi.surface), None for a job of files
    network: dict[str, str] | None = None  # a network given in memory: its identity (``checkpoint.model_identity``)
    others: dict[str, str] = field(default_factory=dict)  # other models given in memory: job key -> weights' hash

    @property
    def value_names(self) -> list[str]:
        return self.job.value_names(self.has_accuracy)

    @property
    def infos(self) -> list[Any]:
        return [samples.info for samples in self.splits.values()]

    def identity(self) -> Any:
        """What the values come from (``fingerprint.Identity``): θ*'s bytes -- its file's SHA-256, or for a network
        given in memory the hash of its weights, with its structure and code -- each split's selected samples, and
        the parts given in memory (their labels and hashes)."""
        from ..space import checkpoint
        from .fingerprint import Identity

        job, sources = self.job, {}
        if self.network is not None:
            weights = self.network["weights_sha256"]
            described = {k: v for k, v in self.network.items() if k != "weights_sha256"}
            sources["model.factory"] = {"path": job.model.factory, **described}
        else:
            weights = checkpoint.sha256_file(job.model.checkpoint)
        if given_part(self.given, "loss.factory", job.loss.factory) is not None:
            function = self.given.loss_function(job.loss.factory)
            sources["loss.factory"] = {"path": job.loss.factory, "code_sha256": checkpoint.code_sha256(function)}
        if given_part(self.given, "data.factory", job.data.factory) is not None:
            sources["data.factory"] = {"path": job.data.factory}  # the data's identity is its samples' hash
        splits = {split: samples.info for split, samples in self.splits.items()}
        return Identity(weights, splits, self.bn_samples and self.bn_samples.info, sources, dict(self.others))

    def held(self) -> dict[str, str]:
        """The hashes of the parts given in memory on this rank (an SPMD program's ranks must hold the same)."""
        out: dict[str, str] = {}
        if self.network is not None:
            out["network structure"] = self.network["structure_sha256"]
            out["network code"] = self.network["code_sha256"]
            out["weights (θ*)"] = self.network["weights_sha256"]
        if is_memory(self.job.data.factory):
            out.update({f"{split} data": samples.info.sha256 for split, samples in self.splits.items()})
        out.update({f"model.{key} weights": sha for key, sha in self.others.items()})
        return out


def look(spec: str) -> placement.Seen:
    """What this rank sees, for ``placement.bind``: no GPUs at all when the job says ``runtime.device: cpu``; its
    cores ([] where the system cannot say: placement then divides the machine)."""
    from ..compute import runtime

    gpus = runtime.gpu_identities() if spec != "cpu" and torch.cuda.is_available() else ()
    return placement.look(os.environ, socket.gethostname(), gpus, runtime.affinity())


def load(job: Job, device: torch.device, cache: DataCache, given: Given | None = None) -> Loaded:
    """Everything a rank needs of ``job`` before the directions: θ*, the loss (tried once at θ* on two samples, so
    that a loss that does not fit is a clear error now), the samples of each split, the recalibration set.
    ``given``: the parts of the job held in memory (``llmpi.job.memory``); a network given in memory is copied
    (the caller's own is never changed) and identified by its hash."""
    from ..compute import losses
    from ..job import memory
    from ..job.config import to_dict
    from ..space import checkpoint

    memory.check(given, to_dict(job))  # a part labelled in memory is there
    splits = {split: cache.samples(job.data, split, given=given) for split in job.splits}
    network = None
    if given_part(given, "model.checkpoint", job.model.checkpoint) is not None:
        own = given.network("model.checkpoint", job.model.checkpoint)
        network = checkpoint.model_identity(own)
        model = checkpoint.copy_model(own)
    else:
        model = checkpoint.load_job_model(job.model)
    if not any(p.numel() for p in model.parameters()):
        raise JobError(
            f"model: {job.model.label} has no parameters: a loss landscape moves a network's weights, and this one "
            f"has none; give the trained network itself"
        )
    first = next(iter(splits.values()))
    function = None
    if given_part(given, "loss.factory", job.loss.factory) is not None:
        function = given.loss_function(job.loss.factory)
    loss, has_accuracy = losses.prepare(job.loss, model, *first.head(2).to(), function, job.model.label)
    bn_samples = None
    ev = job.evaluation
    if ev.bn == "recalibrate":
        losses.check_recalibration(model, job.directions.type, job.model.label)
        bn_samples = cache.samples(
            job.data,
            "train",
            ev.bn_batches * ev.bn_batch_size,
            too_many="evaluation.bn_batches x bn_batch_size = {subset} training samples to recalibrate BatchNorm, "
            "but the train split has {total}; lower evaluation.bn_batches or evaluation.bn_batch_size",
            given=given,
        )
    others = {}
    for key in ("checkpoint2", "checkpoint3"):
        value = getattr(job.model, key)
        if given_part(given, f"model.{key}", value) is not None:
            others[key] = checkpoint.model_identity(given.network(f"model.{key}", value))["weights_sha256"]
    return Loaded(job, device, model, loss, has_accuracy, splits, bn_samples, given, network, others)


def refuse_differing(held: list[dict[str, str]]) -> None:
    """Stop an SPMD run whose ranks hold other parts in memory than rank 0: ``differing``'s message as a JobError."""
    message = differing(held)
    if message is not None:
        raise JobError(message)


def differing(held: list[dict[str, str]]) -> str | None:
    """The message that stops an SPMD run whose ranks hold other parts in memory than rank 0 (``held``: every
    rank's ``Loaded.held()``, in rank order), naming the first such rank; None when all agree."""
    others = [rank for rank, mine in enumerate(held) if mine != held[0]]
    if not others:
        return None
    rank, mine = others[0], held[others[0]]
    parts = [part for part, sha in held[0].items() if mine.get(part) != sha]
    hashes = ", ".join(f"{part} {mine.get(part, '-')[:12]} vs {held[0][part][:12]}" for part in parts)
    also = f" (and so do ranks {', '.join(map(str, others[1:]))})" if len(others) > 1 else ""
    return (
        f"rank {rank} of {len(held)} holds other {', '.join(parts)} than rank 0{also}: every rank must pass "
        f"llmpi.surface (or llmpi.spectrum) the same network, weights and data (SHA-256 {hashes}). A network "
        f"trained separately on each rank differs in its last bits: train it on one rank and broadcast it "
        f"(model.load_state_dict(comm.bcast(model.state_dict()))), or load one checkpoint on every rank"
    )


# ----------------------------------------------------------------------------------------------------------------
# The values of a group of points: loss and accuracy on each split from that split's evaluator (all share one
# network), then, with ``metrics: [hessian]``, λmax, λmin and |λmin/λmax| over the first split's data.


def make_evaluator(job: Job, loaded: Loaded, samples: Samples, directions: Any) -> Any:
    """An evaluator of ``samples`` with a provisional batch size and the eager forward until ``settle``."""
    from ..compute import runtime
    from ..compute.evaluate import Evaluator
    from ..space import plan

    rt, auto_batch = job.runtime, job.data.batch_size == "auto"
    images, labels = samples.to("cpu")  # llmpi.compute.batches puts them where data.placement says
    if isinstance(directions, list):
        dirs: Any = [{k: torch.from_numpy(np.asarray(v)) for k, v in d.items()} for d in directions]
    elif plan.is_recipe(directions):  # this rank makes the directions itself, once it proved it can
        plan.check_recipe(directions, loaded.model, loaded.device, job, loaded.given)
        dirs = directions
    else:  # another split's evaluator's weights (llmpi.space.theta.Weights): one θ* on the device for all splits
        dirs = directions
    evaluator = Evaluator(
        loaded.model.to(loaded.device),
        dirs,
        images,
        labels,
        runtime.default_batch_size(loaded.device, samples.info.count) if auto_batch else job.data.batch_size,
        kind=job.directions.type,
        precision=rt.precision,
        shrink_on_oom=auto_batch,
        loss=loaded.loss,
        bn_inputs=None if loaded.bn_samples is None else loaded.bn_samples.to(loaded.device)[0],
        bn_batch_size=job.evaluation.bn_batch_size,
        hold_directions=rt.hold_directions,
        placement=job.data.placement,
        device=loaded.device,
    )
    if rt.fold is True and not evaluator.foldable:
        raise JobError(
            f"runtime.fold is true, but {job.model.label} has no BatchNorm that follows a convolution or linear layer "
            f"of its own (or torch.fx cannot trace it); set runtime.fold: auto"
        )
    return evaluator


class PointValues:
    """The values of a group of points, in ``job.value_names()`` order: (loss, acc) per split -- loss only where
    the loss counts no correct predictions -- then, with ``metrics: [hessian]``, the Hessian's
    (``config.HESSIAN_VALUES``: λmax, λmin, |λmin/λmax|, whether Lanczos converged, its relative residual, the
    products it cost)."""

    def __init__(self, job: Job, loaded: Loaded, evaluators: dict[str, Any]) -> None:
        self.job, self.loaded, self.evaluators = job, loaded, evaluators
        self.per_split = 2 if loaded.has_accuracy else 1
        self.hessian = job.hessian if "hessian" in job.metrics else None
        self.hessian_batch = 0  # set by settle()
        self.compile_seconds = 0.0  # compiling this rank's forward for this surface, not yet reported

    @classmethod
    def build(cls, job: Job, loaded: Loaded, directions: Any) -> PointValues:
        """One evaluator per split, all on the one network of ``loaded``."""
        evaluators: dict[str, Any] = {}
        for split, samples in loaded.splits.items():
            evaluators[split] = make_evaluator(job, loaded, samples, directions)
            directions = evaluators[split].weights  # the next split shares θ* and the directions on the device
        return cls(job, loaded, evaluators)

    @property
    def names(self) -> list[str]:
        return self.loaded.value_names

    @property
    def first(self) -> Any:
        return next(iter(self.evaluators.values()))

    def settle(self, tuning: Tuning) -> float:
        """The batch size and forward path rank 0 chose, for every evaluator and the Hessian; compiles (when the
        path does) before the first point. The seconds compiling took here (0 when nothing compiled)."""
        seconds = 0.0
        for evaluator in self.evaluators.values():
            evaluator.batch_size = tuning.batch_size
            evaluator.use(tuning.forward)
            seconds += evaluator.prepare()
        self.hessian_batch = hessian_batch(self.job, tuning)
        return seconds

    def activate(self) -> None:
        """Set the process-wide numerics flags this surface was made for (several surfaces share a process)."""
        from ..compute import runtime

        runtime.set_precision(self.loaded.device, self.job.runtime.precision)
        runtime.set_kernels(self.job.runtime.kernels)

    def __call__(self, group: list[tuple[float, ...]], check: Callable[[], None]) -> list[list[float]]:
        rows: list[list[float]] = [[] for _ in group]
        for evaluator in self.evaluators.values():
            for row, got in zip(rows, evaluator.many(group, between_batches=check)):
                row += list(got[: self.per_split])
        if self.hessian is not None:
            for row, point in zip(rows, group):
                row += self.eigenvalues(point, check)
        return rows

    def eigenvalues(self, point: tuple[float, ...], check: Callable[[], None]) -> list[float]:
        from ..compute.hessian import HessianOperator, extremes_and_basis

        ev, spec = self.first, self.hessian
        ev.move_to(point)  # the loss of another split may have moved the weights since
        n = len(ev.labels) if spec.images is None else min(spec.images, len(ev.labels))
        auto = spec.batch_size == "auto"  # a batch the user set is kept; an automatic one halves on out-of-memory
        ignore = spec.parameters(self.job.directions)
        x, y = ev.images[:n].to(ev.device), ev.labels[:n].to(ev.device)  # a copy only with data.placement host
        op = HessianOperator(ev.model, x, y, self.hessian_batch, ignore, auto)
        result, basis, projected = extremes_and_basis(
            op, tol=spec.tol, max_hvps=spec.max_hvps, basis=spec.basis, seed=spec.seed, between_batches=check
        )
        # in the order of config.HESSIAN_VALUES (then TRACE_VALUES); eig_hvps: Lanczos's products and the trace's
        row = [result.max_eig, result.min_eig, result.ratio, float(result.converged), result.relative_residual]
        before = op.products
        trace = point_trace(op, basis, projected, spec, check) if spec.trace else []
        row += [float(result.hvps + op.products - before), *trace]
        self.hessian_batch = op.batch_size  # an out-of-memory retry may have halved it: keep it for the next point
        return row


def point_trace(op: Any, basis: torch.Tensor, projected: np.ndarray, spec: Any, check: Callable[[], None]) -> list:
    """``hessian.trace``: the trace at a point and its standard error, from the point's Lanczos basis (its exact
    share) and ``hessian.trace_probes`` probes of ``hessian.seed`` on the rest (llmpi.compute.spectrum)."""
    from ..compute.spectrum import deflated_trace

    value, se = deflated_trace(lambda Z: op.many(Z, check), basis, projected, spec.trace_probes, spec.seed)
    return [value, se]


def tune(job: Job, values: PointValues, todo_points: int, ranks: int) -> Tuning:
    """Rank 0: the batch size and forward path (folded, compiled) for every rank of this surface.

    "auto" is decided by timing on rank 0 alone and broadcast, because a choice that differed between ranks would
    give them different bits (see llmpi.compute.evaluate). Probing spends at most a small share of the work's estimate,
    compilation included.
    """
    from ..compute.evaluate import Tuning, autotune
    from ..compute.forward import ForwardPath

    evaluator, rt = values.first, job.runtime
    if (job.data.batch_size == "auto" or "auto" in (rt.fold, rt.compile)) and todo_points:
        work = todo_points * len(evaluator.labels) / ranks
        tune_batch = job.data.batch_size == "auto"
        return autotune(evaluator, work, tune_batch=tune_batch, fold=rt.fold, compile=rt.compile, ranks=ranks)
    return Tuning(evaluator.batch_size, ForwardPath(fold=rt.fold is True, compile=rt.compile is True))


# ----------------------------------------------------------------------------------------------------------------


class Surfaces:
    """The surfaces this rank has built evaluators for, the ``keep`` most recently used ones: a rank that moves on
    to the next surface frees the one before last (device memory), not the one whose straggler it may still copy."""

    def __init__(self, build: Callable[[int], PointValues], keep: int = 2) -> None:
        self.build, self.keep = build, keep
        self._held: OrderedDict[int, PointValues] = OrderedDict()
        self.loads: list[int] = []  # surfaces in the order this rank built them (the run record shows it)

    def get(self, index: int) -> PointValues:
        if index in self._held:
            self._held.move_to_end(index)
            return self._held[index]
        while len(self._held) >= self.keep:
            self._held.popitem(last=False)
            _release_device_memory()
        values = self.build(index)
        self._held[index] = values
        self.loads.append(index)
        return values

    def put(self, index: int, values: PointValues) -> None:
        """Hold values built elsewhere (rank 0 builds and tunes every surface before the sweep)."""
        self._held[index] = values
        self._held.move_to_end(index)
        while len(self._held) > self.keep:
            self._held.popitem(last=False)
        if index not in self.loads:
            self.loads.append(index)


def hessian_batch(job: Job, tuning: Tuning) -> int:
    """The Hessian's batch: the job's, or the sweep's capped at 512 (double backward holds several activations per
    image, so the forward pass's best batch may not fit)."""
    spec = job.hessian
    return spec.batch_size if spec.batch_size != "auto" else min(tuning.batch_size, 512)


def _release_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

"""Sweep a loss surface: every rank computes, rank 0 coordinates and writes one HDF5 file.

    mpirun -n 8 python -m llmpi.sweep jobs/vgg56.yaml            # 8 ranks (one per GPU), all compute
    python -m llmpi.sweep jobs/vgg56.yaml                         # the same job on one rank
    python -m llmpi.sweep jobs/vgg56.yaml --set grid.x=[-0.5,0.5,21] --set output=surfaces/zoom.h5

Rerunning the same command resumes: points already in the file are never computed again. Exit status:
0 complete, 1 failed (a rank's error, printed with its traceback), 2 bad input (one message, what to do next),
75 interrupted by SIGTERM/SIGUSR1/SIGINT -- incomplete but resumable: rerun the same command.

This module only wires the layers: the job (config), the numerics (data, checkpoint, directions, evaluate) on
every rank, the store on rank 0, and the protocol between them.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 75
Reply = tuple[int, int, dict[str, np.ndarray]]  # (start, stop, {"train_loss": ..., ...}) of a block or its part


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llmpi.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("job", help="the job file (YAML), e.g. jobs/vgg56.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a job key, YAML-typed, e.g. --set grid.x=[-0.5,0.5,21] (repeatable)",
    )
    p.add_argument("--restart", action="store_true", help="start the output file anew instead of resuming it")
    p.add_argument("--debug", action="store_true", help="show tracebacks for input errors too")
    return p.parse_args(argv)


class SetupFailed(Exception):
    """Raised on every rank when any rank failed during set-up; carries the first failure."""

    def __init__(self, user: bool, message: str) -> None:
        super().__init__(message)
        self.user = user


def collective(comm: Any, step: Callable[[], Any], debug: bool) -> Any:
    """Run ``step`` on every rank; if any rank fails, all raise SetupFailed with the first failure (no hang)."""
    from .errors import JobError
    from .protocol import where

    failure = None
    try:
        value = step()
    except JobError as e:
        value = None
        failure = (True, str(e) + (f"\n{traceback.format_exc()}" if debug else ""), where(comm))
    except Exception:
        value = None
        failure = (False, traceback.format_exc(), where(comm))
    failures = [f for f in comm.allgather(failure) if f is not None]
    if failures:
        user, message, place = failures[0]
        raise SetupFailed(user, message if user else f"{place}:\n{message}")
    return value


def fingerprint(job: Any, checkpoint_sha256: str, data_info: Any, bn_info: Any = None) -> dict:
    """Everything that determines the stored values, and nothing that does not (ranks, batch size, points per
    pass, compile, output: these change per-image losses in their last bits at most). Users' factories count by
    import path and a hash of their module's source (``plugins.identity``), with their keyword arguments."""
    from .config import to_dict
    from .plugins import identity

    return {
        "format": 1,
        "arch": job.model.arch,
        **factory_fields(job, bn_info, identity),
        "precision": job.runtime.precision,  # tf32 and bf16 change values by far more than rounding
        "checkpoint_sha256": checkpoint_sha256,
        "data": {
            "dataset": None if job.data.factory else job.data.dataset,
            "split": job.data.split,
            "subset": job.data.subset,
            "seed": job.data.seed,
            "images_sha256": data_info.sha256,
        },
        "directions": to_dict(job.directions),
        "grid": {"x": list(job.grid.x), "y": None if job.grid.y is None else list(job.grid.y)},
    }


def factory_fields(job: Any, bn_info: Any, identity: Callable[[str], dict]) -> dict:
    """The fingerprint's part for issue 7: the model and data factories, the loss, the BatchNorm handling."""
    model, data, loss, ev = job.model, job.data, job.loss, job.evaluation
    return {
        "model": {"factory": model.factory and identity(model.factory), "kwargs": model.kwargs},
        "data_factory": {"factory": data.factory and identity(data.factory), "kwargs": data.kwargs},
        "loss": {"name": None if loss.factory else loss.name, "factory": loss.factory and identity(loss.factory)},
        "evaluation": {"bn": ev.bn}
        if ev.bn == "eval"
        else {"bn": ev.bn, "bn_batches": ev.bn_batches, "bn_batch_size": ev.bn_batch_size, "bn_sha256": bn_info.sha256},
    }


@dataclass
class RankSetup:
    """What one rank holds once set up: its device, its copy of the data and θ*, the loss, the BatchNorm set."""

    device: Any
    threads: int
    samples: Any  # data.Samples
    model: Any
    loss: Any  # "crossentropy", "mse" or a losses.FactoryLoss
    has_accuracy: bool  # False for a loss factory that counts no correct predictions: no <split>_acc dataset
    bn_samples: Any = None  # data.Samples of the training split for evaluation.bn: recalibrate
    splits: dict[str, Any] = field(default_factory=dict)  # data.Samples of each split evaluated (split: both)

    @property
    def info(self) -> Any:
        return self.samples.info


def value_names(job: Any, r: RankSetup) -> list[str]:
    """The file's grid datasets: ``job.value_names``, without accuracies where the loss counts none."""
    return job.value_names(r.has_accuracy)


@dataclass
class Plan:
    """What rank 0 decides and every rank needs (the tasks themselves stay on rank 0)."""

    directions: Any  # list of {entry: array} (directions.store full), or a llmpi.recipe.Recipe (recipe)
    todo_points: int


def setup_rank(job: Any, local_rank: int, local_size: int, faults: Any) -> RankSetup:
    from . import checkpoint, data, losses, runtime

    faults.at_setup()
    device = runtime.pick_device(job.runtime.device, local_rank)
    threads = runtime.pick_threads(job.runtime.threads, local_size)
    runtime.configure(device, threads)
    splits = {split: data.load_samples(job.data, split) for split in job.splits}
    samples = splits[job.splits[0]]
    model = checkpoint.load_job_model(job.model)
    loss, has_accuracy = losses.prepare(job.loss, model, *samples.head(2).to())
    r = RankSetup(device, threads, samples, model, loss, has_accuracy, splits=splits)
    ev = job.evaluation
    if ev.bn == "recalibrate":
        losses.check_recalibration(model, job.directions.type, job.model.label)
        r.bn_samples = data.load_samples(
            job.data,
            "train",
            ev.bn_batches * ev.bn_batch_size,
            too_many="evaluation.bn_batches x bn_batch_size = {subset} training samples to recalibrate BatchNorm, "
            "but the train split has {total}; lower evaluation.bn_batches or evaluation.bn_batch_size",
        )
    return r


def open_store(job: Any, grid: Any, r: RankSetup, restart: bool) -> tuple[Any, np.ndarray, Plan]:
    """Rank 0: open or create the surface file (making the directions only if it is new); what is left to do."""
    from . import checkpoint, config, planning
    from .store import SurfaceStore

    mode = planning.store_mode(job, r.model)  # directions.store resolved: full or recipe

    def make_directions() -> Any:
        return planning.plan_directions(job, r.model, grid.ndim, mode, r.device)  # only when the file is new

    fields = fingerprint(job, checkpoint.sha256_file(job.model.checkpoint), r.info, r.bn_samples and r.bn_samples.info)
    if len(r.splits) > 1:  # data.split both: the identity of each split's samples
        fields["data"]["images_sha256"] = {split: s.info.sha256 for split, s in r.splits.items()}
    fields.update(planning.fingerprint_fields(job, mode))
    attrs = {
        "dataset": "; ".join(samples.info.describe() for samples in r.splits.values()),
        "synthetic": r.info.synthetic,
        "arch": job.model.label,
        "split": job.data.split,
        "images": r.info.count,
    }
    names = value_names(job, r)
    store = SurfaceStore.open(
        job.output_path,
        grid,
        names,
        fields,
        config.to_yaml(job),
        make_directions,
        restart=restart,
        attrs=attrs,
    )
    todo = store.todo()
    return store, todo, Plan(planning.stored_directions(store), len(todo))


def make_evaluator(job: Any, r: RankSetup, plan: Plan) -> Any:
    """This rank's evaluator, with a provisional batch size and one point per pass until the tuning step."""
    import torch

    from . import planning, runtime
    from .errors import JobError
    from .evaluate import Evaluator

    rt, auto_batch = job.runtime, job.data.batch_size == "auto"
    images, labels = r.samples.to("cpu")  # llmpi.batches puts them where data.placement says
    if isinstance(plan.directions, list):
        dirs = [{k: torch.from_numpy(np.asarray(v)) for k, v in d.items()} for d in plan.directions]
    elif planning.is_recipe(plan.directions):  # this rank makes the directions itself, once it proved it can
        planning.check_recipe(plan.directions, r.model, r.device, job)
        dirs = plan.directions
    else:  # another split's evaluator's weights (llmpi.weights.Weights): one θ* on the device for all splits
        dirs = plan.directions
    # A loss factory runs the network itself, and recalibration rewrites BatchNorm buffers per point: neither can
    # go through vmap over stacked weights, so both evaluate one point per pass (see llmpi.evaluate).
    one_point = job.loss.factory is not None or r.bn_samples is not None
    if one_point and rt.points_per_pass not in ("auto", 1):
        raise JobError(
            f"runtime.points_per_pass is {rt.points_per_pass}, but a loss.factory or evaluation.bn: recalibrate "
            f"evaluates one point per pass; set runtime.points_per_pass: auto (or 1)"
        )
    return Evaluator(
        r.model.to(r.device),
        dirs,
        images,
        labels,
        runtime.default_batch_size(r.device, r.info.count) if auto_batch else job.data.batch_size,
        kind=job.directions.type,
        precision=rt.precision,
        compile=rt.compile,
        points_per_pass=1 if rt.points_per_pass == "auto" else rt.points_per_pass,
        shrink_on_oom=auto_batch,
        loss=r.loss,
        bn_inputs=None if r.bn_samples is None else r.bn_samples.to(r.device)[0],
        bn_batch_size=job.evaluation.bn_batch_size,
        hold_directions=rt.hold_directions,
        placement=job.data.placement,
        device=r.device,
    )


def tune_and_plan(job: Any, grid: Any, evaluator: Any, todo: np.ndarray, ranks: int) -> tuple[list, int, int, str]:
    """Rank 0: the batch size and points per pass for every rank, then the blocks.

    "auto" is decided by timing on rank 0 alone and broadcast, because a choice that differed between ranks would
    give them different bits (see llmpi.evaluate). Blocks are cut afterwards so that an automatic block holds
    whole passes.
    """
    from .evaluate import autotune
    from .grid import auto_block, blocks

    auto_batch, auto_points = job.data.batch_size == "auto", job.runtime.points_per_pass == "auto"
    described = ""
    if (auto_batch or auto_points) and len(todo):
        work = len(todo) * len(evaluator.labels) / ranks
        described = autotune(evaluator, work, tune_batch=auto_batch, tune_points=auto_points).describe()
    width = evaluator.points_per_pass
    block = job.grid.block if job.grid.block != "auto" else auto_block(len(todo), ranks)
    if job.grid.block == "auto" and width > 1:  # whole passes: no padded points
        block = width * -(-block // width)
    tasks = [(b, (s, e, grid.coords(s, e)), e - s) for b, (s, e) in enumerate(blocks(todo, block))]
    return tasks, evaluator.batch_size, width, described


# ----------------------------------------------------------------------------------------------------------------
# What one point's values are made of (job.value_names, in order): loss and accuracy on each split, then the
# Hessian's extreme eigenvalues at the same perturbed weights.


class PointValues:
    """The values of a group of points: (loss, acc) per split from that split's evaluator (all share one network),
    then, with ``metrics: [hessian]``, λmax, λmin and |λmin/λmax| (``llmpi.hessian``) over the first split's data."""

    def __init__(
        self, evaluators: dict[str, Any], hessian: Any | None, ignore: str, batch_size: int, accuracy: bool = True
    ) -> None:
        self.evaluators, self.hessian, self.ignore, self.hessian_batch = evaluators, hessian, ignore, batch_size
        self.per_split = 2 if accuracy else 1  # a loss factory that counts no correct predictions: loss only
        self.names = [f"{split}_{what}" for split in evaluators for what in ("loss", "acc")[: self.per_split]]
        if hessian is not None:
            self.names += ["max_eig", "min_eig", "eig_ratio"]

    @property
    def first(self) -> Any:
        return next(iter(self.evaluators.values()))

    @property
    def width(self) -> int:
        """Points handed over at once: the evaluators' points per pass."""
        return self.first.points_per_pass

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
        from .hessian import HessianOperator, extreme_eigenvalues

        ev, spec = self.first, self.hessian
        ev.move_to(point)  # with several points per pass the loss never moved the network's own weights
        n = len(ev.labels) if spec.images is None else min(spec.images, len(ev.labels))
        x, y = ev.images[:n].to(ev.device), ev.labels[:n].to(ev.device)  # a copy only with data.placement host
        op = HessianOperator(ev.model, x, y, self.hessian_batch, ignore=self.ignore)
        result = extreme_eigenvalues(
            op, tol=spec.tol, max_hvps=spec.max_hvps, basis=spec.basis, seed=spec.seed, between_batches=check
        )
        return [result.max_eig, result.min_eig, result.ratio]


def make_point_values(job: Any, r: RankSetup, plan: Plan) -> PointValues:
    """One evaluator per split (the first built by ``make_evaluator``, the others the same way on their data)."""
    evaluators = {}
    for split, samples in (r.splits or {job.data.split: r.samples}).items():
        evaluators[split] = make_evaluator(job, replace(r, samples=samples), plan)
        plan = replace(plan, directions=evaluators[split].weights)  # the next split shares θ* and the directions
    hessian = job.hessian if "hessian" in job.metrics else None
    return PointValues(evaluators, hessian, job.directions.ignore, 0, r.has_accuracy)


def settle(values: PointValues, job: Any, batch_size: int, points_per_pass: int) -> None:
    """Every rank: the batch size and points per pass rank 0 chose, for every evaluator and the Hessian."""
    for evaluator in values.evaluators.values():
        evaluator.batch_size, evaluator.points_per_pass = batch_size, points_per_pass
    spec = job.hessian
    values.hessian_batch = spec.batch_size if spec.batch_size != "auto" else min(batch_size, 512)


def make_compute(values: PointValues, faults: Any) -> Callable[[tuple, Callable[[], None]], Reply]:
    from .protocol import Stopped

    names = values.names

    def compute(payload: tuple, check: Callable[[], None]) -> Reply:
        """Evaluate a block's points; on a stop, hand back the points already finished."""
        start, stop, coords = payload
        out = {name: np.empty(stop - start) for name in names}
        k = 0
        try:
            while k < len(coords):
                check()
                group = [tuple(p) for p in coords[k : k + values.width]]
                for _ in group:
                    faults.before_point(check)
                for row in values(group, check):
                    for name, v in zip(names, row):
                        out[name][k] = v
                    faults.after_point(start + k)
                    k += 1
        except Stopped as stopped:
            if k > 0:
                stopped.partial = (start, start + k, {name: v[:k] for name, v in out.items()})
            raise
        return start, stop, out

    return compute


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mpi4py import MPI

    from . import config, protocol
    from .faults import Faults
    from .grid import Grid

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    interrupts = protocol.Interrupts().install()
    faults = Faults.from_env(rank)
    store = None
    try:
        job = comm.bcast(
            collective(comm, lambda: config.load_job(args.job, args.overrides) if rank == 0 else None, args.debug)
        )
        if job.model.checkpoint is None:
            raise SetupFailed(True, "model.checkpoint is required: the trained network to sweep around")
        grid = Grid.from_spec(job.grid.x, job.grid.y)
        if size > grid.size:
            raise SetupFailed(
                True,
                f"{size} ranks for a grid of {grid.size} points: use at most {grid.size} ranks "
                f"(mpirun -n {grid.size}) or a finer grid",
            )
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        r = collective(comm, lambda: setup_rank(job, local.Get_rank(), local.Get_size(), faults), args.debug)
        places = comm.gather((socket.gethostname(), str(r.device), os.getpid()))

        def rank0_store() -> Plan | None:
            nonlocal store, todo
            if rank != 0:
                return None
            store, todo, plan = open_store(job, grid, r, args.restart)
            store.faults = faults
            return plan

        todo = np.empty(0, dtype=np.int64)
        plan = comm.bcast(collective(comm, rank0_store, args.debug))
        values = collective(comm, lambda: make_point_values(job, r, plan), args.debug)
        evaluator = values.first
        tasks: list = []

        def rank0_tune() -> tuple[int, int, str] | None:
            if rank != 0:
                return None
            tasks[:], *choice = tune_and_plan(job, grid, evaluator, todo, size)
            return tuple(choice)

        # the tasks stay on rank 0; every rank needs only the batch size and points per pass
        choice = comm.bcast(collective(comm, rank0_tune, args.debug))
        batch_size, points_per_pass, described = choice
        settle(values, job, batch_size, points_per_pass)
        assert values.names == value_names(job, r), (values.names, value_names(job, r))
        compute = make_compute(values, faults)

        if rank != 0:
            outcome = protocol.run(comm, [], compute, lambda results: None, interrupts)
            return {protocol.COMPLETE: EXIT_OK, protocol.INTERRUPTED: EXIT_INTERRUPTED}.get(outcome.state, EXIT_FAILED)

        infos = [samples.info for samples in r.splits.values()] or [r.info]
        log = RunLog(job, grid.size, grid.size - plan.todo_points, sum(i.count for i in infos), places)
        print(
            f"llmpi sweep {job.name}: {job.model.label} on {' + '.join(i.describe() for i in infos)}; grid "
            f"{'x'.join(map(str, grid.shape[::-1]))} = {grid.size} points, {log.done} already done; {size} rank(s) "
            f"on {r.device.type}, {r.threads} thread(s) each, batch {evaluator.batch_size}"
            + (f" x {evaluator.points_per_pass} points per pass" if evaluator.points_per_pass > 1 else "")
            + f", {job.runtime.precision}{', compiled' if job.runtime.compile else ''} -> {job.output}",
            flush=True,
        )
        if described:
            print(f"llmpi: tuned on rank 0: {described}", flush=True)
        print(f"llmpi: {evaluator.weights.describe()}; {evaluator.batches.describe()}", flush=True)
        if values.hessian is not None:
            h = job.hessian
            print(
                f"llmpi: Hessian extremes at every point: Lanczos to tol {h.tol:g} (at most {h.max_hvps} products), "
                f"over {h.images or 'all'} of the {job.splits[0]} images, batch {values.hessian_batch}",
                flush=True,
            )

        def commit(results: list[tuple[int, Reply]]) -> None:
            store.write([reply for _, reply in results])
            log.advance(sum(stop - start for _, (start, stop, _) in results))

        outcome = protocol.run(comm, tasks, compute, commit, interrupts, progress=log.checkpoint)
        store.close()
        store = None
        return log.finish(outcome, comm)
    except SetupFailed as e:
        if rank == 0:
            print(f"llmpi: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE if e.user else EXIT_FAILED
    finally:
        if store is not None:
            store.close()


class RunLog:
    """Rank 0's account of the run: a tqdm bar on a terminal (else a line every ``every`` s), the final summary,
    and ``<output>.run.json`` for ``python -m llmpi.status`` (rewritten atomically every ``every_json`` s)."""

    def __init__(
        self, job: Any, total: int, done: int, images: int, places: list, every: float = 10.0, every_json: float = 2.0
    ) -> None:
        self.job, self.total, self.done, self.images, self.places = job, total, done, images, places
        self.every, self.every_json = every, every_json
        self.start_done = done
        self.t0 = self.last_line = self.last_json = time.monotonic()
        self.started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.bar = None
        if sys.stderr.isatty() and done < total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="pt", desc="llmpi", dynamic_ncols=True)
        self.write_json("running", None)

    @property
    def rate(self) -> float:
        return (self.done - self.start_done) / max(time.monotonic() - self.t0, 1e-9)

    def advance(self, new_points: int) -> None:
        self.done += new_points
        if self.bar is not None:
            self.bar.update(new_points)
            return
        now = time.monotonic()
        if now - self.last_line >= self.every:
            self.last_line = now
            eta = (self.total - self.done) / self.rate if self.rate > 0 else float("inf")
            print(
                f"llmpi: {self.done}/{self.total} points, {self.rate:.2f} points/s, ETA {duration(eta)}",
                file=sys.stderr,
                flush=True,
            )

    def checkpoint(self, outcome: Any) -> None:
        if time.monotonic() - self.last_json >= self.every_json:
            self.write_json("running", outcome)

    def write_json(self, state: str, outcome: Any, extra: dict | None = None) -> None:
        from .store import write_run_info

        self.last_json = time.monotonic()
        rate = self.rate
        per_rank = []
        for i, (host, device, pid) in enumerate(self.places):
            s = outcome.stats.get(i, {}) if outcome is not None else {}
            per_rank.append(
                {
                    "rank": i,
                    "host": host,
                    "device": device,
                    "pid": pid,
                    "blocks": s.get("blocks", 0),
                    "points": s.get("points", 0),
                    "seconds": round(s.get("seconds", 0.0), 3),
                }
            )
        info = {
            "state": state,
            "job": self.job.name,
            "started": self.started,
            "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
            "ranks": len(self.places),
            "points_total": self.total,
            "points_done": self.done,
            "points_this_run": self.done - self.start_done,
            "points_per_second": rate,
            "images_per_point": self.images,
            "eta_seconds": (self.total - self.done) / rate if rate > 0 else None,
            "per_rank": per_rank,
            **(extra or {}),
        }
        try:
            write_run_info(self.job.output_path, info)
        except OSError as e:  # progress reporting must never fail a sweep
            print(f"llmpi: warning: cannot write {self.job.output}.run.json ({e})", file=sys.stderr)

    def finish(self, outcome: Any, comm: Any) -> int:
        from . import protocol

        if self.bar is not None:
            self.bar.close()
        extra = {"reason": outcome.reason, "error": outcome.error, "duplicates_dropped": outcome.duplicates}
        self.write_json(outcome.state, outcome, extra)
        if outcome.state == protocol.FAILED:
            print(
                f"llmpi: error: the sweep failed; every point finished before the failure is kept in "
                f"{self.job.output}; fix the cause and rerun the same command to resume.\n{outcome.error}",
                file=sys.stderr,
                flush=True,
            )
            code = EXIT_FAILED
        elif outcome.state == protocol.INTERRUPTED:
            print(
                f"llmpi: interrupted ({outcome.reason}) with {self.done} of {self.total} points done; "
                f"rerun the same command to resume",
                file=sys.stderr,
                flush=True,
            )
            code = EXIT_INTERRUPTED
        else:
            seconds = time.monotonic() - self.t0
            points = self.done - self.start_done
            print(
                f"llmpi: {points} points in {seconds:.1f} s ({self.rate:.2f} points/s, "
                f"{self.rate * self.images:.0f} images/s) on {len(self.places)} rank(s); {self.done}/{self.total} "
                f"done -> {self.job.output}",
                flush=True,
            )
            code = EXIT_OK
        if outcome.unresponsive:
            print(
                f"llmpi: ranks {outcome.unresponsive} did not stop in time; aborting them", file=sys.stderr, flush=True
            )
            comm.Abort(code or EXIT_FAILED)
        return code


def duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


if __name__ == "__main__":
    sys.exit(main())

"""A sweep over the ranks of a communicator: the set-up every rank takes together, rank 0's preparation of each
surface (its file, directions and tuning), the blocks computed on every rank, and rank 0's commit of results.

    from mpi4py import MPI
    code = sweep(MPI.COMM_WORLD, lambda: load_jobs(["jobs/vgg56.yaml"], []), restart=False, debug=False,
                 interrupts=protocol.Interrupts().install())

Called on every rank alike (SPMD): ``python -m llmpi.sweep`` is argument parsing around ``sweep``, which prints how
:func:`execute` ended and returns the exit status; ``llmpi.surface`` (``llmpi.ranks.api``) calls ``execute`` itself,
with parts of the job given in memory, and turns its ending into a Surface or an exception. It wires the layers
below: the jobs (``llmpi.job``), what a rank loads and computes (``worker``: data, θ*, directions, evaluators), rank
0's preparation of each surface (``fingerprint``, ``llmpi.space.plan``, the store of ``llmpi.file``), the run's
record (``record``), and the ``protocol`` between ranks. The exit status is the command's (``llmpi.job.exits``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..job.errors import JobError
from ..job.exits import EXIT_DISK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from ..compute.evaluate import Tuning
    from ..file.grid import Grid
    from ..file.store import Planned, SurfaceStore
    from ..job.config import Job
    from .faults import Faults
    from .placement import Binding
    from .record import RunRecord
    from .worker import Loaded, PointValues, Surfaces

# A block's reply, and what a stopped block hands back of its finished part: (surface index, start, stop,
# {"train_loss": array, ...}, rank, seconds computing, seconds compiling before it: non-zero on a rank's first
# block of a surface whose forward path compiles)
Reply = tuple[int, int, int, dict[str, np.ndarray], int, float, float]


# ----------------------------------------------------------------------------------------------------------------
# Set-up steps that every rank takes together: a failure on any rank fails all of them, with the first failure.


class SetupFailed(Exception):
    """Raised on every rank when any rank failed during set-up; carries the first failure and its exit status, and
    on the rank where it happened the exception itself (``original``: ``llmpi.surface`` raises it there)."""

    def __init__(self, user: bool, message: str, code: int | None = None, original: BaseException | None = None):
        super().__init__(message)
        self.user = user
        self.code = code if code is not None else EXIT_USAGE if user else EXIT_FAILED
        self.original = original


def collective(comm: Any, step: Callable[[], Any], debug: bool) -> Any:
    """Run ``step`` on every rank; if any rank fails, all raise SetupFailed with the first failure (no hang).

    An error the user can act on (``llmpi.job.exits.explain``: bad input, a failing disk) is one message with its exit
    status; anything else is a failure with the rank's traceback and where it happened."""
    from ..job.exits import explain
    from .protocol import where

    failure, mine = None, None
    try:
        value = step()
    except Exception as e:
        value, mine = None, e
        explained = explain(e)
        if explained is not None:
            code, message = explained
            failure = (code, message + (f"\n{traceback.format_exc()}" if debug else ""), where(comm))
        else:
            failure = (EXIT_FAILED, traceback.format_exc(), where(comm))
    everyone = comm.allgather(failure)
    first = next((rank for rank, f in enumerate(everyone) if f is not None), None)
    if first is not None:
        code, message, place = everyone[first]
        user = code != EXIT_FAILED
        original = mine if first == comm.Get_rank() else None
        raise SetupFailed(user, message if user else f"{place}:\n{message}", code, original)
    return value


def configure(job: Job, bound: Binding) -> tuple[Any, int]:
    """This rank's device and CPU threads (the same for every job of the run), as ``placement.bind`` chose them."""
    from ..compute import runtime

    device = runtime.pick_device(job.runtime.device, bound.gpu)
    runtime.configure(device, bound.threads, job.runtime.precision, job.runtime.kernels)
    return device, bound.threads


# ----------------------------------------------------------------------------------------------------------------
# Rank 0's preparation of a surface: its file (created with its directions, or resumed), what is left to do, and
# what it decides for every rank by timing.


@dataclass
class Plan:
    """What rank 0 decides about one surface and every rank needs to compute its blocks."""

    index: int
    job: Job
    directions: Any  # a list of {entry: array} (directions.store full), or a llmpi.space.recipe.Recipe (recipe)
    tuning: Tuning  # batch size and forward path
    todo: int  # points left to compute


@dataclass
class Prepared:
    """Rank 0's side of a surface: its open file, the points left, its record's set-up facts."""

    plan: Plan
    grid: Grid
    store: SurfaceStore
    todo: np.ndarray
    infos: list[Any]
    setup: dict = field(default_factory=dict)


def open_store(
    job: Job, grid: Grid, loaded: Loaded, restart: bool, mode: str, plan_new: Callable[[], Planned]
) -> SurfaceStore:
    """Open or create the surface file (``plan_new`` is called only when the file is new); ``mode``: how it keeps
    its directions, full or recipe (``llmpi.space.plan.store_mode``)."""
    from ..file.store import SurfaceStore
    from ..job import config
    from .fingerprint import fingerprint

    identity = loaded.identity()  # θ*'s and the data's bytes (of files, or of what was given in memory)
    infos = loaded.infos
    attrs = {
        "dataset": "; ".join(info.describe() for info in infos),
        "synthetic": infos[0].synthetic,
        "arch": job.model.label,
        "split": job.data.split,
        "images": infos[0].count,
    }
    return SurfaceStore.open(
        job.output_path,
        grid,
        loaded.value_names,
        fingerprint(job, identity, mode),
        config.to_yaml(job),
        plan_new,
        restart=restart,
        attrs=attrs,
    )


COMPUTED = "computed"  # the root attribute holding how the run that created a file computed (batch, forward path)


def prepare(
    index: int, job: Job, loaded: Loaded, restart: bool, ranks: int, faults: Faults
) -> tuple[Prepared, PointValues]:
    """Rank 0: a surface's file, its directions, its evaluators and the batch size and forward path chosen for
    every rank (what rank 0 compiled, probing and settling, is counted in ``values.compile_seconds``).

    The batch size and the forward path change per-image losses in their last bits, so a file keeps the choice of
    the run that created it (root attribute ``computed``) and a resumed run makes the same one where the job
    leaves it to llmpi ("auto", deterministic kernels): an interrupted and resumed sweep gives the same bits as an
    uninterrupted one, whatever work was left when it resumed. A new file is planned and tuned first, then created
    with its choice in it."""
    from ..file.grid import Grid
    from ..space import plan as planning  # `plan` is the Plan this function makes
    from .worker import PointValues, tune

    grid = Grid.from_spec(job.grid.x, job.grid.y)
    made: dict[str, Any] = {}
    t0 = time.monotonic()
    mode = planning.store_mode(job, loaded.model)  # directions.store resolved: full or recipe

    def plan_new() -> Planned:
        planned = planning.plan_directions(job, loaded.model, grid.ndim, mode, loaded.device, loaded.given)
        made["directions"] = planning.planned_directions(planned)
        made["values"] = values = PointValues.build(job, loaded, made["directions"])
        made["tuning"] = tuning = tune(job, values, grid.size, ranks)
        planned.attrs[COMPUTED] = json.dumps(computed(tuning))
        return planned

    store = open_store(job, grid, loaded, restart, mode, plan_new)
    store.at_stage = faults.in_write  # the fault tests kill the writer inside a block write
    try:
        todo = store.todo()
        followed = None  # the choice of the run that created the file, when this run follows it
        if "values" in made:
            directions, values, tuning = made["directions"], made["values"], made["tuning"]
        else:
            directions = planning.stored_directions(store)  # {entry: array} per axis, or a recipe
            values = PointValues.build(job, loaded, directions)
            followed = as_before(job, store.attr(COMPUTED))
            tuning = followed or tune(job, values, len(todo), ranks)
        # a complete file compiles nothing: no point is left to compute along the path
        settled = settle(values, tuning, job, None, store.path if followed is not None else None) if len(todo) else 0.0
        values.compile_seconds = (tuning.compile_seconds or 0.0) + settled
    except BaseException:
        store.close()
        raise
    setup = {
        **computed(tuning),
        "forward": values.first.network.describe(),  # the path, with what it folded
        "held": f"{values.first.weights.describe()}; {values.first.batches.describe()}",
        "precision": job.runtime.precision,
        "kernels": job.runtime.kernels,
        "compile_seconds": [0.0] * ranks,  # per rank, as each rank reports its compilation
        "probe_seconds": round(tuning.seconds, 3),
        "tune_seconds": round(time.monotonic() - t0, 3),
        "tuning": tuning.describe(),
        # what compiling was expected to cost on rank 0 (what runtime.compile: auto decided by) beside what it cost
        "compile_guess_seconds": None if tuning.compile_guess is None else round(tuning.compile_guess, 1),
        "compile_probe_seconds": None if tuning.compile_seconds is None else round(tuning.compile_seconds, 3),
        "failed": dict(tuning.failed),  # paths that failed here, with why: {"compile": "No working C++ ..."}
        "fallback": tuning.fallback,  # the banner's line for them, e.g. "compile: failed (...); running folded"
    }
    plan = Plan(index, job, directions, tuning, len(todo))
    return Prepared(plan, grid, store, todo, loaded.infos, setup), values


def computed(tuning: Tuning) -> dict:
    return {"batch_size": tuning.batch_size, "fold": tuning.forward.fold, "compile": tuning.forward.compile}


def as_before(job: Job, stored: object) -> Tuning | None:
    """The choice the file's creating run made, for what the job leaves to llmpi; None where there is none to
    follow (a file from before llmpi stored it) or the kernels are ``fast`` (no exactness promised: tune anew)."""
    from ..compute.evaluate import Tuning
    from ..compute.forward import ForwardPath

    if not isinstance(stored, str) or job.runtime.kernels != "deterministic":
        return None
    before = json.loads(stored)
    rt = job.runtime
    batch = before["batch_size"] if job.data.batch_size == "auto" else job.data.batch_size
    fold = before["fold"] if rt.fold == "auto" else rt.fold
    compile = before["compile"] if rt.compile == "auto" else rt.compile
    return Tuning(batch, ForwardPath(fold=fold, compile=compile), note="as the run that created the file chose")


def tasks_of(prepared: Sequence[Prepared], ranks: int) -> list[tuple[int, tuple, int]]:
    """Every surface's blocks, surface after surface: ``(block id, (surface, start, stop, coords), points)``."""
    from ..file.grid import auto_block, blocks

    tasks: list[tuple[int, tuple, int]] = []
    for p in prepared:
        spec = p.plan.job.grid
        block = spec.block if spec.block != "auto" else auto_block(len(p.todo), ranks)
        for start, stop in blocks(p.todo, block):
            tasks.append((len(tasks), (p.plan.index, start, stop, p.grid.coords(start, stop)), stop - start))
    return tasks


def banner(p: Prepared, ranks: int, device: Any, threads: int) -> str:
    job, grid, tuning = p.plan.job, p.grid, p.plan.tuning
    done = grid.size - p.plan.todo
    return (
        f"llmpi sweep {job.name}: {job.model.label} on {' + '.join(i.describe() for i in p.infos)}; grid "
        f"{'x'.join(map(str, grid.shape[::-1]))} = {grid.size} points, {done} already done; {ranks} rank(s) "
        f"on {device.type}, {threads} thread(s) each, batch {tuning.batch_size}, {p.setup['forward']}, "
        f"{job.runtime.precision}, {job.runtime.kernels} kernels -> {job.output}"
    )


class Inputs:
    """A rank's loaded inputs, by surface: the first surface's loaded by every rank at set-up, the others when first
    needed (their data from the rank's shared cache). Each is given out once: an evaluator takes the network over
    (moves it to the device, converts its dtype), so a surface built again loads θ* again."""

    def __init__(self, jobs: Sequence[Job], device: Any, cache: Any, first: Loaded, given: Sequence[Any]) -> None:
        self.jobs, self.device, self.cache, self.given = jobs, device, cache, given
        self.spare: dict[int, Loaded] = {0: first}

    def take(self, index: int) -> Loaded:
        from .worker import load

        if index in self.spare:
            return self.spare.pop(index)
        return load(self.jobs[index], self.device, self.cache, self.given[index])


def prepare_all(
    jobs: Sequence[Job], inputs: Inputs, surfaces: Surfaces, restart: bool, ranks: int, faults: Faults
) -> list[Prepared]:
    """Rank 0: every surface prepared, in job order; their evaluators go to ``surfaces``. The last surface is
    prepared first, so that rank 0 still holds the first surfaces' evaluators when the sweep begins."""
    prepared: list[Prepared] = []
    try:
        for index in reversed(range(len(jobs))):
            p, values = prepare(index, jobs[index], inputs.take(index), restart, ranks, faults)
            prepared.insert(0, p)
            surfaces.put(index, values)
    except BaseException:
        for p in prepared:
            p.store.close()
        raise
    return prepared


def build(plan: Plan, loaded: Loaded, who: str) -> PointValues:
    """A surface's evaluators on this rank (``who``: "rank r of n on host"), with what rank 0 chose for every rank."""
    from .worker import PointValues

    values = PointValues.build(plan.job, loaded, plan.directions)
    values.compile_seconds = settle(values, plan.tuning, plan.job, who, None)
    return values


def settle(values: PointValues, tuning: Tuning, job: Job, who: str | None, resumed: Any) -> float:
    """``values.settle(tuning)``: the chosen batch and forward path, compiled where it compiles (the seconds it
    took). A path that fails here (``PathFailed``) is a ``JobError`` that says what to do, by whose choice it was:

    * rank 0's, failing on another rank (``who``: "rank r of n on host"): every rank must run one path for one set
      of bits, so the run stops naming the rank (rank 0 calls this with ``who`` None);
    * the job's own (``runtime.compile`` or ``runtime.fold``: true): the message ``autotune`` gives too;
    * the file's (``resumed``, its path: this run follows what the run that created it chose, so that the points
      still to compute get the same bits): fix the path, or resume along another one knowingly, or restart.
    """
    from ..compute.evaluate import refused
    from ..compute.forward import PathFailed

    try:
        return values.settle(tuning)
    except PathFailed as e:
        key = "compile" if e.stage == "compiling" else "fold"
        if who is not None:
            raise JobError(
                f"{who}: {e.stage} the {e.path.describe()} forward pass failed: {e.reason}; rank 0 "
                f"{'compiled' if key == 'compile' else 'folded'} it and chose it for every rank, and the ranks must "
                f"run one path to compute the same bits. Make it work on this host, or set runtime.{key}: false"
            ) from e
        if getattr(job.runtime, key) is True or resumed is None:
            raise refused(key, e) from e
        raise JobError(
            f"{resumed} was computed along the {e.path.describe()} forward pass (its root attribute "
            f"{COMPUTED}), and a resumed sweep follows it so that the points still to compute get the same bits; "
            f"but {e.stage} it failed here: {e.reason}. Make it work here, or resume along another path with "
            f"--set runtime.{key}=false (the new points may then differ from an uninterrupted run's in their "
            f"last bits), or start over with --restart"
        ) from e


# ----------------------------------------------------------------------------------------------------------------
# Every rank: computing a block.


def make_compute(surfaces: Surfaces, faults: Any, rank: int) -> Callable[[tuple, Callable[[], None]], Reply]:
    from .protocol import Stopped

    def compute(payload: tuple, check: Callable[[], None]) -> Reply:
        """Evaluate a block's points; on a stop, hand back the points already finished."""
        index, start, stop, coords = payload
        values = surfaces.get(index)  # built on this rank's first block of the surface
        values.activate()
        compiled, values.compile_seconds = values.compile_seconds, 0.0  # reported once, with the first block
        started = time.perf_counter()
        names = values.names
        out = {name: np.empty(stop - start) for name in names}
        k = 0
        try:
            while k < len(coords):
                check()
                faults.before_point(check)
                (row,) = values([tuple(coords[k])], check)
                for name, v in zip(names, row, strict=True):
                    out[name][k] = v
                faults.after_point(start + k)
                k += 1
        except Stopped as stopped:
            if k > 0:
                part = {name: v[:k] for name, v in out.items()}
                stopped.partial = (index, start, start + k, part, rank, time.perf_counter() - started, compiled)
            raise
        return index, start, stop, out, rank, time.perf_counter() - started, compiled

    return compute


# ----------------------------------------------------------------------------------------------------------------


class Run:
    """Rank 0 during the sweep: commits results to their surfaces' files, keeps the records and the progress."""

    def __init__(self, prepared: Sequence[Prepared], places: list, progress: Any) -> None:
        from .record import RunRecord

        self.prepared, self.progress = list(prepared), progress
        self.records: list[RunRecord] = []
        for p in self.prepared:
            images = sum(info.count for info in p.infos)
            done = p.grid.size - p.plan.todo
            self.records.append(RunRecord(p.plan.job, p.grid.size, done, images, places, p.setup))
        self.finished: set[int] = set()

    def start(self) -> None:
        for index, record in enumerate(self.records):
            record.write("running")
            if record.done == record.total:
                self._finish(index)

    def tick(self, running: dict[int, tuple[tuple, float]]) -> None:
        """The coordinator's heartbeat (about every 2 s): each unfinished surface's record rewritten with the blocks
        being computed and for how long, so a long point (a Hessian's) shows as work, not as a stalled run."""
        for index, record in enumerate(self.records):
            if index in self.finished:
                continue
            record.running = [
                {"rank": rank, "points": [start, stop], "seconds": round(seconds, 1)}
                for rank, ((surface, start, stop, _), seconds) in sorted(running.items())
                if surface == index
            ]
            record.write("running")

    def commit(self, results: list[tuple[int, Reply]]) -> None:
        by_surface: dict[int, list[Reply]] = defaultdict(list)
        for _, reply in results:
            by_surface[reply[0]].append(reply)
        for index, replies in by_surface.items():
            self.prepared[index].store.write([(start, stop, values) for _, start, stop, values, *_ in replies])
            for _, start, stop, _, rank, seconds, compiled in replies:
                self.records[index].advance(stop - start, rank, seconds, compiled)
                self.progress.advance(stop - start)
            if self.records[index].done == self.records[index].total:
                self._finish(index)

    def _finish(self, index: int) -> None:
        """A surface is complete: its record says so, its file is closed (its lock released) while others run."""
        record = self.records[index]
        record.write("complete", reason=None, error=None)
        self.prepared[index].store.close()
        self.finished.add(index)
        print(record.summary(), flush=True)

    def end(self, outcome: Any, comm: Any) -> Ended:
        """Every surface's record and how the run ended, once the protocol has stopped everyone."""
        from . import protocol

        self.progress.close()
        error = str(outcome.halted_by) if outcome.state == protocol.HALTED else outcome.error
        extra = {"reason": outcome.reason, "error": error, "duplicates_dropped": outcome.duplicates}
        for index, record in enumerate(self.records):
            if index not in self.finished:
                state = outcome.state if outcome.state != protocol.COMPLETE else "incomplete"
                record.write(state, **extra)
            else:
                record.write("complete", **extra)
        done = sum(r.done for r in self.records)
        total = sum(r.total for r in self.records)
        message = None
        if outcome.state == protocol.HALTED:  # the disk failed under the store (a DiskError saying what to do)
            message = f"llmpi: error: {outcome.halted_by} ({done} of {total} points done)"
            code = EXIT_DISK
        elif outcome.state == protocol.FAILED:
            outputs = ", ".join(r.job.output for i, r in enumerate(self.records) if i not in self.finished)
            message = (
                f"llmpi: error: the sweep failed; every point finished before the failure is kept in {outputs}; "
                f"fix the cause and rerun the same command to resume.\n{outcome.error}"
            )
            code = EXIT_FAILED
        elif outcome.state == protocol.INTERRUPTED:
            message = (
                f"llmpi: interrupted ({outcome.reason}) with {done} of {total} points done; "
                f"rerun the same command to resume"
            )
            code = EXIT_INTERRUPTED
        else:
            assert len(self.finished) == len(self.records), "a complete run left a surface unfinished"
            code = EXIT_OK
        ended = Ended(code, outcome.state, message, done, total, outcome.error, outcome.halted_by, outcome.reason)
        if outcome.unresponsive:
            if message is not None:
                print(message, file=sys.stderr, flush=True)
            print(
                f"llmpi: ranks {outcome.unresponsive} did not stop in time; aborting them", file=sys.stderr, flush=True
            )
            comm.Abort(code or EXIT_FAILED)
        return ended


@dataclass
class Ended:
    """How a sweep ended on this rank: the command's exit status and the protocol's state; on rank 0 also what the
    command prints (``message``, None for a complete run), the points done of all, and for a failure or a halt
    what caused it. Set-up failures are raised as ``SetupFailed`` instead, before any point is computed."""

    code: int
    state: str  # protocol.COMPLETE, INTERRUPTED, FAILED or HALTED
    message: str | None = None
    done: int = 0
    total: int = 0
    error: str | None = None  # failed: the failing rank's traceback, with where it happened
    halted_by: BaseException | None = None  # halted: the DiskError that stopped the stores
    reason: str | None = None  # interrupted: by what (a signal, and on which rank)


def sweep(comm: Any, load_jobs: Callable[[], Sequence[Job]], *, restart: bool, debug: bool, interrupts: Any) -> int:
    """``python -m llmpi.sweep`` on every rank: :func:`execute`, its ending printed on rank 0; the exit status, the
    same on every rank (``llmpi.job.exits``)."""
    try:
        ended = execute(comm, load_jobs, restart=restart, debug=debug, interrupts=interrupts)
    except SetupFailed as e:
        if comm.Get_rank() == 0:
            print(f"llmpi: error: {e}", file=sys.stderr, flush=True)
        return e.code
    if ended.message is not None:
        print(ended.message, file=sys.stderr, flush=True)
    return ended.code


def execute(
    comm: Any,
    load_jobs: Callable[[], Sequence[Job]],
    *,
    restart: bool,
    debug: bool,
    interrupts: Any,
    given: Sequence[Any] = (),
    bar: bool | None = None,
) -> Ended:
    """Sweep the jobs ``load_jobs`` gives on rank 0 (called there only, inside the collective set-up) over every rank
    of ``comm``: how it ended on this rank (the state is the same on every rank), or ``SetupFailed`` on every rank
    before any point is computed. The one code path of ``python -m llmpi.sweep`` and ``llmpi.surface``.

    ``interrupts``: the ``protocol.Interrupts`` whose requests stop the sweep resumably. ``given``: per job, the
    parts this rank holds in memory (``llmpi.job.memory.Given``) or None; every rank must hold rank 0's (their
    hashes are compared). ``bar``: progress as a tqdm.auto bar (a notebook's), else ``record.Progress``'s choice."""
    from mpi4py import MPI

    from ..file.grid import Grid
    from ..job.errors import DiskError
    from . import placement, protocol
    from .faults import Faults
    from .record import Progress
    from .spectrum import eigenvectors_first
    from .worker import DataCache, Surfaces, hessian_batch, load, look, refuse_differing

    rank, size = comm.Get_rank(), comm.Get_size()
    faults = Faults.from_env(rank)
    prepared: list[Prepared] = []
    try:
        # a library without thread support is refused here, not found out by a hang in the sweep
        thread_level = collective(comm, protocol.thread_level, debug)
        # every process alone as "rank 0 of 1" (an MPI that does not speak the launcher's language) is refused
        collective(comm, lambda: placement.check_launch(os.environ, size, protocol.library()), debug)
        jobs = comm.bcast(collective(comm, lambda: list(load_jobs()) if rank == 0 else None, debug))
        given = list(given) or [None] * len(jobs)
        for job in jobs if rank == 0 else ():
            for caution in job.cautions:
                print(f"llmpi: warning: {job.name}: {caution}", file=sys.stderr, flush=True)
        total = sum(Grid.from_spec(job.grid.x, job.grid.y).size for job in jobs)
        if size > total:
            raise SetupFailed(
                True,
                f"{size} ranks for {'a grid' if len(jobs) == 1 else f'{len(jobs)} grids'} of {total} points"
                f"{' in all' if len(jobs) > 1 else ''}: use at most {total} ranks (mpirun -n {total}) or a finer grid",
            )
        # which GPU and how many threads: decided from what every rank of the node sees (llmpi.ranks.placement)
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            spec = jobs[0].runtime
            seen = collective(comm, lambda: look(spec.device), debug)
            bound = placement.bind(local.allgather(seen), local.Get_rank(), spec.threads, spec.device != "cpu")
        finally:
            local.Free()  # a process that sweeps again (a notebook) must not collect communicators
        cache = DataCache()

        def set_up() -> tuple[Any, int, Loaded]:
            faults.at_setup()
            device, threads = configure(jobs[0], bound)
            return device, threads, load(jobs[0], device, cache, given[0])

        # Every rank loads the first surface's inputs at once (a missing file on one node is a clean error now).
        device, threads, first = collective(comm, set_up, debug)
        if any(g is not None for g in given):  # parts given in memory: every rank must hold rank 0's
            held = comm.allgather(first.held())
            collective(comm, lambda: refuse_differing(held), debug)
        places = comm.gather(bound.place(rank, str(device), threads, os.getpid()))
        jobs = list(jobs)  # directions.kind hessian: the eigenvectors first, on every rank (llmpi.ranks.spectrum)
        code = eigenvectors_first(
            comm, jobs, device, cache, restart=restart, debug=debug, interrupts=interrupts, given=given
        )
        if code:  # told already, on rank 0
            states = {EXIT_INTERRUPTED: protocol.INTERRUPTED, EXIT_DISK: protocol.HALTED}
            return Ended(code, states.get(code, protocol.FAILED))
        inputs = Inputs(jobs, device, cache, first, given)
        plans: dict[int, Plan] = {}  # every surface's, from rank 0
        me = protocol.where(comm)
        surfaces = Surfaces(lambda index: build(plans[index], inputs.take(index), me))
        step = lambda: prepare_all(jobs, inputs, surfaces, restart, size, faults) if rank == 0 else []
        prepared = collective(comm, step, debug)
        plans.update(enumerate(comm.bcast([p.plan for p in prepared] if rank == 0 else None)))
        first_work = next((i for i, plan in plans.items() if plan.todo), None)
        compiled: list[float] | None = None
        if first_work is not None:  # the first surface with work built on every rank now: its errors come now
            built = collective(comm, lambda: surfaces.get(first_work).compile_seconds, debug)
            compiled = comm.gather(built)
        compute = make_compute(surfaces, faults, rank)

        if rank != 0:
            outcome = protocol.run(comm, [], compute, lambda results: None, interrupts)
            codes = {protocol.COMPLETE: EXIT_OK, protocol.INTERRUPTED: EXIT_INTERRUPTED, protocol.HALTED: EXIT_DISK}
            return Ended(codes.get(outcome.state, EXIT_FAILED), outcome.state)

        print("\n".join(placement.describe(places)), flush=True)
        for warning in placement.warnings(places):
            print(f"llmpi: warning: {warning}", file=sys.stderr, flush=True)
        if thread_level != "MPI_THREAD_MULTIPLE":
            print(
                f"llmpi: {protocol.library()} granted {thread_level}: rank 0's two threads take turns on MPI",
                flush=True,
            )
        for p in prepared:
            print(banner(p, size, device, threads), flush=True)
            print(f"llmpi: {p.setup['held']}", flush=True)
            if p.plan.tuning.table or p.plan.tuning.note:
                print(f"llmpi: tuned on rank 0: {p.plan.tuning.describe()}", flush=True)
            if p.plan.tuning.fallback:
                print(f"llmpi: {p.plan.tuning.fallback}", flush=True)
            if "hessian" in p.plan.job.metrics:
                h = p.plan.job.hessian
                batch = hessian_batch(p.plan.job, p.plan.tuning)
                print(
                    f"llmpi: Hessian extremes at every point: Lanczos to tol {h.tol:g} (at most {h.max_hvps} "
                    f"products), over {h.images or 'all'} of the {p.plan.job.splits[0]} images, batch {batch}"
                    + (f"; the trace from its basis and {h.trace_probes} probes" if h.trace else ""),
                    flush=True,
                )
        if compiled is not None and max(compiled) > 0:
            print(f"llmpi: compiled in {max(compiled):.1f} s (the slowest rank; once per rank and surface)", flush=True)
        run = Run(prepared, places, Progress(total, total - sum(p.plan.todo for p in prepared), bar=bar))
        run.start()
        # a failing disk (a DiskError from a store) stops the run like an interruption; every rank exits 74
        tasks = tasks_of(prepared, size)
        outcome = protocol.run(comm, tasks, compute, run.commit, interrupts, halt_on=(DiskError,), tick=run.tick)
        return run.end(outcome, comm)
    finally:
        for p in prepared:
            p.store.close()

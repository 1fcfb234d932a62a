"""The coordinator/worker protocol: rank 0 hands out blocks on demand, every rank (rank 0 too) computes.

    outcome = protocol.run(MPI.COMM_WORLD, tasks, compute, commit)   # on every rank, same call

This module knows MPI and nothing of torch: a task is a plain tuple ``(block_id, payload, points)``, ``compute``
turns a payload into a reply, ``commit`` receives ``[(block_id, reply), ...]`` on rank 0. One code path for
every size: rank 0 runs the coordinator in a thread and the same worker loop as everyone else in its main
thread, talking to its own coordinator by MPI messages to itself, so ``-n 1`` is the same program as ``-n 8``.

The two halves, in symmetric pairs (two duplicated communicators keep their messages apart):

    down (coordinator -> worker)            up (worker -> coordinator)
    TASK   (block_id, payload)              RESULT  (block_id, reply, seconds)
    CANCEL (block_id,)                      PARTIAL (block_id, reply)        what a stopped block got done
    STOP   (reason,)                        ERROR   (where, traceback)       where = "rank r of n on host"
                                            SIGNAL  (signal name,)
                                            BYE     ()                       answers STOP

Scheduling: each worker holds up to ``depth`` blocks (it computes the first while the next is already queued, so it
never waits for the coordinator). When no block is left to hand out, an idle worker takes a queued block that
another worker has not started (the other gets CANCEL), or a copy of a block running longer than
``straggler_factor`` times the median block time: the first result wins, later copies are dropped and their holders
told to stop. A worker's exception travels to rank 0 with its traceback; a SIGTERM/SIGUSR1/SIGINT on any rank makes
the coordinator stop everyone at once: each worker leaves its block at the next ``check()`` and sends the part it
finished (``Stopped.partial``), which is committed like any result, so an interruption loses at most the point each
rank was computing. When ``commit`` raises one of the exceptions the caller names in ``halt_on`` (results can no
longer be stored, e.g. a full disk), the run stops the same way but ends HALTED on every rank, the exception in
``Outcome.halted_by``: what arrives afterwards is dropped, not committed. No call here blocks inside MPI: waits
poll with a short back-off, so oversubscribed ranks and the coordinator thread do not steal a core from the
computation.

Threads: rank 0's coordinator thread and its worker both call MPI. Under ``MPI_THREAD_MULTIPLE`` they do so
freely; under ``MPI_THREAD_SERIALIZED`` every MPI call here is made holding one lock (``mpi_lock``), which costs
nothing that matters since none of them blocks; below that the job is refused at start-up (``thread_level``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mpi4py
from mpi4py import MPI

from ..job.errors import MpiError

COORDINATOR = 0
TASK, CANCEL, STOP = 1, 2, 3  # down
RESULT, ERROR, SIGNAL, BYE, PARTIAL = 11, 12, 13, 14, 15  # up

COMPLETE, INTERRUPTED, FAILED, HALTED = "complete", "interrupted", "failed", "halted"


class Cancelled(Exception):
    """Raised inside ``compute`` (by its ``check`` callable) when the block it works on is no longer wanted."""


class Stopped(Cancelled):
    """Raised inside ``compute`` when the coordinator stops the whole job.

    ``compute`` may set ``partial`` to a reply covering the part of its block it finished before the stop; the
    worker forwards it to the coordinator, which commits it (the block itself stays undone).
    """

    partial: Any = None


# ----------------------------------------------------------------------------------------------------------------
# Signals: a flag, set by the handler, read by the loops. Nothing else happens in a signal handler.


class Interrupts:
    """Turns SIGTERM, SIGUSR1 (SLURM's --signal) and SIGINT into a request to stop cleanly."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self) -> None:
        self.requested: str | None = None
        self.at: float | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                number = getattr(signal, name)
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def restore(self) -> None:
        """Put back the handlers ``install`` replaced (a program that goes on after the sweep: a notebook's
        kernel gets its own SIGINT handling back)."""
        for number, handler in self.previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        self.previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is None:
            self.requested = signal.Signals(signum).name
            self.at = time.monotonic()

    def request(self, reason: str) -> None:
        if self.requested is None:
            self.requested, self.at = reason, time.monotonic()


def where(comm: MPI.Comm) -> str:
    return f"rank {comm.Get_rank()} of {comm.Get_size()} on {socket.gethostname()} (pid {os.getpid()})"


# ----------------------------------------------------------------------------------------------------------------
# The thread level MPI granted, and what the two threads of rank 0 must do about it.

LEVELS = {
    MPI.THREAD_SINGLE: "MPI_THREAD_SINGLE",
    MPI.THREAD_FUNNELED: "MPI_THREAD_FUNNELED",
    MPI.THREAD_SERIALIZED: "MPI_THREAD_SERIALIZED",
    MPI.THREAD_MULTIPLE: "MPI_THREAD_MULTIPLE",
}
Lock = contextlib.AbstractContextManager


def library() -> str:
    """The MPI library's own one-line name and version (MPI_Get_library_version's first line)."""
    return " ".join(MPI.Get_library_version().strip().splitlines()[0].split())


def thread_level() -> str:
    """The level this process got, by name, if a sweep can run with it; else MpiError saying what to do.

    MULTIPLE: the coordinator thread and the worker call MPI at will. SERIALIZED: they take turns behind one lock.
    FUNNELED or SINGLE: only the main thread may call MPI, and rank 0 needs two; refused, naming the library, so
    that a wrong build is an error at start-up rather than a hang or corrupted messages an hour into the sweep.
    """
    level = MPI.Query_thread()
    if level >= MPI.THREAD_SERIALIZED:
        return LEVELS[min(level, MPI.THREAD_MULTIPLE)]
    asked = mpi4py.rc.thread_level if mpi4py.rc.threads else "single (mpi4py.rc.threads is off)"
    if asked in ("multiple", "serialized"):
        why = (
            f"mpi4py asked for MPI_THREAD_{asked.upper()}, and this library offers no more: it was built without "
            "thread support. Use an MPI built with it (MPICH: --enable-threads=multiple, its default; Open MPI and "
            "Intel MPI have it by default), then rebuild mpi4py against that MPI: "
            "pip install --no-cache-dir --no-binary=mpi4py mpi4py"
        )
    else:
        why = (
            f"mpi4py asked only for {asked} (MPI4PY_RC_THREAD_LEVEL / MPI4PY_RC_THREADS in the environment, or "
            "mpi4py.rc set by the program): unset them, or set MPI4PY_RC_THREAD_LEVEL=multiple"
        )
    raise MpiError(
        f"{library()} granted {LEVELS.get(level, level)}, but a sweep needs MPI_THREAD_MULTIPLE or "
        f"MPI_THREAD_SERIALIZED (rank 0 coordinates from a second thread while it computes). {why}"
    )


def mpi_lock() -> Lock:
    """What the coordinator thread and the worker hold around every MPI call: nothing under THREAD_MULTIPLE, one
    lock under THREAD_SERIALIZED (MpiError below that)."""
    if thread_level() == LEVELS[MPI.THREAD_MULTIPLE]:
        return contextlib.nullcontext()
    return threading.Lock()


class _Backoff:
    """Sleep a little longer each idle round, up to ``cap`` seconds; reset as soon as something happens."""

    def __init__(self, cap: float = 0.002) -> None:
        self.cap, self.delay = cap, 0.0

    def reset(self) -> None:
        self.delay = 0.0

    def wait(self) -> None:
        self.delay = min(self.cap, self.delay * 2 if self.delay else 1e-5)
        time.sleep(self.delay)


class _Outbox:
    """Non-blocking sends, kept until MPI completes them.

    Rank 0 sends to itself (coordinator thread <-> worker thread), and MPICH completes a send to self only when the
    matching receive is posted: two blocking sends between the threads would wait on each other forever. Every
    send here is therefore an ``isend`` whose request (and pickled buffer) is held until it completes; MPI's
    non-overtaking rule still delivers the messages of one sender to one receiver in order.
    """

    def __init__(self, comm: MPI.Comm, lock: Lock) -> None:
        self.comm, self.lock, self.pending = comm, lock, []

    def send(self, body: Any, dest: int, tag: int) -> None:
        with self.lock:
            self.pending.append(self.comm.isend(body, dest=dest, tag=tag))
        self.prune()

    def prune(self) -> None:
        with self.lock:
            self.pending = [r for r in self.pending if not r.Test()]

    def drain(self, seconds: float) -> bool:
        """Wait (polling) up to ``seconds`` for every send to complete; False if some never did."""
        deadline, backoff = time.monotonic() + seconds, _Backoff()
        while self.pending and time.monotonic() < deadline:
            self.prune()
            backoff.wait()
        return not self.pending


def _receive(comm: MPI.Comm, source: int, lock: Lock) -> tuple[int, int, Any] | None:
    """One pending message (source, tag, body) if there is one, without blocking."""
    status = MPI.Status()
    with lock:
        msg = comm.improbe(source=source, tag=MPI.ANY_TAG, status=status)
        if msg is None:
            return None
        return status.Get_source(), status.Get_tag(), msg.recv()


# ----------------------------------------------------------------------------------------------------------------
# Worker half.


@dataclass
class _WorkerState:
    queue: deque = field(default_factory=deque)
    cancelled: set = field(default_factory=set)
    stop: str | None = None
    current: int | None = None
    signalled: bool = False


def work(
    up: MPI.Comm,
    down: MPI.Comm,
    compute: Callable[[Any, Callable[[], None]], Any],
    interrupts: Interrupts,
    alive: Callable[[], bool] = lambda: True,
    lock: Lock | None = None,
) -> str:
    """Compute blocks as they come until STOP; returns the coordinator's reason (complete/interrupted/failed/
    halted).

    ``lock`` is held around every MPI call (``mpi_lock``: one shared with rank 0's coordinator thread)."""
    lock = lock if lock is not None else contextlib.nullcontext()
    state = _WorkerState()
    with lock:
        me = where(up)
    outbox = _Outbox(up, lock)

    def pump() -> None:
        while (m := _receive(down, COORDINATOR, lock)) is not None:
            _, tag, body = m
            if tag == TASK:  # a block cancelled here earlier may come back (stolen back, or a straggler's copy)
                state.cancelled.discard(body[0])
                if all(queued[0] != body[0] for queued in state.queue):  # still queued: compute it once
                    state.queue.append(body)
            elif tag == CANCEL:
                state.cancelled.add(body[0])
            elif tag == STOP:
                state.stop = body[0]
        if interrupts.requested and not state.signalled:
            state.signalled = True
            outbox.send((interrupts.requested,), dest=COORDINATOR, tag=SIGNAL)
        outbox.prune()

    def check() -> None:
        pump()
        if state.stop is not None:
            raise Stopped(state.stop)
        if state.current in state.cancelled:
            raise Cancelled(state.current)

    backoff = _Backoff()
    failed = False
    while True:
        pump()
        if state.stop is not None:
            break
        if failed or not state.queue:
            if not alive():  # our own coordinator thread died without a word: nothing will ever come
                state.stop = FAILED
                break
            backoff.wait()
            continue
        backoff.reset()
        block_id, payload = state.queue.popleft()
        if block_id in state.cancelled:
            continue
        state.current = block_id
        started = time.perf_counter()
        try:
            reply = compute(payload, check)
        except Stopped as stop:
            if stop.partial is not None:
                outbox.send((block_id, stop.partial), dest=COORDINATOR, tag=PARTIAL)
            break
        except Cancelled:
            continue
        except Exception:
            outbox.send((me, traceback.format_exc()), dest=COORDINATOR, tag=ERROR)
            failed = True  # wait for the coordinator's STOP; compute nothing more
            continue
        finally:
            state.current = None
        outbox.send((block_id, reply, time.perf_counter() - started), dest=COORDINATOR, tag=RESULT)
    outbox.send((), dest=COORDINATOR, tag=BYE)
    outbox.drain(10.0)  # the coordinator is waiting for BYE; if it is gone, do not wait forever
    return state.stop


# ----------------------------------------------------------------------------------------------------------------
# Coordinator half.


@dataclass
class Outcome:
    state: str  # complete | interrupted | failed | halted
    error: str | None = None  # the failing rank's traceback, with where it happened
    halted_by: BaseException | None = None  # what commit raised (one of halt_on) when the state is halted
    reason: str | None = None  # what interrupted the run (a signal name)
    unresponsive: list[int] = field(default_factory=list)  # ranks that did not answer STOP in time
    duplicates: int = 0  # results of blocks someone else had already returned (dropped)
    stats: dict[int, dict[str, float]] = field(default_factory=dict)  # per rank: blocks, points, seconds


class Coordinator:
    """Rank 0's dispatcher: hands out blocks, gathers results, commits them, stops everyone at the end."""

    def __init__(
        self,
        up: MPI.Comm,
        down: MPI.Comm,
        tasks: Sequence[tuple[int, Any, int]],
        commit: Callable[[list[tuple[int, Any]]], None],
        interrupts: Interrupts,
        progress: Callable[[Outcome], None] | None = None,
        halt_on: tuple[type[BaseException], ...] = (),
        tick: Callable[[dict[int, tuple[Any, float]]], None] | None = None,
        tick_seconds: float = 2.0,
        depth: int = 2,
        straggler_factor: float = 3.0,
        min_straggler_seconds: float = 1.0,
        bye_seconds: float = 5.0,
        lock: Lock | None = None,
    ) -> None:
        self.up, self.down = up, down
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.outbox = _Outbox(down, self.lock)
        with self.lock:
            self.size = up.Get_size()
            self.me = where(up)
        self.payload = {bid: payload for bid, payload, _ in tasks}
        self.points = {bid: n for bid, _, n in tasks}
        self.pending = deque(bid for bid, _, _ in tasks)
        self.commit, self.progress, self.interrupts, self.halt_on = commit, progress, interrupts, halt_on
        self.depth, self.factor, self.min_timeout = depth, straggler_factor, min_straggler_seconds
        self.bye_seconds = bye_seconds
        self.tick, self.tick_seconds, self.last_tick = tick, tick_seconds, time.monotonic()
        self.queue: dict[int, list[int]] = {r: [] for r in range(self.size)}
        self.started: dict[int, float] = {}
        self.holders: dict[int, set[int]] = {bid: set() for bid in self.payload}
        self.done: set[int] = set()
        self.durations: list[float] = []
        self.outcome = Outcome(
            COMPLETE, stats={r: {"blocks": 0, "points": 0, "seconds": 0.0} for r in range(self.size)}
        )

    # -- dispatch -------------------------------------------------------------------------------------------------

    def _send(self, rank: int, bid: int) -> None:
        if not self.queue[rank]:
            self.started[rank] = time.monotonic()
        self.queue[rank].append(bid)
        self.holders[bid].add(rank)
        self.outbox.send((bid, self.payload[bid]), dest=rank, tag=TASK)

    def _cancel(self, rank: int, bid: int) -> None:
        if bid in self.queue[rank]:
            was_head = self.queue[rank][0] == bid
            self.queue[rank].remove(bid)
            if was_head:
                self.started[rank] = time.monotonic()
        self.holders[bid].discard(rank)
        self.outbox.send((bid,), dest=rank, tag=CANCEL)

    def _timeout(self) -> float | None:
        if not self.durations:
            return None
        return max(self.min_timeout, self.factor * statistics.median(self.durations[-64:]))

    def _next_for(self, rank: int) -> int | None:
        if self.pending:
            return self.pending.popleft()
        # steal a block another worker holds but has not started, from a queue longer than ours by two or more:
        # a difference of one would let the two ranks steal the same block back and forth forever
        mine = len(self.queue[rank])
        for other, q in self.queue.items():
            if other != rank and len(q) > 1 and len(q) > mine + 1:
                bid = q[-1]
                self._cancel(other, bid)
                return bid
        # copy a straggler's running block, if this worker is idle and that block is overdue
        timeout = self._timeout()
        if self.queue[rank] or timeout is None:
            return None
        now = time.monotonic()
        for other, q in self.queue.items():
            if other != rank and q and len(self.holders[q[0]]) == 1 and now - self.started[other] > timeout:
                return q[0]
        return None

    def _refill(self) -> None:
        if self.interrupts.requested or self.outcome.state == HALTED:
            return
        for rank in range(self.size):
            while len(self.queue[rank]) < self.depth:
                bid = self._next_for(rank)
                if bid is None:
                    break
                self._send(rank, bid)

    # -- receive --------------------------------------------------------------------------------------------------

    def _on_result(self, rank: int, bid: int, reply: Any, seconds: float, fresh: list) -> None:
        if bid in self.queue[rank]:
            self.queue[rank].remove(bid)
            self.started[rank] = time.monotonic()
        self.holders[bid].discard(rank)
        if bid in self.done:
            self.outcome.duplicates += 1
            return
        self.done.add(bid)
        fresh.append((bid, reply))
        self.durations.append(seconds)
        s = self.outcome.stats[rank]
        s["blocks"] += 1
        s["points"] += self.points[bid]
        s["seconds"] += seconds
        for other in list(self.holders[bid]):
            self._cancel(other, bid)

    def _pump(self) -> bool:
        """Receive everything waiting, commit the new results together; True if anything arrived."""
        fresh: list[tuple[int, Any]] = []
        got = False
        self.outbox.prune()
        while (m := _receive(self.up, MPI.ANY_SOURCE, self.lock)) is not None:
            got = True
            rank, tag, body = m
            if tag == RESULT:
                self._on_result(rank, *body, fresh)
            elif tag == ERROR:
                if self.outcome.state != FAILED:
                    self.outcome.state, self.outcome.error = FAILED, f"{body[0]}:\n{body[1]}"
            elif tag == PARTIAL:
                if body[0] not in self.done:
                    fresh.append(body)
            elif tag == SIGNAL:
                self.interrupts.request(f"{body[0]} on rank {rank}")
            elif tag == BYE:
                self._byes.add(rank)
        if fresh and self.outcome.state != HALTED:
            try:
                self.commit(fresh)
            except self.halt_on as e:
                self.outcome.state, self.outcome.halted_by = HALTED, e
                return got
            if self.progress is not None:
                self.progress(self.outcome)
        return got

    def running(self) -> dict[int, tuple[Any, float]]:
        """What every busy rank computes now: its first queued block's payload and the seconds it has been at it."""
        now = time.monotonic()
        return {r: (self.payload[q[0]], now - self.started[r]) for r, q in self.queue.items() if q}

    def _tick(self) -> None:
        """Every ``tick_seconds``, tell ``tick`` what runs, even while no result arrives (a long point)."""
        if self.tick is not None and time.monotonic() - self.last_tick >= self.tick_seconds:
            self.last_tick = time.monotonic()
            self.tick(self.running())

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> Outcome:
        self._byes: set[int] = set()
        total = len(self.payload)
        backoff = _Backoff()
        try:
            self._refill()
            while self.outcome.state not in (FAILED, HALTED) and len(self.done) < total:
                if self.interrupts.requested:
                    self.outcome.state, self.outcome.reason = INTERRUPTED, self.interrupts.requested
                    break
                if self._pump():
                    backoff.reset()
                    self._refill()
                    assert (
                        self.pending
                        or any(self.queue.values())
                        or len(self.done) == total
                        or self.interrupts.requested
                        or self.outcome.state in (FAILED, HALTED)
                    ), "blocks lost by the coordinator"
                else:
                    self._refill()  # a straggler may have become overdue
                    backoff.wait()
                self._tick()
        except BaseException:
            if self.outcome.state != FAILED:
                self.outcome.state = FAILED
                self.outcome.error = f"{self.me} (coordinator):\n{traceback.format_exc()}"
        finally:
            self._stop_everyone()
        return self.outcome

    def _stop_everyone(self) -> None:
        reason = self.outcome.state
        for rank in range(self.size):
            self.outbox.send((reason,), dest=rank, tag=STOP)
        deadline = time.monotonic() + self.bye_seconds
        backoff = _Backoff()
        while len(self._byes) < self.size and time.monotonic() < deadline:
            try:
                self._pump()  # late results still count: commit them
            except BaseException:
                if self.outcome.state != FAILED:
                    self.outcome.state = FAILED
                    self.outcome.error = f"{self.me} (coordinator):\n{traceback.format_exc()}"
            backoff.wait()
        self.outcome.unresponsive = sorted(set(range(self.size)) - self._byes)
        self.outbox.drain(1.0)


# ----------------------------------------------------------------------------------------------------------------


def run(
    comm: MPI.Comm,
    tasks: Sequence[tuple[int, Any, int]],
    compute: Callable[[Any, Callable[[], None]], Any],
    commit: Callable[[list[tuple[int, Any]]], None],
    interrupts: Interrupts,
    progress: Callable[[Outcome], None] | None = None,
    halt_on: tuple[type[BaseException], ...] = (),
    tick: Callable[[dict[int, tuple[Any, float]]], None] | None = None,
    **tuning: float,
) -> Outcome:
    """Run the job on every rank of ``comm`` (collective). Rank 0 returns the full outcome, others their reason.

    ``tasks``, ``commit``, ``halt_on`` and ``tick`` matter on rank 0 only: ``tick`` is called from the coordinator's
    thread about every 2 s with what runs (``{rank: (payload, seconds at it)}``), also while no result arrives.
    Every rank must call this, with the same ``comm``. MpiError (on every rank alike) where MPI granted less than
    THREAD_SERIALIZED.
    """
    lock = mpi_lock()
    # Two duplicates keep the directions apart: on rank 0 the worker (main thread) listens only on ``down``
    # and the coordinator thread only on ``up``, so neither can take the other's messages. They are freed once
    # every rank has said BYE (a process that sweeps again, a notebook's kernel, must not collect communicators:
    # MPICH has a few thousand); after a rank that did not answer STOP they are left, since the sweep then aborts.
    up, down = comm.Dup(), comm.Dup()
    if comm.Get_rank() != COORDINATOR:
        outcome = Outcome(work(up, down, compute, interrupts, lock=lock))
        _free(up, down)
        return outcome
    coordinator = Coordinator(up, down, tasks, commit, interrupts, progress, halt_on, tick, lock=lock, **tuning)
    box: list[Outcome] = []
    thread = threading.Thread(target=lambda: box.append(coordinator.run()), name="llmpi-coordinator", daemon=True)
    thread.start()
    work(up, down, compute, interrupts, alive=thread.is_alive, lock=lock)
    thread.join()
    outcome = box[0] if box else Outcome(FAILED, error=f"{where(comm)}: the coordinator thread died")
    if box and not outcome.unresponsive:
        _free(up, down)
    return outcome


def _free(*comms: MPI.Comm) -> None:
    """Free the run's communicators; sends still pending on them (a worker's last BYE to a coordinator that gave up
    waiting) complete or are dropped by MPI, which frees a communicator only when nothing uses it any more."""
    for c in comms:
        c.Free()

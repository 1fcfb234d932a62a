"""The collectives of a computation every rank runs in step (the spectrum's): agreeing to go on, stop or fail, and
the sum of every rank's share of a product in a fixed order. MPI and numpy only, never torch.

    step = Lockstep(comm)
    verdict = step.agree(OK)                      # every rank's status: all OK, or who stopped or failed and why
    total = step.ordered_sum(partial)            # (k, n) float64: Σ over ranks in rank order, the same bits on all

Nothing here blocks inside MPI: every collective is started non-blocking and polled with a short back-off, so ranks
that share cores (oversubscribed) do not spin on a core the computing ranks need.

**Agreement.** After every product (or every step of a block of them) each rank says how it is: ``OK``, ``STOP`` (an
interruption reached it: SIGTERM, SIGUSR1, SIGINT) or ``ERROR`` (with its traceback, or a user's error message).
A rank that failed catches its own exception and says so at the next agreement, so no rank is ever left waiting
inside a collective for a rank that will not come; all of them then end together, the error reported once.

**Ordered sums.** The product of the whole selection is the sum of every rank's share. ``ordered_sum`` cuts the
coordinates into one slice per rank; rank j receives every rank's part of slice j (``Ialltoallv``), adds them in
rank order, 0 first, and every rank receives every sum (``Iallgatherv``). Each coordinate is summed in the same order
whatever the rank that sums it, so every rank holds the same bits, and a run is bitwise reproducible for a given
rank count and batch size. Memory: about three times the partial per rank, whatever the number of ranks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

OK, STOP, ERROR, USER_ERROR = 0, 1, 2, 3


@dataclass(frozen=True)
class Verdict:
    """What every rank said at an agreement: the worst status, and per rank (status, detail) where not OK."""

    status: int
    details: dict[int, tuple[int, str]]

    @property
    def ok(self) -> bool:
        return self.status == OK


def _wait(request: MPI.Request, cap: float = 0.002) -> None:
    """Poll ``request`` to completion, sleeping between tests (from 50 µs, doubling up to ``cap``)."""
    delay = 5e-5
    while not request.Test():
        time.sleep(delay)
        delay = min(2 * delay, cap)


def _slices(n: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and offsets of ``parts`` near-equal consecutive slices of range(n)."""
    counts = np.full(parts, n // parts, dtype=np.int64)
    counts[: n % parts] += 1
    return counts, np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


class Lockstep:
    """The collectives of one communicator's ranks in step (see the module docstring)."""

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def agree(self, status: int, detail: str = "") -> Verdict:
        """Every rank's status; where any is not OK, every rank also learns who said what."""
        mine = np.array([status], dtype=np.int32)
        every = np.empty(self.size, dtype=np.int32)
        _wait(self.comm.Iallgather(mine, every))
        worst = int(every.max())
        if worst == OK:
            return Verdict(OK, {})
        details = self.comm.allgather((status, detail))  # every rank is here now: this does not wait long
        said = {r: d for r, d in enumerate(details) if d[0] != OK}
        # an error outranks a stop: a failure is reported even when an interruption came at the same time
        order = {OK: 0, STOP: 1, USER_ERROR: 2, ERROR: 3}
        return Verdict(max((d[0] for d in said.values()), key=order.__getitem__), said)

    def ordered_sum(self, partial: np.ndarray) -> np.ndarray:
        """Σ over ranks of ``partial`` (k, n) float64, each coordinate summed in rank order: the same on every rank."""
        partial = np.ascontiguousarray(partial, dtype=np.float64)
        k, n = partial.shape
        counts, offsets = _slices(n, self.size)
        send = np.concatenate([partial[:, o : o + c].reshape(-1) for c, o in zip(counts, offsets)])
        sizes = counts * k
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        mine = int(counts[self.rank])
        received = np.empty(self.size * k * mine, dtype=np.float64)
        each = np.full(self.size, k * mine, dtype=np.int64)
        at = np.arange(self.size, dtype=np.int64) * k * mine
        _wait(self.comm.Ialltoallv([send, (sizes, starts), MPI.DOUBLE], [received, (each, at), MPI.DOUBLE]))
        parts = received.reshape(self.size, k, mine)
        total = parts[0].copy()
        for r in range(1, self.size):  # rank order, the same for every coordinate wherever it is summed
            total += parts[r]
        gathered = np.empty(k * n, dtype=np.float64)
        _wait(self.comm.Iallgatherv([total.reshape(-1), MPI.DOUBLE], [gathered, (sizes, starts), MPI.DOUBLE]))
        out = np.empty((k, n), dtype=np.float64)
        for r, (c, o) in enumerate(zip(counts, offsets)):
            out[:, o : o + c] = gathered[starts[r] : starts[r] + sizes[r]].reshape(k, c)
        return out

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` on rank 0 (None elsewhere); call it right after an agreement, when all are here."""
        return self.comm.gather(value, root=0)

    def bcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank; call it right after an agreement, when all are here."""
        return self.comm.bcast(value, root=0)

    def sum_int(self, value: int) -> int:
        """Σ over ranks of an integer (sample counts), polled."""
        mine = np.array([value], dtype=np.int64)
        total = np.empty(1, dtype=np.int64)
        _wait(self.comm.Iallreduce(mine, total, op=MPI.SUM))
        return int(total[0])

"""Fault injection for the test suite and the fault benchmark; inert unless LLMPI_FAULT is set.

    LLMPI_FAULT="slow:rank=1:seconds=0.3"       rank 1 takes 0.3 s longer per point (a straggler)
    LLMPI_FAULT="raise:rank=2:after=3"          rank 2 raises after computing 3 points (a worker error)
    LLMPI_FAULT="setup:rank=1"                  rank 1 fails while setting up (e.g. a bad file on one node)
    LLMPI_FAULT="kill:stage=done:after=2"       the writer SIGKILLs itself inside its 2nd block write, at a stage:
                                                values (one value array written), between (values written, done
                                                not), done (done flags written, not yet fsync'd)
    LLMPI_FAULT="trace:path=/tmp/points"        every rank appends "rank flat-index" for each point it finishes
                                                (how the fault benchmark counts recomputed work)
    LLMPI_FAULT="slow:rank=1:seconds=0.1,raise:rank=0:after=5"   several, comma-separated

Without ``rank=`` a fault applies to every rank. Read once, in this one place, so production code paths carry a
single no-op call.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass


class InjectedFault(RuntimeError):
    """The error ``raise`` and ``setup`` faults throw: recognisable in tracebacks as deliberate."""


@dataclass
class Faults:
    slow_seconds: float = 0.0
    raise_after: int | None = None
    setup: bool = False
    kill_stage: str | None = None
    kill_after: int = 1
    trace: str | None = None
    rank: int = 0
    points: int = 0
    writes: int = 0

    @classmethod
    def from_env(cls, rank: int, text: str | None = None) -> Faults:
        text = os.environ.get("LLMPI_FAULT", "") if text is None else text
        faults = cls(rank=rank)
        for item in filter(None, (part.strip() for part in text.split(","))):
            kind, *fields = item.split(":")
            opts = dict(f.split("=", 1) for f in fields)
            if int(opts.get("rank", rank)) != rank:
                continue
            if kind == "slow":
                faults.slow_seconds = float(opts["seconds"])
            elif kind == "raise":
                faults.raise_after = int(opts.get("after", 0))
            elif kind == "setup":
                faults.setup = True
            elif kind == "trace":
                faults.trace = opts["path"]
            elif kind == "kill":
                faults.kill_stage = opts.get("stage", "values")
                faults.kill_after = int(opts.get("after", 1))
                if faults.kill_stage not in ("values", "between", "done"):
                    raise ValueError(
                        f"LLMPI_FAULT: kill stage must be values, between or done, not {faults.kill_stage!r}"
                    )
            else:
                raise ValueError(f"LLMPI_FAULT: unknown fault kind {kind!r} (slow, raise, setup, kill, trace)")
        return faults

    def at_setup(self) -> None:
        if self.setup:
            raise InjectedFault("injected set-up failure (LLMPI_FAULT)")

    def before_point(self, check: Callable[[], None] = lambda: None) -> None:
        """Called before each point; a slow rank sleeps in short slices so that it still answers a stop."""
        if self.raise_after is not None and self.points >= self.raise_after:
            raise InjectedFault(f"injected fault after {self.points} points (LLMPI_FAULT)")
        deadline = time.monotonic() + self.slow_seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(0.05, left))
            check()
        self.points += 1

    def after_point(self, index: int) -> None:
        if self.trace is not None:
            with open(self.trace, "a") as f:
                f.write(f"{self.rank} {index}\n")

    def in_write(self, stage: str) -> None:
        """Called by the store at each stage of a block write; ``start`` counts the writes."""
        if self.kill_stage is None:
            return
        if stage == "start":
            self.writes += 1
        elif self.kill_stage == stage and self.writes == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


NONE = Faults()

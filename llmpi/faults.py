"""Fault injection for the test suite and the fault benchmark; inert unless LLMPI_FAULT is set.

    LLMPI_FAULT="slow:rank=1:seconds=0.3"          rank 1 sleeps 0.3 s before every point (a straggler)
    LLMPI_FAULT="raise:rank=2:after=3"             rank 2 raises after computing 3 points (a worker error)
    LLMPI_FAULT="slow:rank=1:seconds=0.1,raise:rank=0:after=5"   several, comma-separated

Read once, in this one place, so production code paths carry a single no-op call.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


class InjectedFault(RuntimeError):
    """The error ``raise`` faults throw: recognisable in tracebacks as deliberate."""


@dataclass
class Faults:
    slow_seconds: float = 0.0
    raise_after: int | None = None
    points: int = 0

    @classmethod
    def from_env(cls, rank: int, text: str | None = None) -> Faults:
        text = os.environ.get("LLMPI_FAULT", "") if text is None else text
        faults = cls()
        for item in filter(None, (part.strip() for part in text.split(","))):
            kind, *fields = item.split(":")
            opts = dict(f.split("=", 1) for f in fields)
            if int(opts.get("rank", rank)) != rank:
                continue
            if kind == "slow":
                faults.slow_seconds = float(opts["seconds"])
            elif kind == "raise":
                faults.raise_after = int(opts.get("after", 0))
            else:
                raise ValueError(f"LLMPI_FAULT: unknown fault kind {kind!r} (slow, raise)")
        return faults

    def before_point(self) -> None:
        if self.raise_after is not None and self.points >= self.raise_after:
            raise InjectedFault(f"injected fault after {self.points} points (LLMPI_FAULT)")
        if self.slow_seconds:
            time.sleep(self.slow_seconds)
        self.points += 1

"""Rank 0's account of a run: the progress a user watches, and ``<output>.run.json``, the run's record.

    progress = Progress(total=2601 * 3, done=120)        # one bar (or a line every 10 s) over every surface
    record = RunRecord(job, points_total=2601, points_done=40, images=50000, places=places, setup={...})
    record.advance(points=8, rank=2, seconds=1.9)         # as blocks are committed
    record.write("running")                               # atomically, every 2 s while running (the coordinator's
                                                          # tick: also during a long point, with what is running)
    record.write("complete", reason=None, error=None)

The record is what ``python -m llmpi.status`` shows, and what the benchmark and the tests read instead of the
sweep's printed text: the state and how it ended, points done in all and in this run, the rate, what rank 0 chose
for every rank (batch size, forward path) and what it measured to choose it, the seconds each phase took (set-up,
tuning, compilation, the sweep itself), and per rank its host, device, blocks, points and busy seconds.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ..job.config import Job
from ..report.summary import duration
from .placement import Place

PROCESS_START = time.monotonic()  # imported first thing by the sweep: wall time from (nearly) process start


class Progress:
    """What a user watching the run sees: a tqdm bar on a terminal, else a line every ``every`` seconds; ``bar``
    True: a ``tqdm.auto`` bar wherever it runs (``llmpi.surface`` in a notebook: a widget where Jupyter has them)."""

    def __init__(self, total: int, done: int, every: float = 10.0, bar: bool | None = None) -> None:
        self.total, self.done, self.start_done, self.every = total, done, done, every
        self.t0 = self.last_line = time.monotonic()
        self.bar = None
        if (sys.stderr.isatty() if bar is None else bar) and done < total:
            if bar:
                from tqdm.auto import tqdm as auto

                class tqdm(auto):  # type: ignore[no-redef]
                    monitor_interval = 0  # no monitor thread, which tqdm never stops: the process goes on

                extra = {"miniters": 1}  # refreshed at every commit (the monitor is what refreshes a stalled bar)
            else:
                from tqdm import tqdm

                extra = {}
            self.bar = tqdm(total=total, initial=done, unit="pt", desc="llmpi", dynamic_ncols=True, **extra)

    @property
    def rate(self) -> float:
        return (self.done - self.start_done) / max(time.monotonic() - self.t0, 1e-9)

    def advance(self, points: int) -> None:
        self.done += points
        if self.bar is not None:
            self.bar.update(points)
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

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RunRecord:
    """One surface's ``<output>.run.json``, rewritten atomically (readers see the old record or the new one)."""

    def __init__(
        self,
        job: Job,
        points_total: int,
        points_done: int,
        images: int,
        places: list[Place],
        setup: dict | None = None,
        every: float = 2.0,
    ) -> None:
        self.job, self.total, self.done, self.start_done = job, points_total, points_done, points_done
        self.images, self.places, self.every = images, places, every
        self.setup = dict(setup or {})
        self.started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.t0 = self.last = time.monotonic()
        self.first_block: float | None = None
        self.last_block: float | None = None
        self.per_rank = {i: {"blocks": 0, "points": 0, "seconds": 0.0} for i in range(len(places))}
        self.running: list[dict] = []  # the blocks being computed: rank, points [start, stop), seconds at it
        self.warned = False

    def advance(self, points: int, rank: int, seconds: float, compiled: float = 0.0) -> None:
        """A block committed: ``points`` computed by ``rank`` in ``seconds``, after ``compiled`` seconds of
        compiling the surface's forward on that rank (its first block of the surface only)."""
        now = time.monotonic()
        if compiled and "compile_seconds" in self.setup:
            self.setup["compile_seconds"][rank] = round(self.setup["compile_seconds"][rank] + compiled, 3)
        if self.first_block is None:
            self.first_block = now - seconds  # the first block began before its result arrived
        self.last_block = now
        self.done += points
        s = self.per_rank[rank]
        s["blocks"] += 1
        s["points"] += points
        s["seconds"] += seconds
        if now - self.last >= self.every:
            self.write("running")

    @property
    def sweep_seconds(self) -> float:
        """From this surface's first block to its last result (0 when no block ran)."""
        if self.first_block is None or self.last_block is None:
            return 0.0
        return self.last_block - self.first_block

    @property
    def rate(self) -> float:
        points = self.done - self.start_done
        return points / self.sweep_seconds if points and self.sweep_seconds > 0 else 0.0

    def write(self, state: str, **extra: Any) -> None:
        """Write the record now (``extra``: how the run ended: reason, error, duplicates)."""
        from ..file.store import write_run_info

        self.last = time.monotonic()
        rate = self.rate
        info = {
            "state": state,
            "job": self.job.name,
            "output": self.job.output,
            "started": self.started,
            "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
            "ranks": len(self.places),
            "points_total": self.total,
            "points_done": self.done,
            "points_this_run": self.done - self.start_done,
            "points_per_second": rate,
            "images_per_point": self.images,
            "eta_seconds": (self.total - self.done) / rate if rate > 0 else None,
            "seconds": {
                "sweep": round(self.sweep_seconds, 3),
                "wall": round(time.monotonic() - PROCESS_START, 3),
            },
            "setup": self.setup,
            "running": self.running if state == "running" else [],
            "per_rank": [
                {
                    "rank": i,
                    "host": place.host,
                    "device": place.device,
                    "gpu": place.gpu_id,
                    "pid": place.pid,
                    "blocks": self.per_rank[i]["blocks"],
                    "points": self.per_rank[i]["points"],
                    "seconds": round(self.per_rank[i]["seconds"], 3),
                }
                for i, place in enumerate(self.places)
            ],
            **extra,
        }
        try:
            write_run_info(self.job.output_path, info)
        except OSError as e:  # the record must never fail a sweep: warn once, keep computing
            if not self.warned:
                self.warned = True
                print(
                    f"llmpi: warning: cannot write {self.job.output}.run.json ({e.strerror or e}); the sweep goes on "
                    f"without its run record (python -m llmpi.status still reads the surface file)",
                    file=sys.stderr,
                    flush=True,
                )

    def summary(self) -> str:
        """The line a complete surface ends with."""
        points = self.done - self.start_done
        return (
            f"llmpi: {points} points in {self.sweep_seconds:.1f} s ({self.rate:.2f} points/s, "
            f"{self.rate * self.images:.0f} images/s) on {len(self.places)} rank(s); {self.done}/{self.total} "
            f"done -> {self.job.output}"
        )

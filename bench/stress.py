"""The coordinator under load: the real ``python -m llmpi.sweep`` with a network that costs ~nothing per point.

    mpirun -n 4 python -m bench.stress job.yaml            # arch: bench_trivial (registered here), 1 image
    mpirun -n 4 python -m bench.stress job.yaml --noop     # no evaluation at all: bookkeeping alone

This process registers ``bench_trivial`` (one 10x4 weight on four pixels: a few microseconds a point) in
``llmpi.models.REGISTRY`` and then runs the sweep's own ``main``: every block, message, file write and
progress line is the production code. ``--noop`` also replaces the evaluator by one that returns a constant, so
what remains is the coordinator, the protocol and the store. Each rank prints its peak resident memory on exit
(``bench: rank R peak_rss_kib K``) for the bench to collect.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

TRIVIAL = "bench_trivial"


class Trivial(nn.Module):
    """Logits from four pixels and one 10x4 weight: a forward pass of a few microseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(10, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :4] @ self.weight.T


def register() -> None:
    from llmpi import models

    models.REGISTRY.setdefault(TRIVIAL, Trivial)


class NoopEvaluator:
    """Stands in for llmpi.compute.evaluate.Evaluator: same interface, no computation (a constant per point)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        from types import SimpleNamespace

        self.batch_size = 1
        self.network = SimpleNamespace(describe=lambda: "no-op")
        self.weights = SimpleNamespace(describe=lambda: "no weights (no-op evaluator)")
        self.batches = SimpleNamespace(describe=lambda: "no data")

    def use(self, path: object) -> None:
        self.path = path

    def prepare(self) -> float:
        return 0.0

    def many(
        self, points: Sequence[Sequence[float]], between_batches: Callable[[], None] | None = None
    ) -> list[tuple[float, float]]:
        return [(1.0, 50.0)] * len(points)


class StoreTimer:
    """Wraps SurfaceStore.write and ._sync to account for the time rank 0 spends storing (a measurement only)."""

    def __init__(self) -> None:
        self.commits = self.blocks = 0
        self.write_seconds = self.sync_seconds = 0.0

    def install(self) -> None:
        from llmpi.file.store import SurfaceStore

        write, sync = SurfaceStore.write, SurfaceStore._sync

        def timed_write(store: SurfaceStore, blocks: Sequence) -> None:
            t0 = time.perf_counter()
            write(store, blocks)
            self.commits += 1
            self.blocks += len(blocks)
            self.write_seconds += time.perf_counter() - t0

        def timed_sync(store: SurfaceStore) -> None:
            t0 = time.perf_counter()
            sync(store)
            self.sync_seconds += time.perf_counter() - t0

        SurfaceStore.write, SurfaceStore._sync = timed_write, timed_sync

    def line(self) -> str:
        return (
            f"bench: store commits {self.commits} blocks {self.blocks} write_s {self.write_seconds:.3f} "
            f"fsync_s {self.sync_seconds:.3f}"
        )


def main(argv: list[str]) -> int:
    register()
    timer = StoreTimer()
    timer.install()
    noop = "--noop" in argv
    argv = [a for a in argv if a != "--noop"]
    if noop:
        import llmpi.compute.evaluate

        llmpi.compute.evaluate.Evaluator = NoopEvaluator  # the sweep imports it from there when it starts
    from mpi4py import MPI

    from llmpi import sweep

    code = sweep.main(argv)
    rank = MPI.COMM_WORLD.Get_rank()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"bench: rank {rank} peak_rss_kib {rss}", file=sys.stderr, flush=True)
    if rank == 0:
        print(timer.line(), file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Sweep a loss surface: every rank computes, rank 0 coordinates and writes one HDF5 file.

    mpirun -n 8 python -m llmpi.sweep jobs/vgg56.yaml            # 8 ranks (one per GPU), all compute
    python -m llmpi.sweep jobs/vgg56.yaml                         # the same job on one rank
    python -m llmpi.sweep jobs/vgg56.yaml --set grid.x=[-0.5,0.5,21] --set output=surfaces/zoom.h5

Rerunning the same command resumes: points already in the file are never computed again. Exit status:
0 complete, 1 failed (a rank's error, printed with its traceback), 2 bad input (one message, what to do next),
75 interrupted by SIGTERM/SIGUSR1/SIGINT -- incomplete but resumable, rerun the same command.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 75


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


@dataclass
class Plan:
    """What rank 0 decides and every rank needs (the tasks themselves stay on rank 0)."""

    directions: list[dict[str, np.ndarray]]
    todo_points: int


def fingerprint(job: Any, checkpoint_sha256: str, data_info: Any) -> dict:
    """Everything that determines the stored values, and nothing that does not (ranks, batch size, points per
    pass, compile, output: these change per-image losses in their last bits at most)."""
    from .config import to_dict

    return {
        "format": 1,
        "arch": job.model.arch,
        "precision": job.runtime.precision,  # tf32 and bf16 change values by far more than rounding
        "checkpoint_sha256": checkpoint_sha256,
        "data": {
            "dataset": job.data.dataset,
            "split": job.data.split,
            "subset": job.data.subset,
            "seed": job.data.seed,
            "images_sha256": data_info.sha256,
        },
        "directions": to_dict(job.directions),
        "grid": {"x": list(job.grid.x), "y": None if job.grid.y is None else list(job.grid.y)},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mpi4py import MPI

    from . import protocol

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    interrupts = protocol.Interrupts().install()
    store = None
    try:
        import torch

        from . import checkpoint, config, data, directions, runtime
        from .evaluate import Evaluator, autotune
        from .grid import Grid, auto_block, blocks
        from .store import SurfaceStore

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

        def setup_rank() -> tuple:
            device = runtime.pick_device(job.runtime.device, local.Get_rank())
            threads = runtime.pick_threads(job.runtime.threads, local.Get_size())
            runtime.configure(device, threads)
            images, labels, info = data.load_images(
                job.data.dataset, job.data.root, job.data.split, job.data.subset, job.data.seed
            )
            model = checkpoint.load_model(job.model.arch, job.model.checkpoint)
            return device, threads, images, labels, info, model

        device, threads, images_u8, labels_np, info, model = collective(comm, setup_rank, args.debug)

        tasks: list[tuple[int, tuple[int, int, np.ndarray], int]] = []
        todo: list[int] = []  # flat indices not yet computed (rank 0)

        def setup_store() -> Plan | None:
            nonlocal store
            if rank != 0:
                return None
            weights = {k: v.detach() for k, v in directions.perturbed_entries(model, job.directions.type).items()}
            make = lambda: [
                {k: v.numpy() for k, v in d.items()}
                for d in directions.random_directions(
                    weights, job.directions.seed, job.directions.norm, job.directions.ignore, count=grid.ndim
                )
            ]
            fields = fingerprint(job, checkpoint.sha256_file(job.model.checkpoint), info)
            attrs = {
                "dataset": info.describe(),
                "synthetic": info.synthetic,
                "arch": job.model.arch,
                "split": job.data.split,
                "images": info.count,
            }
            store = SurfaceStore.open(
                job.output_path,
                grid,
                job.data.split,
                fields,
                config.to_yaml(job),
                make,
                restart=args.restart,
                attrs=attrs,
            )
            todo.extend(store.todo().tolist())
            return Plan(store.directions(), len(todo))

        plan = comm.bcast(collective(comm, setup_store, args.debug))

        # Batch size and points per pass: "auto" is decided by timing on rank 0 alone and broadcast, because a
        # choice that differed between ranks would give them different bits (see llmpi.evaluate).
        rt = job.runtime
        auto_batch, auto_points = job.data.batch_size == "auto", rt.points_per_pass == "auto"

        def setup_evaluator() -> Evaluator:
            images = data.normalize(images_u8, device=device)
            labels = torch.as_tensor(labels_np, device=device)
            dirs = [{k: torch.from_numpy(np.asarray(v)) for k, v in d.items()} for d in plan.directions]
            batch = runtime.default_batch_size(device, info.count) if auto_batch else job.data.batch_size
            return Evaluator(
                model,
                dirs,
                images,
                labels,
                batch,
                kind=job.directions.type,
                precision=rt.precision,
                compile=rt.compile,
                points_per_pass=1 if auto_points else rt.points_per_pass,
                shrink_on_oom=auto_batch,
            )

        evaluator = collective(comm, setup_evaluator, args.debug)

        def tune_and_plan() -> tuple[int, int, str] | None:
            """On rank 0: the batch size and points per pass for everyone, then the blocks."""
            if rank != 0:
                return None
            described = ""
            if (auto_batch or auto_points) and plan.todo_points:
                work = plan.todo_points * info.count / size
                described = autotune(evaluator, work, tune_batch=auto_batch, tune_points=auto_points).describe()
            width = evaluator.points_per_pass
            block = job.grid.block if job.grid.block != "auto" else auto_block(len(todo), size)
            if job.grid.block == "auto" and width > 1:  # whole passes: no padded points
                block = width * -(-block // width)
            runs = blocks(np.asarray(todo, dtype=np.int64), block)
            tasks.extend((b, (s, e, grid.coords(s, e)), e - s) for b, (s, e) in enumerate(runs))
            return evaluator.batch_size, width, described

        batch_size, points_per_pass, tuned = comm.bcast(collective(comm, tune_and_plan, args.debug))
        evaluator.batch_size, evaluator.points_per_pass = batch_size, points_per_pass

        from .faults import Faults

        faults = Faults.from_env(rank)

        def compute(payload: tuple, check: Callable[[], None]) -> tuple[int, int, dict[str, np.ndarray]]:
            """Evaluate a block's points; on a stop, hand back the points already finished."""
            start, stop, coords = payload
            out = {"loss": np.empty(stop - start), "acc": np.empty(stop - start)}
            k = 0
            try:
                while k < len(coords):
                    check()
                    group = [tuple(p) for p in coords[k : k + evaluator.points_per_pass]]
                    for _ in group:
                        faults.before_point()
                    for loss, acc in evaluator.many(group, between_batches=check):
                        out["loss"][k], out["acc"][k] = loss, acc
                        k += 1
            except protocol.Stopped as stopped:
                if k > 0:
                    stopped.partial = (start, start + k, {name: v[:k] for name, v in out.items()})
                raise
            return start, stop, out

        todo_points = plan.todo_points
        progress = Progress(grid.size, grid.size - todo_points, info.count) if rank == 0 else None

        if rank == 0:
            print(
                f"llmpi sweep {job.name}: {job.model.arch} on {info.describe()}; "
                f"grid {'x'.join(map(str, grid.shape[::-1]))}"
                f" = {grid.size} points, {grid.size - todo_points} already done; {size} rank(s) on {device.type}, "
                f"{threads} thread(s) each, batch {batch_size}"
                + (f" x {points_per_pass} points per pass" if points_per_pass > 1 else "")
                + f", {rt.precision}{', compiled' if rt.compile else ''} -> {job.output}",
                flush=True,
            )
            if tuned:
                print(f"llmpi: tuned on rank 0: {tuned}", flush=True)

        def commit(results: list[tuple[int, tuple[int, int, dict[str, np.ndarray]]]]) -> None:
            store.write([reply for _, reply in results])
            progress.update(sum(stop - start for _, (start, stop, _) in results))

        outcome = protocol.run(comm, tasks, compute, commit, interrupts)
        if rank != 0:
            return {protocol.COMPLETE: EXIT_OK, protocol.INTERRUPTED: EXIT_INTERRUPTED}.get(outcome.state, EXIT_FAILED)
        progress.close()
        store.close()
        store = None
        return report(outcome, job, progress, size, comm)
    except SetupFailed as e:
        if rank == 0:
            print(f"llmpi: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE if e.user else EXIT_FAILED
    finally:
        if store is not None:
            store.close()


def report(outcome: Any, job: Any, progress: Progress, size: int, comm: Any) -> int:
    from . import protocol

    if outcome.state == protocol.FAILED:
        print(
            f"llmpi: error: the sweep failed; every point finished before the failure is kept in {job.output}.\n"
            f"{outcome.error}",
            file=sys.stderr,
            flush=True,
        )
        code = EXIT_FAILED
    elif outcome.state == protocol.INTERRUPTED:
        print(
            f"llmpi: interrupted ({outcome.reason}) with {progress.done} of {progress.total} points done; "
            f"rerun the same command to resume",
            file=sys.stderr,
            flush=True,
        )
        code = EXIT_INTERRUPTED
    else:
        print(progress.summary(size, job.output), flush=True)
        code = EXIT_OK
    if outcome.unresponsive:
        print(
            f"llmpi: ranks {outcome.unresponsive} did not stop in time; aborting them",
            file=sys.stderr,
            flush=True,
        )
        comm.Abort(code or EXIT_FAILED)
    return code


class Progress:
    """A tqdm bar on a terminal; otherwise a log line every ``every`` seconds. Rank 0 only."""

    def __init__(self, total: int, done: int, images: int, every: float = 10.0) -> None:
        self.total, self.done, self.images, self.every = total, done, images, every
        self.start_done = done
        self.t0 = self.last_line = time.monotonic()
        self.bar = None
        if sys.stderr.isatty() and done < total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="pt", desc="llmpi", dynamic_ncols=True)

    def update(self, new_points: int) -> None:
        self.done += new_points
        if self.bar is not None:
            self.bar.update(new_points)
            return
        now = time.monotonic()
        if now - self.last_line >= self.every:
            self.last_line = now
            rate = (self.done - self.start_done) / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            print(
                f"llmpi: {self.done}/{self.total} points, {rate:.2f} points/s, ETA {_duration(eta)}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def summary(self, ranks: int, output: str) -> str:
        seconds = time.monotonic() - self.t0
        points = self.done - self.start_done
        rate = points / max(seconds, 1e-9)
        return (
            f"llmpi: {points} points in {seconds:.1f} s ({rate:.2f} points/s, {rate * self.images:.0f} images/s) "
            f"on {ranks} rank(s); {self.done}/{self.total} done -> {output}"
        )


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


if __name__ == "__main__":
    sys.exit(main())

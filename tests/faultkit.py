"""A harness that really kills sweeps: start ``mpirun -n 3 python -m llmpi.sweep``, SIGKILL one rank (coordinator or
worker) at a seeded random moment or inside a file write, then rerun the same command to completion.

Used by tests/test_faults.py (12 trials in ``make test``), ``make soak`` (many more) and bench/fault.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from mpilaunch import RANK_VARIABLE, REPO, env, mpirun

from llmpi.file.store import read_surface
from llmpi.job.errors import StoreError


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (MPICH's Hydra gives each rank a session of its own, so sessions do not help)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rank_pids(mpirun: int) -> dict[int, int]:
    """PIDs of the sweep's MPI ranks started by ``mpirun``, by world rank (from the launcher's rank variable)."""
    found = {}
    for pid in descendants(mpirun):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"llmpi.sweep" not in cmdline:
            continue
        for item in environ:
            if item.startswith(RANK_VARIABLE):
                found[int(item[len(RANK_VARIABLE) :])] = pid
    return found


def kill_tree(root: int) -> None:
    """SIGKILL ``root`` and everything below it (no stray rank survives a test)."""
    for pid in [*descendants(root), root]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def done_count(path: Path) -> int:
    """Points marked done in the file, -1 while there is no readable surface file (not created yet)."""
    try:
        return int(read_surface(path).done.sum())
    except StoreError:
        return -1


@dataclass
class Killed:
    how: str  # what was killed and when
    returncode: int
    done_after: int  # points marked done in the file after the kill


def run_and_kill(
    job: Path,
    output: Path,
    rng: random.Random,
    ranks: int = 3,
    slow: float = 0.15,
    trace: Path | None = None,
    timeout: float = 120,
    modes: tuple[str, ...] = ("time", "time", "time", "values", "between", "done"),
) -> Killed:
    """One sweep killed once: either a random rank at a random moment, or the writer inside a block write."""
    mode = rng.choice(modes)
    faults = [f"slow:seconds={slow}"]
    if mode != "time":
        faults.append(f"kill:stage={mode}:after={rng.randint(1, 4)}")
    if trace is not None:
        faults.append(f"trace:path={trace}")
    proc = subprocess.Popen(
        [*mpirun(ranks), sys.executable, "-m", "llmpi.sweep", str(job)],
        cwd=REPO,
        env=env({"LLMPI_FAULT": ",".join(faults)}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    how = f"writer killed inside a block write at stage '{mode}'"
    try:
        if mode == "time":
            # a random moment of the sweep proper: once a random share of the points is done, plus a random delay
            target_done, deadline = rng.randint(0, 24), time.monotonic() + timeout
            while done_count(output) < target_done and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))
            target = rng.randrange(ranks)
            pid = rank_pids(proc.pid).get(target)
            if pid is not None and proc.poll() is None:
                os.kill(pid, signal.SIGKILL)
                how = (
                    f"rank {target} {'(coordinator)' if target == 0 else '(worker)'} killed after {target_done}+ points"
                )
            else:
                how = "the sweep finished before the kill"
        proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.communicate()
    return Killed(how, proc.returncode, done_count(output))


def resume(job: Path, ranks: int = 3, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*mpirun(ranks), sys.executable, "-m", "llmpi.sweep", str(job)],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:  # default HDF5 locking on purpose: the file must open like any other
        return {k: f[k][()] for k in ("train_loss", "train_acc", "done")}

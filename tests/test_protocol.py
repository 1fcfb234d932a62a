"""The coordinator/worker protocol alone, with a trivial computation: every block committed exactly once, on any
number of ranks (rank 0 computing too, talking to itself), errors and stragglers handled."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO, launch_env, mpirun

pytestmark = pytest.mark.mpi

DRIVER = str(REPO / "tests" / "protocol_driver.py")


def drive(ranks, *args, timeout=60, env=None):
    import subprocess

    cmd = [*mpirun(ranks), sys.executable, DRIVER, *map(str, args)]
    try:
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env=launch_env(env),
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"deadlock: {' '.join(cmd)} did not finish in {timeout} s\n{e.stderr}")
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, out.stderr
    return json.loads(lines[-1])


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_every_block_committed_once(ranks):
    """Many one-point blocks: with one rank, coordinator and worker threads exchange hundreds of messages with
    themselves (a blocking send to self deadlocks in MPICH: every send is non-blocking)."""
    result = drive(ranks, 400)
    assert result["state"] == "complete" and result["unresponsive"] == []
    assert {int(k): v for k, v in result["committed"].items()} == {b: b * b for b in range(400)}
    assert sum(s["blocks"] for s in result["stats"].values()) == 400
    assert all(s["blocks"] > 0 for s in result["stats"].values())  # every rank computes, rank 0 too


@pytest.mark.parametrize("level", ["multiple", "serialized"])
def test_a_straggler_is_bypassed_and_its_copy_dropped(level):
    """Also with MPI_THREAD_SERIALIZED forced (mpi4py asks for what MPI4PY_RC_THREAD_LEVEL says): rank 0's two
    threads then take turns on MPI behind one lock, and stealing and copying blocks work the same."""
    result = drive(3, 60, 1, env={"MPI4PY_RC_THREAD_LEVEL": level})
    assert result["thread_level"] == f"MPI_THREAD_{level.upper()}"
    assert result["state"] == "complete"
    assert {int(k): v for k, v in result["committed"].items()} == {b: b * b for b in range(60)}
    assert result["stats"]["1"]["blocks"] == 0  # the slow rank never finished a block: others took them


def test_a_worker_error_stops_everyone_with_its_traceback():
    result = drive(3, 50, -1, 2)
    assert result["state"] == "failed" and result["unresponsive"] == []
    assert "rank 2 of 3" in result["error"] and "ZeroDivisionError: planted" in result["error"]


def test_layers_import_one_way():
    """The protocol knows no torch; the numerics know no MPI (checked in a fresh interpreter)."""
    import subprocess

    code = "import sys, llmpi.ranks.protocol; assert 'torch' not in sys.modules, 'protocol imported torch'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    code = (
        "import sys, llmpi.compute.evaluate, llmpi.space.directions, llmpi.compute.data, llmpi.models, "
        "llmpi.space.checkpoint, llmpi.file.grid, llmpi.file.store, llmpi.compute.runtime; "
        "assert 'mpi4py' not in sys.modules, 'a numerics module imported mpi4py'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    code = (
        "import sys, llmpi.ranks.placement; assert not {'torch', 'mpi4py'} & set(sys.modules), 'placement is not pure'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr

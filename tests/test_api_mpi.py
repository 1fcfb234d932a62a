"""llmpi.surface in an SPMD program under mpirun (every rank calls it alike): the same file and bits as one process,
the same Surface returned on every rank, and a rank whose network differs from rank 0's stops the run with one
message naming it."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from conftest import REPO, rank_rows, run_script

from llmpi.file.store import read_run_info, read_surface

pytestmark = pytest.mark.mpi

SCRIPT = REPO / "tests" / "spmd_surface.py"


def run(*args: str, ranks: int | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, *args, ranks=ranks, timeout=timeout)


def test_three_ranks_equal_one_process_and_every_rank_gets_the_surface(tmp_path):
    three = run(str(tmp_path / "three.h5"), ranks=3)
    assert three.returncode == 0, three.stderr
    one = run(str(tmp_path / "one.h5"))
    assert one.returncode == 0, one.stderr
    a, b = read_surface(tmp_path / "three.h5"), read_surface(tmp_path / "one.h5")
    assert a.complete and a.values.keys() == b.values.keys()
    for key in a.values:
        assert np.array_equal(a.values[key], b.values[key]), key
    assert a.attrs["fingerprint"] == b.attrs["fingerprint"]
    record = read_run_info(tmp_path / "three.h5")
    assert record["ranks"] == 3 and all(r["points"] > 0 for r in record["per_rank"])  # every rank computed
    got = rank_rows(three.stdout)
    assert sorted(got) == [0, 1, 2] and len({row["digest"] for row in got.values()}) == 1
    assert got[0]["digest"] == rank_rows(one.stdout)[0]["digest"] and got[2]["done"] == 35


def test_a_surface_kept_in_memory_under_mpirun(tmp_path):
    result = run("unused", "--memory", ranks=2)
    assert result.returncode == 0, result.stderr
    got = rank_rows(result.stdout)
    assert sorted(got) == [0, 1] and got[0]["digest"] == got[1]["digest"] and got[1]["where"] == "in memory"


def test_a_rank_whose_network_differs_is_named_before_any_work(tmp_path):
    result = run(str(tmp_path / "s.h5"), "--differ", "2", ranks=3, timeout=120)
    assert result.returncode != 0
    message = (
        "llmpi.job.errors.JobError: rank 2 of 3 holds other weights (θ*) than rank 0: every rank must pass "
        "llmpi.surface (or llmpi.spectrum) the same network, weights and data"
    )
    # raised on every rank alike (Open MPI's mpirun may kill the others once the first has exited: at least one)
    assert message in result.stderr, result.stderr
    assert "train it on one rank and broadcast it" in result.stderr
    assert not (tmp_path / "s.h5").exists()

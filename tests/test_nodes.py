"""Several nodes on one machine: MPICH's launcher starts ranks as if on two hosts, MPI's node split finds two nodes,
and each rank's node-local rank and thread count follow its simulated node (llmpi.placement), in a real sweep.

What one machine cannot show (several GPUs per node, a real interconnect, srun across nodes) is listed in the
README's "Clusters" section; tests/test_placement.py covers the GPU choices with the devices faked."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, brute_force, job_dict, launch_env, write_job
from mpilaunch import FLAVOUR, nodes

from llmpi.store import read_directions, read_run_info, read_surface

pytestmark = pytest.mark.mpi


@pytest.mark.skipif(nodes([1]) is None, reason=f"{FLAVOUR}'s mpirun cannot simulate several nodes on one machine")
def test_two_simulated_nodes_bind_threads_per_node(fixture_data, tmp_path):
    """Node A holds rank 0 alone, node B ranks 1 and 2. With threads: auto, rank 0 takes both cores of its node
    and the two ranks of node B one each: cores are shared among the ranks of a node, not of the job."""
    out = tmp_path / "s.h5"
    job = write_job(tmp_path / "job.yaml", job_dict(fixture_data, out, runtime={"device": "cpu", "threads": "auto"}))
    cmd = [*nodes([1, 2]), sys.executable, "-m", "llmpi.sweep", str(job)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=launch_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr
    cores = len(os.sched_getaffinity(0))
    lines = [line for line in result.stdout.splitlines() if line.startswith("llmpi: rank ")]
    assert [line.split(" (local ")[1].split(",")[0] for line in lines] == ["0 of 1", "0 of 2", "1 of 2"]
    threads = [int(line.split(": cpu, ")[1].split(" thread")[0]) for line in lines]
    assert threads == [cores, max(1, cores // 2), max(1, cores // 2)]
    info = read_run_info(out)
    assert [r["points"] > 0 for r in info["per_rank"]] == [True, True, True]  # every node computed
    s = read_surface(out)
    assert s.complete
    dirs = read_directions(out)
    for j, i in ((0, 0), (3, 4), (2, 1)):  # threads differ between ranks: values to rounding, not bitwise
        loss, acc = brute_force(fixture_data, dirs, (s.x[i], s.y[j]))
        assert s.values["train_loss"][j, i] == pytest.approx(loss, rel=2e-5)
        assert s.values["train_acc"][j, i] == pytest.approx(acc, abs=1e-9)

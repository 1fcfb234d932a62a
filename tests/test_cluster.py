"""Where ranks run, in real sweeps: several nodes simulated on one machine (MPICH's launcher starts ranks as if on
two hosts, MPI's node split finds two nodes, each rank's node-local rank and threads follow its node), and, on a
machine with a GPU, more ranks than GPUs sharing them (llmpi.ranks.placement).

What one machine cannot show (several GPUs per node, a real interconnect) is listed in the README's "Clusters"
section; tests/test_placement.py covers the GPU choices with the devices faked, tests/test_slurm.py a two-node
SLURM."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, brute_force, job_dict, launch_env, run_cli, write_job
from mpilaunch import FLAVOUR, nodes

from llmpi.file.store import read_directions, read_run_info, read_surface

pytestmark = pytest.mark.mpi


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


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
    assert len(info["per_rank"]) == 3 and sum(r["points"] for r in info["per_rank"]) == 20
    s = read_surface(out)
    assert s.complete
    dirs = read_directions(out)
    for j, i in ((0, 0), (3, 4), (2, 1)):  # threads differ between ranks: values to rounding, not bitwise
        loss, acc = brute_force(fixture_data, dirs, (s.x[i], s.y[j]))
        assert s.values["train_loss"][j, i] == pytest.approx(loss, rel=2e-5)
        assert s.values["train_acc"][j, i] == pytest.approx(acc, abs=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda(), reason="needs CUDA")
def test_more_ranks_than_gpus_share_them_and_compute_the_same_bits(fixture_data, tmp_path):
    """One rank more than the node has GPUs: two ranks share a GPU (the banner shows the same UUID twice, and a
    warning says so), both compute, and the surface is bitwise the one-rank GPU run's."""
    import torch

    gpus = torch.cuda.device_count()
    ranks = gpus + 1
    grid = {"x": [-1.0, 1.0, 2 * ranks], "y": [-1.0, 1.0, 3], "block": 1}
    runtime = {"device": "cuda", "threads": 1}
    shared = write_job(
        tmp_path / "shared.yaml", job_dict(fixture_data, tmp_path / "shared.h5", grid=grid, runtime=runtime)
    )
    alone = write_job(
        tmp_path / "alone.yaml", job_dict(fixture_data, tmp_path / "alone.h5", grid=grid, runtime=runtime)
    )
    # every point a little slow, so that no rank's blocks are all taken by the others before it starts
    result = run_cli("llmpi.sweep", str(shared), ranks=ranks, timeout=300, env={"LLMPI_FAULT": "slow:seconds=0.2"})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("llmpi: rank ")]
    uuids = [line.split(" GPU-")[1].split(",")[0] for line in lines]
    assert len(lines) == ranks and len(set(uuids)) == gpus  # every GPU used, one of them twice
    wanted = {f"{torch.cuda.get_device_properties(i).uuid}" for i in range(gpus)}
    assert set(uuids) == wanted
    assert f"{ranks} ranks share {gpus} GPU(s)" in result.stderr
    per_rank = read_run_info(tmp_path / "shared.h5")["per_rank"]
    assert all(r["points"] > 0 for r in per_rank), per_rank  # the sharing ranks computed too
    one = run_cli("llmpi.sweep", str(alone), timeout=300)
    assert one.returncode == 0, one.stderr
    a, b = read_surface(tmp_path / "shared.h5"), read_surface(tmp_path / "alone.h5")
    assert a.complete and b.complete
    for name in ("train_loss", "train_acc"):
        assert np.array_equal(a.values[name], b.values[name])

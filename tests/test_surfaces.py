"""Several surfaces in one run: ``mpirun -n 3 python -m llmpi.sweep a.yaml b.yaml c.yaml`` hands out the blocks
of all three from one coordinator; each file must come out bitwise equal to a separate run of its job, also when
the run is killed with SIGKILL midway and the same command is run again."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, job_dict, run_cli, write_job
from faultkit import kill_tree
from mpilaunch import env, mpirun
from test_faults import wait_for_points

from llmpi.file.store import read_run_info, read_surface
from llmpi.job.config import load_job, load_jobs
from llmpi.job.errors import JobError
from llmpi.ranks.worker import DataCache, Surfaces

# Three jobs that differ in what matters: directions, split, grid shape and dimension.
SECTIONS = {
    "a": {},
    "b": {"directions": {"seed": 5}, "data": {"split": "test", "subset": 48}, "grid": {"x": [-0.5, 0.5, 7], "y": None}},
    "c": {"directions": {"norm": "layer", "seed": 9}, "grid": {"x": [-1.0, 1.0, 3], "y": [-1.0, 1.0, 3], "block": 1}},
}


def jobs_in(fx, folder, prefix: str = "") -> list:
    return [
        write_job(folder / f"{name}.yaml", job_dict(fx, folder / f"{prefix}{name}.h5", name=name, **sections))
        for name, sections in SECTIONS.items()
    ]


@pytest.fixture(scope="module")
def separate(fixture_data, tmp_path_factory):
    """Each job run alone, on one rank: what the combined run must reproduce bit for bit."""
    folder = tmp_path_factory.mktemp("separate")
    out = {}
    for name, job in zip(SECTIONS, jobs_in(fixture_data, folder)):
        result = run_cli("llmpi.sweep", str(job))
        assert result.returncode == 0, result.stderr
        out[name] = read_surface(folder / f"{name}.h5")
    return out


def same(a, b) -> None:
    assert a.complete and b.complete
    assert a.values.keys() == b.values.keys()
    for key in a.values:
        assert np.array_equal(a.values[key], b.values[key]), key
    for da, db in zip(a.directions, b.directions, strict=True):
        assert da.keys() == db.keys() and all(np.array_equal(da[k], db[k]) for k in da)


@pytest.mark.mpi
def test_three_surfaces_in_one_run_equal_three_separate_runs(fixture_data, separate, tmp_path):
    jobs = jobs_in(fixture_data, tmp_path)
    result = run_cli("llmpi.sweep", *map(str, jobs), ranks=3)
    assert result.returncode == 0, result.stderr
    for name in SECTIONS:
        path = tmp_path / f"{name}.h5"
        same(read_surface(path), separate[name])
        record = read_run_info(path)
        assert record["state"] == "complete" and record["job"] == name
        assert record["points_done"] == record["points_total"] == record["points_this_run"]
        assert sum(r["points"] for r in record["per_rank"]) == record["points_total"]
        status = run_cli("llmpi.status", str(path))
        assert status.returncode == 0 and f"done: {record['points_total']} / {record['points_total']}" in status.stdout
    assert result.stdout.count("llmpi sweep ") == 3  # a banner per surface
    assert result.stdout.count(" points in ") == 3  # a summary per surface, each as it completes
    again = run_cli("llmpi.sweep", *map(str, jobs), ranks=2)  # nothing left: nothing computed
    assert again.returncode == 0 and again.stdout.count(" 0 points in ") == 3, again.stdout


@pytest.mark.mpi
@pytest.mark.slow
def test_killed_midway_then_the_same_command_completes_every_surface_bitwise(fixture_data, separate, tmp_path):
    jobs = jobs_in(fixture_data, tmp_path)
    proc = subprocess.Popen(
        [*mpirun(3), sys.executable, "-m", "llmpi.sweep", *map(str, jobs)],
        cwd=REPO,
        env=env({"LLMPI_FAULT": "slow:seconds=0.15"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_points(tmp_path / "b.h5", 2, proc)  # the first surface done or nearly, the second begun
    finally:
        kill_tree(proc.pid)
        proc.communicate()
    partial = [read_surface(tmp_path / f"{name}.h5") for name in SECTIONS if (tmp_path / f"{name}.h5").exists()]
    assert not all(s.complete for s in partial), "the kill came too late to test anything"
    result = run_cli("llmpi.sweep", *map(str, jobs), ranks=3)
    assert result.returncode == 0, result.stderr
    for name in SECTIONS:
        same(read_surface(tmp_path / f"{name}.h5"), separate[name])


# -- in-process: validation of a run's jobs, and what a rank shares between them ----------------------------------


def test_jobs_of_one_run_need_their_own_outputs_and_one_device(fixture_data, tmp_path):
    a = write_job(tmp_path / "a.yaml", job_dict(fixture_data, tmp_path / "same.h5", name="a"))
    b = write_job(tmp_path / "b.yaml", job_dict(fixture_data, tmp_path / "same.h5", name="b"))
    with pytest.raises(JobError, match=r"a.yaml and .*b.yaml both write .*same.h5.*give each job its own output"):
        load_jobs([str(a), str(b)], [])
    with pytest.raises(JobError, match="gives every job the same output"):
        load_jobs([str(a), str(b)], ["output=x.h5"])
    c = write_job(tmp_path / "c.yaml", job_dict(fixture_data, tmp_path / "c.h5", name="c", runtime={"threads": 2}))
    with pytest.raises(JobError, match=r"different runtime.threads \(1, 2\).*--set runtime.threads="):
        load_jobs([str(a), str(c)], [])
    assert [j.name for j in load_jobs([str(a), str(c)], ["runtime.threads=1"])] == ["a", "c"]


def test_jobs_over_the_same_images_share_them(fixture_data, tmp_path):
    cache = DataCache()
    jobs = [load_job(path) for path in jobs_in(fixture_data, tmp_path)]
    a, b, c = (cache.samples(job.data, job.data.split) for job in jobs)
    assert a is c and b is not a and len(cache) == 2  # a and c differ only in directions and grid
    assert cache.samples(jobs[0].data, "train", subset=16) is not a


def test_a_rank_builds_a_surface_on_first_use_and_keeps_the_two_latest():
    built = []

    def build(index):
        built.append(index)
        return torch.nn.Identity()

    surfaces = Surfaces(build, keep=2)
    for index in (0, 0, 1, 0, 2, 1, 0):
        surfaces.get(index)
    assert built == [0, 1, 2, 1, 0] and surfaces.loads == built  # 0 was the least recently used when 1 came back

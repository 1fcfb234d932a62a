"""Crash-proof sweeps, shown by really killing, signalling, slowing and breaking real mpirun runs.

Whatever happens, rerunning the same command finishes the sweep, the file always opens, and no completed point is
ever lost or silently wrong (bitwise equal to an uninterrupted run)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, build_once, job_dict, mpirun, run_cli, write_job
from faultkit import arrays, env, kill_tree, rank_pids, resume, run_and_kill
from mpilaunch import MPIRUN_ON_SIGNAL

from llmpi.file.store import read_run_info, read_surface

pytestmark = pytest.mark.mpi

TRIALS = int(os.environ.get("LLMPI_KILL_TRIALS", "12"))  # make soak: 200
GRID = {"x": [-1.0, 1.0, 6], "y": [-1.0, 1.0, 5], "block": 2}


@pytest.fixture(scope="session")
def reference(fixture_data, tmp_path_factory):
    """An uninterrupted run of the fault tests' job (once per run: the trials are spread over the xdist workers)."""

    def sweep(d):
        job = write_job(d / "job.yaml", job_dict(fixture_data, d / "ref.h5", grid=GRID))
        result = run_cli("llmpi.sweep", str(job))
        assert result.returncode == 0, result.stderr

    return arrays(build_once(tmp_path_factory, "fault-reference", sweep) / "ref.h5")


def check_against(reference, path, complete):
    got = arrays(path)  # opens with plain h5py, default locking: the file is a valid HDF5 file
    done = got["done"].astype(bool)
    if complete:
        assert done.all()
    for name in ("train_loss", "train_acc"):
        assert np.array_equal(got[name][done], reference[name][done]), f"{name} differs at a done point"
    return int(done.sum())


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_9_anywhere_then_rerun_finishes_bitwise_equal(fixture_data, reference, tmp_path, trial):
    rng = random.Random(1000 + trial)
    out = tmp_path / "s.h5"
    job = write_job(tmp_path / "job.yaml", job_dict(fixture_data, out, grid=GRID))
    killed = run_and_kill(job, out, rng)
    assert killed.returncode != 0 and "finished before" not in killed.how, killed
    if out.exists():
        before = check_against(reference, out, complete=False)
        assert before == killed.done_after
    # resumed on 1 or 2 ranks: a rerun after a crash need not have the killed run's rank count, and its bits do
    # not depend on it (fewer processes also keep the trials affordable in make test)
    result = resume(job, ranks=1 + trial % 2)
    assert result.returncode == 0, f"{killed.how}: resume failed\n{result.stderr}"
    assert check_against(reference, out, complete=True) == 30, killed.how
    assert not list(tmp_path.glob(".s.h5.tmp-*")), "a temporary file was left behind"


def start(job, extra_env=None, ranks=3):
    return subprocess.Popen(
        [*mpirun(ranks), sys.executable, "-m", "llmpi.sweep", str(job)],
        cwd=REPO,
        env=env(extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_points(path, n, proc, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended early: {proc.communicate()[1]}")
        if path.exists() and read_surface(path).done.sum() >= n:
            return
        time.sleep(0.2)
    pytest.fail("no progress")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signame", "target", "level"), [("SIGUSR1", "worker", "serialized"), ("SIGTERM", "coordinator", "multiple")]
)
def test_signal_to_any_rank_stops_within_10_s_with_75_and_resumes(
    fixture_data, reference, tmp_path, signame, target, level
):
    """``level``: the MPI thread level mpi4py asks for; with SERIALIZED rank 0's threads take turns on MPI."""
    out = tmp_path / "s.h5"
    job = write_job(tmp_path / "job.yaml", job_dict(fixture_data, out, grid=GRID))
    proc = start(job, {"LLMPI_FAULT": "slow:seconds=0.3", "MPI4PY_RC_THREAD_LEVEL": level})
    try:
        wait_for_points(out, 4, proc)
        pid = rank_pids(proc.pid)[2 if target == "worker" else 0]
        sent = time.monotonic()
        os.kill(pid, getattr(signal, signame))
        out_text, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    assert proc.returncode == 75, err
    assert took < 10, f"{took:.1f} s"
    assert signame in err and "rerun the same command to resume" in err
    assert ("granted MPI_THREAD_SERIALIZED" in out_text) == (level == "serialized")
    done = check_against(reference, out, complete=False)
    assert 4 <= done < 30
    info = read_run_info(out)
    assert info["state"] == "interrupted" and signame in info["reason"]
    resumed = resume(job)
    assert resumed.returncode == 0, resumed.stderr
    assert check_against(reference, out, complete=True) == 30


@pytest.mark.skipif(
    MPIRUN_ON_SIGNAL["SIGTERM"] != "kills",
    reason="this mpirun passes SIGTERM on: test_sweep's interrupted sweep sends it there and gets 75",
)
def test_sigterm_to_an_mpirun_that_kills_loses_only_the_blocks_in_flight(fixture_data, reference, tmp_path):
    """Open MPI's mpirun answers SIGTERM by killing every rank within half a second: like kill -9, the file stays
    whole, every point marked done is right, and the same command finishes it."""
    out = tmp_path / "s.h5"
    job = write_job(tmp_path / "job.yaml", job_dict(fixture_data, out, grid=GRID))
    proc = start(job, {"LLMPI_FAULT": "slow:seconds=0.3"})
    try:
        wait_for_points(out, 4, proc)
        ranks = list(rank_pids(proc.pid).values())
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    assert proc.returncode != 0 and took < 5, (proc.returncode, took)
    deadline = time.monotonic() + 5  # mpirun may exit a moment before the kernel has removed its SIGKILLed ranks
    while (alive := [pid for pid in ranks if os.path.exists(f"/proc/{pid}")]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, "a rank outlived mpirun"
    assert 4 <= check_against(reference, out, complete=False) < 30
    resumed = resume(job)
    assert resumed.returncode == 0, resumed.stderr
    assert check_against(reference, out, complete=True) == 30


@pytest.mark.slow
def test_a_second_sweep_on_a_live_file_is_refused_naming_the_writer(fixture_data, tmp_path):
    out = tmp_path / "s.h5"
    job = write_job(tmp_path / "job.yaml", job_dict(fixture_data, out, grid=GRID))
    proc = start(job, {"LLMPI_FAULT": "slow:seconds=3"})
    try:
        wait_for_points(out, 1, proc)
        writer = rank_pids(proc.pid)[0]
        before = arrays(out)["done"].sum()
        second = run_cli("llmpi.sweep", str(job))
        status = run_cli("llmpi.status", str(out))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert second.returncode == 2
    assert "being written by another live sweep" in second.stderr
    assert f"pid {writer}" in second.stderr
    assert f"host {os.uname().nodename}" in second.stderr and "Traceback" not in second.stderr
    assert status.returncode == 0, status.stderr
    assert "live: a sweep is writing it now" in status.stdout and "last run: running" in status.stdout
    assert arrays(out)["done"].sum() >= before


@pytest.mark.slow
def test_a_straggler_does_not_hold_the_sweep(fixture_data, reference, tmp_path):
    """Rank 1 takes 20 s per point, the others a fraction of a second: its blocks are stolen or copied to idle
    workers, the first result wins, and the sweep ends at the pace of the fast ranks."""
    out = tmp_path / "s.h5"
    job = write_job(tmp_path / "job.yaml", job_dict(fixture_data, out, grid={**GRID, "block": 1}))
    result = run_cli(
        "llmpi.sweep",
        str(job),
        ranks=3,
        env={"LLMPI_FAULT": "slow:rank=1:seconds=20,slow:rank=0:seconds=0.05,slow:rank=2:seconds=0.05"},
    )
    assert result.returncode == 0, result.stderr
    info = read_run_info(out)
    seconds = info["seconds"]["sweep"]  # from the first block to the last result
    per_rank = {r["rank"]: r for r in info["per_rank"]}
    busy = max(per_rank[0]["seconds"], per_rank[2]["seconds"])  # what the two fast ranks needed for their share
    assert seconds < 20, result.stdout  # never waited for a slow point
    assert seconds < 1.5 * busy + 2, (seconds, busy)  # near the speed of the others
    assert per_rank[1]["points"] == 0 and per_rank[0]["points"] + per_rank[2]["points"] == 30
    assert info["duplicates_dropped"] == 0  # no block computed twice by the fast ranks (no steal ping-pong)
    assert check_against(reference, out, complete=True) == 30


def test_set_up_failure_on_one_rank_ends_everyone_with_its_traceback(fixture_data, tmp_path):
    out = tmp_path / "s.h5"
    job = write_job(tmp_path / "job.yaml", job_dict(fixture_data, out, grid=GRID))
    result = run_cli("llmpi.sweep", str(job), ranks=3, env={"LLMPI_FAULT": "setup:rank=2"}, timeout=90)
    assert result.returncode == 1
    assert "rank 2 of 3 on" in result.stderr and "injected set-up failure" in result.stderr
    assert not out.exists()


def test_non_finite_values_are_data(fixture_data, tmp_path):
    """Far from the minimiser the network overflows: NaN/inf losses are stored, marked done, never recomputed."""
    out = tmp_path / "s.h5"
    job = write_job(
        tmp_path / "job.yaml",
        job_dict(
            fixture_data, out, grid={"x": [0.0, 1e30, 3], "y": [0.0, 1e30, 2], "block": 1}, directions={"norm": "none"}
        ),
    )
    first = run_cli("llmpi.sweep", str(job), ranks=3)
    assert first.returncode == 0, first.stderr
    s = read_surface(out)
    loss = s.values["train_loss"]
    assert s.complete and np.isfinite(loss[0, 0]) and (~np.isfinite(loss)).sum() >= 3
    status = run_cli("llmpi.status", str(out))
    assert "NaN" in status.stdout and "done: 6 / 6" in status.stdout
    again = run_cli("llmpi.sweep", str(job), ranks=3)
    assert again.returncode == 0 and "6 already done" in again.stdout and "0 points in" in again.stdout


def test_status_of_a_finished_and_an_interrupted_file(fixture_data, tmp_path):
    out = tmp_path / "s.h5"
    job = write_job(tmp_path / "job.yaml", job_dict(fixture_data, out, grid=GRID))
    assert run_cli("llmpi.sweep", str(job), ranks=2).returncode == 0
    status = run_cli("llmpi.status", str(out), "--json")
    assert status.returncode == 0, status.stderr
    import json

    info = json.loads(status.stdout)
    assert info["points_done"] == info["points_total"] == 30 and not info["live"]
    assert info["last_run_state"] == "complete" and len(info["last_run"]["per_rank"]) == 2
    assert sum(r["points"] for r in info["last_run"]["per_rank"]) == 30
    text = run_cli("llmpi.status", str(out)).stdout
    assert "done: 30 / 30 (100.0%)" in text and "rank 1 on" in text
    missing = run_cli("llmpi.status", str(tmp_path / "nope.h5"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr

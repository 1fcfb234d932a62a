"""The real command line under real MPI (mpirun -n 3, oversubscribed): complete, exact, rank-count independent,
resumable, and refusing another job's file. Every run has a time limit, so a deadlock fails the test."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, brute_force, job_dict, launch_env, mpirun, run_cli, write_job
from mpilaunch import GRACEFUL, LIBRARY

from llmpi.file.store import read_directions, read_run_info, read_surface
from llmpi.space import checkpoint

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def three_ranks(fixture_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    job = write_job(d / "job.yaml", job_dict(fixture_data, d / "three.h5"))
    result = run_cli("llmpi.sweep", str(job), ranks=3)
    assert result.returncode == 0, result.stderr
    return d, job, result


def test_three_ranks_fill_the_file_with_the_exact_values(fixture_data, three_ranks):
    d, _, result = three_ranks
    s = read_surface(d / "three.h5")
    assert s.complete and s.values["train_loss"].shape == (4, 5) and s.y is not None
    assert "20 points in" in result.stdout and "3 rank(s)" in result.stdout
    record = read_run_info(d / "three.h5")
    assert record["state"] == "complete" and record["ranks"] == 3 and record["points_this_run"] == 20
    assert sum(r["points"] for r in record["per_rank"]) == 20 and record["setup"]["batch_size"] >= 1
    dirs = read_directions(d / "three.h5")
    for j, b in enumerate(s.y):
        for i, a in enumerate(s.x):
            loss, acc = brute_force(fixture_data, dirs, (a, b))
            assert s.values["train_loss"][j, i] == pytest.approx(loss, rel=2e-5), (a, b)
            assert s.values["train_acc"][j, i] == pytest.approx(acc, abs=1e-9), (a, b)


def test_stored_directions_are_filter_normalised_to_the_checkpoint(fixture_data, three_ranks):
    d, _, _ = three_ranks
    state = checkpoint.read_state_dict(fixture_data.checkpoint)
    dx, dy = read_directions(d / "three.h5")
    assert set(dx) == {k for k, v in state.items() if v.is_floating_point() and "running" not in k}
    for name, w in state.items():
        if name not in dx:
            continue
        w = w.double().numpy()
        if w.ndim <= 1:
            assert not dx[name].any() and not dy[name].any()
        else:
            for i in range(w.shape[0]):
                assert np.linalg.norm(dx[name][i]) == pytest.approx(np.linalg.norm(w[i]), rel=1e-5)
    assert not np.array_equal(dx["conv1.weight"], dy["conv1.weight"])


def test_one_rank_without_mpirun_is_bitwise_equal(fixture_data, three_ranks, tmp_path):
    d, _, _ = three_ranks
    job = write_job(tmp_path / "job.yaml", job_dict(fixture_data, tmp_path / "one.h5"))
    result = run_cli("llmpi.sweep", str(job))
    assert result.returncode == 0, result.stderr
    one, three = read_surface(tmp_path / "one.h5"), read_surface(d / "three.h5")
    for name in ("train_loss", "train_acc"):
        assert np.array_equal(one.values[name], three.values[name])
    for a, b in zip(read_directions(tmp_path / "one.h5"), read_directions(d / "three.h5")):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_mpi_thread_serialized_gives_the_same_bits(fixture_data, three_ranks, tmp_path):
    """An MPI that grants only MPI_THREAD_SERIALIZED (forced here through mpi4py's MPI4PY_RC_THREAD_LEVEL): rank 0's
    coordinator thread and worker take turns on MPI behind one lock; the file is bitwise the MULTIPLE run's."""
    d, _, _ = three_ranks
    job = write_job(tmp_path / "job.yaml", job_dict(fixture_data, tmp_path / "s.h5"))
    result = run_cli("llmpi.sweep", str(job), ranks=3, env={"MPI4PY_RC_THREAD_LEVEL": "serialized"})
    assert result.returncode == 0, result.stderr
    assert "granted MPI_THREAD_SERIALIZED: rank 0's two threads take turns on MPI" in result.stdout
    got, want = read_surface(tmp_path / "s.h5"), read_surface(d / "three.h5")
    assert got.complete
    for name in ("train_loss", "train_acc"):
        assert np.array_equal(got.values[name], want.values[name])


def test_mpi_thread_funneled_is_refused_at_start_naming_the_library(fixture_data, tmp_path):
    """Below SERIALIZED rank 0's second thread may not call MPI at all: refused before any work, never a hang."""
    job = write_job(tmp_path / "job.yaml", job_dict(fixture_data, tmp_path / "s.h5"))
    result = run_cli("llmpi.sweep", str(job), ranks=2, env={"MPI4PY_RC_THREAD_LEVEL": "funneled"}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"llmpi: error: {LIBRARY}" in result.stderr and "granted MPI_THREAD_FUNNELED" in result.stderr
    assert "set MPI4PY_RC_THREAD_LEVEL=multiple" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("llmpi: error") == 1 and not (tmp_path / "s.h5").exists()


def test_processes_the_launcher_started_alone_each_are_refused(fixture_data, tmp_path):
    """srun started 4 tasks but MPI sees one rank (what Open MPI 5 under srun --mpi=pmi2 does to each): refused at
    start, rather than 4 sweeps fighting over one file."""
    job = write_job(tmp_path / "job.yaml", job_dict(fixture_data, tmp_path / "s.h5"))
    result = run_cli("llmpi.sweep", str(job), env={"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4"}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "srun started 4 processes" in result.stderr and "sees 1 rank(s)" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "s.h5").exists()


def test_rerun_of_a_complete_job_computes_nothing(three_ranks):
    d, job, _ = three_ranks
    before = read_surface(d / "three.h5")
    result = run_cli("llmpi.sweep", str(job), ranks=3)
    assert result.returncode == 0, result.stderr
    assert "20 already done" in result.stdout and "0 points in" in result.stdout
    record = read_run_info(d / "three.h5")
    assert record["points_this_run"] == 0 and record["points_done"] == 20 and record["state"] == "complete"
    after = read_surface(d / "three.h5")
    assert np.array_equal(before.values["train_loss"], after.values["train_loss"])


def test_another_job_on_the_same_file_is_refused_and_the_file_untouched(three_ranks):
    d, job, _ = three_ranks
    before = (d / "three.h5").read_bytes()
    result = run_cli("llmpi.sweep", str(job), "--set", "directions.seed=4", "--set", "grid.x=[-2,2,5]", ranks=3)
    assert result.returncode == 2
    assert "holds another job's surface" in result.stderr
    assert (
        "directions.seed: file 3, job 4" in result.stderr
        and "grid.x: file [-1.0, 1.0, 5], job [-2.0, 2.0, 5]" in result.stderr
    )
    assert "Traceback" not in result.stderr and result.stderr.count("llmpi: error") == 1
    assert (d / "three.h5").read_bytes() == before


@pytest.mark.slow
def test_interrupted_sweep_exits_75_quickly_and_resumes_to_the_same_bits(fixture_data, tmp_path):
    """The signal goes to mpirun, as a shell's kill or SLURM would send it: SIGTERM, or SIGUSR1 where mpirun kills
    on SIGTERM (Open MPI's; tests/test_faults.py checks what that does)."""
    job = job_dict(fixture_data, tmp_path / "cut.h5", grid={"x": [-1.0, 1.0, 7], "y": [-1.0, 1.0, 6], "block": 3})
    path = write_job(tmp_path / "job.yaml", job)
    proc = subprocess.Popen(
        [*mpirun(3), sys.executable, "-m", "llmpi.sweep", str(path)],
        cwd=REPO,
        env=launch_env({"LLMPI_FAULT": "slow:seconds=0.2"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if (tmp_path / "cut.h5").exists() and read_surface(tmp_path / "cut.h5").done.sum() >= 6:
                break
        else:
            pytest.fail("the sweep made no progress")
        sent = time.monotonic()
        proc.send_signal(getattr(signal, GRACEFUL))
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err
    assert took < 10, f"took {took:.1f} s to stop"
    assert "rerun the same command to resume" in err
    partial = read_surface(tmp_path / "cut.h5")
    done_before = int(partial.done.sum())
    assert 6 <= done_before < 42

    resumed = run_cli("llmpi.sweep", str(path), ranks=3)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done_before} already done" in resumed.stdout
    assert f"{42 - done_before} points in" in resumed.stdout
    record = read_run_info(tmp_path / "cut.h5")
    assert record["points_this_run"] == 42 - done_before and record["points_done"] == 42

    reference = write_job(tmp_path / "ref.yaml", {**job, "output": str(tmp_path / "ref.h5")})
    assert run_cli("llmpi.sweep", str(reference)).returncode == 0
    a, b = read_surface(tmp_path / "cut.h5"), read_surface(tmp_path / "ref.h5")
    assert a.complete
    for name in ("train_loss", "train_acc"):
        assert np.array_equal(a.values[name], b.values[name])


def test_worker_error_stops_everyone_with_its_traceback(fixture_data, tmp_path):
    job = job_dict(fixture_data, tmp_path / "err.h5", grid={"x": [-1.0, 1.0, 6], "y": [-1.0, 1.0, 6], "block": 2})
    path = write_job(tmp_path / "job.yaml", job)
    t0 = time.monotonic()
    result = run_cli("llmpi.sweep", str(path), ranks=3, env={"LLMPI_FAULT": "raise:rank=2:after=3"}, timeout=120)
    assert result.returncode == 1
    assert "rank 2 of 3 on" in result.stderr and "InjectedFault: injected fault after 3 points" in result.stderr
    assert "every point finished before the failure is kept" in result.stderr
    assert time.monotonic() - t0 < 60
    s = read_surface(tmp_path / "err.h5")
    assert 3 <= s.done.sum() < 36
    assert np.all(np.isfinite(s.values["train_loss"][s.done])) and np.all(np.isnan(s.values["train_loss"][~s.done]))
    dirs = read_directions(tmp_path / "err.h5")
    j, i = np.argwhere(s.done)[-1]
    assert s.values["train_loss"][j, i] == pytest.approx(brute_force(fixture_data, dirs, (s.x[i], s.y[j]))[0], rel=2e-5)


def test_one_dimensional_line_on_the_test_split(fixture_data, tmp_path):
    job = job_dict(
        fixture_data,
        tmp_path / "line.h5",
        grid={"x": [-0.5, 1.5, 9], "y": None, "block": 1},
        data={"split": "test", "subset": 50},
    )
    path = write_job(tmp_path / "job.yaml", job)
    result = run_cli("llmpi.sweep", str(path), ranks=3)
    assert result.returncode == 0, result.stderr
    s = read_surface(tmp_path / "line.h5")
    assert s.y is None and s.values["test_loss"].shape == (9,) and s.complete and "train_loss" not in s.values
    (dx,) = read_directions(tmp_path / "line.h5")
    for i in (0, 2, 8):
        loss, acc = brute_force(fixture_data, [dx], (s.x[i],), subset=50, split="test")
        assert s.values["test_loss"][i] == pytest.approx(loss, rel=2e-5)
        assert s.values["test_acc"][i] == pytest.approx(acc, abs=1e-9)


def test_more_ranks_than_points_is_refused(fixture_data, tmp_path):
    job = job_dict(fixture_data, tmp_path / "tiny.h5", grid={"x": [0.0, 1.0, 2], "y": None})
    result = run_cli("llmpi.sweep", str(write_job(tmp_path / "job.yaml", job)), ranks=3)
    assert result.returncode == 2
    assert "3 ranks for a grid of 2 points" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "tiny.h5").exists()


def test_a_resumed_sweep_follows_the_forward_path_its_file_was_made_with(fixture_data, tmp_path):
    """The file records how its creating run computed (batch size, folding, compiling); a resumed run with those
    keys left at auto computes the same way, so it gives the bits an uninterrupted run gives."""
    grid = {"x": [-1.0, 1.0, 4], "y": [-1.0, 1.0, 3], "block": 2}
    job = write_job(tmp_path / "job.yaml", job_dict(fixture_data, tmp_path / "s.h5", grid=grid))
    ref = write_job(tmp_path / "ref.yaml", job_dict(fixture_data, tmp_path / "ref.h5", grid=grid))
    folded = ["--set", "runtime.fold=true", "--set", "data.batch_size=24"]
    killed = run_cli("llmpi.sweep", str(job), *folded, env={"LLMPI_FAULT": "kill:stage=done:after=2"})
    assert killed.returncode != 0 and 0 < read_surface(tmp_path / "s.h5").done.sum() < 12
    resumed = run_cli("llmpi.sweep", str(job))  # fold and batch size back at auto
    assert resumed.returncode == 0, resumed.stderr
    setup = read_run_info(tmp_path / "s.h5")["setup"]
    assert setup["fold"] is True and setup["batch_size"] == 24 and "as the run that created the file" in setup["tuning"]
    assert run_cli("llmpi.sweep", str(ref), *folded).returncode == 0
    a, b = read_surface(tmp_path / "s.h5"), read_surface(tmp_path / "ref.h5")
    assert a.complete and all(np.array_equal(a.values[k], b.values[k]) for k in a.values)

"""Faults of the machine, not of the process: a full disk, a read-only file system, an output directory that
vanishes. Each gives one error that says what happened to which path and what to do (exit status 74 on the
command line), and loses nothing: the file is as it was, or as a kill would leave it, and a rerun once the disk is
fixed resumes. On real small tmpfs mounts (root only: elsewhere these tests skip, saying why)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, Fixture, job_dict, run_cli, write_job
from diskkit import PAGE, Disk, punch_nan_pages
from mpilaunch import env as launch_env
from mpilaunch import mpirun

from llmpi import status
from llmpi.file.atomic import atomic_replace
from llmpi.file.grid import Grid
from llmpi.file.store import SurfaceStore, read_run_info, read_surface, write_attrs, write_run_info
from llmpi.job.errors import DiskError, disk_error

NAMES = ["train_loss", "train_acc"]


@pytest.fixture
def disk(tmp_path):
    """``disk(size)`` mounts a tmpfs of ``size`` bytes under the test's directory; all are unmounted after."""
    mounted: list[Disk] = []

    def mount(size: int, name: str = "disk") -> Disk:
        mounted.append(Disk(tmp_path / name, size))
        return mounted[-1]

    yield mount
    for d in mounted:
        d.close()


def directions(entries: int = 20_000) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"conv.weight": rng.normal(size=entries).astype(np.float32)} for _ in range(2)]


def open_store(path: Path, grid: Grid, dirs=None) -> SurfaceStore:
    return SurfaceStore.open(path, grid, NAMES, {"format": 1}, "name: t\n", lambda: dirs or directions())


def block(start: int, stop: int) -> tuple[int, int, dict[str, np.ndarray]]:
    return start, stop, {"train_loss": np.arange(start, stop) + 0.25, "train_acc": np.full(stop - start, 50.0)}


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


# -- one helper for every whole-file write ------------------------------------------------------------------------


def test_atomic_replace_leaves_the_target_as_it_was_on_any_failure(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt  # even a signal's exception: the temporary file goes, the target stays

    with pytest.raises(KeyboardInterrupt):
        atomic_replace(target, half_then_fail)
    assert target.read_text() == "old" and temporaries(tmp_path) == []
    atomic_replace(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and temporaries(tmp_path) == []


def test_only_the_disks_errors_are_disk_errors(tmp_path):
    full = disk_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "a.h5", "creating", needed=3 << 20)
    assert isinstance(full, DiskError) and full.errno == errno.ENOSPC and full.filename == str(tmp_path / "a.h5")
    assert f"no space left on the device of {tmp_path} while creating {tmp_path / 'a.h5'}" in str(full)
    assert "needs about 3.0 MiB" in str(full) and "free space there" in str(full)
    assert "read-only file system" in str(disk_error(OSError(errno.EROFS, "x"), tmp_path / "a", "writing"))
    assert "quota" in str(disk_error(OSError(errno.EDQUOT, "x"), tmp_path / "a", "writing"))
    gone = disk_error(OSError(errno.ENOENT, "x"), tmp_path / "nothere" / "a", "writing")
    assert "vanished" in str(gone)
    assert disk_error(OSError(errno.ENOENT, "x"), tmp_path / "a", "writing") is None  # the directory is there
    assert disk_error(OSError(errno.EACCES, "x"), tmp_path / "a", "writing") is None  # permissions: not the disk
    assert disk_error(ValueError("x"), tmp_path / "a", "writing") is None
    # h5py reports a failed deferred write as a RuntimeError carrying HDF5's text
    h5 = RuntimeError("Unable to synchronously flush file (file write failed: errno = 28, error message = 'No space')")
    assert disk_error(h5, tmp_path / "a", "writing").errno == errno.ENOSPC


# -- the store on a real small disk -------------------------------------------------------------------------------


def test_full_disk_at_creation_is_one_error_and_leaves_no_file(disk):
    d = disk(128 * 1024)
    path = d.path / "s.h5"
    with pytest.raises(DiskError) as e:
        open_store(path, Grid.from_spec((-1, 1, 5), (-1, 1, 4)))  # the directions alone take 160 KB
    message = str(e.value)
    assert e.value.errno == errno.ENOSPC and f"while creating {path}" in message and "needs about 16" in message
    assert not path.exists() and temporaries(d.path) == []
    d.remount("size=1m")  # space freed: the same call now creates the file
    open_store(path, Grid.from_spec((-1, 1, 5), (-1, 1, 4))).close()
    assert read_surface(path).done.sum() == 0


def test_block_writes_on_a_full_disk_stop_and_keep_every_point_marked_done(disk):
    """A disk whose free space is gone and whose file needs new space for its values (punched holes, as on a
    copy-on-write or compressing file system): the write fails, the points marked done before stay, the file
    opens, and after space is freed the same points are written and the file completes."""
    d = disk(1 << 20)
    path = d.path / "s.h5"
    grid = Grid.from_spec((-1, 1, 40), (-1, 1, 30))  # 1200 points: value arrays of several pages
    store = open_store(path, grid)
    store.write([block(0, 100)])
    store.close()
    assert punch_nan_pages(path) >= 2
    d.fill()
    store = open_store(path, grid)
    with pytest.raises(DiskError) as e:
        store.write([block(100, 1200)])
    store.close()
    assert e.value.errno == errno.ENOSPC and "rerun the same command: it resumes" in str(e.value)
    s = read_surface(path)
    assert s.done.sum() == 100 and np.array_equal(s.values["train_loss"].ravel()[:100], np.arange(100) + 0.25)
    d.free()
    store = open_store(path, grid)
    assert np.array_equal(store.todo(), np.arange(100, 1200))
    store.write([block(100, 1200)])
    store.close()
    s = read_surface(path)
    assert s.complete and np.array_equal(s.values["train_loss"].ravel(), np.arange(1200) + 0.25)


def test_a_read_only_file_system_refuses_every_write_and_changes_nothing(disk, tmp_path):
    d = disk(1 << 20)
    path = d.path / "s.h5"
    grid = Grid.from_spec((-1, 1, 5), (-1, 1, 4))
    store = open_store(path, grid)
    store.write([block(0, 20)])
    store.close()
    before = path.read_bytes()
    d.remount("ro")
    with pytest.raises(DiskError, match="is on a read-only file system") as e:
        open_store(path, grid)  # a resume: refused at the writer's lock
    assert e.value.errno == errno.EROFS
    with pytest.raises(DiskError, match="read-only"):
        open_store(d.path / "new" / "s.h5", grid)  # a new output directory
    with pytest.raises(DiskError, match="read-only"):
        write_attrs(path, {"metrics": "{}"})
    with pytest.raises(OSError):
        write_run_info(path, {"state": "running"})
    assert path.read_bytes() == before


def test_an_output_removed_under_the_writer_stops_it(tmp_path):
    folder = tmp_path / "out"
    grid = Grid.from_spec((-1, 1, 5), (-1, 1, 4))
    store = open_store(folder / "s.h5", grid)
    store.write([block(0, 5)])
    shutil.rmtree(folder)
    with pytest.raises(DiskError, match="is gone while the sweep was writing it \\(its directory vanished\\)"):
        store.write([block(5, 10)])
    store.close()
    store = open_store(tmp_path / "s.h5", grid)
    store.write([block(0, 5)])
    os.replace(tmp_path / "s.h5", tmp_path / "moved.h5")  # replaced or moved away: the same
    with pytest.raises(DiskError, match="it was removed or replaced"):
        store.write([block(5, 10)])
    store.close()


def test_status_metrics_on_a_full_disk_print_them_and_leave_the_file(disk, capsys):
    d = disk(256 * 1024)
    path = d.path / "s.h5"
    grid = Grid.from_spec((-1, 1, 5), (-1, 1, 5))
    store = SurfaceStore.open(path, grid, NAMES, {"format": 1}, "name: t\n", lambda: directions(2000))
    X, Y = np.meshgrid(grid.x, grid.y)
    store.write([(0, 25, {"train_loss": (X**2 + Y**2).ravel(), "train_acc": np.full(25, 90.0)})])
    store.close()
    before = path.read_bytes()
    d.fill()
    code = status.main([str(path), "--metrics"])
    out, err = capsys.readouterr()
    assert code == 74 and "sharpness" in out  # the metrics are printed all the same
    assert err.count("llmpi: error:") == 1 and "metrics printed, not stored: no space left on the device" in err
    assert "Traceback" not in err and path.read_bytes() == before and temporaries(d.path) == []
    d.free()
    assert status.main([str(path), "--metrics"]) == 0
    assert "metrics" in read_surface(path).attrs


def test_training_on_a_full_disk_keeps_the_last_epoch_and_resumes_to_the_same_bits(
    fixture_data, disk, tmp_path, capsys
):
    import torch

    from llmpi import train

    def job(output: Path) -> Path:
        raw = {
            "name": "tiny",
            "model": {"arch": "resnet8"},
            "data": {"dataset": "cifar10", "root": str(fixture_data.root), "subset": 32},
            "train": {"epochs": 2, "batch_size": 16, "lr": 0.05},
            "output": str(output),
            "runtime": {"device": "cpu", "threads": 1},
        }
        return write_job(tmp_path / f"{output.parent.name}.yaml", raw)

    d = disk(1 << 20)
    assert train.main([str(job(tmp_path / "whole" / "net.pt"))]) == 0
    size = (tmp_path / "whole" / "net" / "resume.pt").stat().st_size
    d.remount(f"size={(size * 3 // 2) // PAGE * PAGE}")  # room for one resume state, not for its successor beside it
    capsys.readouterr()
    assert train.main([str(job(d.path / "net.pt"))]) == 74
    err = capsys.readouterr().err
    assert err.count("llmpi: error:") == 1 and "Traceback" not in err
    assert f"no space left on the device of {d.path / 'net'} while saving {d.path / 'net' / 'resume.pt'}" in err
    assert "training resumes from the last epoch saved" in err
    assert torch.load(d.path / "net" / "resume.pt", weights_only=True)["epoch"] == 1  # the last epoch saved, intact
    assert temporaries(d.path / "net") == []
    d.remount(f"size={4 * size}")
    assert train.main([str(job(d.path / "net.pt"))]) == 0
    assert "resuming from" in capsys.readouterr().out
    whole = torch.load(tmp_path / "whole" / "net.pt", weights_only=True)["state_dict"]
    resumed = torch.load(d.path / "net.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


# -- the real command line ----------------------------------------------------------------------------------------

TINY_ENV = {"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}  # python -m tinynet: the sweep, with arch tinynet known


@pytest.fixture(scope="module")
def tiny_checkpoint(fixture_data, tmp_path_factory) -> Fixture:
    """tinynet (tests/tinynet.py) at its initialisation: a network whose sweep costs almost nothing per point."""
    import tinynet
    import torch

    path = tmp_path_factory.mktemp("tinynet") / "tiny.pt"
    torch.manual_seed(0)
    torch.save({"state_dict": tinynet.TinyNet().state_dict()}, path)
    return Fixture(fixture_data.root, path, "tinynet")


def tiny_job(fx: Fixture, folder: Path, output: Path, **sections) -> Path:
    # batch and forward path fixed: two separate runs (the reference and the faulted one) compute the same bits
    job = job_dict(fx, output, data={"subset": 16, "batch_size": 16}, **sections)
    job["runtime"].update({"fold": False, "compile": False})
    return write_job(folder / f"{output.parent.name}.yaml", job)


def one_error(result: subprocess.CompletedProcess, code: int = 74) -> str:
    """The single error line of a run that failed the way a disk fault should."""
    assert result.returncode == code, result.stderr
    assert result.stderr.count("llmpi: error:") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("llmpi: warning:") <= 1, result.stderr  # the run record says so once at most
    return result.stderr[result.stderr.index("llmpi: error:") :]


@pytest.mark.mpi
def test_a_sweep_on_a_full_disk_stops_then_resumes_to_the_same_bits(tiny_checkpoint, disk, tmp_path):
    """The whole story on one small disk: too small to create the file; then the file created and a few blocks
    written before a kill; then the disk full while the sweep writes into space it must allocate; then
    read-only. Each stop is one error and exit 74, with every point marked done still the reference's value.
    Once the disk is writable and has room, the rerun finishes, bitwise equal to an uninterrupted sweep."""
    d = disk(16 * 1024)
    grid = {"x": [-1.0, 1.0, 33], "y": [-1.0, 1.0, 33], "block": 32}  # value arrays spanning several pages
    reference_job = tiny_job(tiny_checkpoint, tmp_path, tmp_path / "ref" / "s.h5", grid=grid)
    reference = subprocess.Popen(
        [sys.executable, "-m", "tinynet", str(reference_job)], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, **TINY_ENV, "LLMPI_OFFLINE": "1"},
    )  # fmt: skip
    out = d.path / "s.h5"
    job = tiny_job(tiny_checkpoint, tmp_path, out, grid=grid)

    error = one_error(run_cli("tinynet", str(job), env=TINY_ENV))  # the file does not fit at all
    assert f"no space left on the device of {d.path} while creating {out} (needs about" in error, error
    assert not out.exists() and temporaries(d.path) == []

    d.remount("size=1m")
    killed = run_cli("tinynet", str(job), env={**TINY_ENV, "LLMPI_FAULT": "kill:stage=done:after=3"})
    assert killed.returncode != 0
    before = read_surface(out).done.sum()
    assert before >= 64
    assert punch_nan_pages(out) >= 2  # the undone points' values now take new space when written
    d.fill()
    error = one_error(run_cli("tinynet", str(job), env=TINY_ENV))
    assert f"no space left on the device of {d.path} while writing computed points to {out}" in error, error
    assert "rerun the same command: it resumes, and every point marked done before is kept" in error
    stopped = read_surface(out)
    assert before < stopped.done.sum() < stopped.done.size and f"({stopped.done.sum()} of 1089 points done)" in error
    assert reference.wait(timeout=120) == 0, reference.stderr.read()
    ref = read_surface(tmp_path / "ref" / "s.h5")
    for name in NAMES:
        assert np.array_equal(stopped.values[name][stopped.done], ref.values[name][stopped.done]), name

    d.remount("ro")
    frozen = out.read_bytes()
    error = one_error(run_cli("tinynet", str(job), env=TINY_ENV))
    assert f"{d.path} is on a read-only file system (writing {out})" in error and "remount it read-write" in error
    assert out.read_bytes() == frozen

    d.remount("rw")
    d.free()
    result = run_cli("tinynet", str(job), env=TINY_ENV)
    assert result.returncode == 0, result.stderr
    done = read_surface(out)
    assert done.complete and all(np.array_equal(done.values[n], ref.values[n]) for n in NAMES)
    assert read_run_info(out)["state"] == "complete" and temporaries(d.path) == []


@pytest.mark.mpi
def test_output_directory_removed_under_a_running_sweep(tiny_checkpoint, tmp_path):
    """mpirun -n 2: the directory goes while blocks are being written; the sweep notices at its next write and
    stops, every rank with status 74, instead of computing on into a file nobody can open again."""
    folder = tmp_path / "out"
    job = tiny_job(tiny_checkpoint, tmp_path, folder / "s.h5", grid={"x": [-1.0, 1.0, 8], "y": [-1.0, 1.0, 8]})
    env = launch_env({**TINY_ENV, "LLMPI_FAULT": "slow:seconds=0.1"})
    cmd = [*mpirun(2), sys.executable, "-m", "tinynet", str(job)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if read_surface(folder / "s.h5").done.sum() >= 4:
                break
        except Exception:  # not created yet
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before the directory could be removed"
    shutil.rmtree(folder)
    removed = time.monotonic()
    stdout, stderr = proc.communicate(timeout=60)
    error = one_error(subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr))
    assert f"the output {folder / 's.h5'} is gone while the sweep was writing it (its directory vanished)" in error
    assert time.monotonic() - removed < 20

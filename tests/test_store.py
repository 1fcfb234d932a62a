"""The surface file: layout, resume, refusal of other jobs' files, one writer, and writes that touch nothing but
preallocated raw data (the basis of the crash-safety guarantee)."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from llmpi.file.grid import Grid
from llmpi.file.store import SurfaceStore, WriterLock, read_surface
from llmpi.job.errors import StoreError

FP = {"format": 1, "arch": "resnet8", "grid": {"x": [-1, 1, 5], "y": [0, 2, 3]}, "directions": {"seed": 1}}


def directions():
    rng = np.random.default_rng(0)
    return [
        {"conv1.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "linear.bias": np.zeros(10, np.float32)}
        for _ in range(2)
    ]


def open_store(path, fp=FP, grid=None, restart=False):
    grid = grid or Grid.from_spec((-1, 1, 5), (0, 2, 3))
    return SurfaceStore.open(
        path, grid, ["train_loss", "train_acc"], fp, "name: t\n", directions, restart=restart, attrs={"arch": "r8"}
    )


def test_layout_is_the_papers(tmp_path):
    store = open_store(tmp_path / "s.h5")
    store.write([(3, 9, {"train_loss": np.arange(3, 9) + 0.5, "train_acc": np.full(6, 50.0)})])
    store.close()
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert np.array_equal(f["xcoordinates"][()], np.linspace(-1, 1, 5))
        assert np.array_equal(f["ycoordinates"][()], np.linspace(0, 2, 3))
        loss = f["train_loss"][()]
        assert loss.shape == (3, 5) and loss.dtype == np.float64 and f["train_acc"].shape == (3, 5)
        # flat index k is [k // nx, k % nx]: point (x[k % nx], y[k // nx])
        assert loss[0, 3] == 3.5 and loss[1, 0] == 5.5 and loss[1, 3] == 8.5 and np.isnan(loss[1, 4])
        assert f["done"][()].sum() == 6 and f["done"][0, 3] == 1 and f["done"][1, 4] == 0
        assert f["directions/x/conv1.weight"].dtype == np.float32
        assert f.attrs["job"] == "name: t\n" and json.loads(f.attrs["fingerprint_fields"]) == FP
        assert "llmpi_version" in f.attrs and f.attrs["arch"] == "r8"


def test_resume_keeps_done_points_and_directions(tmp_path):
    store = open_store(tmp_path / "s.h5")
    first = store.directions()
    store.write([(0, 4, {"train_loss": np.ones(4), "train_acc": np.ones(4)})])
    store.close()
    store = SurfaceStore.open(
        tmp_path / "s.h5",
        Grid.from_spec((-1, 1, 5), (0, 2, 3)),
        ["train_loss", "train_acc"],
        FP,
        "",
        lambda: pytest.fail("directions must not be regenerated on resume"),
    )
    assert np.array_equal(store.todo(), np.arange(4, 15))
    again = store.directions()
    assert all(np.array_equal(first[i][k], again[i][k]) for i in range(2) for k in first[i])
    store.close()


def test_another_jobs_file_is_refused_with_the_differences(tmp_path):
    open_store(tmp_path / "s.h5").close()
    before = (tmp_path / "s.h5").read_bytes()
    other = {**FP, "grid": {"x": [-0.5, 0.5, 5], "y": [0, 2, 3]}, "arch": "resnet20"}
    with pytest.raises(StoreError) as e:
        open_store(tmp_path / "s.h5", fp=other)
    assert "arch: file 'resnet8', job 'resnet20'" in str(e.value)
    assert "grid.x: file [-1, 1, 5], job [-0.5, 0.5, 5]" in str(e.value) and "--restart" in str(e.value)
    assert (tmp_path / "s.h5").read_bytes() == before
    open_store(tmp_path / "s.h5", fp=other, restart=True).close()
    assert json.loads(h5py.File(tmp_path / "s.h5", "r").attrs["fingerprint_fields"])["arch"] == "resnet20"


def test_not_hdf5_and_foreign_hdf5_are_refused_untouched(tmp_path):
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(StoreError, match="not an HDF5 file"):
        open_store(tmp_path / "text.h5")
    assert (tmp_path / "text.h5").read_text() == "hello"
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["data"] = np.ones(3)
    with pytest.raises(StoreError, match="did not write"):
        open_store(tmp_path / "foreign.h5")


def test_unwritable_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if __import__("os").access(ro, __import__("os").W_OK):
            pytest.skip("running as a user who can write anywhere (root): permission bits are not enforced")
        with pytest.raises(StoreError, match="not writable"):
            open_store(ro / "s.h5")
    finally:
        ro.chmod(0o700)


def test_block_writes_touch_only_preallocated_raw_data(tmp_path):
    """Every byte outside the value/done datasets' raw storage is identical before and after writes: a kill at
    any moment can tear values (not yet marked done), never HDF5 metadata."""
    path = tmp_path / "s.h5"
    open_store(path).close()
    before = path.read_bytes()
    with h5py.File(path, "r") as f:
        regions = [(f[n].id.get_offset(), f[n].id.get_storage_size()) for n in ("train_loss", "train_acc", "done")]
    assert all(offset is not None for offset, _ in regions)  # contiguous and allocated at creation
    store = open_store(path)
    store.write(
        [
            (0, 7, {"train_loss": np.arange(7.0), "train_acc": np.arange(7.0)}),
            (9, 15, {"train_loss": np.ones(6), "train_acc": np.ones(6)}),
        ]
    )
    store.close()
    after = path.read_bytes()
    assert len(after) == len(before)
    mask = np.ones(len(before), bool)
    for offset, size in regions:
        mask[offset : offset + size] = False
    b, a = np.frombuffer(before, np.uint8), np.frombuffer(after, np.uint8)
    assert np.array_equal(b[mask], a[mask])
    assert not np.array_equal(b[~mask], a[~mask])


def test_one_writer_and_readers_while_writing(tmp_path):
    path = tmp_path / "s.h5"
    store = open_store(path)
    store.write([(0, 2, {"train_loss": np.ones(2), "train_acc": np.ones(2)})])
    assert WriterLock.is_held(path)
    with pytest.raises(StoreError, match=r"another live sweep \(host .*, pid \d+"):
        open_store(path)
    # a reader in another process, while the writer holds the file open
    code = f"from llmpi.file.store import read_surface; s = read_surface({str(path)!r}); print(int(s.done.sum()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "2", out.stderr
    surface = read_surface(path)
    assert surface.values["train_loss"][0, 0] == 1.0 and not surface.complete
    store.close()
    assert not WriterLock.is_held(path)


def test_stale_lock_from_a_dead_process_does_not_block(tmp_path):
    path = tmp_path / "s.h5"
    code = (
        f"import os; from llmpi.file.store import WriterLock; from pathlib import Path; "
        f"WriterLock(Path({str(path)!r})).acquire(Path({str(path)!r})); os._exit(9)"
    )
    subprocess.run([sys.executable, "-c", code], timeout=60)
    assert json.loads((tmp_path / "s.h5.lock").read_text())["pid"] > 0  # the dead holder's note is still there
    open_store(path).close()


def test_one_dimensional_file(tmp_path):
    grid = Grid.from_spec((-1, 1, 7), None)
    store = SurfaceStore.open(tmp_path / "l.h5", grid, ["test_loss", "test_acc"], FP, "", lambda: directions()[:1])
    store.write([(2, 5, {"test_loss": np.array([1.0, 2.0, 3.0]), "test_acc": np.zeros(3)})])
    store.close()
    s = read_surface(tmp_path / "l.h5")
    assert s.y is None and s.values["test_loss"].shape == (7,) and s.values["test_loss"][3] == 2.0
    with h5py.File(tmp_path / "l.h5", "r") as f:
        assert "ycoordinates" not in f and "y" not in f["directions"]


def test_a_file_without_a_dataset_this_job_writes_is_refused_saying_what_to_do(tmp_path):
    """E.g. a Hessian file from before eig_converged and eig_residual were stored: resumable only anew."""
    open_store(tmp_path / "s.h5").close()
    grid = Grid.from_spec((-1, 1, 5), (0, 2, 3))
    with pytest.raises(StoreError, match="has no dataset 'eig_converged', which this llmpi writes for this job") as e:
        SurfaceStore.open(tmp_path / "s.h5", grid, ["train_loss", "train_acc", "eig_converged"], FP, "", directions)
    assert "pass --restart to compute it anew" in str(e.value)

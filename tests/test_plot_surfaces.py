"""Surface files for the plotting tests, written with h5py in the layout of the store (no sweep runs), and the
check that this layout is what ``llmpi.file.store.read_surface`` reads.

The landscape is an analytic bowl, so every expected value comes from the formula, never from the plotting code:

    loss(α, β) = LOSS0 + (α - A0)² + (β - B0)²          accuracy(α, β) = 100 - 40·((α - A0)² + (β - B0)²), ≥ 10
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from llmpi.file.store import read_surface

LOSS0 = 0.25
A0, B0 = 0.4, -0.2  # the bowl's minimum: a grid point of the default grid, away from θ* at the origin

JOB = """name: bowl
model: {arch: resnet8, checkpoint: bowl.pt}
data: {dataset: synthetic, root: data, split: train, subset: 64, seed: 0, batch_size: auto}
directions: {kind: random, seed: 0, norm: filter, ignore: biasbn, type: weights}
grid:
  x: [-1.0, 1.0, 51]
  y: [-1.0, 1.0, 51]
  block: auto
output: bowl.h5
runtime: {device: auto, threads: auto}
"""


def bowl_loss(a, b=0.0, a0: float = A0, b0: float = B0):
    return LOSS0 + (np.asarray(a) - a0) ** 2 + (np.asarray(b) - b0) ** 2


def bowl_acc(a, b=0.0, a0: float = A0, b0: float = B0):
    return np.clip(100.0 - 40.0 * ((np.asarray(a) - a0) ** 2 + (np.asarray(b) - b0) ** 2), 10.0, 100.0)


def write_surface(
    path: Path,
    x: np.ndarray,
    y: np.ndarray | None,
    values: dict[str, np.ndarray],
    done: np.ndarray | None = None,
    synthetic: bool = True,
    arch: str = "resnet8",
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """A surface file as the store writes it: values NaN where not done, done as uint8, directions, attributes."""
    shape = (len(x),) if y is None else (len(y), len(x))
    done = np.ones(shape, bool) if done is None else done.astype(bool)
    split = next(iter(values)).split("_", 1)[0]
    with h5py.File(path, "w") as f:
        f.create_dataset("xcoordinates", data=np.asarray(x, np.float64))
        if y is not None:
            f.create_dataset("ycoordinates", data=np.asarray(y, np.float64))
        for name, v in values.items():
            assert v.shape == shape, (name, v.shape, shape)
            f.create_dataset(name, data=np.where(done, v, np.nan).astype(np.float64))
        f.create_dataset("done", data=done.astype(np.uint8))
        for axis in "xy"[: len(shape)]:
            f.create_dataset(f"directions/{axis}/conv1.weight", data=np.ones((4, 3, 3, 3), np.float32))
        for name, v in (extra or {}).items():
            f.create_dataset(name, data=v)
        f.attrs["job"] = JOB
        fields = {"arch": arch, "grid": {"x": [float(x[0]), float(x[-1]), len(x)]}}
        f.attrs["fingerprint"] = "0" * 64
        f.attrs["fingerprint_fields"] = json.dumps(fields, sort_keys=True)
        f.attrs["llmpi_version"] = "0.1.0"
        f.attrs["dataset"] = ("SYNTHETIC data (not CIFAR-10)" if synthetic else "CIFAR-10") + ", train split, 64 images"
        f.attrs["synthetic"] = synthetic
        f.attrs["arch"] = arch
        f.attrs["split"] = split
        f.attrs["images"] = 64
    return path


def bowl_file(path: Path, n: int = 51, lo: float = -1.0, hi: float = 1.0, done=None, a0=A0, b0=B0, **kw) -> Path:
    """The 2D bowl on an n×n grid over [lo, hi]², train loss and accuracy."""
    x = np.linspace(lo, hi, n)
    y = np.linspace(lo, hi, n)
    A, B = np.meshgrid(x, y)
    values = {"train_loss": bowl_loss(A, B, a0, b0), "train_acc": bowl_acc(A, B, a0, b0)}
    return write_surface(path, x, y, values, done, **kw)


def partial_done(n: int, rows: int) -> np.ndarray:
    """The first ``rows`` rows of an n×n grid computed (a sweep goes in row-major order), plus one more point."""
    done = np.zeros((n, n), bool)
    done[:rows] = True
    done[rows, 0] = True
    return done


def line_file(path: Path, n: int = 41, a0: float = 0.0, **kw) -> Path:
    """A 1D landscape along α in [-1, 1] with train and test values."""
    x = np.linspace(-1.0, 1.0, n)
    values = {
        "train_loss": bowl_loss(x, 0.0, a0, 0.0),
        "train_acc": bowl_acc(x, 0.0, a0, 0.0),
        "test_loss": bowl_loss(x, 0.0, a0, 0.0) + 0.3,
        "test_acc": bowl_acc(x, 0.0, a0, 0.0) - 5.0,
    }
    return write_surface(path, x, None, values, **kw)


# -- the fixture layout is the store's layout ---------------------------------------------------------------------


def test_bowl_file_reads_back_through_the_store(tmp_path):
    path = bowl_file(tmp_path / "bowl.h5", n=11)
    s = read_surface(path)
    assert s.y is not None and s.x.shape == (11,) and s.y.shape == (11,)
    assert set(s.values) == {"train_loss", "train_acc"}
    j, i = np.unravel_index(np.argmin(s.values["train_loss"]), (11, 11))
    assert (s.x[i], s.y[j]) == pytest.approx((A0, B0))
    assert s.values["train_loss"][j, i] == pytest.approx(LOSS0)
    assert s.complete and s.attrs["synthetic"] and s.attrs["arch"] == "resnet8"


def test_partial_and_1d_files_read_back(tmp_path):
    s = read_surface(bowl_file(tmp_path / "p.h5", n=11, done=partial_done(11, 4)))
    assert int(s.done.sum()) == 45 and not s.complete
    assert np.isnan(s.values["train_loss"][~s.done]).all() and np.isfinite(s.values["train_loss"][s.done]).all()
    line = read_surface(line_file(tmp_path / "l.h5"))
    assert line.y is None and line.values["test_acc"].shape == (41,)


def test_unknown_datasets_do_not_disturb_reading(tmp_path):
    extra = {"max_eig": np.zeros((11, 11)), "trajectory/x": np.zeros(5), "trajectory/y": np.zeros(5)}
    s = read_surface(bowl_file(tmp_path / "e.h5", n=11, extra=extra))
    # grid-shaped datasets are values (eigenvalue maps among them); others (a trajectory) are not
    assert set(s.values) == {"train_loss", "train_acc", "max_eig"}

"""The surface file: the only code that writes it, and the one way to read it.

    store = SurfaceStore.open("surfaces/vgg56.h5", grid, "train", fingerprint, job_yaml, make_directions)
    store.write([(start, stop, {"loss": ..., "acc": ...}), ...])      # rank 0 only
    surface = read_surface("surfaces/vgg56.h5")                           # anyone, any time

Layout (compatible with the paper's plotting scripts): ``xcoordinates`` (nx,), ``ycoordinates`` (ny,) float64;
value datasets (``<split>_loss``, ``<split>_acc``, ...) float64 of shape (ny, nx) -- ``[j, i]`` is the point
(x[i], y[j]) -- or (nx,) in 1D, NaN where not computed; ``done`` uint8, the only record of what is computed;
``directions/x/<entry>``, ``directions/y/<entry>`` float32; root attributes ``job`` (resolved YAML), ``fingerprint`` and
``fingerprint_fields`` (what determines the values), ``llmpi_version``. A file whose directions are stored as a
recipe (``directions.store: recipe``, ``llmpi.recipe``) has the root attribute ``directions_store = "recipe"`` and,
instead of ``directions/``, the group ``recipe/``: ``recipe/recipe`` (uint8, the UTF-8 JSON of the generator and one
record per entry), ``recipe/table`` (float64, the generator's quantile table), ``recipe/scales/x`` and
``recipe/scales/y`` (float32, the per-filter scales of every entry, one after the other). :func:`materialise`
writes a copy that holds the directions too (``directions/``, attribute ``materialised``); its recipe stays.
Datasets that describe the directions rather than the grid (``model_coordinates`` of a plane,
``explained_variance_ratio`` and ``trajectory/x``, ``trajectory/y`` of a PCA plane) are written with the
directions, listed in the root attribute ``extras`` and read as ``Surface.extras``, never as values.
``python -m llmpi.status --metrics`` adds the root attribute ``metrics`` (JSON) through :func:`write_attrs`, only
while no sweep holds the file.

Crash safety, by construction rather than by luck:

1. The file's whole structure (every dataset, attribute and direction, raw storage allocated) is written once,
   to a temporary file that is fsync'd and then renamed over the target. A kill during creation leaves the old
   file or none, never half a file.
2. After that the sweep only overwrites bytes inside the preallocated contiguous raw data of the value and
   ``done`` datasets (no chunk index, no attribute, no timestamp changes; ``test_store`` checks every other byte
   of the file stays identical). HDF5 metadata is never rewritten, so a kill at any instant, even mid-write,
   leaves a file that opens.
3. A block's values are written and fsync'd before its ``done`` flags are written and fsync'd. A point marked
   done therefore always holds its final value; a point whose values were cut short is not marked done and is
   computed again (to the same bits) on resume.

One writer per file: the writer holds an exclusive ``flock`` on ``<file>.lock`` (host and pid inside), released
by the kernel when the process dies, so a stale lock never blocks a resume. HDF5's own file locking is not used
(``locking=False``): readers can open the file while a sweep writes it, and nobody needs
HDF5_USE_FILE_LOCKING=FALSE.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .errors import StoreError
from .faults import NONE as NO_FAULTS
from .faults import Faults
from .grid import Grid, slabs

NOT_VALUES = ("xcoordinates", "ycoordinates", "done")


def fingerprint_digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


class WriterLock:
    """An exclusive flock on ``<file>.lock`` naming its holder; the kernel drops it when the holder dies."""

    def __init__(self, path: Path) -> None:
        self.path = lock_path(path)
        self.fd: int | None = None

    @staticmethod
    def holder(path: Path) -> dict:
        try:
            return json.loads(lock_path(path).read_text() or "{}")
        except (OSError, ValueError):
            return {}

    @staticmethod
    def is_held(path: Path) -> bool:
        """Whether a live process holds the writer lock of ``path`` (a shared probe, released at once)."""
        try:
            fd = os.open(lock_path(path), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(fd)
        return False

    def acquire(self, target: Path) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"cannot create {self.path} ({e.strerror}); is {self.path.parent} writable?") from None
        for attempt in range(20):  # a reader's probe holds a shared lock for microseconds: retry briefly
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 19:
                    os.close(fd)
                    who = self.holder(target)
                    raise StoreError(
                        f"{target} is being written by another live sweep (host {who.get('host', '?')}, pid "
                        f"{who.get('pid', '?')}, since {who.get('since', '?')}); wait for it, stop it, or choose "
                        f"another output (--set output=...)"
                    ) from None
                time.sleep(0.05)
            except OSError as e:
                if e.errno in (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    break  # this filesystem has no locks (e.g. Lustre without -o flock): carry on unprotected
                raise
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (unlinking it would race a new writer)
            self.fd = None


def run_info_path(path: Path) -> Path:
    return path.with_name(path.name + ".run.json")


def write_run_info(path: str | Path, info: dict) -> None:
    """Replace ``<file>.run.json`` (what the last/current run is doing) atomically: readers see old or new."""
    target = run_info_path(Path(path))
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, target)


def read_run_info(path: str | Path) -> dict | None:
    try:
        return json.loads(run_info_path(Path(path)).read_text())
    except (OSError, ValueError):
        return None


@dataclass
class Planned:
    """What rank 0 decides once, when the file is created: the directions, and datasets that describe them
    (``{"model_coordinates": array, "trajectory/x": array, ...}``) with their attributes (``{dataset: {...}}``)."""

    directions: Sequence[dict[str, np.ndarray]]
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    extra_attrs: dict[str, dict] = field(default_factory=dict)
    recipe: dict[str, np.ndarray] | None = None  # instead of directions: the arrays of llmpi.recipe.Recipe.to_arrays


@dataclass
class Surface:
    """What a surface file holds, as numpy arrays (``values`` keyed by dataset name, e.g. 'train_loss'; ``extras``
    the non-grid datasets that describe the directions, e.g. 'model_coordinates', 'trajectory/x')."""

    path: Path
    x: np.ndarray
    y: np.ndarray | None
    values: dict[str, np.ndarray]
    done: np.ndarray
    attrs: dict = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    extra_attrs: dict[str, dict] = field(default_factory=dict)
    _directions: list[dict[str, np.ndarray]] | None = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def directions(self) -> list[dict[str, np.ndarray]]:
        """The stored directions, x (then y), ``{entry name: float32 array}``: read on first use, since they are
        as large as the network and most readers (status, plots) never need them. A file that stores only the
        recipe of its directions raises a StoreError saying how to write them out (``materialise``)."""
        if self._directions is None:
            self._directions = read_directions(self.path)
        return self._directions

    @property
    def direction_store(self) -> str:
        """ "recipe" when the file stores how to make its directions (``recipe``), else "full"."""
        return "recipe" if self.attrs.get("directions_store") == "recipe" else "full"

    @property
    def recipe(self) -> dict[str, np.ndarray] | None:
        """The arrays of the directions' recipe (``llmpi.recipe.Recipe.from_arrays``), or None for a full file."""
        return read_recipe(self.path) if self.direction_store == "recipe" else None


def read_directions(path: str | Path) -> list[dict[str, np.ndarray]]:
    """The directions of a surface file, x first (one for a 1D file), each ``{entry name: float32 array}``."""
    path = Path(path)
    try:
        f = h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        raise StoreError(f"{path} does not exist") from None
    except OSError as e:
        raise StoreError(f"{path} is not a readable HDF5 file ({e})") from None
    with f:
        if "directions" not in f:
            if "recipe" in f:
                raise StoreError(
                    f"{path} stores the recipe of its directions, not the directions themselves (directions.store: "
                    f"recipe); write them out with: python -m llmpi.directions materialise {path} -o FULL.h5"
                )
            raise StoreError(f"{path} holds no directions (not written by llmpi)")
        group = f["directions"]
        return [{name: ds[()] for name, ds in group[axis].items()} for axis in "xy" if axis in group]


def _recipe_arrays(f: h5py.File) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    f["recipe"].visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def read_recipe(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a file's directions recipe (``recipe/...``, names relative to the group)."""
    path = Path(path)
    try:
        f = h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        raise StoreError(f"{path} does not exist") from None
    except OSError as e:
        raise StoreError(f"{path} is not a readable HDF5 file ({e})") from None
    with f:
        if "recipe" not in f:
            raise StoreError(f"{path} stores its directions in full, not as a recipe")
        return _recipe_arrays(f)


def check_materialise_target(path: str | Path, out: str | Path) -> None:
    """Refuse, before any work, an output that is the recipe file itself, exists, or has no directory."""
    path, out = Path(path), Path(out)
    if path.resolve() == out.resolve():
        raise StoreError(f"-o {out} is the recipe file itself; name another file")
    if out.exists():
        raise StoreError(f"-o {out} exists; remove it or name another file")
    if not out.parent.is_dir():
        raise StoreError(f"-o {out}: the directory {out.parent} does not exist")


def materialise(
    path: str | Path,
    out: str | Path,
    shapes: Sequence[tuple[str, tuple[int, ...]]],
    axes: int,
    pieces: Callable[[int, str], Iterable[tuple[int, np.ndarray]]],
) -> Path:
    """Write a copy of the recipe file ``path`` to ``out`` holding its directions in full as well.

    ``shapes``: every entry (name, shape) in order; ``pieces(axis, name)`` yields (first row, float32 array of whole
    rows along dim 0) covering the entry, so no direction is ever held whole. The copy is written to a temporary
    file, fsync'd and renamed to ``out``: a kill leaves no half file. Values, ``done``, attributes and the recipe are
    copied as they are; the attribute ``materialised`` marks it.
    """
    path, out = Path(path), Path(out)
    check_materialise_target(path, out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        try:
            shutil.copyfile(path, tmp)
        except OSError as e:
            raise StoreError(f"cannot write {tmp} ({e.strerror}); is {out.parent} writable?") from None
        with h5py.File(tmp, "r+", locking=False) as f:
            if "recipe" not in f:
                raise StoreError(f"{path} stores its directions in full already; nothing to materialise")
            if "directions" in f:
                del f["directions"]
            group = f.create_group("directions", track_order=True)
            for axis in "xy"[:axes]:
                sub = group.create_group(axis, track_order=True)
                for name, shape in shapes:
                    ds = sub.create_dataset(name, shape=shape, dtype=np.float32, track_times=False)
                    for row, values in pieces("xy".index(axis), name):
                        if len(shape) == 0:
                            ds[()] = values.reshape(())
                        else:
                            ds[row : row + values.shape[0]] = values
            f.attrs["materialised"] = True
            f.flush()
            os.fsync(f.id.get_vfd_handle())
        os.replace(tmp, out)
        _fsync_dir(out.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return out


def read_surface(path: str | Path) -> Surface:
    """Read a surface file, also while a sweep is writing it (never blocks or disturbs the writer)."""
    path = Path(path)
    try:
        f = h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        raise StoreError(f"{path} does not exist") from None
    except OSError as e:
        raise StoreError(f"{path} is not a readable HDF5 file ({e})") from None
    with f:
        if "xcoordinates" not in f:
            raise StoreError(f"{path} is not a surface file (no 'xcoordinates' dataset)")
        x = f["xcoordinates"][()]
        y = f["ycoordinates"][()] if "ycoordinates" in f else None
        shape = (len(x),) if y is None else (len(y), len(x))
        extra_names = json.loads(f.attrs.get("extras", "[]"))
        extras = {k: f[k][()] for k in extra_names if k in f}
        extra_attrs = {k: {a: _attr(v) for a, v in f[k].attrs.items()} for k in extras}
        values = {
            k: f[k][()]
            for k in f
            if isinstance(f[k], h5py.Dataset) and k not in NOT_VALUES and k not in extras and f[k].shape == shape
        }
        if "done" in f:
            done = f["done"][()].astype(bool)
        else:  # a file from the paper's code: no mask, so a finite value is the only evidence
            first = next(iter(values.values()), np.full(shape, np.nan))
            done = np.isfinite(first)
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
    return Surface(path, x, y, values, done, attrs, extras, extra_attrs)


def _attr(value: object) -> object:
    """An HDF5 attribute as plain Python: bytes decoded, arrays of strings as lists of str."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in value.tolist()]
    return value


def write_attrs(path: str | Path, attrs: dict) -> None:
    """Add or replace root attributes of a finished (or stopped) surface file, never under a live sweep.

    Takes the writer lock (refused, naming the holder, while a sweep writes the file), then writes a copy with the
    new attributes and renames it over the file: a kill leaves the old file or the new one, never a file whose
    HDF5 metadata was half rewritten. Values, ``done`` and directions are copied byte for byte.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path} does not exist")
    lock = WriterLock(path)
    lock.acquire(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        try:
            shutil.copyfile(path, tmp)
        except OSError as e:
            raise StoreError(f"cannot write next to {path} ({e.strerror}); is {path.parent} writable?") from None
        try:
            f = h5py.File(tmp, "r+", locking=False)
        except OSError as e:
            raise StoreError(f"{path} is not a writable HDF5 file ({e})") from None
        with f:
            if "xcoordinates" not in f:
                raise StoreError(f"{path} is not a surface file (no 'xcoordinates' dataset)")
            for key, value in attrs.items():
                f.attrs[key] = value
            f.flush()
            os.fsync(f.id.get_vfd_handle())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        lock.release()


class SurfaceStore:
    """The single writer of one surface file (rank 0 only)."""

    def __init__(self, path: Path, file: h5py.File, grid: Grid, names: Sequence[str], lock: WriterLock) -> None:
        self.path, self.f, self.grid, self.names, self.lock = path, file, grid, tuple(names), lock
        self.faults: Faults = NO_FAULTS  # the fault tests set this to kill the writer inside a write
        self._datasets = {n: file[n] for n in self.names}
        self._done = file["done"]
        self._fd = file.id.get_vfd_handle()

    # -- opening --------------------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        grid: Grid,
        names: Sequence[str],
        fingerprint: dict,
        job_yaml: str,
        make_directions: Callable[[], Sequence[dict[str, np.ndarray]] | Planned],
        restart: bool = False,
        attrs: dict | None = None,
    ) -> SurfaceStore:
        """Open the file to resume it, or create it; refuse another job's file, a locked file, a non-HDF5 file.

        ``make_directions`` is called only when the file is created; it returns the directions, or a
        :class:`Planned` with the datasets that describe them.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create the output directory {path.parent} ({e.strerror}); set output to a writable place"
            ) from None
        if not os.access(path.parent, os.W_OK):
            raise StoreError(f"the output directory {path.parent} is not writable; set output to a writable place")
        if path.exists() and not path.is_file():
            raise StoreError(f"output {path} exists and is not a file; choose another output")
        lock = WriterLock(path)
        lock.acquire(path)
        try:
            if path.exists() and not restart:
                cls._check(path, grid, names, fingerprint)
            else:
                planned = make_directions()
                if not isinstance(planned, Planned):
                    planned = Planned(planned)
                cls._create(path, grid, names, fingerprint, job_yaml, planned, attrs or {})
            file = h5py.File(path, "r+", locking=False)
        except BaseException:
            lock.release()
            raise
        return cls(path, file, grid, names, lock)

    @staticmethod
    def _check(path: Path, grid: Grid, names: Sequence[str], fingerprint: dict) -> None:
        try:
            f = h5py.File(path, "r", locking=False)
        except OSError:
            raise StoreError(
                f"output {path} exists but is not an HDF5 file; move it away, choose another output "
                f"(--set output=...), or pass --restart to overwrite it"
            ) from None
        with f:
            theirs = f.attrs.get("fingerprint_fields")
            if theirs is None:
                raise StoreError(
                    f"output {path} is an HDF5 file that llmpi did not write; choose another output "
                    f"(--set output=...) or pass --restart to overwrite it"
                )
            theirs = json.loads(theirs)
            if theirs != fingerprint:
                diff = _differences(theirs, fingerprint)
                raise StoreError(
                    f"output {path} holds another job's surface ({'; '.join(diff)}). Choose another output "
                    f"(--set output=...), or pass --restart to start it anew (its computed points are lost)"
                )
            if f.attrs.get("directions_store") == "recipe" and "recipe/recipe" not in f:
                raise StoreError(f"output {path} is damaged: its directions' recipe is missing; pass --restart")
            for name in ("done", *names):
                if name not in f or f[name].shape != grid.shape:
                    raise StoreError(
                        f"output {path} is damaged: dataset {name!r} missing or not of shape {grid.shape}; "
                        f"pass --restart"
                    )

    @staticmethod
    def _create(
        path: Path,
        grid: Grid,
        names: Sequence[str],
        fingerprint: dict,
        job_yaml: str,
        planned: Planned,
        attrs: dict,
    ) -> None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with h5py.File(tmp, "w", libver="earliest", locking=False) as f:
                f.create_dataset("xcoordinates", data=np.asarray(grid.x, dtype=np.float64), track_times=False)
                if grid.y is not None:
                    f.create_dataset("ycoordinates", data=np.asarray(grid.y, dtype=np.float64), track_times=False)
                for name in names:  # writing the NaNs now allocates the contiguous storage the sweep overwrites
                    f.create_dataset(name, data=np.full(grid.shape, np.nan), track_times=False)
                f.create_dataset("done", data=np.zeros(grid.shape, np.uint8), track_times=False)
                if planned.recipe is not None:  # how to make the directions, not the directions
                    for name, value in planned.recipe.items():
                        f.create_dataset(f"recipe/{name}", data=np.asarray(value), track_times=False)
                    f.attrs["directions_store"] = "recipe"
                else:
                    group = f.create_group("directions", track_order=True)
                    for axis, direction in zip("xy", planned.directions):
                        sub = group.create_group(axis, track_order=True)
                        for name, value in direction.items():
                            sub.create_dataset(name, data=np.asarray(value, dtype=np.float32), track_times=False)
                for name, value in planned.extras.items():
                    if name in f or name in names:
                        raise AssertionError(f"extra dataset {name!r} collides with the file's own datasets")
                    ds = f.create_dataset(name, data=np.asarray(value), track_times=False)
                    for key, a in planned.extra_attrs.get(name, {}).items():
                        ds.attrs[key] = a
                if planned.extras:
                    f.attrs["extras"] = json.dumps(list(planned.extras))
                f.attrs["job"] = job_yaml
                f.attrs["fingerprint"] = fingerprint_digest(fingerprint)
                f.attrs["fingerprint_fields"] = json.dumps(fingerprint, sort_keys=True)
                f.attrs["llmpi_version"] = __version__
                for key, value in attrs.items():
                    f.attrs[key] = value
                f.flush()
                os.fsync(f.id.get_vfd_handle())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    # -- state ----------------------------------------------------------------------------------------------------

    def done_mask(self) -> np.ndarray:
        return self._done[()].astype(bool)

    def todo(self) -> np.ndarray:
        """Flat indices (row-major) of the points not yet computed."""
        return np.flatnonzero(~self.done_mask().ravel())

    def directions(self) -> list[dict[str, np.ndarray]]:
        """The stored directions (none when the file stores a recipe: see ``recipe``)."""
        if "directions" not in self.f:
            return []
        group = self.f["directions"]
        return [{name: ds[()] for name, ds in group[axis].items()} for axis in "xy" if axis in group]

    def recipe(self) -> dict[str, np.ndarray] | None:
        """The arrays of the directions' recipe, or None when the file stores the directions themselves."""
        return _recipe_arrays(self.f) if self.f.attrs.get("directions_store") == "recipe" else None

    # -- writing --------------------------------------------------------------------------------------------------

    def _sync(self) -> None:
        self.f.flush()
        os.fsync(self._fd)

    def write(self, blocks: Sequence[tuple[int, int, dict[str, np.ndarray]]]) -> None:
        """Store computed blocks ``(start, stop, {dataset name: array})``: values first, then their done flags."""
        if not blocks:
            return
        shape = self.grid.shape
        self.faults.in_write("start")
        for start, stop, values in blocks:
            for v, ds in self._datasets.items():
                data = np.asarray(values[v], dtype=np.float64)
                assert data.shape == (stop - start,), (v, data.shape, start, stop)
                for index, part in slabs(shape, start, stop):
                    ds[index] = _region(data[part], index)
                self.faults.in_write("values")
        self._sync()
        self.faults.in_write("between")
        ones = np.ones(max(stop - start for start, stop, _ in blocks), np.uint8)
        for start, stop, _ in blocks:
            for index, part in slabs(shape, start, stop):
                self._done[index] = _region(ones[: part.stop - part.start], index)
        self.faults.in_write("done")
        self._sync()

    def close(self) -> None:
        try:
            if self.f.id.valid:
                self.f.close()
        finally:
            self.lock.release()


def _region(flat: np.ndarray, index: tuple) -> np.ndarray:
    """A slab's values in the shape of the array region ``index`` selects: whole rows, or part of one row."""
    if len(index) == 2 and isinstance(index[0], slice):
        return flat.reshape(index[0].stop - index[0].start, -1)
    return flat


def _differences(theirs: dict, ours: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(key), ours.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, name + "."))
        elif a != b:
            out.append(f"{name}: file {a!r}, job {b!r}")
    return out

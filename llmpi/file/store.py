"""The surface file: the only code that writes it, and the one way to read it.

    store = SurfaceStore.open("surfaces/vgg56.h5", grid, "train", fingerprint, job_yaml, make_directions)
    store.write([(start, stop, {"loss": ..., "acc": ...}), ...])      # rank 0 only
    surface = read_surface("surfaces/vgg56.h5")                           # anyone, any time

Layout (compatible with the paper's plotting scripts): ``xcoordinates`` (nx,), ``ycoordinates`` (ny,) float64;
value datasets (``<split>_loss``, ``<split>_acc``, ...) float64 of shape (ny, nx) -- ``[j, i]`` is the point
(x[i], y[j]) -- or (nx,) in 1D, NaN where not computed; ``done`` uint8, the only record of what is computed;
``directions/x/<entry>``, ``directions/y/<entry>`` float32; root attributes ``job`` (resolved YAML), ``fingerprint`` and
``fingerprint_fields`` (what determines the values), ``llmpi_version``. A file whose directions are stored as a
recipe (``directions.store: recipe``, ``llmpi.space.recipe``) has the root attribute ``directions_store = "recipe"``
and, instead of ``directions/``, the group ``recipe/``: ``recipe/recipe`` (uint8, the UTF-8 JSON of the generator and
one record per entry), ``recipe/table`` (float64, the generator's quantile table), ``recipe/scales/x`` and
``recipe/scales/y`` (float32, the per-filter scales of every entry, one after the other). :func:`materialise`
writes a copy that holds the directions too (``directions/``, attribute ``materialised``); its recipe stays.
Datasets that describe the directions rather than the grid (``model_coordinates`` of a plane,
``explained_variance_ratio`` and ``trajectory/x``, ``trajectory/y`` of a PCA plane) are written with the
directions, listed in the root attribute ``extras`` and read as ``Surface.extras``, never as values.
``python -m llmpi.status --metrics`` adds the root attribute ``metrics`` (JSON) through :func:`write_attrs`, only
while no sweep holds the file.

Crash safety, by construction rather than by luck:

1. The file's whole structure (every dataset, attribute and direction, raw storage allocated) is built in
   memory and written once, to a temporary file that is fsync'd and then renamed over the target
   (:func:`llmpi.file.atomic.atomic_replace`). A kill or a full disk during creation leaves the old file or none, never
   half a file.
2. After that the sweep only overwrites bytes inside the preallocated contiguous raw data of the value and
   ``done`` datasets, with ``pwrite`` on its own descriptor (no chunk index, no attribute, no timestamp changes;
   ``test_store`` checks every other byte of the file stays identical). HDF5 metadata is never rewritten, so a
   kill at any instant, even mid-write, leaves a file that opens.
3. A block's values are written and fsync'd before its ``done`` flags are written and fsync'd. A point marked
   done therefore always holds its final value; a point whose values were cut short is not marked done and is
   computed again (to the same bits) on resume.
4. A failing disk is an error of its own, :class:`~llmpi.job.errors.DiskError`, saying what happened to which path
   and what to do: no space or quota, a read-only file system, an I/O error, or the file or its directory
   removed under the sweep (checked before every block write). By 2 and 3 the file is then as a kill would
   leave it, and a rerun once the disk is fixed resumes. The preallocation also means that on an ordinary file
   system (not copy-on-write or compressing) a disk that fills up after creation never stops a sweep.

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
import io
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

from ..job.errors import DiskError, StoreError, disk_error
from ..job.version import __version__
from .atomic import atomic_replace
from .grid import Grid

NOT_VALUES = ("xcoordinates", "ycoordinates", "done")


def fingerprint_digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


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
            writable = f"is {self.path.parent} writable?"
            disk = disk_error(e, self.path, "creating the writer's lock")
            raise disk or StoreError(f"cannot create {self.path} ({e.strerror}); {writable}") from None
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
        # The note only names the holder in messages; the flock is the lock. On a full disk a resume needs no new
        # space (the surface file is preallocated), so a note that cannot be written must not stop it.
        with contextlib.suppress(OSError):
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
    """Replace ``<file>.run.json`` (what the last/current run is doing) atomically: readers see old or new.

    Raises OSError (a :class:`DiskError` when the disk is to blame) if it cannot be written; the sweep then
    carries on without it, since progress reporting must never stop a sweep."""
    text = json.dumps(info, indent=1)
    atomic_replace(run_info_path(Path(path)), lambda tmp: tmp.write_text(text))


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
    attrs: dict = field(default_factory=dict)  # root attributes decided with the directions (e.g. ``computed``)
    recipe: dict[str, np.ndarray] | None = (
        None  # instead of directions: the arrays of llmpi.space.recipe.Recipe.to_arrays
    )


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
        """The arrays of the directions' recipe (``llmpi.space.recipe.Recipe.from_arrays``), or None for a full file."""
        return read_recipe(self.path) if self.direction_store == "recipe" else None


def _open_to_read(path: Path) -> h5py.File:
    """``path`` opened read-only without HDF5's file locking, so a reader never blocks or disturbs the sweep writing
    it; a missing or unreadable file is a StoreError that says which."""
    try:
        return h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        raise StoreError(f"{path} does not exist") from None
    except OSError as e:
        raise StoreError(f"{path} is not a readable HDF5 file ({e})") from None


def read_directions(path: str | Path) -> list[dict[str, np.ndarray]]:
    """The directions of a surface file, x first (one for a 1D file), each ``{entry name: float32 array}``."""
    path = Path(path)
    with _open_to_read(path) as f:
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
    with _open_to_read(path) as f:
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

    def write(tmp: Path) -> None:
        shutil.copyfile(path, tmp)
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

    try:
        atomic_replace(out, write)
    except OSError as e:
        disk = disk_error(e, out, "writing", then="free space and run the command again")
        if disk is not None:
            raise disk from None
        raise StoreError(f"cannot write {out} ({e.strerror}); is {out.parent} writable?") from None
    return out


def read_surface(path: str | Path) -> Surface:
    """Read a surface file, also while a sweep is writing it (never blocks or disturbs the writer)."""
    path = Path(path)
    with _open_to_read(path) as f:
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

    Takes the writer lock (refused, naming the holder, while a sweep writes the file), sets the attributes on a
    copy of the file in memory and writes that over the file (:func:`llmpi.file.atomic.atomic_replace`): a kill or a
    full disk leaves the old file or the new one, never a file whose HDF5 metadata was half rewritten. Values, ``done``
    and directions are copied byte for byte. A failing disk raises :class:`DiskError`, the file untouched.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path} does not exist")
    lock = WriterLock(path)
    lock.acquire(path)
    try:
        image = io.BytesIO(path.read_bytes())
        try:
            f = h5py.File(image, "r+", locking=False)
        except OSError as e:
            raise StoreError(f"{path} is not a writable HDF5 file ({e})") from None
        with f:
            if "xcoordinates" not in f:
                raise StoreError(f"{path} is not a surface file (no 'xcoordinates' dataset)")
            for key, value in attrs.items():
                f.attrs[key] = value
        atomic_replace(path, lambda tmp: tmp.write_bytes(image.getbuffer()))
    except OSError as e:
        disk = disk_error(e, path, "rewriting", then="rerun the command (the file is as it was)")
        raise disk or StoreError(f"cannot write next to {path} ({e.strerror}); is {path.parent} writable?") from None
    finally:
        lock.release()


def writable_output(path: Path, key: str) -> None:
    """Make ``path``'s directory and check that a file can be written there, before its lock is taken: each
    failure one message naming the job ``key`` to change (a failing disk as ``DiskError``)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise disk_error(e, path, "creating the directory of") or StoreError(
            f"cannot create the output directory {path.parent} ({e.strerror}); set {key} to a writable place"
        ) from None
    if not os.access(path.parent, os.W_OK):
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            raise disk_error(OSError(errno.EROFS, "read-only"), path, "writing" if path.exists() else "creating")
        raise StoreError(f"the output directory {path.parent} is not writable; set {key} to a writable place")
    if path.exists() and not path.is_file():
        raise StoreError(f"output {path} exists and is not a file; choose another {key}")


class SurfaceStore:
    """The single writer of one surface file (rank 0 only).

    After creation, HDF5 is only read: the value and ``done`` arrays are contiguous, allocated and uncompressed,
    so a block is written with ``os.pwrite`` straight into their bytes on a descriptor of our own. HDF5 would
    buffer such writes (its sieve buffer) and report a full disk only when it flushes -- and then again while
    closing the file, and at interpreter exit, where a full disk was seen to crash the process. Our own writes
    fail at the write, with the ``errno``, and leave HDF5 nothing to flush.
    """

    def __init__(self, path: Path, file: h5py.File, fd: int, grid: Grid, names: Sequence[str], lock: WriterLock):
        self.path, self.f, self.grid, self.names, self.lock = path, file, grid, tuple(names), lock
        # called at each stage of a block write (start, values, between, done): the fault tests kill the writer
        # there (llmpi.ranks.faults); a no-op otherwise
        self.at_stage: Callable[[str], None] = lambda stage: None
        self._fd = fd
        self._raw = {n: _raw_region(path, file, n, grid.shape) for n in (*self.names, "done")}

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
        :class:`Planned` with the datasets that describe them. A failing disk raises :class:`DiskError`.
        """
        path = Path(path)
        writable_output(path, "output")
        lock = WriterLock(path)
        lock.acquire(path)
        fd = None
        try:
            if path.exists() and not restart:
                cls._check(path, grid, names, fingerprint)
            else:
                planned = make_directions()
                if not isinstance(planned, Planned):
                    planned = Planned(planned)
                cls._create(path, grid, names, fingerprint, job_yaml, planned, attrs or {})
            try:
                fd = os.open(path, os.O_RDWR)
                file = h5py.File(path, "r", locking=False)
            except OSError as e:
                disk = disk_error(e, path, "opening")
                if disk is None:
                    raise
                raise disk from None
            return cls(path, file, fd, grid, names, lock)
        except BaseException:
            if fd is not None:
                os.close(fd)
            lock.release()
            raise

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
                if name not in f:
                    raise StoreError(
                        f"output {path} has no dataset {name!r}, which this llmpi writes for this job (the file is "
                        f"from llmpi {_attr(f.attrs.get('llmpi_version', '?'))}); pass --restart to compute it "
                        f"anew, or choose another output"
                    )
                if f[name].shape != grid.shape:
                    raise StoreError(
                        f"output {path} is damaged: dataset {name!r} is not of shape {grid.shape}; pass --restart"
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
        """Build the whole file in memory, then write its bytes through :func:`llmpi.file.atomic.atomic_replace`: HDF5
        never writes to the disk itself, so a full disk is one OSError from our write, never a half-flushed HDF5
        file (which fails again at close and at exit)."""
        with h5py.File(f"{path.name}.image", "w", driver="core", backing_store=False, libver="earliest") as f:
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
            for key, value in {**attrs, **planned.attrs}.items():
                f.attrs[key] = value
            f.flush()
            image = f.id.get_file_image()
        try:
            atomic_replace(path, lambda tmp: tmp.write_bytes(image))
        except OSError as e:
            disk = disk_error(e, path, "creating", needed=len(image))
            if disk is None:
                raise
            raise disk from None

    # -- state ----------------------------------------------------------------------------------------------------

    def done_mask(self) -> np.ndarray:
        return self._read("done").astype(bool)

    def todo(self) -> np.ndarray:
        """Flat indices (row-major) of the points not yet computed."""
        return np.flatnonzero(~self.done_mask().ravel())

    def attr(self, name: str) -> object:
        """A root attribute of the file (None where it has none), as plain Python."""
        value = self.f.attrs.get(name)
        return None if value is None else _attr(value)

    def directions(self) -> list[dict[str, np.ndarray]]:
        """The stored directions (none when the file stores a recipe: see ``recipe``)."""
        if "directions" not in self.f:
            return []
        group = self.f["directions"]
        return [{name: ds[()] for name, ds in group[axis].items()} for axis in "xy" if axis in group]

    def _read(self, name: str) -> np.ndarray:
        """A value array or the done mask as it is on disk now (read past HDF5, which may cache raw data)."""
        offset, dtype = self._raw[name]
        size = self.grid.size * dtype.itemsize
        data = os.pread(self._fd, size, offset)
        assert len(data) == size, f"{self.path} ends inside dataset {name!r}"
        return np.frombuffer(data, dtype).reshape(self.grid.shape)

    def recipe(self) -> dict[str, np.ndarray] | None:
        """The arrays of the directions' recipe, or None when the file stores the directions themselves."""
        return _recipe_arrays(self.f) if self.f.attrs.get("directions_store") == "recipe" else None

    # -- writing --------------------------------------------------------------------------------------------------

    def _check_in_place(self) -> None:
        """Refuse to write into a file that is no longer at its path (the file or its directory was removed or
        replaced under the sweep): every point would go to an inode nobody can open again."""
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            here = None
        mine = os.fstat(self._fd)
        if here is None or (here.st_dev, here.st_ino) != (mine.st_dev, mine.st_ino):
            gone = "its directory vanished" if not self.path.parent.is_dir() else "it was removed or replaced"
            raise DiskError(
                errno.ENOENT,
                f"the output {self.path} is gone while the sweep was writing it ({gone}), and the points it held "
                f"with it; rerun the same command to start it anew (or put the file back first to resume it)",
                str(self.path),
            )

    def _put(self, name: str, start: int, values: np.ndarray) -> None:
        """Write ``values`` over the flat range [start, start + len) of a dataset's raw bytes."""
        offset, dtype = self._raw[name]
        data = memoryview(np.ascontiguousarray(values, dtype=dtype)).cast("B")
        at = offset + start * dtype.itemsize
        while len(data):
            n = os.pwrite(self._fd, data, at)
            data, at = data[n:], at + n

    def write(self, blocks: Sequence[tuple[int, int, dict[str, np.ndarray]]]) -> None:
        """Store computed blocks ``(start, stop, {dataset name: array})``: values first, then their done flags.

        A failing disk (full, read-only, vanished, I/O error) raises :class:`DiskError` and leaves the file as
        consistent as a kill would: a point is marked done only once its values were written and fsync'd, so every
        point marked done before stays valid, and a point cut short is computed again on resume.
        """
        if not blocks:
            return
        try:
            self._check_in_place()
            self._write(blocks)
        except OSError as e:
            disk = disk_error(e, self.path, "writing computed points to", then=_RESUME)
            if disk is None:
                raise
            raise disk from None

    def _write(self, blocks: Sequence[tuple[int, int, dict[str, np.ndarray]]]) -> None:
        self.at_stage("start")
        for start, stop, values in blocks:
            for name in self.names:
                data = np.asarray(values[name], dtype=np.float64)
                assert data.shape == (stop - start,), (name, data.shape, start, stop)
                self._put(name, start, data)
                self.at_stage("values")
        self._sync()
        self.at_stage("between")
        ones = np.ones(max(stop - start for start, stop, _ in blocks), np.uint8)
        for start, stop, _ in blocks:
            self._put("done", start, ones[: stop - start])
        self.at_stage("done")
        self._sync()

    def _sync(self) -> None:
        """The bytes written so far on disk (values before flags: see the module docstring)."""
        os.fsync(self._fd)

    def close(self) -> None:
        try:
            if self.f.id.valid:
                self.f.close()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        finally:
            self.lock.release()


_RESUME = "rerun the same command: it resumes, and every point marked done before is kept"


def _raw_region(path: Path, f: h5py.File, name: str, shape: tuple[int, ...]) -> tuple[int, np.dtype]:
    """(byte offset, dtype) of a dataset's raw data, which the store overwrites in place: it must be contiguous,
    allocated and unfiltered -- as the store creates it -- or the file is not one this store can resume."""
    ds = f[name]
    offset = ds.id.get_offset()
    contiguous = ds.id.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS
    if not contiguous or offset is None or ds.id.get_storage_size() != ds.size * ds.dtype.itemsize:
        raise StoreError(f"output {path}: dataset {name!r} is not stored as llmpi stores it; pass --restart")
    assert ds.shape == shape, (name, ds.shape, shape)
    return offset, ds.dtype


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

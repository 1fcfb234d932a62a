"""The spectrum file: the only code that writes it, and the one way to read it.

    store = SpectrumStore.open("spectra/resnet20.h5", layout, fingerprint, job_yaml, attrs)   # rank 0 only
    store.put("trace/samples", values, at=12); store.sync(); store.put("trace/done", ones, at=12); store.sync()
    spectrum = read_spectrum("spectra/resnet20.h5")                                            # anyone, any time

What ``python -m llmpi.spectrum`` computes at θ*, in one HDF5 file (root attribute ``kind = "spectrum"``; names
meant to be read from any script). n is the number of parameters the Hessian is over, E the number of parameter
entries (tensors) among them, K = top + bottom eigenpairs, P the probe cap, R × m the density's runs × steps,
G its grid's points. Float datasets are float64, NaN until written.

* ``parameters/names`` (E,) the entries' names, in the order of every flat vector; ``parameters/sizes`` (E,) int64;
  ``parameters/names`` carries the attribute ``shapes`` (JSON);
* ``topk/values`` (K,): the ``top`` largest eigenvalues descending, then the ``bottom`` most negative ascending
  (the group's attributes ``top`` and ``bottom``, also root attributes ``topk_top``, ``topk_bottom``);
  ``topk/vectors`` (K, n) the unit eigenvectors; ``topk/products`` (K, n) H·v of each; ``topk/residuals`` (K,)
  ‖Hv − λv‖ measured; ``topk/converged`` (K,) uint8; ``topk/hvps`` (1,) int64 the products spent; ``topk/done``
  (1,) uint8;
* ``trace/basis`` (D, n), ``trace/basis_values`` (D,), ``trace/basis_count`` (1,) int64: the trace's deflation
  space, the D Ritz vectors of largest |θ| of the top-k's final Lanczos basis (written with the top-k; rows past
  the count are zero), and ``trace/basis_products`` (D, n) H·q of each (``trace/basis_done`` (1,) uint8);
* ``trace/samples`` (P,) probe p's sample (zᵀHz, of the projected probe when the trace is deflated);
  ``trace/entries`` (P, E) its terms per entry; ``trace/done`` (P,) uint8; ``trace/exact`` (1,) and
  ``trace/exact_entries`` (E,) the deflated part's exact share (0 when not deflated; ``trace/exact_done`` (1,)
  uint8); then, once the stopping rule is met, ``trace/value`` and ``trace/se`` (1,), ``trace/layers`` and
  ``trace/layers_se`` (E,), ``trace/running_mean`` and ``trace/running_se`` (P,) (the estimate after 1, 2, ...
  probes), and last ``trace/used`` (1,) int64, the probes the estimate uses (0 before);
* ``density/nodes`` and ``density/weights`` (R, m) each run's Gauss quadrature (NaN beyond ``density/steps`` (R,)
  int64 when a run stopped early), ``density/done`` (R,) uint8; once every run is done, ``density/grid`` and
  ``density/values`` (G,), ``density/sigma`` (1,), and last ``density/complete`` (1,) uint8.

Crash safety as for surfaces (``llmpi.file.store``): the whole structure is built in memory and written once
through ``atomic_replace``; afterwards only the preallocated, contiguous bytes of the datasets are overwritten
with ``pwrite``, and a unit's values are fsync'd before its done flag. A kill -9 at any instant leaves a file that
opens and resumes at the last finished unit (an eigenpair set, a probe, a run). One writer: an exclusive ``flock``
on ``<file>.lock``, as for surfaces; readers never lock.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..job.errors import DiskError, StoreError, disk_error
from ..job.version import __version__
from .atomic import atomic_replace
from .store import WriterLock, fingerprint_digest, writable_output

KIND = "spectrum"
ANALYSES = ("topk", "trace", "density")


@dataclass(frozen=True)
class Entries:
    """The parameter entries the Hessian is over, in the order of every flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> list[int]:
        return [int(np.prod(s, dtype=np.int64)) for s in self.shapes]

    @property
    def n(self) -> int:
        return sum(self.sizes)


@dataclass(frozen=True)
class Layout:
    """What a spectrum file holds: the analyses and their sizes (decided when it is created)."""

    entries: Entries
    top: int = 0
    bottom: int = 0
    probes: int = 0  # the trace's probe cap (0: no trace)
    runs: int = 0  # the density's runs (0: no density)
    steps: int = 0
    points: int = 0  # the density's grid
    deflate: int = 0  # the trace's deflation vectors (0: plain Hutchinson)

    @property
    def analyses(self) -> list[str]:
        present = {"topk": self.top + self.bottom > 0, "trace": self.probes > 0, "density": self.runs > 0}
        return [a for a in ANALYSES if present[a]]

    def datasets(self) -> dict[str, tuple[tuple[int, ...], np.dtype, float]]:
        """Every preallocated dataset: name -> (shape, dtype, initial value)."""
        n, e = self.entries.n, len(self.entries.names)
        f8, i8, u1 = np.dtype(np.float64), np.dtype(np.int64), np.dtype(np.uint8)
        out: dict[str, tuple[tuple[int, ...], np.dtype, float]] = {}
        k = self.top + self.bottom
        if k:
            out |= {
                "topk/values": ((k,), f8, np.nan),
                "topk/residuals": ((k,), f8, np.nan),
                "topk/converged": ((k,), u1, 0),
                "topk/vectors": ((k, n), f8, np.nan),
                "topk/products": ((k, n), f8, np.nan),
                "topk/hvps": ((1,), i8, 0),
                "topk/done": ((1,), u1, 0),
            }
        if self.probes:
            p = self.probes
            out |= {
                "trace/samples": ((p,), f8, np.nan),
                "trace/entries": ((p, e), f8, np.nan),
                "trace/done": ((p,), u1, 0),
                "trace/exact": ((1,), f8, np.nan),
                "trace/exact_entries": ((e,), f8, np.nan),
                "trace/exact_done": ((1,), u1, 0),
                "trace/value": ((1,), f8, np.nan),
                "trace/se": ((1,), f8, np.nan),
                "trace/layers": ((e,), f8, np.nan),
                "trace/layers_se": ((e,), f8, np.nan),
                "trace/running_mean": ((p,), f8, np.nan),
                "trace/running_se": ((p,), f8, np.nan),
                "trace/used": ((1,), i8, 0),
            }
            if self.deflate:
                d = self.deflate
                out |= {
                    "trace/basis": ((d, n), f8, np.nan),
                    "trace/basis_values": ((d,), f8, np.nan),
                    "trace/basis_count": ((1,), i8, 0),
                    "trace/basis_products": ((d, n), f8, np.nan),
                    "trace/basis_done": ((1,), u1, 0),
                }
        if self.runs:
            r, m, g = self.runs, self.steps, self.points
            out |= {
                "density/nodes": ((r, m), f8, np.nan),
                "density/weights": ((r, m), f8, np.nan),
                "density/steps": ((r,), i8, 0),
                "density/done": ((r,), u1, 0),
                "density/grid": ((g,), f8, np.nan),
                "density/values": ((g,), f8, np.nan),
                "density/sigma": ((1,), f8, np.nan),
                "density/complete": ((1,), u1, 0),
            }
        return out

    def size_bytes(self) -> int:
        return sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype, _ in self.datasets().values())


class SpectrumStore:
    """The single writer of one spectrum file (rank 0 only): reads and overwrites its preallocated datasets."""

    def __init__(self, path: Path, file: h5py.File, fd: int, layout: Layout, lock: WriterLock) -> None:
        self.path, self.f, self.layout, self.lock, self._fd = path, file, layout, lock, fd
        self._raw = {name: _raw_region(path, file, name) for name in layout.datasets()}
        # called at each stage of a commit (start, values, between, done): the fault tests kill the writer there
        # (llmpi.ranks.faults); a no-op otherwise
        self.at_stage: Callable[[str], None] = lambda stage: None

    @classmethod
    def open(
        cls,
        path: str | Path,
        layout: Layout,
        fingerprint: dict,
        job_yaml: str,
        attrs: dict | None = None,
        restart: bool = False,
    ) -> SpectrumStore:
        """Open the file to resume it, or create it; refuse another job's file, a locked file, a non-HDF5 file."""
        path = Path(path)
        writable_output(path, "spectrum.output")
        lock = WriterLock(path)
        lock.acquire(path)
        fd = None
        try:
            if path.exists() and not restart:
                _check(path, layout, fingerprint)
            else:
                _create(path, layout, fingerprint, job_yaml, attrs or {})
            try:
                fd = os.open(path, os.O_RDWR)
                file = h5py.File(path, "r", locking=False)
            except OSError as e:
                raise disk_error(e, path, "opening") or e from None
            return cls(path, file, fd, layout, lock)
        except BaseException:
            if fd is not None:
                os.close(fd)
            lock.release()
            raise

    def attr(self, name: str) -> object:
        value = self.f.attrs.get(name)
        return None if value is None else _plain(value)

    def read(self, name: str) -> np.ndarray:
        """A dataset as it is on disk now (read past HDF5's cache)."""
        offset, dtype, shape = self._raw[name]
        size = int(np.prod(shape)) * dtype.itemsize
        data = os.pread(self._fd, size, offset)
        assert len(data) == size, f"{self.path} ends inside dataset {name!r}"
        return np.frombuffer(data, dtype).reshape(shape).copy()

    def put(self, name: str, values: np.ndarray, at: int = 0) -> None:
        """Write ``values`` into dataset ``name`` from its row ``at`` on (whole rows, row-major), unsynced."""
        offset, dtype, shape = self._raw[name]
        data = np.ascontiguousarray(values, dtype=dtype)
        row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        assert data.size % row == 0 and at * row + data.size <= int(np.prod(shape)), (name, data.shape, at, shape)
        view = memoryview(data.reshape(-1)).cast("B")
        where = offset + at * row * dtype.itemsize
        try:
            self._check_in_place()
            while len(view):
                written = os.pwrite(self._fd, view, where)
                view, where = view[written:], where + written
        except OSError as e:
            raise disk_error(e, self.path, "writing results to", then=_RESUME) or e from None

    def sync(self) -> None:
        """What was put so far on disk: a unit's values before its done flag."""
        try:
            os.fsync(self._fd)
        except OSError as e:
            raise disk_error(e, self.path, "writing results to", then=_RESUME) or e from None

    def commit(self, values: dict[str, tuple[np.ndarray, int]], flags: dict[str, tuple[np.ndarray, int]]) -> None:
        """Write ``values`` ({dataset: (array, row)}), fsync, then ``flags`` the same way, fsync: a crash leaves
        either the flags unset (the unit is computed again) or everything in place."""
        self.at_stage("start")
        for name, (array, row) in values.items():
            self.put(name, array, row)
            self.at_stage("values")
        self.sync()
        self.at_stage("between")
        for name, (array, row) in flags.items():
            self.put(name, array, row)
        self.at_stage("done")
        self.sync()

    def _check_in_place(self) -> None:
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            here = None
        mine = os.fstat(self._fd)
        if here is None or (here.st_dev, here.st_ino) != (mine.st_dev, mine.st_ino):
            raise DiskError(
                errno.ENOENT,
                f"the output {self.path} is gone while it was being written (removed or replaced); rerun the same "
                f"command to start it anew (or put the file back first to resume it)",
                str(self.path),
            )

    def close(self) -> None:
        try:
            if self.f.id.valid:
                self.f.close()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        finally:
            self.lock.release()


_RESUME = "rerun the same command: it resumes, and every finished probe, run and eigenpair set is kept"


def _create(path: Path, layout: Layout, fingerprint: dict, job_yaml: str, attrs: dict) -> None:
    with h5py.File(f"{path.name}.image", "w", driver="core", backing_store=False, libver="earliest") as f:
        names = f.create_dataset(
            "parameters/names", data=np.array(layout.entries.names, dtype=h5py.string_dtype()), track_times=False
        )
        names.attrs["shapes"] = json.dumps([list(s) for s in layout.entries.shapes])
        f.create_dataset("parameters/sizes", data=np.asarray(layout.entries.sizes, np.int64), track_times=False)
        for name, (shape, dtype, fill) in layout.datasets().items():
            f.create_dataset(name, data=np.full(shape, fill, dtype=dtype), track_times=False)
        if layout.top + layout.bottom:
            f["topk"].attrs["top"] = layout.top
            f["topk"].attrs["bottom"] = layout.bottom
            f.attrs["topk_top"], f.attrs["topk_bottom"] = layout.top, layout.bottom
        f.attrs["kind"] = KIND
        f.attrs["analyses"] = json.dumps(layout.analyses)
        f.attrs["parameters"] = layout.entries.n
        f.attrs["job"] = job_yaml
        f.attrs["fingerprint"] = fingerprint_digest(fingerprint)
        f.attrs["fingerprint_fields"] = json.dumps(fingerprint, sort_keys=True)
        f.attrs["llmpi_version"] = __version__
        for key, value in attrs.items():
            f.attrs[key] = value
        f.flush()
        image = f.id.get_file_image()
    try:
        atomic_replace(path, lambda tmp: tmp.write_bytes(image))
    except OSError as e:
        raise disk_error(e, path, "creating", needed=len(image)) or e from None


def _check(path: Path, layout: Layout, fingerprint: dict) -> None:
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError:
        raise StoreError(
            f"output {path} exists but is not an HDF5 file; move it away, choose another spectrum.output, or pass "
            f"--restart to overwrite it"
        ) from None
    with f:
        if _plain(f.attrs.get("kind", "")) != KIND:
            raise StoreError(
                f"output {path} is not a spectrum file (a surface?); choose another spectrum.output or pass --restart "
                "to overwrite it"
            )
        theirs = json.loads(_plain(f.attrs["fingerprint_fields"]))
        if theirs != fingerprint:
            diff = _differences(theirs, fingerprint)
            raise StoreError(
                f"output {path} holds another job's spectrum ({'; '.join(diff)}). Choose another spectrum.output "
                f"(--set spectrum.output=...), or pass --restart to start it anew (what it holds is lost)"
            )
        for name, (shape, dtype, _) in layout.datasets().items():
            if name not in f or f[name].shape != shape or f[name].dtype != dtype:
                raise StoreError(f"output {path} is damaged: dataset {name!r} is missing or reshaped; pass --restart")


def _raw_region(path: Path, f: h5py.File, name: str) -> tuple[int, np.dtype, tuple[int, ...]]:
    ds = f[name]
    offset = ds.id.get_offset()
    contiguous = ds.id.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS
    if not contiguous or offset is None or ds.id.get_storage_size() != ds.size * ds.dtype.itemsize:
        raise StoreError(f"output {path}: dataset {name!r} is not stored as llmpi stores it; pass --restart")
    return offset, ds.dtype, ds.shape


def _differences(theirs: dict, ours: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(key), ours.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: file {a!r}, job {b!r}")
    return out


def _plain(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ----------------------------------------------------------------------------------------------------------------
# Reading


@dataclass
class Spectrum:
    """What a spectrum file holds, as numpy arrays; ``values`` keyed by dataset name ('trace/samples', ...), the
    eigenvectors and their products left out (read them with :func:`read_eigenvectors`)."""

    path: Path
    attrs: dict
    entries: Entries
    values: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def analyses(self) -> list[str]:
        return list(json.loads(self.attrs.get("analyses", "[]")))

    def get(self, name: str) -> np.ndarray | None:
        return self.values.get(name)

    @property
    def topk_done(self) -> bool:
        return bool(self.values.get("topk/done", np.zeros(1))[0])

    @property
    def trace_used(self) -> int:
        return int(self.values.get("trace/used", np.zeros(1))[0])

    @property
    def density_complete(self) -> bool:
        return bool(self.values.get("density/complete", np.zeros(1))[0])


LARGE = ("topk/vectors", "topk/products", "trace/basis", "trace/basis_products")


def is_spectrum(path: str | Path) -> bool:
    """Whether ``path`` is an HDF5 file llmpi wrote as a spectrum (False for surfaces, missing files and anything
    that is not HDF5). A read that fails on an HDF5 file is tried once more, then reported (never taken for "no")."""
    try:
        if not h5py.is_hdf5(path):
            return False
    except OSError:
        return False
    for attempt in range(2):
        try:
            with h5py.File(path, "r", locking=False) as f:
                return _plain(f.attrs.get("kind", "")) == KIND
        except OSError as e:
            if attempt:
                raise StoreError(f"{path} cannot be read ({e})") from None
            time.sleep(0.1)
    return False


def _open(path: Path) -> h5py.File:
    try:
        f = h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        raise StoreError(f"{path} does not exist") from None
    except OSError as e:
        raise StoreError(f"{path} is not a readable HDF5 file ({e})") from None
    if _plain(f.attrs.get("kind", "")) != KIND:
        f.close()
        raise StoreError(f"{path} is not a spectrum file (python -m llmpi.spectrum writes them)")
    return f


def _entries(f: h5py.File) -> Entries:
    names = tuple(_plain(f["parameters/names"][()]))
    shapes = tuple(tuple(s) for s in json.loads(_plain(f["parameters/names"].attrs["shapes"])))
    return Entries(names, shapes)


def read_spectrum(path: str | Path) -> Spectrum:
    """Read a spectrum file, also while ``llmpi.spectrum`` writes it (never blocks or disturbs the writer)."""
    path = Path(path)
    with _open(path) as f:
        values: dict[str, np.ndarray] = {}

        def take(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and name not in LARGE and not name.startswith("parameters/"):
                values[name] = obj[()]

        f.visititems(take)
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        return Spectrum(path, attrs, _entries(f), values)


def read_eigenvectors(path: str | Path, count: int | None = None) -> tuple[Entries, np.ndarray, np.ndarray]:
    """The first ``count`` eigenpairs of a spectrum file whose top-k is done: (entries, values (count,), vectors
    (count, n) float64). A StoreError says what is missing."""
    path = Path(path)
    with _open(path) as f:
        if "topk/done" not in f:
            raise StoreError(f"{path} holds no eigenpairs (its analyses: {_plain(f.attrs.get('analyses', '[]'))})")
        if not f["topk/done"][0]:
            raise StoreError(f"{path}: its top-k eigenpairs are not computed yet; finish it (rerun its job) first")
        top = int(f["topk"].attrs["top"])
        count = top if count is None else count
        if count > top:
            raise StoreError(f"{path} holds the top {top} eigenpairs; {count} are needed")
        return _entries(f), f["topk/values"][:count], f["topk/vectors"][:count]


# ----------------------------------------------------------------------------------------------------------------
# The top-k's Lanczos state between restarts: a sidecar, <file>.topk-state


def state_path(path: str | Path) -> Path:
    """Where a spectrum file's unfinished top-k keeps its Lanczos state: ``<file>.topk-state`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".topk-state")


def save_lanczos_state(path: str | Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Replace the sidecar with ``arrays`` (numpy's .npz, no pickle) under ``key`` (what it belongs to: the spectrum
    file's fingerprint and batch size), atomically: a kill leaves the previous state or this one. Rewritten after
    every thick restart of the top-k's Lanczos run, removed once the eigenpairs are in the file: a run killed in
    its top-k resumes from the last restart instead of the first product."""
    target = state_path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), **arrays)

    try:
        atomic_replace(target, write)
    except OSError as e:
        raise disk_error(e, target, "writing the top-k's progress to", then=_RESUME) or e from None


def load_lanczos_state(path: str | Path, key: str) -> dict[str, np.ndarray] | None:
    """The sidecar's arrays when it exists and belongs to ``key``; None otherwise (the top-k starts afresh)."""
    target = state_path(path)
    try:
        with np.load(target, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            return {name: f[name] for name in f.files if name != "key"}
    except (OSError, ValueError, KeyError):
        return None


def remove_lanczos_state(path: str | Path) -> None:
    state_path(path).unlink(missing_ok=True)

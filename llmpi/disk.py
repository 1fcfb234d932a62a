"""Writing files so that neither a crash nor a failing disk leaves a half-written one, and saying plainly when the
disk fails.

    atomic_replace(Path("surfaces/a.h5.run.json"), lambda tmp: tmp.write_text(text))
    try:
        ...
    except OSError as e:
        raise disk_error(e, path, "creating") or e

``atomic_replace`` is the one sequence every whole-file write of llmpi goes through (the surface file's creation
and its attribute rewrites, the run record, training checkpoints): write a temporary file in the target's
directory, fsync it, rename it over the target, fsync the directory; on any failure remove the temporary file
and leave the target as it was. ``disk_error`` turns the ``OSError`` of a full disk, an exceeded quota, a
read-only file system, a vanished directory or an I/O error into one :class:`~llmpi.errors.DiskError` that says
what happened to which path and what to do; any other error is not the disk's and stays as it is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import DiskError

# What the storage, not the program, is to blame for. ENOENT only counts when the directory itself is gone.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ESTALE, errno.ENOENT})


def temporary_path(target: Path) -> Path:
    """The temporary file a write of ``target`` goes through: hidden, in the same directory (a rename is atomic
    within one file system only), named by the writer's pid so that two writers never share one."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def fsync_path(path: Path) -> None:
    """fsync a file or directory by name (Linux syncs the inode whatever the descriptor's access mode)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL or not path.is_dir():
            raise  # some file systems cannot sync a directory (EINVAL): its entries are then as durable as it gets
    finally:
        os.close(fd)


def atomic_replace(target: str | Path, write: Callable[[Path], None]) -> None:
    """Replace ``target`` by the file ``write(tmp)`` writes at the temporary path ``tmp``: readers and a crash at
    any instant see the old file or the new one, never a half one.

    The temporary file is fsync'd before the rename (its bytes are on disk before its name), the directory after
    it (the rename itself is on disk when this returns). On any failure -- a full disk, an exception in
    ``write``, a signal -- the temporary file is removed, the target is left as it was, and the error propagates.
    """
    target = Path(target)
    tmp = temporary_path(target)
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(target.parent)
    finally:
        with contextlib.suppress(OSError):  # gone after the rename; on a failure, removed (unless the disk is gone)
            tmp.unlink()


def errno_of(error: BaseException) -> int | None:
    """The errno behind ``error``: an OSError's own, or the one HDF5 writes into the text of the errors h5py
    raises when a deferred write fails (a RuntimeError saying "... errno = 28, error message = ...")."""
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno
    if isinstance(error, (OSError, RuntimeError)):
        found = re.search(r"\berrno = (\d+)", str(error))
        return int(found.group(1)) if found else None
    return None


def size(n: float) -> str:
    """Bytes for a message: '34 KiB', '1.2 MiB', '3.5 GiB'."""
    if n < 2**20:
        return f"{n / 2**10:.0f} KiB"
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"


def free_bytes(directory: Path) -> int | None:
    with contextlib.suppress(OSError):
        return shutil.disk_usage(directory).free
    return None


def vanished(directory: Path) -> bool:
    return not directory.is_dir()


def disk_error(
    error: BaseException, path: str | Path, doing: str, then: str = "rerun the same command", needed: int | None = None
) -> DiskError | None:
    """The :class:`DiskError` for ``error`` raised while ``doing`` (e.g. "creating") ``path``, or None when the
    disk is not to blame. ``then`` says what to do once the disk is fixed; ``needed`` is the bytes the write
    needs (said in the message of a full disk, with what is free)."""
    if isinstance(error, DiskError):
        return error
    code = errno_of(error)
    if code not in STORAGE_ERRNOS:
        return None
    path = Path(path)
    where = path.parent
    if code == errno.ENOENT:
        if not vanished(where):
            return None  # a missing file in a directory that exists: not a disk fault
        what = f"the directory {where} vanished (removed, or its file system unmounted) while {doing} {path}"
        todo = f"recreate it (or set output elsewhere), then {then}"
    elif code in (errno.ENOSPC, errno.EDQUOT):
        full = "no space left on the device" if code == errno.ENOSPC else "the disk quota is exceeded"
        free = free_bytes(where)
        sizes = [f"needs about {size(needed)}"] if needed else []
        sizes += [f"{size(free)} free"] if free is not None else []
        what = f"{full} of {where} while {doing} {path}" + (f" ({', '.join(sizes)})" if sizes else "")
        todo = f"free space there (df -h {where}) or set output elsewhere, then {then}"
    elif code == errno.EROFS:
        what = f"{where} is on a read-only file system ({doing} {path})"
        todo = f"remount it read-write or set output elsewhere, then {then}"
    else:  # EIO, ESTALE: the device or the file server
        what = f"{os.strerror(code).lower()} on {where} while {doing} {path}"
        todo = f"check the disk or file server (dmesg, df -h {where}), then {then}"
    return DiskError(code, f"{what}; {todo}", str(path))

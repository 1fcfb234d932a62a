"""Errors a user can cause and fix, and what a failing disk's ``OSError`` means for the user.

The command lines print these as one message and exit non-zero, without a traceback (``--debug`` shows it).
Everything else that escapes is a bug in llmpi and keeps its traceback. ``JobError`` is a ``ValueError`` so
that library callers can catch bad input the usual way.

``disk_error`` turns the ``OSError`` of a full disk, an exceeded quota, a read-only file system, a vanished
directory or an I/O error into one :class:`DiskError` that says what happened to which path and what to do; any
other error is not the disk's and stays as it is:

    try:
        ...
    except OSError as e:
        raise disk_error(e, path, "creating") or e
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path


class JobError(ValueError):
    """Bad input: a job file, a command-line value, a checkpoint, a dataset or an output file."""


class DataError(JobError):
    """The dataset is missing, corrupted or not what the job says."""


class CheckpointError(JobError):
    """The checkpoint is missing, unsafe, or does not fit the architecture."""


class StoreError(JobError):
    """The surface file cannot be used for this job (another job's file, not HDF5, locked, not writable)."""


class DiskError(OSError):
    """The storage under a file llmpi writes failed: no space left, a quota, a read-only file system, an output
    directory that vanished, an I/O error. Neither bad input nor a bug: the message says what happened, where,
    and what to do (free space, remount, ...); the command lines exit with status 74 (``llmpi.job.exits``). An
    ``OSError`` with the underlying ``errno`` and ``filename``, so code that tolerates a failing write (the run
    record) keeps tolerating it."""

    def __init__(self, code: int, message: str, filename: str | None = None) -> None:
        super().__init__(code, message, filename)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SweepError(RuntimeError):
    """A sweep called from Python (``llmpi.surface``) failed while computing: a rank's error, its traceback and
    where it happened in the message. Every point finished before it is kept in the output file."""


class Interrupted(KeyboardInterrupt):
    """A sweep called from Python was stopped by SIGINT (Ctrl-C, Jupyter's stop button), SIGTERM or SIGUSR1: a
    ``KeyboardInterrupt``, as Python code expects; the points finished are in the output file, and calling again
    resumes. ``done`` and ``total``: points computed of all."""

    def __init__(self, message: str, done: int = 0, total: int = 0) -> None:
        super().__init__(message)
        self.done, self.total = done, total


class MpiError(JobError):
    """MPI cannot run a sweep as it is set up: too low a thread level, or an MPI that is not the launcher's."""


# What the storage, not the program, is to blame for. ENOENT only counts when the directory itself is gone.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ESTALE, errno.ENOENT})


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

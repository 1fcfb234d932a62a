"""Writing files so that neither a crash nor a failing disk leaves a half-written one.

    atomic_replace(Path("surfaces/a.h5.run.json"), lambda tmp: tmp.write_text(text))

``atomic_replace`` is the one sequence every whole-file write of llmpi goes through (the surface file's creation
and its attribute rewrites, the run record, training checkpoints): write a temporary file in the target's
directory, fsync it, rename it over the target, fsync the directory; on any failure remove the temporary file
and leave the target as it was. What a failing disk's ``OSError`` means for the user (``disk_error``) is told by
``llmpi.job.errors``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path


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

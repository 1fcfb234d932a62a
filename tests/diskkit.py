"""A small real disk for the disk-fault tests: a tmpfs of a given size mounted under the test's directory, filled
up, remounted read-only, and holes punched into a file so that overwriting its bytes needs new space.

Mounting needs root (or CAP_SYS_ADMIN); without it every test that uses ``Disk`` skips, saying why.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

PAGE = 4096
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


class Disk:
    """A tmpfs of ``size`` bytes at ``path``; unmounted by ``close``."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        try:
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "llmpi-test", str(path)], capture_output=True, text=True
            )
        except FileNotFoundError:
            pytest.skip("no mount command here: the disk-fault tests mount a small tmpfs")
        if result.returncode != 0:
            why = (result.stderr.strip() or "mount failed").splitlines()[0]
            pytest.skip(f"cannot mount a tmpfs here ({why}): the disk-fault tests need root with CAP_SYS_ADMIN")

    def remount(self, options: str) -> None:
        """``mount -o remount,<options>``: e.g. 'ro', 'rw', 'size=4m' (space freed by growing the disk)."""
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True, capture_output=True)

    def fill(self) -> Path:
        """Take every free byte with one file (removed by ``free``); returns it."""
        filler = self.path / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while os.write(fd, b"\1" * PAGE):
                pass
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        finally:
            os.close(fd)
        return filler

    def free(self) -> None:
        (self.path / "filler").unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def punch_nan_pages(path: Path) -> int:
    """Free every page of ``path`` that holds only float64 NaNs (the value arrays of points not computed yet):
    those bytes then read as zeros and take new space when written again, as on a copy-on-write or
    compressing file system. The pages at the end of the value arrays stay. Returns the pages freed."""
    data = np.fromfile(path, dtype=np.uint64)
    nan = np.frombuffer(np.float64(np.nan).tobytes(), np.uint64)[0]
    pages = data[: len(data) // (PAGE // 8) * (PAGE // 8)].reshape(-1, PAGE // 8)
    whole = np.flatnonzero((pages == nan).all(axis=1))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    fd = os.open(path, os.O_RDWR)
    try:
        for page in whole:
            if libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, int(page) * PAGE, PAGE) != 0:
                pytest.skip(f"this file system cannot punch holes ({os.strerror(ctypes.get_errno())})")
    finally:
        os.close(fd)
    return len(whole)

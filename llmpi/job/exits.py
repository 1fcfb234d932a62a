"""How every llmpi command ends: one exit status per kind of ending, and one line for an error the user can act on.

    def main(argv: list[str] | None = None) -> int:
        args = parser().parse_args(argv)
        return cli.run(lambda: command(args), debug=args.debug)

Exit statuses, the same for every command (``python -m llmpi.sweep``, ``status``, ``plot``, ``train``, ``slurm``):

    0   done
    1   failed: a bug or an unexpected error, printed with its traceback
    2   bad input (``JobError`` and friends): one ``llmpi: error: ...`` line that says what to do
    74  the disk failed (``DiskError``: no space, quota, read-only, vanished directory, I/O error): one line that
        says what happened to which path and what to do; finished work is kept, rerun once the disk is fixed
    75  (sweep) interrupted by a signal: incomplete and resumable, rerun the same command

``--debug`` adds the traceback to the one line of exits 2 and 74. 74 and 75 are sysexits' EX_IOERR and
EX_TEMPFAIL. An ``OSError`` of a failing disk that some library raised directly (a picture written to a full
disk, a checkpoint folder on a read-only file system) counts as 74 too.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

from .errors import DiskError, JobError, disk_error

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DISK, EXIT_INTERRUPTED = 0, 1, 2, 74, 75


def explain(error: BaseException) -> tuple[int, str] | None:
    """The exit status and one-line message of an error the user can act on, or None for a bug (which keeps its
    traceback)."""
    if isinstance(error, JobError):
        return EXIT_USAGE, str(error)
    if isinstance(error, DiskError):
        return EXIT_DISK, str(error)
    if isinstance(error, OSError) and error.filename is not None:
        disk = disk_error(error, error.filename, "writing")
        if disk is not None:
            return EXIT_DISK, str(disk)
    return None


def run(command: Callable[[], int | None], debug: bool = False) -> int:
    """Run a command's body: its own status (None counts as 0), or for an error the user can act on one
    ``llmpi: error: ...`` line on stderr and its status (the traceback first with ``debug``). Anything else
    propagates with its traceback: Python then exits 1."""
    try:
        return command() or EXIT_OK
    except Exception as e:
        explained = explain(e)
        if explained is None:
            raise
        code, message = explained
        if debug:
            traceback.print_exc()
        print(f"llmpi: error: {message}", file=sys.stderr, flush=True)
        return code

"""Errors a user can cause and fix.

The command lines print these as one message and exit non-zero, without a traceback (``--debug`` shows it).
Everything else that escapes is a bug in llmpi and keeps its traceback. ``JobError`` is a ``ValueError`` so
that library callers can catch bad input the usual way.
"""


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
    and what to do (free space, remount, ...); the command lines exit with status 74 (``llmpi.cli``). An
    ``OSError`` with the underlying ``errno`` and ``filename``, so code that tolerates a failing write (the run
    record) keeps tolerating it."""

    def __init__(self, code: int, message: str, filename: str | None = None) -> None:
        super().__init__(code, message, filename)
        self.message = message

    def __str__(self) -> str:
        return self.message


class MpiError(JobError):
    """MPI cannot run a sweep as it is set up: too low a thread level, or an MPI that is not the launcher's."""

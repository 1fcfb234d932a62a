"""Sweep loss surfaces: every rank computes, rank 0 coordinates and writes one HDF5 file per surface.

    mpirun -n 8 python -m llmpi.sweep jobs/vgg56.yaml            # 8 ranks (one per GPU), all compute
    python -m llmpi.sweep jobs/vgg56.yaml                         # the same job on one rank
    python -m llmpi.sweep jobs/vgg56.yaml --set grid.x=[-0.5,0.5,21] --set output=surfaces/zoom.h5
    mpirun -n 8 python -m llmpi.sweep jobs/resnet56.yaml jobs/vgg56.yaml jobs/vgg9.yaml    # several, one MPI job

Rerunning the same command resumes: points already in a file are never computed again. Several job files make
one run: one coordinator hands out the blocks of every surface, in the order given, so a rank that runs out of one
surface's blocks starts on the next one's; each surface keeps its own file, fingerprint, lock, run record and
resume. Exit status: 0 complete, 1 failed (a rank's error, printed with its traceback), 2 bad input (one message,
what to do next), 74 the disk failed (full, read-only, vanished: one message; the points marked done are kept,
rerun once it is fixed), 75 interrupted by SIGTERM/SIGUSR1/SIGINT -- incomplete but resumable: rerun the same
command.

The sweep itself, on every rank, is ``llmpi.ranks.run.sweep``; this module parses the command line around it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llmpi.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "jobs", nargs="*", metavar="job", help="job files (YAML), e.g. jobs/vgg56.yaml; several make one run"
    )
    p.add_argument("--keys", action="store_true", help="list every job key with its type, default and reason; exit")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a job key in every job, YAML-typed, e.g. --set grid.x=[-0.5,0.5,21] (repeatable)",
    )
    p.add_argument("--restart", action="store_true", help="start the output files anew instead of resuming them")
    p.add_argument("--debug", action="store_true", help="show tracebacks for input errors too")
    args = p.parse_args(argv)
    if not args.jobs and not args.keys:
        p.error("the following arguments are required: job")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.keys:  # before MPI: a question about job files, answered at once
        from .job.schema import print_keys

        return print_keys("job")
    from mpi4py import MPI

    from .job.config import load_jobs
    from .ranks import protocol
    from .ranks.run import sweep

    interrupts = protocol.Interrupts().install()
    jobs = lambda: load_jobs(args.jobs, args.overrides)
    return sweep(MPI.COMM_WORLD, jobs, restart=args.restart, debug=args.debug, interrupts=interrupts)


if __name__ == "__main__":
    sys.exit(main())

"""The curvature of the loss at θ*: top-k Hessian eigenpairs, the trace (and each layer's), the spectral density.

    mpirun -n 8 python -m llmpi.spectrum jobs/resnet20.yaml          # every rank computes; rank 0 writes the file
    python -m llmpi.spectrum jobs/resnet20.yaml --set spectrum.topk.k=10 --set spectrum.analyses=[topk,trace]
    python -m llmpi.spectrum jobs/resnet20.yaml --restart             # start spectra/<name>.h5 anew
    python -m llmpi.spectrum --keys                                   # every job key (the spectrum section too)

The job file is a sweep's (``llmpi.sweep``): its network and checkpoint θ*, data selection, loss and
``directions.ignore`` (the parameters the Hessian is over), and its ``spectrum`` section (what to compute, how
precisely; ``spectrum.output``, by default ``spectra/<name>.h5``). Rerunning the same command resumes: eigenpairs,
probes and runs already in the file are never computed again. Exit status: 0 done, 1 failed (a rank's error,
printed with its traceback), 2 bad input (one message, what to do next), 74 the disk failed, 75 interrupted by
SIGTERM/SIGUSR1/SIGINT -- incomplete but resumable: rerun the same command. ``python -m llmpi.status`` summarises
the file, ``python -m llmpi.plot`` draws it.

The spectrum itself, on every rank, is ``llmpi.ranks.spectrum.spectrum``; this module parses the command line.

From Python this module is also the function: ``llmpi.spectrum(model, data, ...)`` calls
``llmpi.ranks.api.spectrum`` (the spectrum of a network in memory; ``help(llmpi.ranks.api.spectrum)``). Both names
are the interface -- ``python -m llmpi.spectrum`` and ``llmpi.spectrum(...)`` -- and importing a submodule sets the
package's attribute of that name, so the module itself is made callable rather than shadowed by a function.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Sequence
from typing import Any


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llmpi.spectrum", description=__doc__.split("\n\n")[0])
    p.add_argument("job", nargs="?", help="the job file (YAML), e.g. jobs/resnet20.yaml")
    p.add_argument("--keys", action="store_true", help="list every job key with its type, default and reason; exit")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a job key, YAML-typed, e.g. --set spectrum.topk.k=10 (repeatable)",
    )
    p.add_argument("--restart", action="store_true", help="start the output file anew instead of resuming it")
    p.add_argument("--debug", action="store_true", help="show tracebacks for input errors too")
    args = p.parse_args(argv)
    if not args.job and not args.keys:
        p.error("the following arguments are required: job")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.keys:  # before MPI: a question about job files, answered at once
        from .job.schema import print_keys

        return print_keys("job")
    from mpi4py import MPI

    from .job.config import load_job
    from .ranks import protocol
    from .ranks.spectrum import spectrum

    interrupts = protocol.Interrupts().install()
    job = lambda: load_job(args.job, args.overrides)
    return spectrum(MPI.COMM_WORLD, job, restart=args.restart, debug=args.debug, interrupts=interrupts)


class _Callable(types.ModuleType):
    """``llmpi.spectrum``: the command's module, callable as the Python API."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .ranks.api import spectrum

        return spectrum(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
else:
    sys.modules[__name__].__class__ = _Callable

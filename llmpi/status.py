"""What a surface file holds and how far its sweep is -- safe to run while a sweep writes the file.

    python -m llmpi.status surfaces/vgg56.h5
    python -m llmpi.status surfaces/vgg56.h5 --json
    python -m llmpi.status surfaces/vgg56.h5 --metrics --radius 0.2 --threshold 0.5
    python -m llmpi.status spectra/resnet20.h5           # a spectrum file: top-k, trace (per entry), density

Reads the file without locking it (never blocks or disturbs the writer), ``<file>.run.json`` for what the last or
current run is doing (per-rank throughput, ETA), and ``<file>.lock`` to tell whether a sweep is live on it.

``--metrics`` adds the surface's summary numbers (``llmpi.report.metrics``: loss at the centre and the minimiser,
sharpness within a radius, curvature of a local quadratic fit, basin share and area below a threshold, the share
of nearly convex points when the file has eigen-ratios) for every loss in the file, and stores them in the file's
root attribute ``metrics`` (JSON, with the options used) -- unless a sweep is writing the file, in which case they
are printed only (a warning says so); rerun once the sweep has finished to store them. When the disk fails while
storing them (full, read-only, ...), they are printed, the file stays as it was, and the command ends with one
error and exit status 74.

A file with Hessian values says how many points stopped at ``hessian.max_hvps`` before converging
(``eig_converged`` 0), and the largest relative residual (``eig_residual``). A spectrum file
(``python -m llmpi.spectrum``) says which of its analyses are done: the top-k eigenvalues with their residuals,
the trace with its standard error (the running estimate while probes are still being added) and the entries with
the largest traces, the density's runs (``--json``: every entry's trace).
"""

from __future__ import annotations

import argparse
import json
import sys

from .job import exits as cli
from .job.errors import DiskError, JobError
from .report.summary import DEFAULT_RADIUS, METRIC_OPTIONS, render, store_metrics, summarize, surface_metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmpi.status", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="surface or spectrum files (.h5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--metrics", action="store_true",
        help="summary metrics of every loss (see the README's 'Surface metrics'), also stored in the file's attrs",
    )  # fmt: skip
    p.add_argument(
        "--radius", type=float, help=f"sharpness: max loss within this distance of the centre ({DEFAULT_RADIUS:g})"
    )
    p.add_argument(
        "--fit-radius", type=float,
        help="curvature: fit the quadratic within this distance (default: the radius, widened to the centre's "
        "3x3 block of grid points where the grid is coarser, so the fit is determined)",
    )  # fmt: skip
    p.add_argument("--threshold", type=float, help="basin: loss at most the centre's plus this (0.1)")
    p.add_argument("--ratio-threshold", type=float, help="convex share: eig-ratio |min/max| below this (0.01)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    options = {k: getattr(args, k) for k in METRIC_OPTIONS}
    if not args.metrics and any(v is not None for v in options.values()):
        p.error("--radius, --fit-radius, --threshold and --ratio-threshold go with --metrics")
    return cli.run(lambda: command(args.files, args.json, args.metrics, options), debug=args.debug)


def command(files: list[str], as_json: bool, metrics: bool, options: dict) -> None:
    """Summarise (and with ``metrics`` measure and store) every file, print it all; then raise the first disk
    fault that kept metrics from being stored (the metrics are printed all the same)."""
    infos = [summarize(f) for f in files]
    fault: DiskError | None = None
    for info in infos if metrics else ():
        if info.get("kind") == "spectrum":
            continue  # the metrics are a surface's; a spectrum's numbers are all in its summary
        try:
            info["metrics"] = surface_metrics(info["file"], **options)
        except JobError:
            raise
        except ValueError as e:  # llmpi.report.metrics refusing an option (e.g. a non-positive radius): bad input
            raise JobError(str(e)) from None
        try:
            why = store_metrics(info["file"], info["metrics"])
        except DiskError as e:
            info["metrics_stored"], fault = False, fault or e
            continue
        info["metrics_stored"] = why is None
        if why is not None:
            print(f"llmpi: warning: metrics of {info['file']} printed, not stored: {why}", file=sys.stderr)
    if as_json:
        print(json.dumps(infos if len(infos) > 1 else infos[0], indent=1))
    else:
        print("\n\n".join(render(i) for i in infos))
    if fault is not None:
        raise DiskError(fault.errno, f"metrics printed, not stored: {fault}", fault.filename)


if __name__ == "__main__":
    sys.exit(main())

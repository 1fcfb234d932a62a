"""SLURM batch scripts for sweeps, rendered by one pure function from explicit parameters.

    sbatch slurm/sweep.sbatch jobs/vgg56.yaml          # the checked-in script: 1 node, 4 GPUs, 4 h
    sbatch slurm/sweep.sbatch jobs/a.yaml jobs/b.yaml  # several surfaces in one allocation (one run)
    python -m llmpi.slurm jobs/vgg56.yaml --nodes 2 --gpus-per-node 4 --time 4:00:00 -o vgg56.sbatch
    sbatch vgg56.sbatch                                # a script rendered for one job and one cluster

One MPI rank per GPU, started by srun (PyPI's MPICH speaks SLURM's ``--mpi=pmi2``). The script carries
``--requeue`` and ``--signal=B:USR1@<lead>``. When a job is cut short:

- time limit: about ``<lead>`` s before it (SLURM looks every 30 s and may signal up to a minute early) the batch
  shell gets SIGUSR1 and hands it to srun, which hands it to every rank; the sweep stops handing out blocks, keeps
  what is finished and exits 75 ("incomplete, resumable"); the script requeues the job, and the next run resumes
  from the surface file.
- pre-emption or an admin's ``scontrol requeue``: SIGTERM to everything, which srun turns into SIGKILL for the
  ranks; the blocks in flight are lost, everything committed before is in the file, and SLURM requeues the job
  itself. The graceful way to requeue a running job is ``scancel --batch --signal=USR1 JOBID`` (and for
  pre-emption, ``PreemptParameters=send_user_signal`` in slurm.conf).
- ``scancel``: the job ends for good; submitting the same command again resumes it.

Why ``B:`` (the signal to the batch shell, which passes it on) rather than to the job steps directly: the shell
knows whether the sweep is running. A signal sent to the steps while the script's MPI clean-up step (or a
``--setup`` command) runs goes to that step and is lost to the sweep, which then runs into the time limit and is
never requeued; the shell instead skips the sweep and requeues at once.

``slurm/sweep.sbatch`` is ``render(BatchSpec())``, the defaults (a test keeps them equal). The ``SLURM_*``
variables llmpi uses are read in this module only: in the script text it renders, and by ``clean_mpi_shm``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .job import exits as cli
from .job.errors import JobError, disk_error
from .job.exits import EXIT_INTERRUPTED

STEP_WAIT = 60  # seconds srun lets the other ranks run on after the first one ended
CHECKED_IN = "slurm/sweep.sbatch"


def _param(default: Any, flag: str, help: str, metavar: str | None = None) -> Any:
    """A BatchSpec field: its command-line flag and help live next to the default they explain."""
    meta = {"flag": flag, "help": help, "metavar": metavar}
    if isinstance(default, tuple) and flag.startswith("-"):
        return field(default=default, metadata=meta | {"repeat": True})
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class BatchSpec:
    """Everything the batch script depends on: ``render(spec)`` is a function of this alone."""

    jobs: tuple[str, ...] = _param(
        (),
        "job",
        "job files, baked into the script (several: one run sweeps them all); none: the script takes them "
        "as its arguments",
        "JOB",
    )
    overrides: tuple[str, ...] = _param((), "--set", "a job override passed to the sweep (repeatable)", "KEY=VALUE")
    nodes: int = _param(1, "--nodes", "nodes to allocate", "N")
    gpus_per_node: int = _param(4, "--gpus-per-node", "GPUs per node; one rank each (0: a CPU-only sweep)", "G")
    tasks_per_node: int | None = _param(
        None, "--tasks-per-node", "ranks per node; default one per GPU (required when --gpus-per-node 0)", "T"
    )
    cpus_per_task: int | None = _param(
        None, "--cpus-per-task", "cores per rank (torch threads); default: the cluster's default", "C"
    )
    time: str = _param("4:00:00", "--time", "time limit, in SLURM's formats (minutes, H:MM:SS, D-HH:MM, ...)", "T")
    partition: str | None = _param(None, "--partition", "partition; default: the cluster's default", "P")
    account: str | None = _param(None, "--account", "account to charge; default: the user's default", "A")
    qos: str | None = _param(None, "--qos", "quality of service; default: the cluster's default", "Q")
    signal_lead: int = _param(
        120,
        "--signal-lead",
        "seconds before the time limit at which SLURM sends SIGUSR1 (it may come up to 60 s earlier): time to "
        "finish or drop the blocks in flight (<10 s), flush and requeue, with room for a slow file system",
        "S",
    )
    python: str = _param("python", "--python", "the Python that has llmpi installed, as found on the compute node")
    setup: tuple[str, ...] = _param(
        (), "--setup", "a shell line run before the sweep, e.g. 'module load cuda' (repeatable)", "LINE"
    )
    mpi: str | None = _param(
        "pmi2", "--mpi", "srun's --mpi plugin: pmi2 suits PyPI's MPICH, pmix most OpenMPIs; 'default': the cluster's"
    )
    job_name: str = _param("llmpi-sweep", "--job-name", "the name squeue shows", "NAME")
    output: str | None = _param(
        None, "--output", "the log file (SLURM patterns: %x name, %j job id); default: SLURM's slurm-%j.out", "PATH"
    )
    chdir: str | None = _param(None, "--chdir", "directory the job runs in; default: where sbatch is run", "DIR")
    max_requeues: int = _param(
        20, "--max-requeues", "stop requeueing after this many restarts (a job that cannot progress ends)", "N"
    )
    sbatch_options: tuple[str, ...] = _param(
        (), "--sbatch", "any other sbatch option, e.g. --sbatch=--mem=64G (repeatable)", "OPTION"
    )

    def __post_init__(self) -> None:
        for name in ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "signal_lead", "max_requeues"):
            value = getattr(self, name)
            least = 0 if name in ("gpus_per_node", "max_requeues") else 1
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise JobError(f"{_flag(name)} must be an integer of at least {least}, not {value!r}")
        if self.gpus_per_node == 0 and self.tasks_per_node is None:
            raise JobError("--gpus-per-node 0 (a CPU-only sweep) needs --tasks-per-node: how many ranks per node")
        limit = parse_time(self.time)
        if self.signal_lead >= limit:
            raise JobError(
                f"--signal-lead {self.signal_lead} s is not shorter than --time {self.time} ({limit} s): the "
                f"sweep would be told to stop before it starts; lengthen --time or shorten --signal-lead"
            )
        if self.signal_lead > 65535:
            raise JobError(f"--signal-lead {self.signal_lead} s is more than SLURM allows (65535 s)")
        if self.mpi is not None and not re.fullmatch(r"[A-Za-z0-9_]+", self.mpi):
            raise JobError(f"--mpi {self.mpi!r} is not a plugin name (pmi2, pmix, none, ... or 'default')")
        for name in ("python", "job_name", "output", "chdir", "partition", "account", "qos"):
            value = getattr(self, name)
            if value is not None and (not value.strip() or "\n" in value or "\r" in value):
                raise JobError(f"{_flag(name)} must be non-empty and on one line, not {value!r}")
        for name in ("jobs", "overrides", "setup", "sbatch_options"):
            for value in getattr(self, name):
                if "\n" in value or "\r" in value:
                    raise JobError(f"{_flag(name)} values must each be one line, not {value!r}")
        for option in self.sbatch_options:
            if not option.startswith("-"):
                raise JobError(f"--sbatch {option!r}: give the option with its dashes, e.g. --sbatch=--mem=64G")

    @property
    def ranks_per_node(self) -> int:
        return self.tasks_per_node if self.tasks_per_node is not None else self.gpus_per_node

    @property
    def ranks(self) -> int:
        return self.nodes * self.ranks_per_node


def _flag(name: str) -> str:
    return next(f.metadata["flag"] for f in dataclasses.fields(BatchSpec) if f.name == name)


_TIME = re.compile(r"(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?")


def parse_time(text: str) -> int:
    """Seconds in a SLURM time limit: M, M:S, H:M:S, D-H, D-H:M or D-H:M:S (as sbatch reads them)."""
    m = _TIME.fullmatch(str(text).strip())
    if not m:
        raise JobError(
            f"--time {text!r} is not a SLURM time limit; use minutes (90), H:MM:SS (4:00:00) or D-HH:MM (1-12:00)"
        )
    d, a, b, c = (int(v) if v is not None else None for v in m.group("d", "a", "b", "c"))
    if d is not None:  # D-H, D-H:M, D-H:M:S
        seconds = ((d * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
    elif c is not None:  # H:M:S
        seconds = (a * 60 + b) * 60 + c
    elif b is not None:  # M:S
        seconds = a * 60 + b
    else:  # M
        seconds = a * 60
    if seconds < 60:
        raise JobError(f"--time {text!r} is under SLURM's smallest time limit, one minute")
    return seconds


# ----------------------------------------------------------------------------------------------------------------
# Rendering.

_PLAIN = re.compile(r"[A-Za-z0-9_./%:@=,+-]+")


def _directive(option: str, value: str | int) -> str:
    """``#SBATCH --option=value``; values with other characters in double quotes, which sbatch strips."""
    value = str(value)
    if not _PLAIN.fullmatch(value):
        if '"' in value:
            raise JobError(f"{option} {value!r}: a double quote cannot be passed in an #SBATCH line")
        value = f'"{value}"'
    return f"#SBATCH {option}={value}"


def command_line(spec: BatchSpec) -> str:
    """The ``python -m llmpi.slurm`` command that renders ``spec`` (only what differs from the defaults)."""
    words = ["python", "-m", "llmpi.slurm"]
    for f in dataclasses.fields(BatchSpec):
        value = getattr(spec, f.name)
        if value == f.default:
            continue
        flag = f.metadata["flag"]
        if flag == "job":
            words[3:3] = [shlex.quote(v) for v in value]
        elif f.metadata.get("repeat"):
            words += [f"{flag}={shlex.quote(v)}" if v.startswith("-") else f"{flag} {shlex.quote(v)}" for v in value]
        else:
            words.append(f"{flag} {shlex.quote('default' if value is None else str(value))}")
    return " ".join(words)


# The script after its directives; @NAME@ marks what render() fills in. What it does, in order: on SIGUSR1 (sent
# to this shell alone, --signal=B:USR1@lead) pass the signal to the sweep's ranks through srun, or, before the
# sweep has started, do not start it; remove the MPICH shared memory a killed run of this job left; run the sweep
# in the background, so that the shell can take the signal while srun runs; requeue when the sweep says
# "interrupted, resumable" (75), or when it was told to stop and a rank died of it (killed while starting).
_BODY = """\
set -u
@USAGE@export PYTHONUNBUFFERED=1  # log lines in order, also when the job is killed
@SETUP@restarts=${SLURM_RESTART_COUNT:-0}
echo "llmpi: SLURM job ${SLURM_JOB_ID}, run $((restarts + 1)), on ${SLURM_JOB_NODELIST}, $(date '+%F %T')"

stop=""
sweep=""
on_usr1() {
    stop=yes
    echo "llmpi: SIGUSR1 at $(date +%T) (the time limit is near, or scancel --batch --signal=USR1): the sweep" \\
        "keeps what is done, stops, and the job is requeued"
    if [ -n "$sweep" ]; then kill -USR1 "$sweep"; fi  # srun passes it on to every rank
}
trap on_usr1 USR1

# MPICH names its shared memory after the job and step ids, which a requeued run reuses: remove what a killed
# run left on each node, or the new ranks would attach to it and fail or hang in MPI_Init.
srun --ntasks="${SLURM_JOB_NUM_NODES}" --ntasks-per-node=1 --mpi=none --kill-on-bad-exit=0 \\
    @PYTHON@ -m llmpi.slurm --clean-mpi-shm

status=@EXIT_INTERRUPTED@
if [ -z "$stop" ]; then
    # --kill-on-bad-exit=0: rank 0 still closes the file after the others have exited @EXIT_INTERRUPTED@;
    # --wait: ranks left running @STEP_WAIT@ s after one ended (a dead rank's partners) are stopped, not left idle.
    @SRUN@ &
    sweep=$!
    if [ -n "$stop" ]; then kill -USR1 "$sweep"; fi  # the signal came between the two lines above
    wait "$sweep"
    status=$?
    while kill -0 "$sweep" 2>/dev/null; do  # the signal cut the wait short; srun is still running
        wait "$sweep"
        status=$?
    done
fi

if [ "$status" -eq @EXIT_INTERRUPTED@ ] || { [ -n "$stop" ] && [ "$status" -gt 128 ]; }; then
    if [ "$restarts" -ge @MAX_REQUEUES@ ]; then
        echo "llmpi: interrupted after @MAX_REQUEUES@ requeues: not requeueing again (does --time leave room to" \\
            "make progress?); resubmit to resume" >&2
    else
        echo "llmpi: interrupted, resumable: requeueing job ${SLURM_JOB_ID}, which resumes from the surface file"
        scontrol requeue "${SLURM_JOB_ID}" ||
            echo "llmpi: scontrol requeue failed; resubmit the same sbatch command to resume" >&2
    fi
fi
exit "$status"
"""


def render(spec: BatchSpec) -> str:
    """The batch script for ``spec``: directives, then run the sweep, then requeue it if it was interrupted."""
    usage = (
        "sbatch slurm/sweep.sbatch JOB.yaml [JOB.yaml ...] [--set KEY=VALUE ...]"
        if not spec.jobs
        else "sbatch THIS_FILE"
    )
    lines = [
        "#!/bin/bash",
        "# A loss-surface sweep under SLURM (llmpi): one MPI rank per GPU, resumable, requeued until complete.",
        "#",
        f"#     {usage}",
        "#",
        "# Rendered by the command below; render another rather than edit this file:",
        f"#     {command_line(spec)}",
        "#",
        f"# SIGUSR1 comes about {spec.signal_lead} s before the time limit (SLURM looks every 30 s and may send it up",
        f"# to a minute early): the sweep keeps what is finished and exits {EXIT_INTERRUPTED}, and the job requeues "
        "itself",
        "# and resumes from the surface file. Pre-emption or `scontrol requeue` TERMs the job: SLURM requeues it and",
        "# it resumes the same way, less the blocks in flight (`scancel --batch --signal=USR1 JOBID` requeues it",
        "# gracefully). `scancel` ends it; submitting the same command again resumes it.",
        _directive("--job-name", spec.job_name),
        _directive("--nodes", spec.nodes),
        _directive("--ntasks-per-node", spec.ranks_per_node),
    ]
    if spec.gpus_per_node:
        lines.append(_directive("--gres", f"gpu:{spec.gpus_per_node}"))
    if spec.cpus_per_task is not None:
        lines.append(_directive("--cpus-per-task", spec.cpus_per_task))
    lines.append(_directive("--time", spec.time))
    for option, value in (("--partition", spec.partition), ("--account", spec.account), ("--qos", spec.qos)):
        if value is not None:
            lines.append(_directive(option, value))
    lines += [
        _directive("--signal", f"B:USR1@{spec.signal_lead}"),
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",  # a requeued run appends to the log instead of truncating it
    ]
    if spec.output is not None:
        lines.append(_directive("--output", spec.output))
    if spec.chdir is not None:
        lines.append(_directive("--chdir", spec.chdir))
    for option in spec.sbatch_options:
        name, sep, value = option.partition("=")
        lines.append(_directive(name, value) if sep else f"#SBATCH {option}")

    python = shlex.quote(spec.python)
    srun = ["srun"]
    if spec.mpi is not None:
        srun.append(f"--mpi={spec.mpi}")
    if spec.cpus_per_task is not None:
        srun.append(f"--cpus-per-task={spec.cpus_per_task}")  # SLURM 22.05 steps no longer inherit it from sbatch
    srun += ["--kill-on-bad-exit=0", f"--wait={STEP_WAIT}", python, "-m", "llmpi.sweep"]
    srun += [shlex.quote(job) for job in spec.jobs]
    srun += [f"--set {shlex.quote(o)}" for o in spec.overrides]
    srun.append('"$@"')

    check = f'if [ $# -eq 0 ]; then\n    echo "llmpi: usage: {usage}" >&2\n    exit 2\nfi\n'
    body = _BODY
    for name, value in {
        "USAGE": check if not spec.jobs else "",
        "SETUP": "".join(line + "\n" for line in spec.setup),
        "PYTHON": python,
        "SRUN": " ".join(srun),
        "STEP_WAIT": str(STEP_WAIT),
        "EXIT_INTERRUPTED": str(EXIT_INTERRUPTED),
        "MAX_REQUEUES": str(spec.max_requeues),
    }.items():
        body = body.replace(f"@{name}@", value)
    return "\n".join(lines) + "\n\n" + body


# ----------------------------------------------------------------------------------------------------------------
# MPICH's shared memory left behind by a killed run.
#
# MPICH (4.x/5.x, ch4) names a node's shared-memory segment /dev/shm/mpich_shm_<world id>_<node>, and its world id
# is the FNV-1a hash of the PMI KVS name, which SLURM's pmi2 makes from the job and step ids ("1234.1"). A run
# killed by SIGKILL (srun turns the SIGTERM of a requeue or a pre-emption into one) never unlinks it, and the
# requeued job, with the same job id and step ids, attaches to the stale segment: MPI_Init then fails on one rank
# and hangs on the others (seen with PyPI's MPICH 5.0.2 and SLURM 22.05). The names a PMIx namespace would give
# ("slurm.pmix.1234.1") are cleared too, untested.


def mpich_world_id(kvs_name: str) -> int:
    """MPICH's 32-bit FNV-1a hash of a PMI KVS name."""
    h = 0x811C9DC5
    for byte in kvs_name.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def stale_mpi_segments(job_id: str, shm_dir: Path, steps: int = 64) -> list[Path]:
    """The MPICH segments in ``shm_dir`` named after steps 0..steps-1 of SLURM job ``job_id``."""
    found: set[Path] = set()
    for step in range(steps):
        for kvs in (f"{job_id}.{step}", f"slurm.pmix.{job_id}.{step}"):
            world = f"{mpich_world_id(kvs):x}"
            for kind in ("shm", "vci"):
                found.update(shm_dir.glob(f"mpich_{kind}_{world}_*"))
    return sorted(found)


def clean_mpi_shm(environ: dict[str, str], shm_dir: Path = Path("/dev/shm")) -> list[Path]:
    """Remove this job's stale MPICH segments on this node (run once per node before the sweep's step).

    Safe at the start of a run: only this job's steps use these names, and none of this run's is running yet.
    """
    job_id = environ.get("SLURM_JOB_ID")
    if not job_id:
        raise JobError("--clean-mpi-shm runs inside a SLURM job (SLURM_JOB_ID is not set)")
    removed = []
    for path in stale_mpi_segments(job_id, shm_dir):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            continue  # another task on this node was quicker
    return removed


# ----------------------------------------------------------------------------------------------------------------
# Command line.


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llmpi.slurm",
        description="Write a SLURM batch script that runs a sweep, one rank per GPU, requeued until complete.",
        epilog=f"Without JOB this renders {CHECKED_IN}, whose job file is sbatch's first argument.",
    )
    for f in dataclasses.fields(BatchSpec):
        meta = f.metadata
        default = "" if f.default in (None, ()) else f" (default {f.default})"
        text = (meta["help"] + default).replace("%", "%%")  # argparse formats help with %
        if meta["flag"] == "job":
            p.add_argument("jobs", nargs="*", metavar="JOB", help=text)
        elif meta.get("repeat"):
            p.add_argument(meta["flag"], dest=f.name, action="append", metavar=meta["metavar"], help=text)
        else:
            kind = int if f.type in ("int", "int | None") else str
            p.add_argument(meta["flag"], dest=f.name, type=kind, metavar=meta["metavar"], help=text)
    p.add_argument("-o", "--out", metavar="FILE", help="write the script here (default: print it)")
    p.add_argument(
        "--clean-mpi-shm",
        action="store_true",
        help="(run by the script on each node) remove the MPICH shared memory a killed run of this job left behind",
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def spec_from_args(args: argparse.Namespace) -> BatchSpec:
    given = {}
    for f in dataclasses.fields(BatchSpec):
        value = getattr(args, f.name)
        if value is None or (f.name == "jobs" and not value):
            continue
        if f.metadata.get("repeat") or f.name == "jobs":
            value = tuple(value)
        if f.name == "mpi" and value == "default":
            value = None
        given[f.name] = value
    return BatchSpec(**given)


def check_jobs(spec: BatchSpec) -> None:
    """Load the baked-in jobs now, as the sweep will (outputs, runtime), so a typo fails here and not after hours
    in the queue."""
    from .job.config import load_jobs

    base = Path(spec.chdir) if spec.chdir is not None else Path.cwd()
    jobs = load_jobs([str(base / job) for job in spec.jobs], spec.overrides)
    points = sum(job.grid.size for job in jobs)
    if spec.ranks > points:
        grids = "a grid" if len(jobs) == 1 else f"{len(jobs)} grids"
        raise JobError(
            f"{spec.ranks} ranks ({spec.nodes} node(s) x {spec.ranks_per_node}) for {grids} of {points} "
            f"points: ask for fewer GPUs or tasks, or use a finer grid"
        )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return cli.run(lambda: command(args), debug=args.debug)


def command(args: argparse.Namespace) -> int:
    if args.clean_mpi_shm:
        for path in clean_mpi_shm(dict(os.environ)):
            print(f"llmpi: removed {path}, left by a killed run of this job", file=sys.stderr)
        return 0
    spec = spec_from_args(args)
    if spec.jobs:
        check_jobs(spec)
    text = render(spec)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    try:
        out.write_text(text)
        out.chmod(0o755)
    except OSError as e:
        disk = disk_error(e, out, "writing", then="run the command again")
        raise disk or JobError(f"cannot write {out} ({e.strerror}); choose another -o") from None
    submit = "sbatch " + shlex.quote(str(out)) + ("" if spec.jobs else " JOB.yaml [JOB.yaml ...]")
    print(f"llmpi: wrote {out}; submit it with: {submit}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

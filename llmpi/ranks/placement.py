"""Which GPU and how many CPU threads each rank takes: pure functions of what the ranks of one node see.

    seen = runtime.look(job.runtime.device)            # every rank: its launcher, the GPUs torch shows it, its cores
    node = local.allgather(seen)                       # the ranks of its node (MPI's shared-memory split)
    bound = placement.bind(node, local.Get_rank(), job.runtime.threads)   # bound.gpu -> runtime.pick_device
    places = comm.gather(bound.place(rank, str(device), threads, os.getpid()))   # rank 0: describe, warnings

Also ``check_launch``: a launcher that started N processes which MPI counts otherwise (each "rank 0 of 1").

No MPI and no torch here: the sweep gathers, ``runtime`` asks torch and the OS, and everything that decides is a
function of plain data, tested with every case faked (tests/test_placement.py). The launcher's variables
(``SLURM_*``, ``OMPI_*``, MPICH's ``MPI_LOCALRANKID`` and ``PMI_SIZE``, ``CUDA_VISIBLE_DEVICES``) are read here
alone, in ``look`` and ``launch_mismatch``.

The rule, for the cases users meet:

- Ranks of a node that see the same GPUs (the same UUIDs, in the same order) share them out: the k-th of those
  ranks takes GPU k mod (their number of GPUs). ``mpirun -n 8`` on an 8-GPU node: every rank sees all eight, and
  local rank k takes GPU k.
- ``srun --gpus-per-task=1`` or ``--gpu-bind=...``: SLURM gives each rank its own GPU through
  ``CUDA_VISIBLE_DEVICES``; each rank is the only one seeing its set and takes its GPU 0.
- More ranks than GPUs: GPUs are shared round robin (a warning names them; several ranks on one GPU run, each
  slower). Fewer ranks than GPUs: the others stay idle (a warning names them).
- "The k-th": in the order of the launcher's node-local rank where it gives one to every rank of the group and no
  two alike (Open MPI's ``OMPI_COMM_WORLD_LOCAL_RANK``, MPICH's ``MPI_LOCALRANKID``, srun's ``SLURM_LOCALID``:
  the number a wrapper script would put into ``CUDA_VISIBLE_DEVICES``); else in the order of MPI's node split.

CPU threads (``runtime.threads: auto``): the cores of this rank's affinity mask, divided among the ranks of the
node whose masks overlap it. An unbound ``mpirun`` (MPICH) gives every rank the whole machine: divided by all;
``srun --cpu-bind`` or Open MPI's ``--bind-to core`` give each rank its own cores: used whole; Open MPI binds more
than two ranks to a package by default, which several ranks share: divided among them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..job.errors import MpiError

# The launcher's own node-local rank, most specific first: an mpirun started inside a SLURM allocation launches
# its daemons with srun, so its ranks inherit SLURM_LOCALID of the daemon (0 on every node) as well.
LOCAL_RANK_VARIABLES = (
    ("OMPI_COMM_WORLD_LOCAL_RANK", "Open MPI's mpirun"),
    ("MPI_LOCALRANKID", "MPICH's mpirun"),
    ("PALS_LOCAL_RANKID", "Cray's PALS"),
    ("SLURM_LOCALID", "srun"),
)


# How many ranks the launcher started, by the same launchers in the same order. A batch script's own process has
# SLURM_NTASKS but no step: only a step's task count says what srun started.
SIZE_VARIABLES = (
    ("OMPI_COMM_WORLD_SIZE", "Open MPI's mpirun"),
    ("PMI_SIZE", "MPICH's mpirun"),
    ("PALS_SIZE", "Cray's PALS"),
    ("SLURM_STEP_NUM_TASKS", "srun"),
)


def check_launch(environ: Mapping[str, str], size: int, library: str) -> None:
    """MpiError where MPI and the launcher disagree on the number of ranks (``launch_mismatch``)."""
    mismatch = launch_mismatch(environ, size, library)
    if mismatch is not None:
        raise MpiError(mismatch)


def launch_mismatch(environ: Mapping[str, str], size: int, library: str) -> str | None:
    """What is wrong when MPI counts ``size`` ranks but the launcher started another number, else None.

    The usual cause: an mpi4py whose MPI does not speak the launcher's process manager, so that every process
    starts alone as "rank 0 of 1" (Open MPI 5 under ``srun --mpi=pmi2``; PyPI's MPICH under another MPI's
    mpirun), and N copies of the sweep would fight over one file.
    """
    for name, who in SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if not value.isdigit():
            continue
        started = int(value)
        if started == size:
            return None
        fix = (
            "give srun the --mpi plugin this MPI needs (Open MPI 5: --mpi=pmix; MPICH: --mpi=pmi2; `srun --mpi=list` "
            "shows what your SLURM has), or start the ranks with this MPI's own mpirun"
            if who == "srun"
            else "start the ranks with the mpirun of the MPI that mpi4py loaded (python -m mpi4py --mpi-library), or "
            "rebuild mpi4py against this mpirun's MPI: pip install --no-cache-dir --no-binary=mpi4py mpi4py"
        )
        return (
            f"{who} started {started} processes ({name}={started}), but MPI ({library}) sees {size} rank(s) in "
            f"this job: mpi4py's MPI and the launcher do not belong together; {fix}"
        )
    return None


@dataclass(frozen=True)
class Seen:
    """What one rank sees of its node, before any choice: gathered over the node, the input of ``bind``."""

    host: str
    launcher: str  # who started the rank, for messages ("srun", "Open MPI's mpirun", ..., "no launcher")
    launcher_local_rank: int | None  # the launcher's node-local rank of this process, None where it gives none
    gpus: tuple[str, ...]  # the GPUs torch sees, in torch's index order, by identity (UUID where torch has it)
    visible: str | None  # CUDA_VISIBLE_DEVICES as the launcher set it; None: unset (every GPU of the node)
    cpus: tuple[int, ...]  # the cores this process may run on (its affinity mask)


def look(environ: Mapping[str, str], host: str, gpus: Sequence[str], cpus: Sequence[int]) -> Seen:
    """A rank's ``Seen`` from its environment (read here alone) and what torch and the OS show it."""
    launcher, local = "no launcher", None
    for name, who in LOCAL_RANK_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            launcher, local = who, int(value)
            break
    if launcher == "srun" and "SLURM_STEP_ID" not in environ:
        launcher = "SLURM"  # a batch script's own process, not a task of a step
    return Seen(host, launcher, local, tuple(gpus), environ.get("CUDA_VISIBLE_DEVICES"), tuple(sorted(cpus)))


@dataclass(frozen=True)
class Place:
    """Where one rank ended up, for the banner and the run record (gathered on rank 0)."""

    rank: int  # world rank
    host: str
    local_rank: int
    local_size: int
    launcher: str
    device: str  # "cuda:3", "cpu"
    gpu_id: str | None  # the GPU's UUID (or other identity), None on a CPU
    threads: int
    pid: int
    visible: str | None = None  # CUDA_VISIBLE_DEVICES where the launcher set it (shown with the GPU)
    warnings: tuple[str, ...] = ()  # about the whole node; every rank of the node carries the same


@dataclass(frozen=True)
class Binding:
    """This rank's share of its node: the GPU index to use (in its own visible set) and its CPU threads."""

    host: str
    local_rank: int
    local_size: int
    launcher: str
    gpu: int | None  # index into the GPUs this rank sees (torch's cuda:<gpu>); None: no GPU to use
    gpu_id: str | None
    threads: int
    visible: str | None = None
    warnings: tuple[str, ...] = field(default=())

    def place(self, rank: int, device: str, threads: int, pid: int) -> Place:
        """The gathered record of this rank, once its device and thread count are set."""
        on_gpu = device.startswith("cuda")
        return Place(
            rank,
            self.host,
            self.local_rank,
            self.local_size,
            self.launcher,
            device,
            self.gpu_id if on_gpu else None,
            threads,
            pid,
            self.visible if on_gpu else None,
            self.warnings,
        )


def _order(group: list[int], node: Sequence[Seen]) -> list[int]:
    """The ranks of a group in the launcher's local-rank order where it is complete and unambiguous."""
    keys = [node[i].launcher_local_rank for i in group]
    if None not in keys and len(set(keys)) == len(keys):
        return [i for _, i in sorted(zip(keys, group))]
    return list(group)


def gpu_choices(node: Sequence[Seen]) -> list[int | None]:
    """For each rank of the node (in MPI's node order), the index of the GPU it takes among those it sees."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, seen in enumerate(node):
        groups.setdefault(seen.gpus, []).append(i)
    choice: list[int | None] = [None] * len(node)
    for gpus, members in groups.items():
        if not gpus:
            continue
        for k, i in enumerate(_order(members, node)):
            choice[i] = k % len(gpus)
    return choice


def auto_threads(node: Sequence[Seen], me: int) -> int:
    """The cores of this rank's mask divided among the ranks of the node whose masks overlap it (itself too)."""
    mine = set(node[me].cpus)
    if not mine:  # the mask is unknown (not Linux): divide the machine among the node's ranks
        return max(1, (os.cpu_count() or 1) // len(node))
    sharers = sum(1 for seen in node if mine & set(seen.cpus))
    return max(1, len(mine) // sharers)


def node_warnings(node: Sequence[Seen], choice: Sequence[int | None]) -> tuple[str, ...]:
    """What a user should know about the node's binding: GPUs shared by several ranks, GPUs left idle."""
    host = node[0].host if node else "?"
    users: dict[str, list[int]] = {}
    for i, (seen, k) in enumerate(zip(node, choice)):
        if k is not None:
            users.setdefault(seen.gpus[k], []).append(i)
    every = list(dict.fromkeys(g for seen in node for g in seen.gpus))
    out = []
    shared = {gpu: ranks for gpu, ranks in users.items() if len(ranks) > 1}
    if shared:
        srun = any(seen.launcher == "srun" for seen in node)
        fix = (
            "ask srun for one GPU per task (--gpus-per-task=1, or --ntasks-per-node equal to the GPUs per node)"
            if srun
            else f"start at most {len(every)} rank(s) per node (mpirun -n GPUs x nodes)"
        )
        listed = "; ".join(f"{_short(gpu)}: local ranks {', '.join(map(str, r))}" for gpu, r in shared.items())
        out.append(
            f"{host}: {len(node)} ranks share {len(every)} GPU(s), several per GPU ({listed}); they run, each "
            f"slower, with the memory of one GPU between them; for one rank per GPU {fix}"
        )
    idle = [gpu for gpu in every if gpu not in users]
    if idle and users:
        out.append(
            f"{host}: {len(idle)} of {len(every)} GPU(s) idle ({', '.join(map(_short, idle))}): {len(node)} "
            f"rank(s) on the node; start one rank per GPU to use them all"
        )
    return tuple(out)


def bind(node: Sequence[Seen], me: int, threads: int | str = "auto", use_gpu: bool = True) -> Binding:
    """This rank's GPU and threads, from what every rank of its node sees (``node[me]`` is this rank).

    Every rank of a node computes the same choices from the same gathered list, so no two disagree about who has
    which GPU. ``use_gpu`` False (``runtime.device: cpu``) binds no GPU; ``threads`` an integer is used as given.
    """
    if not 0 <= me < len(node):
        raise ValueError(f"me={me} is not an index of the node's {len(node)} ranks")
    choice = gpu_choices(node) if use_gpu else [None] * len(node)
    seen, k = node[me], choice[me]
    return Binding(
        host=seen.host,
        local_rank=me,
        local_size=len(node),
        launcher=seen.launcher,
        gpu=k,
        gpu_id=seen.gpus[k] if k is not None else None,
        threads=threads if isinstance(threads, int) else auto_threads(node, me),
        visible=seen.visible,
        warnings=node_warnings(node, choice),
    )


def _short(gpu: str) -> str:
    """A GPU's identity short enough for a line (UUIDs are unique in their first 8 hex digits in practice)."""
    return gpu[:12] if gpu.startswith("GPU-") and len(gpu) > 12 else gpu


def describe(places: Sequence[Place]) -> list[str]:
    """One line per rank for the banner: where it runs, on which GPU (index and UUID) or CPU, with how many threads.

    A wrong binding (two ranks on one UUID, a rank on the wrong host) is visible here at a glance.
    """
    lines = []
    for p in sorted(places, key=lambda p: p.rank):
        device = p.device if p.gpu_id is None else f"{p.device} {p.gpu_id}"
        if p.visible is not None:
            device += f" (CUDA_VISIBLE_DEVICES={p.visible})"
        lines.append(
            f"llmpi: rank {p.rank} on {p.host} (local {p.local_rank} of {p.local_size}, {p.launcher}): {device}, "
            f"{p.threads} thread{'s' if p.threads != 1 else ''}, pid {p.pid}"
        )
    return lines


def warnings(places: Sequence[Place]) -> list[str]:
    """Each node's binding warnings once (every rank of a node carries the same)."""
    return list(dict.fromkeys(w for p in places for w in p.warnings))

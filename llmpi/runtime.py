"""Where a rank computes: its device, its CPU threads, its batch size. Torch only, no MPI.

The caller says which node-local rank this is and how many ranks share the node (``sweep`` learns both from
MPI's shared-memory split, which works under mpirun and srun alike).
"""

from __future__ import annotations

import os

import torch

from .errors import JobError


def pick_device(spec: str, local_rank: int) -> torch.device:
    """``auto``: GPU (local rank mod GPUs on the node) when there is one, else CPU; ``cuda`` insists on a GPU."""
    if spec == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if spec == "cuda":
        built = "with" if torch.backends.cuda.is_built() else "without"
        raise JobError(
            f"runtime.device is cuda but torch sees no GPU here (this torch {torch.__version__} was built {built} "
            f"CUDA); use runtime.device: auto or cpu, or run on a GPU node"
        )
    return torch.device("cpu")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pick_threads(spec: int | str, local_size: int) -> int:
    """``auto``: the cores this process may use, shared among the ranks on the node.

    When a launcher pins each rank to its own cores (srun --cpu-bind), the affinity mask already is this rank's
    share and is used whole; when every rank sees the whole machine, the machine is divided.
    """
    if isinstance(spec, int):
        return spec
    cores = usable_cores()
    whole = os.cpu_count() or cores
    if cores < whole:
        return max(1, cores)
    return max(1, cores // max(1, local_size))


def configure(device: torch.device, threads: int) -> None:
    """Set the thread count deliberately (MPICH's mpirun otherwise leaves one) and make kernels deterministic."""
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = False  # timing-based algorithm choice would differ between ranks
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def auto_batch_size(device: torch.device, images: int) -> int:
    """A fixed, device-dependent batch: the same on every rank, so every rank computes the same bits."""
    return min(images, 256 if device.type == "cpu" else 2048)

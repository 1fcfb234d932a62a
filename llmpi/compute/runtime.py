"""Where a rank computes: its device, its CPU threads, its precision, its batch sizes. Torch only, no MPI.

``gpu_identities`` and ``affinity`` say what this process sees (GPUs by UUID, its cores); ``llmpi.ranks.placement``
decides from what every rank of the node sees which GPU and how many threads each takes (the sweep gathers over
MPI's shared-memory split, which works under mpirun and srun alike), and ``pick_device`` turns that choice into a
device. Everything here that
could change the bits a rank computes is a fixed function of the device type and the job, never of timing: the
same job gives every rank the same kernels (the batch size chosen by timing is decided on one rank and broadcast
by the sweep).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch

from ..job.errors import JobError


def gpu_identities() -> tuple[str, ...]:
    """The GPUs torch sees, in its index order, by UUID (``GPU-...``, as nvidia-smi writes it): the same physical
    GPU has the same name in every process, whatever CUDA_VISIBLE_DEVICES renumbered. A torch without ``uuid``
    falls back to the index, which only this process understands.
    """
    ids = []
    for i in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        ids.append(f"GPU-{uuid}" if uuid is not None else f"index {i}")
    return tuple(ids)


def pick_device(spec: str, gpu: int | None) -> torch.device:
    """``auto``: the GPU ``placement.bind`` chose (an index into the GPUs this process sees) when there is one, else
    the CPU; ``cuda`` insists on a GPU."""
    if spec == "cpu":
        return torch.device("cpu")
    if gpu is not None and torch.cuda.is_available():
        return torch.device("cuda", gpu)
    if spec == "cuda":
        built = "with" if torch.backends.cuda.is_built() else "without"
        raise JobError(
            f"runtime.device is cuda but torch sees no GPU here (this torch {torch.__version__} was built {built} "
            f"CUDA); use runtime.device: auto or cpu, or run on a GPU node"
        )
    return torch.device("cpu")


def affinity() -> list[int]:
    """The cores this process may run on, or [] where the system cannot say (not Linux)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return []


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pick_threads(spec: int | str) -> int:
    """For a process alone on its machine (training): ``auto`` is every core it may use. A sweep's ranks share
    their node's cores by ``placement.bind`` instead."""
    if isinstance(spec, int):
        return spec
    return max(1, usable_cores())


KERNELS = ("deterministic", "fast")


def configure(device: torch.device, threads: int, precision: str = "fp32", kernels: str = "deterministic") -> None:
    """Set the thread count deliberately (MPICH's mpirun otherwise leaves one), the precision, and the kernels."""
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    set_kernels(kernels)
    set_precision(device, precision)


def settings() -> dict:
    """The process-wide switches ``configure`` sets (threads, kernels, precision, the current GPU), as they are
    now: a library call (``llmpi.surface`` in a notebook) puts them back with ``restore`` when it is done."""
    out = {
        "threads": torch.get_num_threads(),
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "cudnn.deterministic": torch.backends.cudnn.deterministic,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "kernels": _kernels,
    }
    if hasattr(torch.backends.mkldnn, "deterministic"):
        out["mkldnn.deterministic"] = torch.backends.mkldnn.deterministic
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda.device"] = torch.cuda.current_device()
    if "torch._inductor.config" in sys.modules:
        import torch._inductor.config as inductor

        if hasattr(inductor, "deterministic"):
            out["inductor.deterministic"] = inductor.deterministic
    return out


def restore(saved: dict) -> None:
    """Set the switches back to what ``settings`` returned."""
    global _kernels
    torch.set_num_threads(saved["threads"])
    torch.backends.cudnn.benchmark = saved["cudnn.benchmark"]
    torch.backends.cudnn.deterministic = saved["cudnn.deterministic"]
    torch.backends.cudnn.allow_tf32 = saved["cudnn.allow_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = saved["matmul.allow_tf32"]
    _kernels = saved["kernels"]
    if "mkldnn.deterministic" in saved:
        torch.backends.mkldnn.deterministic = saved["mkldnn.deterministic"]
    if "cuda.device" in saved:
        torch.cuda.set_device(saved["cuda.device"])
    if "torch._inductor.config" in sys.modules:
        import torch._inductor.config as inductor

        if hasattr(inductor, "deterministic"):
            inductor.deterministic = saved.get(
                "inductor.deterministic", os.environ.get("TORCHINDUCTOR_DETERMINISTIC") == "1"
            )


def set_kernels(kernels: str) -> None:
    """``deterministic``: every algorithm a fixed function of the shapes, so 1 rank and N ranks compute the same
    bits -- cuDNN without its timing-based choice (``benchmark``, which can pick differently on each rank) and with
    deterministic algorithms only, oneDNN deterministic, Inductor without on-device benchmarking. ``fast`` lifts
    all of that: cuDNN times its algorithms per shape and may use non-deterministic ones, Inductor benchmarks
    kernel variants; ranks may then differ in the last bits (the measured deviation is in the README).

    Process-wide switches, like the precision's. Inductor's ``max_autotune`` (minutes of tuning per network) stays
    off in both."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, not {kernels!r}")
    deterministic = kernels == "deterministic"
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if hasattr(torch.backends.mkldnn, "deterministic"):
        torch.backends.mkldnn.deterministic = deterministic
    global _kernels
    _kernels = kernels
    if "torch._inductor.config" in sys.modules:  # else set when something compiles: importing it costs 1.4 s
        _inductor_kernels()


_kernels = "deterministic"  # the mode set_kernels last set, which compile_for gives Inductor


def _inductor_kernels() -> None:
    import torch._inductor.config as inductor

    if hasattr(inductor, "deterministic"):  # older torch had no such switch (and chose without benchmarking)
        inductor.deterministic = _kernels == "deterministic"


def set_precision(device: torch.device, precision: str) -> None:
    """TF32 tensor cores on for ``tf32`` only (cuDNN's own default is on: fp32 must switch it off explicitly).

    Process-wide flags: the evaluator sets them for the precision it was made for. On a CPU there is nothing to
    switch (tf32 computes as fp32 there); bf16 is a dtype, handled by the evaluator.
    """
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def memory_format(device: torch.device, precision: str = "fp32") -> torch.memory_format:
    """NHWC where the convolutions run natively in it: oneDNN's CPU convolutions, and cuDNN's tensor-core ones
    (tf32, bf16). Plain fp32 on a GPU has no tensor cores to feed and ran faster in NCHW (bench, H200, ResNet-56:
    64,300 images/s NCHW at the best batch against 51,600 in the sweep with NHWC). A fixed choice per device type
    and precision, so every rank runs the same kernels."""
    if device.type == "cuda" and precision == "fp32":
        return torch.contiguous_format
    return torch.channels_last


def default_batch_size(device: torch.device, images: int) -> int:
    """The batch used when there is too little work to pay for probing, and where probing starts.

    On a CPU, 32 images per thread (64 to 256): enough to keep every thread busy, small enough to stay in cache
    (measured: CIFAR ResNets on 2 threads run fastest at 64, 5-10% slower at 128, 30% at 256)."""
    if device.type == "cpu":
        return min(images, max(64, min(256, 32 * torch.get_num_threads())))
    return min(images, 2048)


def min_batch(device: torch.device) -> int:
    return 32 if device.type == "cpu" else 256


def max_batch(device: torch.device) -> int:
    """The largest batch probed: CPUs peak far below it; on a GPU memory (an OOM ends the probe) limits first."""
    return 4096 if device.type == "cpu" else 65536


def probe_seconds(device: torch.device) -> float:
    """How long to time one candidate at least (repeating short passes, up to 20): one pass of a small batch
    takes milliseconds, which a timer and a busy machine blur."""
    return 0.05


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_for(function: Callable, device: torch.device) -> Callable:
    """torch.compile for a network whose weights change in place between calls: CUDA graphs on a GPU (parameters
    keep their addresses, so every replay reads the current weights), Inductor kernels on a CPU. Static shapes:
    the evaluator gives it one batch shape. Inductor's ``freezing`` (weights baked in as constants) must stay off:
    the weights are graph inputs, which is what lets one compilation serve every point."""
    import torch._inductor.config as inductor

    _inductor_kernels()
    assert not inductor.freezing, "torch._inductor.config.freezing would bake the weights of one point into the graph"
    return torch.compile(function, mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)


# What compiling costs, before it is tried (runtime.compile: auto compiles only where the sweep is long enough to
# pay for it): a fixed start plus seconds per leaf module (conv, BatchNorm, Linear ...), fitted to the cold
# compilation (empty Inductor cache: what the first run on a machine pays) on a quiet 2-core CPU, 2026-12-07
# (``python -m bench.compile``, bench/README.md): resnet8 (20 leaves) 12.3-12.6 s, resnet20 (50) 13.9-18.1 s,
# resnet56 (140) 18.4-22.4 s; with a warm cache the same compilations take 1.9-4.7 s, and on a loaded machine 2-3x
# the cold figures. GPUs compile Triton kernels in parallel worker processes and take about as long. A prior, not a
# promise: the probe then measures, and run.json keeps guess and actual side by side.
COMPILE_BASE_SECONDS = 11.0
COMPILE_SECONDS_PER_MODULE = 0.07


COMPILE_GUESS_VARIABLE = "LLMPI_COMPILE_GUESS_SECONDS"


def compile_guess(device: torch.device, model: torch.nn.Module) -> float:
    """Seconds compiling ``model`` is expected to take here (see the constants above), or what the environment
    variable ``LLMPI_COMPILE_GUESS_SECONDS`` says: for a machine whose compiler the constants misjudge (run.json
    records the guess beside the seconds compiling took, to set it from), and for tests that need ``auto`` to try."""
    given = os.environ.get(COMPILE_GUESS_VARIABLE)
    if given is not None:
        try:
            seconds = float(given)
        except ValueError:
            seconds = -1.0
        if not seconds >= 0:  # NaN too
            raise JobError(f"{COMPILE_GUESS_VARIABLE}={given!r}: give seconds, a number >= 0, or unset it")
        return seconds
    leaves = sum(1 for m in model.modules() if next(m.children(), None) is None)
    return COMPILE_BASE_SECONDS + COMPILE_SECONDS_PER_MODULE * leaves


def before_forward(device: torch.device, compiled: bool) -> None:
    """With CUDA graphs, mark a new step so the previous pass's outputs may be overwritten (we consumed them)."""
    if compiled and device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()

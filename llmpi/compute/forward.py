"""How a rank runs its network over a batch: eager, with BatchNorm folded, compiled -- one path for the sweep.

    path = ForwardPath(fold=True, compile=True)
    net = Network.build(model, path, example=images[:1])   # shared by every evaluator of this model and path
    net.refresh(sources)          # after the weights moved to a point: the folded layers follow (llmpi.compute.fold)
    seconds = net.warm_up(batch)  # compiles (once per process) on the sweep's one static batch shape
    logits = net(batch)

The path is decided once, on rank 0 (``llmpi.compute.evaluate.autotune``), and broadcast: folding and compiling change
per-image losses in their last bits, so every rank must run the same one for 1 and N ranks to give the same file.

Compiled: ``torch.compile`` with Inductor (CUDA graphs on a GPU) of the network -- the folded one when folding --
whose weights are module parameters rewritten in place between points. Dynamo lifts a module's parameters and
buffers into graph *inputs* (never constants: Inductor's ``freezing``, which would bake them in, stays off), and
CUDA graphs read them at fixed addresses, so one compilation serves every point of the sweep: tests/test_forward.py
runs 100 points and checks dynamo's counters (one graph, no recompilation) and the values against eager ones.
Batches have one static shape (the evaluator pads the last one), so there is no second graph either.

A path that cannot be built here -- no working C++ compiler for Inductor, Triton or CUDA graphs failing, a network
dynamo refuses (an operator without a fake kernel), a folding that fails, memory running out while compiling --
raises ``PathFailed`` with what failed in one line (``reason``), where it is built (``Network.build``) or first run
(``Network.warm_up``), and is forgotten: the eager network is untouched, so ``runtime.compile: auto`` falls back to
the best path that works (``llmpi.compute.evaluate.autotune``).
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from . import fold as folding
from . import runtime
from .oom import release


@dataclass(frozen=True)
class ForwardPath:
    """Which forward pass a sweep runs: BatchNorm folded or not, compiled or not."""

    fold: bool = False
    compile: bool = False

    def describe(self) -> str:
        return {
            (False, False): "eager",
            (True, False): "folded",
            (False, True): "compiled",
            (True, True): "folded+compiled",
        }[(self.fold, self.compile)]


EAGER = ForwardPath()

# One Network per (model, path) in a process: the evaluators of a data.split: both job share the network, so they
# share its compilation too.
_NETWORKS: weakref.WeakKeyDictionary[nn.Module, dict[ForwardPath, Network]] = weakref.WeakKeyDictionary()


class NotFoldable(ValueError):
    """The network cannot be traced by torch.fx (data-dependent control flow in its ``forward``)."""


class PathFailed(RuntimeError):
    """Building or first running a forward path failed: ``stage`` ("folding", "compiling"), the ``path``, and
    ``reason``, the failure in one line (``failure``); the error itself is the cause (``--debug`` shows it)."""

    def __init__(self, path: ForwardPath, stage: str, error: BaseException) -> None:
        self.path, self.stage, self.reason = path, stage, failure(error)
        super().__init__(f"{stage} the {path.describe()} forward pass failed: {self.reason}")


def failure(error: BaseException, limit: int = 160) -> str:
    """What went wrong, in one line: the error's first line without the exception-name prefix Inductor and dynamo
    put on it ("InvalidCxxCompiler: No working C++ compiler found ..." -> "No working C++ compiler found ..."), for
    a compiler that ran and failed the first line of what it printed, for dynamo what the traced code raised."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    head = re.sub(r"^(\w+\.)*[A-Z]\w*(Error|Exception|Failed|Compiler): ", "", lines[0])
    if "Output:" in lines[:-1]:  # Inductor's CppCompileError: the compiler's own words follow
        head += f": {lines[lines.index('Output:') + 1]}"
    elif inner := re.search(r"\bgot \w+\((['\"])(.+?)\1\)", str(error)):  # dynamo: what the traced code raised
        head += f": {inner.group(2).split('. ')[0]}"
    return head if len(head) <= limit else head[: limit - 3] + "..."


class Network:
    """``model`` along one forward path. The model is the evaluator's, already on its device, dtype and memory
    format, in eval mode; its weights are rewritten in place per point by the evaluator."""

    def __init__(self, model: nn.Module, path: ForwardPath, example: torch.Tensor, device: torch.device) -> None:
        self.model, self.path, self.device = model, path, device
        self.folded: folding.Folded | None = None
        base: nn.Module = model
        if path.fold:
            try:
                self.folded = folding.fold(model, example)
            except Exception as e:  # traced, but folding it failed: whatever the network raised
                raise PathFailed(path, "folding", e) from e
            if self.folded is None:
                raise NotFoldable("torch.fx cannot trace the network, so its BatchNorm cannot be folded")
            base = self.folded.network
        self.forward: Callable[[torch.Tensor], torch.Tensor] = (
            runtime.compile_for(base, device) if path.compile else base
        )
        self.warm_shapes: set[tuple[int, ...]] = set()
        self.compile_seconds = 0.0

    @classmethod
    def build(cls, model: nn.Module, path: ForwardPath, example: torch.Tensor, device: torch.device) -> Network:
        """The process's network for ``model`` along ``path`` (made on first use); NotFoldable or PathFailed."""
        per_model = _NETWORKS.setdefault(model, {})
        if path not in per_model:
            per_model[path] = cls(model, path, example, device)
        return per_model[path]

    def forget(self) -> None:
        """Drop this network from the process's cache (its path failed: a later build starts over)."""
        per_model = _NETWORKS.get(self.model, {})
        if per_model.get(self.path) is self:
            del per_model[self.path]

    def describe(self) -> str:
        text = self.path.describe()
        if self.folded is not None:
            text += f" ({self.folded.describe()})"
        return text

    def gather(self, sources: Mapping[str, torch.Tensor]) -> list | None:
        """What ``refresh`` reads: the float32 tensors (rewritten in place per point) of the entries folding needs."""
        return None if self.folded is None else self.folded.gather(sources)

    def refresh(self, gathered: list | None) -> None:
        """After the weights moved: recompute the folded layers from the point's values (nothing when unfolded)."""
        if self.folded is not None:
            self.folded.refresh(gathered)

    def warm_up(self, batch: torch.Tensor) -> float:
        """Run one batch of the sweep's shape, which compiles on first use; the seconds it took when it compiled
        (0 when this shape already ran or nothing compiles). Counted once per process in ``compile_seconds``."""
        shape = tuple(batch.shape)
        if not self.path.compile or shape in self.warm_shapes:
            return 0.0
        runtime.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                runtime.before_forward(self.device, True)
                self.forward(batch)
            runtime.synchronize(self.device)
        except Exception as e:  # Inductor, Triton, CUDA graphs, dynamo, out of memory: the path does not work here
            self.forget()
            release(self.device)  # what the failed compilation held on a GPU
            raise PathFailed(self.path, "compiling", e) from e
        seconds = time.perf_counter() - t0
        self.warm_shapes.add(shape)
        self.compile_seconds += seconds
        return seconds

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        runtime.before_forward(self.device, self.path.compile)
        return self.forward(x)


def can_fold(model: nn.Module, example: torch.Tensor, device: torch.device) -> bool:
    """Whether ``model`` has BatchNorm that folds: torch.fx traces it and at least one BatchNorm follows a layer of
    its own (the folded network is kept for later use)."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    try:
        network = Network.build(model, ForwardPath(fold=True), example, device)
    except NotFoldable:
        return False
    return bool(network.folded.pairs)

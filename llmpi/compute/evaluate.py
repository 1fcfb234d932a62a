"""The loss surface itself: f(a, b) = L(θ* + a·δ + b·η), mean cross-entropy and accuracy over resident data.

    ev = Evaluator(model, [dx, dy], images, labels, batch_size=256)
    loss, acc = ev((0.25, -0.5))
    values = ev.many([(0.25, -0.5), (0.5, -0.5)])          # [(loss, acc), ...]
    tuning = autotune(ev, work_images=2601 * 50000)        # sets ev.batch_size and ev's forward path
    ev.use(ForwardPath(fold=True, compile=True)); ev.prepare()   # or choose the path yourself

Running at the forward-pass limit. The images live on the device once, normalised, in the dtype and memory
format the network consumes; a batch is a view. Each point rewrites the perturbed weights in place from the
untouched base (θ = θ* + a·δ + b·η by three fused multi-tensor ops: no state_dict, no allocation); entries every
direction leaves at zero are never touched. Per-image losses and hits stay on the device; per point the device
tallies them and the host reads one small array. The forward pass itself runs along one ``ForwardPath``
(:mod:`llmpi.compute.forward`): eager, with BatchNorm folded into the layer before it at every point
(:mod:`llmpi.compute.fold`), compiled, or both. A compiled forward runs one static batch shape: the last batch is padded
(eval-mode per-image losses do not depend on the other images of a batch, and the padding rows are never read), and an
automatic batch size is balanced, ceil(N / ceil(N / b)), so the padding is less than one image per batch. ``autotune``
(run once, on one rank, the result broadcast) picks the batch size and the path by timing, compile time included.

Exact, order-independent mean. Per-image losses are float32 as the network produced them (the logits are cast
to float32 for the cross-entropy in every precision). Each is split exactly as m·2^(e-24) with an integer
mantissa |m| < 2^24 (``torch.frexp``), and m is added into a bin for its exponent e on the device. The bins are
float64 holding integers: with at most 2^29 images a bin stays below 2^53, where every float64 sum of integers is
exact, hence associative -- the bins depend neither on batching, nor on the order of images, nor on atomics. The
host forms Σ_e bin_e·2^(e-24) as a Python integer and rounds it once to float64. That is the correctly rounded
sum of the per-image losses, the very value ``math.fsum`` returns, and the stored mean is that sum / N.
Accuracy is an integer count. So a stored value depends only on the point and the per-image losses; the batch
size and the forward path (folding, compiling) can change per-image losses in their last bits (other kernels),
never the meaning, and the sweep decides them once for all ranks so that every rank computes the same bits
(with ``runtime.kernels: deterministic``; ``fast`` lets cuDNN and Inductor choose kernels by timing, per rank).
The exception: a rank that runs out of memory halves its own batch and retries the point (the values then may
differ in the last bits from what the other ranks would have computed).

Precision: ``fp32`` (default; TF32 off, deterministic cuDNN), ``tf32`` (TF32 tensor cores for convolutions and
matmuls on CUDA; no effect on a CPU), ``bf16`` (network and images in bfloat16; the perturbation is formed in
float32 from float32 θ*, δ, η and rounded once). ``python -m bench`` measures each one's deviation from fp32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..job.errors import JobError
from ..space.directions import Direction, perturbed_entries
from ..space.recipe import Recipe
from ..space.theta import HeldWeights, Weights, make_weights
from . import losses, runtime
from .batches import make_source
from .forward import EAGER, ForwardPath, Network, PathFailed, can_fold
from .oom import fits, retry_halving

PRECISIONS = ("fp32", "tf32", "bf16")

# Exponents frexp gives a finite float32: 2^-149 = 0.5·2^-148 up to just below 2^128.
E_MIN, E_MAX = -148, 128
BINS = E_MAX - E_MIN + 1
CORRECT, PLAIN_SUM = BINS, BINS + 1  # after the bins: the correct count, and a plain float64 sum (NaN/inf only)
ROW = BINS + 2
MANTISSA = float(1 << 24)  # frexp's mantissa in [0.5, 1) times 2^24 is an integer: float32 has 24 bits
MAX_IMAGES = 1 << 29  # a bin then stays below 2^29·2^24 = 2^53: every partial sum is an exact float64 integer


def exact_sum(row: Sequence[float]) -> float:
    """The correctly rounded float64 value of Σ_e bins[e]·2^(e-24) for one tally row (see the module docstring).

    A NaN or infinite per-image loss makes the plain sum NaN or infinite; it is then the answer, as in ``fsum``.
    """
    if not math.isfinite(row[PLAIN_SUM]):
        return row[PLAIN_SUM]
    total = 0
    for k, b in enumerate(row[:BINS]):
        if b:
            total += int(b) << k
    # int -> float rounds correctly (half to even); the power-of-two scale is exact in float64's normal range.
    return math.ldexp(float(total), E_MIN - 24)


def tally_(losses: torch.Tensor, hits: torch.Tensor, tally: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """Fill ``tally`` (points, ROW) float64 from per-image ``losses`` (points, n) float32 and ``hits`` (bool).

    Each loss m·2^(e-24) adds its integer mantissa m to bin e (see the module docstring): every bin stays an
    integer below 2^53, so the float64 additions are exact, in any order, on any device. ``rows``: the flat
    offset of each point's bins (allocated once by the caller; made here if not given).
    """
    if rows is None:
        rows = (torch.arange(len(losses), dtype=torch.int32, device=losses.device) * ROW - E_MIN).view(-1, 1)
    mantissa, exponent = torch.frexp(losses)
    values = torch.nan_to_num(mantissa.double() * MANTISSA, nan=0.0, posinf=0.0, neginf=0.0)
    tally.zero_()
    tally.view(-1).index_add_(0, (exponent.clamp_(E_MIN, E_MAX) + rows).view(-1), values.view(-1))
    tally[:, CORRECT] = hits.sum(dim=1)
    tally[:, PLAIN_SUM] = losses.sum(dim=1, dtype=torch.float64)


class Evaluator:
    """Evaluates points of one surface on one device; holds the base weights, directions and data there.

    ``images`` are normalised float NCHW (any dtype; converted once to what the network consumes), ``labels``
    int64, on ``device`` (default: the images' device) or, with ``placement`` host or auto, anywhere: they are then
    kept resident on the device or streamed from host memory batch by batch (``llmpi.compute.batches``; the same
    values). ``directions``: full directions or a recipe, held as ``hold_directions`` says (``llmpi.space.theta``), or
    the ``weights`` of another evaluator of the same network, shared (one θ* on the device for every split).
    ``shrink_on_oom``: halve the batch and retry a point when the device runs out of memory (for an automatic batch
    size); otherwise the error says what to set. ``fold``, ``compile``: the forward path to start with (``use``
    changes it; ``autotune`` chooses it).

    ``loss`` is "crossentropy", "mse", or a :class:`losses.FactoryLoss` (the user's ``loss.factory``; ``images`` /
    ``labels`` are then whatever the data factory made: any shape and dtype, only floating inputs take the
    precision's dtype). ``bn_inputs``: recalibrate BatchNorm at every point over these inputs, ``bn_batch_size``
    at a time, before evaluating. Neither folds BatchNorm: a factory gets the user's own network (its methods and
    modules), and recalibration runs BatchNorm in train mode.
    """

    def __init__(
        self,
        model: nn.Module,
        directions: Sequence[Direction] | Recipe | Weights,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        kind: str = "weights",
        precision: str = "fp32",
        fold: bool = False,
        compile: bool = False,
        shrink_on_oom: bool = False,
        loss: str | losses.FactoryLoss = "crossentropy",
        bn_inputs: torch.Tensor | None = None,
        bn_batch_size: int = 128,
        hold_directions: str = "auto",
        placement: str = "device",
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        if len(labels) > MAX_IMAGES:
            raise ValueError(f"{len(labels)} images: the exact tally holds at most {MAX_IMAGES} per point")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if isinstance(loss, str) and loss not in losses.BUILTIN:
            raise ValueError(f"loss must be one of {', '.join(losses.BUILTIN)} or a FactoryLoss, not {loss!r}")
        self.loss, self.bn_batch_size = loss, bn_batch_size
        device = torch.device(device) if device is not None else images.device
        self.device, self.precision = device, precision
        self.batch_size, self.shrink_on_oom = batch_size, shrink_on_oom
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        runtime.set_precision(device, precision)
        memory_format = runtime.memory_format(device, precision)

        # θ* and the directions, taken before any dtype conversion (llmpi.space.theta holds them, forms θ per point)
        self.weights = make_weights(perturbed_entries(model, kind), directions, device, hold_directions)
        self.names = names = self.weights.names
        # Folding reads float32 values of the entries no direction moves too: in another dtype, copies made now.
        self._still: dict[str, torch.Tensor] | None = None
        if self.dtype != torch.float32:
            self._still = {
                n: t.detach().to(device=device, dtype=torch.float32, copy=True)
                for n, t in model.state_dict(keep_vars=True).items()
                if t.is_floating_point() and n not in names
            }
            if isinstance(self.weights, HeldWeights) and self.weights.scratch is None:
                self.weights.scratch = [t.clone() for t in self.weights.base]  # float32 θ, which folding reads

        self.model = model.to(device=device, dtype=self.dtype, memory_format=memory_format).eval()
        live = perturbed_entries(self.model, kind)
        self.targets = [live[n] for n in names]  # the network's own tensors, rewritten in place per point
        # The data where ``placement`` says (llmpi.compute.batches): resident on the device, or streamed from the host.
        self.batches = make_source(self._as_input(images, memory_format), labels, device, placement)
        self.images, self.labels = self.batches.inputs, self.batches.targets
        self.bn_inputs = None if bn_inputs is None else self._as_input(bn_inputs.to(device), memory_format)
        self._per_image = torch.empty(0)
        self._tails: dict[tuple[int, int], torch.Tensor] = {}
        self._foldable: bool | None = None
        self.use(ForwardPath(fold=fold, compile=compile))

    def _as_input(self, x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        """Inputs as the network consumes them: floats in its dtype, images (4-D) in its memory format; anything
        else (token ids, ...) as it is."""
        if x.is_floating_point():
            x = x.to(dtype=self.dtype)
        return x.contiguous(memory_format=memory_format) if x.ndim == 4 else x.contiguous()

    # -- the forward path -----------------------------------------------------------------------------------------

    @property
    def foldable(self) -> bool:
        """Whether folding applies here: BatchNorm in eval mode that follows a layer, the built-in loss."""
        if self._foldable is None:
            self._foldable = (
                isinstance(self.loss, str)
                and self.bn_inputs is None
                and self._theta32() is not None
                and can_fold(self.model, self.images[:1].to(self.device), self.device)
            )
        return self._foldable

    def use(self, path: ForwardPath) -> None:
        """Run the forward pass along ``path`` from now on (the network is built once per model and path)."""
        if path.fold and not isinstance(self.loss, str):
            raise ValueError("a loss factory gets the network itself: its BatchNorm cannot be folded")
        if path.fold and self.bn_inputs is not None:
            raise ValueError("BatchNorm recalibration runs BatchNorm in train mode: it cannot be folded")
        self.path = path
        self.network = Network.build(self.model, path, self.images[:1].to(self.device), self.device)
        self._gathered = self.network.gather(self._float32_values()) if path.fold else None

    def _float32_values(self) -> dict[str, torch.Tensor]:
        """Every floating entry's float32 value at the current point: the float32 θ of the moved entries (rewritten
        per point), the network's own (or float32 copies) of the others."""
        theta = self._theta32()
        assert theta is not None, "folding needs the point's float32 weights (foldable says so)"
        values = dict(zip(self.names, theta))
        still = self._still or {n: t for n, t in self.model.state_dict(keep_vars=True).items() if t.is_floating_point()}
        return {**{n: t.detach() for n, t in still.items() if n not in values}, **values}

    def _theta32(self) -> list[torch.Tensor] | None:
        """The float32 θ of the moved entries, rewritten in place per point: the network's own tensors in float32,
        the held weights' float32 scratch in another dtype; None where no float32 θ is kept (streamed or
        regenerated directions in a bf16 network: folding would read rounded weights, so it is not offered)."""
        if self.dtype == torch.float32:
            return self.targets
        scratch = getattr(self.weights, "scratch", None)
        return scratch if isinstance(scratch, list) else None

    @property
    def ndim(self) -> int:
        """How many directions (coordinates per point)."""
        return self.weights.ndim

    @property
    def static_shapes(self) -> bool:
        """Every batch the same shape (the last one padded): for a compiled forward, which would otherwise compile
        a second graph for the last batch. A loss factory sums whatever it gets, so it gets no padding."""
        return self.path.compile and isinstance(self.loss, str)

    def prepare(self) -> float:
        """Compile (when the path compiles) on the sweep's batch shape before the first point; the seconds it took
        (0 when nothing compiled: eager, or already compiled in this process)."""
        n = min(len(self.labels), self.batch_size)
        _, _, x, _ = next(iter(self.batches(n, n)))
        self.move_to([0.0] * self.ndim)
        self.network.refresh(self._gathered)
        return self.network.warm_up(x)

    # -- weights --------------------------------------------------------------------------------------------------

    def _form(self, out: list[torch.Tensor], coords: Sequence[float]) -> None:
        """out <- θ* + Σ coords[k]·direction[k], formed in float32 and rounded once (``llmpi.space.theta``): the one way
        θ is formed on every path, so every forward path starts from the same weights, bit for bit."""
        self.weights.form(out, coords)

    @torch.no_grad()
    def move_to(self, coords: Sequence[float]) -> None:
        """Set the network's weights to θ* + Σ coords[k]·direction[k], from the untouched base."""
        if self.names:
            self._form(self.targets, coords)

    @torch.no_grad()
    def restore(self) -> None:
        """Put θ* back into the network."""
        self.move_to([0.0] * self.ndim)

    # -- evaluation -----------------------------------------------------------------------------------------------

    def __call__(
        self, coords: Sequence[float], between_batches: Callable[[], None] | None = None
    ) -> tuple[float, float]:
        """(mean cross-entropy, accuracy in percent) at ``coords``; calls ``between_batches`` before each batch."""
        return self._point_with_retry(coords, between_batches)

    def many(
        self, points: Sequence[Sequence[float]], between_batches: Callable[[], None] | None = None
    ) -> list[tuple[float, float]]:
        """(loss, acc) of each point, one forward pass over the data per point."""
        return [self._point_with_retry(p, between_batches) for p in points]

    def _point_with_retry(
        self, coords: Sequence[float], between_batches: Callable[[], None] | None
    ) -> tuple[float, float]:
        """One point (``llmpi.compute.oom.retry_halving``): out of memory, an automatic batch halves and the point is
        retried; a batch the user set is an error saying what to set."""

        def shrink() -> str | None:
            if not self.shrink_on_oom or self.batch_size == 1:
                return None
            old = self.batch_size
            self.batch_size //= 2
            return (
                f"with batch {old}; retrying with {self.batch_size} (this rank's values may now differ in the last "
                f"bits from other ranks'"
                + ("; the compiled forward compiles for the new batch shape" if self.path.compile else "")
                + ")"
            )

        def advice() -> str:
            what = f"a batch of {self.batch_size} images does not fit"
            if self.shrink_on_oom:
                return f"{what} either; the network and its data need a larger device, or set data.subset smaller"
            return f"{what}; set data.batch_size smaller or to auto"

        return retry_halving(lambda: self._pass(coords, between_batches), shrink, self.device, advice)

    def _buffers(self) -> tuple[torch.Tensor, ...]:
        """Per-point device buffers: per-image losses and hits, the tally, the bins' offsets."""
        if self._per_image.shape[0] != 1:
            n = len(self.labels)
            self._per_image = torch.empty(1, n, dtype=torch.float32, device=self.device)
            self._hits = torch.empty(1, n, dtype=torch.bool, device=self.device)
            self._tally = torch.empty(1, ROW, dtype=torch.float64, device=self.device)
            self._rows = torch.full((1, 1), -E_MIN, dtype=torch.int32, device=self.device)
        return self._per_image, self._hits, self._tally, self._rows

    def _pad(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The inputs of images [start, stop) as given; with static shapes a short batch comes padded to the batch
        size (a copy made once per batch size and kept: the images never change)."""
        if not self.static_shapes or stop - start == self.batch_size:
            return x
        key = (start, self.batch_size)
        if key not in self._tails:
            padded = x.new_zeros((self.batch_size, *x.shape[1:]))
            if padded.ndim == 4:
                padded = padded.contiguous(memory_format=runtime.memory_format(self.device, self.precision))
            padded[: stop - start] = x
            self._tails = {key: padded}  # one tail at a time: the batch size changes only on an OOM retry
        return self._tails[key]

    @torch.no_grad()
    def _pass(
        self, coords: Sequence[float], between_batches: Callable[[], None] | None, images: int | None = None
    ) -> tuple[float, float]:
        """One pass over the data (or its first ``images``) at ``coords``.

        Per batch: the forward pass, its per-image losses and hits stored on the device. Per point: the exact
        tally of those, and one small device-to-host copy.
        """
        self.move_to(coords)
        if self.bn_inputs is not None:  # the eager network: only BatchNorm in train mode (see losses)
            losses.recalibrate_bn(self.model, self.bn_inputs, self.bn_batch_size, between_batches=between_batches)
        self.network.refresh(self._gathered)
        if not isinstance(self.loss, str):
            return self._factory_pass(between_batches, images)
        per_image, hits, tally, rows = self._buffers()
        n, bs = len(self.labels) if images is None else images, self.batch_size
        for start, stop, x, y in self.batches(n, bs):
            if between_batches is not None:
                between_batches()
            logits = self.network(self._pad(x, start, stop))[: stop - start].float()
            # The standard per-image loss of (images, classes): padding rows are never read.
            per_image[0, start:stop] = losses.per_sample(self.loss, logits, y)
            hits[0, start:stop] = logits.argmax(dim=1) == y
        tally_(per_image[:, :n], hits[:, :n], tally, rows)
        (row,) = tally.cpu().tolist()
        return exact_sum(row) / n, 100.0 * row[CORRECT] / n

    def _factory_pass(self, between_batches: Callable[[], None] | None, images: int | None) -> tuple[float, float]:
        """One point with the user's loss factory, batch by batch; (mean loss, accuracy % or NaN without one)."""
        network = self.network.forward if isinstance(self.network.forward, nn.Module) else self.model
        tally = losses.FactoryTally(self.loss.spec)
        n, bs = len(self.labels) if images is None else images, self.batch_size
        for _, _, x, y in self.batches(n, bs):
            if between_batches is not None:
                between_batches()
            runtime.before_forward(self.device, self.path.compile)
            tally.add(*self.loss(network, (x, y)))
        mean, accuracy = tally.result()
        return mean, math.nan if accuracy is None else accuracy


# ----------------------------------------------------------------------------------------------------------------
# Choosing the batch size and the forward path by timing: once, on one rank; the sweep broadcasts the result.

# Compilation is tried only where the eager sweep would take at least this many times the compile time expected
# (runtime.compile_guess): then even a compiled forward no faster than eager loses at most 1/4 of the sweep
# (the probe's cost), and one 1.5x faster still wins.
COMPILE_PAYS_AFTER = 4.0


@dataclass
class Tuning:
    """What rank 0 chose (the sweep broadcasts it): the batch size and the forward path, with how it measured."""

    batch_size: int
    forward: ForwardPath = EAGER
    images_per_second: float = math.nan
    seconds: float = 0.0  # spent probing, compilation included
    table: list[tuple[int, float]] = field(default_factory=list)  # (batch, images/s) of the eager network
    paths: list[tuple[str, float]] = field(default_factory=list)  # (path, images/s) at the chosen batch
    compile_seconds: float | None = None  # rank 0's compilation in the probe
    note: str = ""  # why the path is what it is
    compile_guess: float | None = None  # what compiling was expected to cost here (runtime.compile_guess)
    failed: dict[str, str] = field(default_factory=dict)  # paths that failed here: {"compile"|"fold": reason}

    @property
    def fallback(self) -> str | None:
        """The line the banner and the run record give a path that failed and what runs instead, e.g.
        ``compile: failed (No working C++ compiler found ...); running folded``; None when nothing failed."""
        if not self.failed:
            return None
        failed = "; ".join(f"{key}: failed ({reason})" for key, reason in self.failed.items())
        return f"{failed}; running {self.forward.describe()}"

    def describe(self) -> str:
        head = f"batch {self.batch_size}, {self.forward.describe()}"
        if not self.table:
            return f"{head} ({self.note or 'not probed: too little work to pay for probing'})"
        tried = ", ".join(f"{b}: {r:.0f}" for b, r in self.table)
        text = (
            f"{head}, {self.images_per_second:.0f} images/s (probed in {self.seconds:.1f} s; images/s at batch {tried}"
        )
        if self.paths:
            text += "; " + ", ".join(f"{p}: {r:.0f}" for p, r in self.paths)
        if self.compile_seconds is not None:
            text += f"; compiled in {self.compile_seconds:.1f} s"
        if self.fallback:
            text += f"; {self.fallback}"
        return text + (f"; {self.note}" if self.note else "") + ")"


def refused(key: str, error: PathFailed) -> JobError:
    """The one message for a path the job insists on (``runtime.fold`` or ``runtime.compile``: true) that does not
    work here."""
    return JobError(
        f"runtime.{key}: true, but {error.stage} the {error.path.describe()} forward pass failed here: "
        f"{error.reason}. Set runtime.{key}: auto (llmpi then runs the fastest path that works here and says which) "
        f"or false; --debug shows the traceback"
    )


def balanced(images: int, batch: int) -> int:
    """The batch size that cuts ``images`` into as many batches as ``batch`` does, as evenly as possible: the
    padding of a static last batch is then less than one image per batch."""
    batches = -(-images // batch)
    return -(-images // batches)


def _timed(ev: Evaluator, batch: int, min_seconds: float) -> float:
    """Images/s of whole passes over the first ``batch`` images along ev's current path (what the sweep runs:
    forming weights, folding, forward, tally), after one untimed warm-up pass (which compiles if it must)."""
    ev.batch_size = batch
    origin = [0.0] * ev.ndim
    ev._pass(origin, None, images=batch)
    runtime.synchronize(ev.device)
    reps, t0 = 0, time.perf_counter()
    while True:
        ev._pass(origin, None, images=batch)
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or reps >= 20:
            return reps * batch / elapsed


def autotune(
    ev: Evaluator,
    work_images: float,
    tune_batch: bool = True,
    fold: bool | str = "auto",
    compile: bool | str = "auto",
    ranks: int = 1,
    budget_fraction: float = 0.02,
    max_batch: int | None = None,
) -> Tuning:
    """Pick the batch size and the forward path that run fastest here, set them on ``ev``, and say how.

    ``work_images``: the point-images this rank will evaluate; probing may spend ``budget_fraction`` of their
    estimated time, so a small job is not slowed by its own tuning. From the device's first candidate the batch
    halves while that is faster, then doubles (up to the data size or ``max_batch``) while that is faster, until
    the budget is spent or memory runs out; an automatic batch is then balanced (``balanced``). ``fold`` and
    ``compile``: True, False or "auto". Folding ("auto": where it applies) is timed against the unfolded network
    at the chosen batch and kept if faster. Compiling ("auto") is tried only where the eager sweep would take at
    least ``COMPILE_PAYS_AFTER`` times the compile time expected, and kept if compile time (on the other ranks,
    which compile after this choice) plus the compiled sweep is shorter than the eager sweep.
    A job too small to probe runs eager (folded only where ``fold`` is True): no choice would pay there.

    A path that fails here (``PathFailed``: no working compiler, a network dynamo refuses, a folding that fails)
    is dropped where the job leaves it to llmpi ("auto": ``Tuning.failed`` and ``fallback`` say so, and the best
    path that works runs) and is a ``JobError`` saying what to set where the job insists on it (True).
    """
    n = len(ev.labels)
    limit = max_batch or runtime.max_batch(ev.device)
    cap = min(n, limit)
    first = min(cap, runtime.default_batch_size(ev.device, n)) if tune_batch else ev.batch_size
    t0 = time.perf_counter()
    if 2 * first > budget_fraction * work_images:  # even the first measurement would cost more than it can gain
        # Too little work for any choice to matter: eager, unless the job asks otherwise (tracing the network to
        # fold it costs each rank half a second, more than such a sweep could gain).
        ev.batch_size = balanced(n, first) if tune_batch else first
        path = ForwardPath(fold=fold is True, compile=compile is True)
        try:
            ev.use(path)  # compiles later, in prepare(), where PathFailed is the sweep's to tell
        except PathFailed as e:
            raise refused("fold", e) from e
        return Tuning(ev.batch_size, path, note="not probed: too little work to pay for probing")
    failed: dict[str, str] = {}
    try:
        want_fold = fold is True or (fold == "auto" and ev.foldable)
    except PathFailed as e:  # folding it failed although torch.fx traced it
        want_fold, failed["fold"] = False, e.reason
    ev.use(EAGER)

    def halve_first() -> str | None:
        nonlocal first
        if first == 1:
            return None
        first //= 2
        return f"probing batch {2 * first}; probing {first}"

    rate = retry_halving(
        lambda: _timed(ev, first, runtime.probe_seconds(ev.device)),
        halve_first,
        ev.device,
        advice=lambda: "even one image per pass does not fit: the network needs a larger device",
        warn=False,
    )
    table = [(first, rate)]
    budget = budget_fraction * work_images / rate

    def spent() -> float:
        return time.perf_counter() - t0

    best = (first, rate)
    if tune_batch:
        # Halve from the first candidate while that is faster, then double while that is faster.
        for step in (0.5, 2.0):
            b = first
            while True:
                b = min(cap, int(b * step))
                if b < runtime.min_batch(ev.device) or b == best[0] or any(b == row[0] for row in table):
                    break
                if spent() + 3 * b / best[1] > budget:  # warm-up plus timed passes, at the best rate seen
                    break
                r = fits(lambda b=b: _timed(ev, b, runtime.probe_seconds(ev.device)), ev.device)
                if r is None:  # larger batches do not fit either
                    break
                table.append((b, r))
                if r <= best[1]:
                    break
                best = (b, r)
                if b == cap:
                    break
    batch = balanced(n, best[0]) if tune_batch else best[0]
    seconds = runtime.probe_seconds(ev.device)
    paths = [(EAGER.describe(), best[1] if batch == best[0] else _timed(ev, batch, seconds))]
    chosen, rate, notes = EAGER, paths[0][1], []
    compile_seconds: float | None = None

    def attempt(path: ForwardPath, key: str, forced: bool) -> float | None:
        """Images/s along ``path`` at the chosen batch (compiled first where it compiles), or None where the path
        fails here: dropped and noted in ``failed``, or a JobError where the job insists on it."""
        nonlocal compile_seconds
        try:
            ev.use(path)
            ev.batch_size = batch
            if path.compile:
                compile_seconds = ev.prepare()
            return _timed(ev, batch, seconds)
        except PathFailed as e:
            if forced:
                raise refused(key, e) from e
            failed[key] = e.reason
            ev.use(chosen)
            return None

    if want_fold and (folded_rate := attempt(ForwardPath(fold=True), "fold", fold is True)) is not None:
        paths.append((ev.path.describe(), folded_rate))
        if fold is True or folded_rate > rate:
            chosen, rate = ev.path, folded_rate
    guess = None
    if compile is True or compile == "auto":
        eager_sweep = work_images / rate
        guess = runtime.compile_guess(ev.device, ev.model)
        compiled = ForwardPath(fold=chosen.fold, compile=True)
        if compile == "auto" and eager_sweep < COMPILE_PAYS_AFTER * guess:
            notes.append(f"not compiled: the sweep needs ~{eager_sweep:.0f} s here, compiling ~{guess:.0f} s")
        elif (compiled_rate := attempt(compiled, "compile", compile is True)) is not None:
            paths.append((ev.path.describe(), compiled_rate))
            others = compile_seconds if ranks > 1 else 0.0  # rank 0 has compiled already; the others have not
            if compile is True or others + work_images / compiled_rate < eager_sweep:
                chosen, rate = ev.path, compiled_rate
            else:
                notes.append(f"compiled ran at {compiled_rate:.0f} images/s: not worth {others:.0f} s of compiling")
    ev.batch_size = batch
    ev.use(chosen)
    return Tuning(batch, chosen, rate, spent(), table, paths, compile_seconds, "; ".join(notes), guess, failed)

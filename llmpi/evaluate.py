"""The loss surface itself: f(a, b) = L(θ* + a·δ + b·η), mean cross-entropy and accuracy over resident data.

    ev = Evaluator(model, [dx, dy], images, labels, batch_size=256)
    loss, acc = ev((0.25, -0.5))
    values = ev.many([(0.25, -0.5), (0.5, -0.5)])          # [(loss, acc), ...]
    tuning = autotune(ev, work_images=2601 * 50000)        # sets ev.batch_size, ev.points_per_pass

Running at the forward-pass limit. The images live on the device once, normalised, in the dtype and memory
format the network consumes; a batch is a view. Each point rewrites the perturbed weights in place from the
untouched base (θ = θ* + a·δ + b·η by three fused multi-tensor ops: no state_dict, no allocation); entries every
direction leaves at zero are never touched. Per-image losses and hits stay on the device; per pass the device
tallies them and the host reads one small array. With ``points_per_pass`` P > 1 one forward pass evaluates P
points at once (``torch.func.functional_call`` under ``vmap`` over stacked weights), which pays where one point
alone leaves the device idle: small nets, small subsets. ``autotune`` (run once, on one rank, the result
broadcast) picks the batch size and P by timing.

Exact, order-independent mean. Per-image losses are float32 as the network produced them (the logits are cast
to float32 for the cross-entropy in every precision). Each is split exactly as m·2^(e-24) with an integer
mantissa |m| < 2^24 (``torch.frexp``), and m is added into a bin for its exponent e on the device. The bins are
float64 holding integers: with at most 2^29 images a bin stays below 2^53, where every float64 sum of integers is
exact, hence associative -- the bins depend neither on batching, nor on the order of images, nor on atomics. The
host forms Σ_e bin_e·2^(e-24) as a Python integer and rounds it once to float64. That is the correctly rounded
sum of the per-image losses, the very value ``math.fsum`` returns, and the stored mean is that sum / N.
Accuracy is an integer count. So a stored value depends only on the point and the per-image losses; the batch
size, P and ``compile`` can change per-image losses in their last bits (other kernels), never the meaning, and
the sweep decides them once for all ranks so that every rank computes the same bits. The exception: a rank that
runs out of memory halves its own batch and retries the point (the values then may differ in the last bits from
what the other ranks would have computed).

Precision: ``fp32`` (default; TF32 off, deterministic cuDNN), ``tf32`` (TF32 tensor cores for convolutions and
matmuls on CUDA; no effect on a CPU), ``bf16`` (network and images in bfloat16; the perturbation is formed in
float32 from float32 θ*, δ, η and rounded once). ``python -m bench`` measures each one's deviation from fp32.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from . import losses, runtime
from .batches import make_source
from .directions import Direction, perturbed_entries
from .recipe import Recipe
from .weights import Weights, make_weights

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


def is_out_of_memory(error: BaseException) -> bool:
    """A device allocation failure: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)


def _quiet(function: Callable, *args: object) -> torch.Tensor:
    """Call a vmapped network without vmap's note that one op (channels-last pooling) takes its generic fallback:
    whether several points per pass pay overall is what ``autotune`` measures, and the note would repeat per rank."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop", category=UserWarning)
        return function(*args)


class Evaluator:
    """Evaluates points of one surface on one device; holds the base weights, directions and data there.

    ``images`` are normalised float NCHW (any dtype; converted once to what the network consumes), ``labels``
    int64, on ``device`` (default: the images' device) or, with ``placement`` host or auto, anywhere: they are then
    kept resident on the device or streamed from host memory batch by batch (``llmpi.batches``; the same values).
    ``directions``: full directions or a recipe, held as ``hold_directions`` says (``llmpi.weights``), or the
    ``weights`` of another evaluator of the same network, shared (one θ* on the device for every split).
    ``shrink_on_oom``: halve the batch and retry a point when the device runs out of memory (for an automatic batch
    size); otherwise the error says what to set.

    Issue 7 (see :mod:`llmpi.losses`): ``loss`` is "crossentropy", "mse", or a :class:`losses.FactoryLoss` (the
    user's ``loss.factory``; ``images``/``labels`` are then whatever the data factory made: any shape and dtype,
    only floating inputs take the precision's dtype). ``bn_inputs``: recalibrate BatchNorm at every point over
    these inputs, ``bn_batch_size`` at a time, before evaluating. Both evaluate one point per pass: a factory
    runs the network itself (vmap cannot stack weights through arbitrary user code) and recalibration updates the
    network's buffers per point (which vmap over stacked weights cannot).
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
        compile: bool = False,
        points_per_pass: int = 1,
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
        if points_per_pass < 1:
            raise ValueError(f"points_per_pass must be positive, not {points_per_pass}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if isinstance(loss, str) and loss not in losses.BUILTIN:
            raise ValueError(f"loss must be one of {', '.join(losses.BUILTIN)} or a FactoryLoss, not {loss!r}")
        self.loss, self.bn_batch_size = loss, bn_batch_size
        self.one_point_per_pass = not isinstance(loss, str) or bn_inputs is not None
        if self.one_point_per_pass and points_per_pass != 1:
            raise ValueError("a loss factory or BatchNorm recalibration evaluates one point per pass")
        device = torch.device(device) if device is not None else images.device
        self.device, self.precision, self.compiled = device, precision, compile
        self.batch_size, self.points_per_pass, self.shrink_on_oom = batch_size, points_per_pass, shrink_on_oom
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        runtime.set_precision(device, precision)
        memory_format = runtime.memory_format(device, precision)

        # θ* and the directions, taken before any dtype conversion (llmpi.weights holds them, forms θ per point)
        self.weights = make_weights(perturbed_entries(model, kind), directions, device, hold_directions)
        self.names = names = self.weights.names

        self.model = model.to(device=device, dtype=self.dtype, memory_format=memory_format).eval()
        live = perturbed_entries(self.model, kind)
        self.targets = [live[n] for n in names]  # the network's own tensors, rewritten in place per point
        # The data where ``placement`` says (llmpi.batches): resident on the device, or streamed from the host.
        self.batches = make_source(self._as_input(images, memory_format), labels, device, placement)
        self.images, self.labels = self.batches.inputs, self.batches.targets
        self.bn_inputs = None if bn_inputs is None else self._as_input(bn_inputs.to(device), memory_format)
        self.stacked: dict[str, torch.Tensor] = {}
        self._single: Callable[[torch.Tensor], torch.Tensor] = self.model
        self._multi_eager: Callable | None = None
        self._multi: Callable | None = None
        if compile:
            self._single = runtime.compile_for(self.model, device)
        self._per_image = torch.empty(0)

    def _as_input(self, x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        """Inputs as the network consumes them: floats in its dtype, images (4-D) in its memory format; anything
        else (token ids, ...) as it is."""
        if x.is_floating_point():
            x = x.to(dtype=self.dtype)
        return x.contiguous(memory_format=memory_format) if x.ndim == 4 else x.contiguous()

    # -- weights --------------------------------------------------------------------------------------------------

    def _form(self, out: list[torch.Tensor], coords: Sequence[float]) -> None:
        """out <- θ* + Σ coords[k]·direction[k], formed in float32 and rounded once (``llmpi.weights``): the one way θ
        is formed on every path, so one point per pass and many give the same weights, bit for bit."""
        self.weights.form(out, coords)

    @torch.no_grad()
    def move_to(self, coords: Sequence[float]) -> None:
        """Set the network's weights to θ* + Σ coords[k]·direction[k], from the untouched base."""
        self._form(self.targets, coords)

    @torch.no_grad()
    def restore(self) -> None:
        """Put θ* back into the network."""
        self._form(self.targets, [0.0] * self.weights.ndim)

    def _stack(self, points: int) -> dict[str, torch.Tensor]:
        """Stacked weights for ``points`` points per pass: allocated once, rewritten in place afterwards."""
        if not self.stacked or next(iter(self.stacked.values())).shape[0] != points:
            self.stacked = {
                n: torch.empty((points, *t.shape), dtype=t.dtype, device=self.device)
                for n, t in zip(self.names, self.targets)
            }
            model = self.model

            def one(weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
                return torch.func.functional_call(model, weights, (x,))

            self._multi_eager = torch.func.vmap(one, in_dims=(0, None))
            self._multi = runtime.compile_for(self._multi_eager, self.device) if self.compiled else self._multi_eager
        return self.stacked

    # -- evaluation -----------------------------------------------------------------------------------------------

    def __call__(
        self, coords: Sequence[float], between_batches: Callable[[], None] | None = None
    ) -> tuple[float, float]:
        """(mean cross-entropy, accuracy in percent) at ``coords``; calls ``between_batches`` before each batch."""
        return self.many([coords], between_batches)[0]

    def many(
        self, points: Sequence[Sequence[float]], between_batches: Callable[[], None] | None = None
    ) -> list[tuple[float, float]]:
        """(loss, acc) of each point, ``points_per_pass`` at a time (a short last pass is padded with its last
        point, so every pass has the same shape and a point's value never depends on its neighbours)."""
        out: list[tuple[float, float]] = []
        while len(out) < len(points):
            group = list(points[len(out) : len(out) + self.points_per_pass])
            out.extend(self._pass_with_retry(group, between_batches))
        return out

    def _pass_with_retry(
        self, group: list[Sequence[float]], between_batches: Callable[[], None] | None
    ) -> list[tuple[float, float]]:
        while True:
            try:
                return self._pass(group, between_batches)
            except Exception as e:  # only allocation failures are handled; everything else propagates as it is
                if not is_out_of_memory(e):
                    raise
                self._release()
                if not self.shrink_on_oom:
                    raise MemoryError(
                        f"a batch of {self.batch_size} images x {self.points_per_pass} point(s) per pass does not "
                        f"fit in {self.device} memory ({str(e).splitlines()[0]}); set data.batch_size smaller or "
                        f"to auto"
                    ) from None
                if self.batch_size == 1 and self.points_per_pass == 1:
                    raise
                old = (self.batch_size, self.points_per_pass)
                if self.batch_size > 1:
                    self.batch_size //= 2
                else:
                    self.points_per_pass //= 2
                    del group[self.points_per_pass :]
                warnings.warn(
                    f"out of memory on {self.device} with batch {old[0]} x {old[1]} point(s); retrying with "
                    f"{self.batch_size} x {self.points_per_pass} (this rank's values may now differ in the last "
                    f"bits from other ranks')",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def _release(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _buffers(self, width: int) -> tuple[torch.Tensor, ...]:
        """Per-pass device buffers for ``width`` points: per-image losses and hits, the tally, bin offsets."""
        if self._per_image.shape[0] != width:
            n = len(self.labels)
            self._per_image = torch.empty(width, n, dtype=torch.float32, device=self.device)
            self._hits = torch.empty(width, n, dtype=torch.bool, device=self.device)
            self._tally = torch.empty(width, ROW, dtype=torch.float64, device=self.device)
            self._rows = (torch.arange(width, dtype=torch.int32, device=self.device) * ROW - E_MIN).view(width, 1)
        return self._per_image, self._hits, self._tally, self._rows

    @torch.no_grad()
    def _pass(
        self,
        group: list[Sequence[float]],
        between_batches: Callable[[], None] | None,
        images: int | None = None,
        eager: bool = False,
    ) -> list[tuple[float, float]]:
        """One pass over the data (or its first ``images``) for ``len(group)`` points, padded to points_per_pass.

        Per batch: the forward pass, its per-image losses and hits stored on the device. Per pass: the exact
        tally of those, and one small device-to-host copy.
        """
        width = self.points_per_pass
        if width == 1:
            self.move_to(group[0])
            forward = self.model if eager else self._single
            if self.bn_inputs is not None:  # the eager network: only BatchNorm in train mode (see losses)
                losses.recalibrate_bn(self.model, self.bn_inputs, self.bn_batch_size, between_batches=between_batches)
            if not isinstance(self.loss, str):
                return [self._factory_pass(forward, between_batches, images)]
        else:
            stacked = self._stack(width)
            for p in range(width):
                self._form([t[p] for t in stacked.values()], group[min(p, len(group) - 1)])
            multi = self._multi_eager if eager else self._multi
            # vmap cannot run CUDA batch norm on NHWC input (torch: "NYI: querying is_contiguous inside of vmap"):
            # several points per pass take the batch in NCHW there, a copy per batch for P points of work
            nchw = self.device.type == "cuda"
            forward = lambda x: _quiet(multi, stacked, x.contiguous() if nchw else x)
        per_image, hits, tally, rows = self._buffers(width)
        n, bs = len(self.labels) if images is None else images, self.batch_size
        for start, stop, x, y in self.batches(n, bs):
            if between_batches is not None:
                between_batches()
            runtime.before_forward(self.device, self.compiled and not eager)
            logits = forward(x).float()
            if width == 1:
                logits = logits.unsqueeze(0)
            # The standard per-image loss of (points x images, classes): the same kernel for any width.
            per_image[:, start:stop] = losses.per_sample(self.loss, logits, y.expand(width, stop - start))
            hits[:, start:stop] = logits.argmax(dim=2) == y
        tally_(per_image[:, :n], hits[:, :n], tally, rows)
        rows_host = tally[: len(group)].cpu().tolist()
        return [(exact_sum(row) / n, 100.0 * row[CORRECT] / n) for row in rows_host]

    def _factory_pass(
        self, forward: Callable, between_batches: Callable[[], None] | None, images: int | None
    ) -> tuple[float, float]:
        """One point with the user's loss factory, batch by batch; (mean loss, accuracy % or NaN without one)."""
        network = forward if isinstance(forward, nn.Module) else self.model
        tally = losses.FactoryTally(self.loss.spec)
        n, bs = len(self.labels) if images is None else images, self.batch_size
        for _, _, x, y in self.batches(n, bs):
            if between_batches is not None:
                between_batches()
            runtime.before_forward(self.device, self.compiled and network is not self.model)
            tally.add(*self.loss(network, (x, y)))
        mean, accuracy = tally.result()
        return mean, math.nan if accuracy is None else accuracy


# ----------------------------------------------------------------------------------------------------------------
# Choosing the batch size and points per pass by timing: once, on one rank; the sweep broadcasts the result.


@dataclass
class Tuning:
    batch_size: int
    points_per_pass: int
    images_per_second: float
    seconds: float  # spent probing
    table: list[tuple[int, int, float]] = field(default_factory=list)  # (batch, points per pass, images/s)

    def describe(self) -> str:
        head = f"batch {self.batch_size} x {self.points_per_pass} point(s) per pass"
        if not self.table:
            return f"{head} (not probed: too little work to pay for probing)"
        tried = ", ".join(f"{b}x{p}: {r:.0f}" for b, p, r in self.table)
        return f"{head}, {self.images_per_second:.0f} images/s (probed in {self.seconds:.1f} s; images/s at {tried})"


def _timed(ev: Evaluator, batch: int, width: int, min_seconds: float) -> float:
    """Point-images/s of whole passes over the first ``batch`` images at ``width`` points per pass (what the
    sweep runs: forming weights, forward, tally), after one untimed warm-up pass; eager, never compiled."""
    ev.batch_size, ev.points_per_pass = batch, width
    origin = [[0.0] * ev.weights.ndim] * width
    ev._pass(origin, None, images=batch, eager=True)
    reps, t0 = 0, time.perf_counter()
    while True:
        ev._pass(origin, None, images=batch, eager=True)
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or reps >= 20:
            return reps * batch * width / elapsed


def autotune(
    ev: Evaluator,
    work_images: float,
    tune_batch: bool = True,
    tune_points: bool = True,
    budget_fraction: float = 0.02,
    max_batch: int | None = None,
) -> Tuning:
    """Pick the batch size (and points per pass) that runs fastest here, and set them on ``ev``.

    ``work_images``: the point-images this rank will evaluate; probing may spend ``budget_fraction`` of their
    estimated time, so a small job is not slowed by its own tuning. From the device's first candidate the batch
    halves while that is faster, then doubles (up to the data size or ``max_batch``) while that is faster, until
    the budget is spent or memory runs out. Points per pass > 1 is tried only where the best batch is the whole
    data set (the device might take more work per pass than the data gives) and kept only if 10% faster.
    The probe times the eager network (compilation would recompile per candidate shape).
    """
    n = len(ev.labels)
    limit = max_batch or runtime.max_batch(ev.device)  # images (x points) per pass
    cap = min(n, limit)
    first = min(cap, runtime.default_batch_size(ev.device, n)) if tune_batch else ev.batch_size
    t0 = time.perf_counter()
    table: list[tuple[int, int, float]] = []
    if 2 * first > budget_fraction * work_images:  # even the first measurement would cost more than it can gain
        ev.batch_size = first
        return Tuning(ev.batch_size, ev.points_per_pass, math.nan, 0.0, table)
    while True:
        try:
            rate = _timed(ev, first, 1, runtime.probe_seconds(ev.device))
            break
        except Exception as e:
            if not is_out_of_memory(e) or first == 1:
                raise
            ev._release()
            first //= 2
    table.append((first, 1, rate))
    budget = budget_fraction * work_images / rate

    def spent() -> float:
        return time.perf_counter() - t0

    best = (first, 1, rate)
    if tune_batch:
        # Halve from the first candidate while that is faster, then double while that is faster.
        for step in (0.5, 2.0):
            b = first
            while True:
                b = min(cap, int(b * step))
                if b < runtime.min_batch(ev.device) or b == best[0] or any(b == row[0] for row in table):
                    break
                if spent() + 3 * b / best[2] > budget:  # warm-up plus timed passes, at the best rate seen
                    break
                try:
                    r = _timed(ev, b, 1, runtime.probe_seconds(ev.device))
                except Exception as e:
                    if not is_out_of_memory(e):
                        raise
                    ev._release()
                    break
                table.append((b, 1, r))
                if r <= best[2]:
                    break
                best = (b, 1, r)
                if b == cap:
                    break
    # More points per pass only where the whole data set is one batch and the device might take more per pass.
    if tune_points and not ev.one_point_per_pass and best[0] == n and 2 * n <= limit:
        single = best
        width = 2
        while width * n <= limit and width <= 1024:
            cost = 3 * width * n / single[2]
            if spent() + cost > budget:
                break
            try:
                r = _timed(ev, n, width, runtime.probe_seconds(ev.device))
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                ev._release()
                break
            table.append((n, width, r))
            if r > best[2] and r > 1.1 * single[2]:
                best = (n, width, r)
            width *= 2  # no early exit: vmap's own overhead can make 2 or 4 slower than 1, and 64 much faster
    ev.batch_size, ev.points_per_pass = best[0], best[1]
    ev.stacked = {}
    return Tuning(best[0], best[1], best[2], spent(), table)

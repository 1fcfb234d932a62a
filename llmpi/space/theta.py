"""Forming θ(point) = θ* + Σ_k c_k·d_k into the network's own weights: where θ* and the directions are held.

    w = make_weights(entries, directions_or_recipe, device, holding="auto")   # entries: θ*'s tensors, as loaded
    w.form(targets, (0.25, -0.5))     # the network's tensors <- θ* + 0.25·δ − 0.5·η (rounded once to their dtype)

This is the seam the evaluator calls; it knows nothing of batches, losses or files. Three holdings:

* ``device`` -- θ* in float32 and every direction in float32 on the device, formed by fused multi-tensor ops
  (``torch._foreach_*``). Fastest; costs 4 bytes per parameter for θ* and 4 per direction, on top of the network:
  about 4x the weights of a float32 network in a plane (12 bytes per parameter beyond its own 4). The choice for
  networks up to ``LEAN_PARAMETERS`` (100 M), where that is under 1 GB.
* ``host`` -- θ* on the device in the network's own dtype (the checkpoint's: bf16 stays bf16), the directions in
  host memory (page-locked on a GPU, so each piece is one DMA) and streamed to the device piece by piece at every
  point. Device memory: the network, θ*, and one piece (``chunk`` elements) of scratch: about 2x the weights.
* ``regenerate`` -- θ* as for ``host``; the directions are a recipe (``llmpi.space.recipe``) made again on the device,
  piece by piece, at every point. Device memory as ``host``, nothing on the host; per point it costs about 35
  elementwise integer/float passes over the moved parameters. The choice above 100 M parameters for a recipe.

Every holding forms the same float32 sum in the same order -- θ* (float32), + c_x·δ (when c_x ≠ 0), + c_y·η --
and rounds it once into the network's dtype, so bf16 networks are perturbed in float32 and rounded once. On a
CPU the holdings give the same bits (the same elementwise kernels); on a GPU the fused ``device`` kernels and the
per-piece ones may round a multiply-add differently, so the holding is a fixed function of the job and the
network's size (:func:`choose_holding`), the same on every rank.

Peak device memory of the lean holdings, measured by ``python -m bench.memory`` (bench/README.md): the network
plus θ* plus one piece, i.e. 2x the checkpoint's bytes plus a constant, below the 2.25x the lean path promises
once the network is larger than a few hundred MB.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..job.errors import JobError
from .recipe import Recipe, default_chunk, spans

HOLDINGS = ("device", "host", "regenerate")
LEAN_PARAMETERS = 100_000_000  # above this many parameters the lean holdings are the default (see choose_holding)


def choose_holding(requested: str, parameters: int, recipe: bool) -> str:
    """``runtime.hold_directions``: ``auto`` holds them on the device up to ``LEAN_PARAMETERS`` (they are small
    and it is fastest), above that regenerates a recipe or streams stored directions from host memory."""
    if requested not in ("auto", *HOLDINGS):
        raise ValueError(f"hold_directions must be one of auto, {', '.join(HOLDINGS)}; not {requested!r}")
    if requested == "regenerate" and not recipe:
        raise JobError(
            "runtime.hold_directions: regenerate needs directions.store: recipe (stored directions cannot be made "
            "again); use device or host"
        )
    if requested != "auto":
        return requested
    if parameters <= LEAN_PARAMETERS:
        return "device"
    return "regenerate" if recipe else "host"


class Weights:
    """θ* and the directions, held one way; ``form`` writes θ(point) into given tensors."""

    holding: str
    names: list[str]  # the entries some direction moves, in the network's order
    ndim: int  # number of directions

    def form(self, out: Sequence[torch.Tensor], coords: Sequence[float]) -> None:
        raise NotImplementedError

    def device_bytes(self) -> int:
        """Bytes this holds on the device beyond the network's own weights."""
        raise NotImplementedError

    def describe(self) -> str:
        where = {
            "device": "on the device",
            "host": "in host memory, streamed per piece",
            "regenerate": "regenerated per piece from their recipe",
        }[self.holding]
        gib = self.device_bytes() / 2**30
        return f"θ* and the directions take {gib:.2f} GiB on the device beside the network; directions {where}"

    def _check(self, coords: Sequence[float]) -> None:
        if len(coords) != self.ndim:
            raise ValueError(f"expected {self.ndim} coordinates, got {len(coords)}")


def _bytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class HeldWeights(Weights):
    """``device``: θ* and the directions in float32 on the device, formed by multi-tensor ops."""

    holding = "device"

    def __init__(self, base: list[torch.Tensor], directions: list[list[torch.Tensor]], names: list[str]) -> None:
        self.names, self.base, self.directions, self.ndim = names, base, directions, len(directions)
        self.scratch: list[torch.Tensor] | None = None  # float32 θ for a network of another dtype, made on first use

    @torch.no_grad()
    def form(self, out: Sequence[torch.Tensor], coords: Sequence[float]) -> None:
        """out <- θ* + Σ coords[k]·direction[k] (in float32, then rounded into ``out`` if it is another dtype)."""
        self._check(coords)
        out = list(out)
        if not out:
            return
        if out[0].dtype == torch.float32:
            scratch = out
        else:
            if self.scratch is None:
                self.scratch = [t.clone() for t in self.base]
            scratch = self.scratch
        torch._foreach_copy_(scratch, self.base)
        for c, d in zip(coords, self.directions):
            if c != 0.0:
                torch._foreach_add_(scratch, d, alpha=float(c))
        if scratch is not out:
            torch._foreach_copy_(out, scratch)

    def device_bytes(self) -> int:
        return _bytes(self.base) + sum(_bytes(d) for d in self.directions) + _bytes(self.scratch or [])


class StreamedWeights(Weights):
    """``host`` and ``regenerate``: θ* in its own dtype on the device, the directions made piece by piece.

    ``source(axis, k, start, stop, base_piece)`` returns float32 values [start, stop) of entry k of a direction
    on the device: read from host memory (``host``) or made by a recipe (``regenerate``). ``rows[k]`` is the
    length of the runs that share one scale (a recipe's filters), so no piece splits one unevenly.
    """

    def __init__(
        self,
        holding: str,
        base: list[torch.Tensor],
        names: list[str],
        ndim: int,
        source,
        rows: list[int],
        chunk: int,
        host_directions: list[list[torch.Tensor]] | None = None,
    ) -> None:
        self.holding, self.base, self.names, self.ndim = holding, base, names, ndim
        self.source, self.chunk = source, chunk
        self.host_directions = host_directions
        device = base[0].device if base else torch.device("cpu")
        self.pieces = [spans(t.numel(), row, chunk) for t, row in zip(base, rows)]
        longest = max((b - a for p in self.pieces for a, b in p), default=0)
        self.scratch = torch.empty(longest, dtype=torch.float32, device=device)
        self.whole: torch.Tensor | None = None  # an entry's worth of float32, only for non-contiguous targets

    @torch.no_grad()
    def form(self, out: Sequence[torch.Tensor], coords: Sequence[float]) -> None:
        self._check(coords)
        for k, (target, base) in enumerate(zip(out, self.base)):
            flat_base = base.view(-1)
            if target.is_contiguous():
                flat_out = target.view(-1)
                self._entry(k, flat_base, flat_out, coords)
            else:  # e.g. a conv kernel in channels_last: form it contiguous, then copy it in
                if self.whole is None or self.whole.numel() < base.numel():
                    self.whole = torch.empty(base.numel(), dtype=torch.float32, device=base.device)
                whole = self.whole[: base.numel()]
                self._entry(k, flat_base, whole, coords)
                target.copy_(whole.view(base.shape))

    def _entry(self, k: int, base: torch.Tensor, out: torch.Tensor, coords: Sequence[float]) -> None:
        direct = out.dtype == torch.float32
        for start, stop in self.pieces[k]:
            piece = out[start:stop] if direct else self.scratch[: stop - start]
            b = base[start:stop]
            piece.copy_(b)
            for axis, c in enumerate(coords):
                if c != 0.0:
                    piece.add_(self.source(axis, k, start, stop, b), alpha=float(c))
            if not direct:
                out[start:stop].copy_(piece)

    def device_bytes(self) -> int:
        return _bytes(self.base) + _bytes([self.scratch]) + _bytes([self.whole] if self.whole is not None else [])


def moved_names(
    entries: Mapping[str, torch.Tensor], directions: Sequence[Mapping[str, torch.Tensor]] | Recipe
) -> list[str]:
    """The entries some direction moves (a direction that is zero everywhere on an entry leaves it untouched)."""
    if isinstance(directions, Recipe):
        moved = {e.name for e in directions.moved}
        return [n for n in entries if n in moved]
    for d in directions:
        if d.keys() != entries.keys():
            raise ValueError("a direction's entries do not match the model's; was it made for another arch?")
    return [n for n in entries if any(bool(d[n].any()) for d in directions)]


def make_weights(
    entries: Mapping[str, torch.Tensor],
    directions: Sequence[Mapping[str, torch.Tensor]] | Recipe,
    device: torch.device | str,
    holding: str = "auto",
    chunk: int | None = None,
) -> Weights:
    """θ* (``entries``: the network's tensors as loaded, before any dtype conversion) and the directions (full
    dicts of tensors, or a :class:`llmpi.space.recipe.Recipe`), held as ``holding`` says (see the module docstring).
    Given a :class:`Weights` already made for the same network, returns it: evaluators of several splits share
    one θ* (and one set of directions) on the device."""
    if isinstance(directions, Weights):
        if not set(directions.names) <= set(entries):
            raise ValueError("the shared weights were made for another network")
        return directions
    device = torch.device(device)
    is_recipe = isinstance(directions, Recipe)
    if is_recipe:
        directions.check_entries(entries)
    names = moved_names(entries, directions)
    parameters = sum(entries[n].numel() for n in entries)
    holding = choose_holding(holding, parameters, is_recipe)
    chunk = chunk or default_chunk(device)
    ndim = directions.axes if is_recipe else len(directions)
    if is_recipe:
        index = {e.name: k for k, e in enumerate(directions.entries)}
        maker = directions.on(device)

    if holding == "device":
        base = [entries[n].detach().to(device=device, dtype=torch.float32, copy=True) for n in names]
        if is_recipe:
            dirs = [
                [maker.entry(a, index[n], chunk, b).view(b.shape) for n, b in zip(names, base)] for a in range(ndim)
            ]
        else:
            dirs = [[torch.as_tensor(d[n]).to(device=device, dtype=torch.float32) for n in names] for d in directions]
        return HeldWeights(base, dirs, names)

    # θ* in its own dtype, contiguous (the pieces are flat ranges of it)
    base = [entries[n].detach().to(device=device, copy=True).contiguous() for n in names]
    if holding == "regenerate":
        entry_of = [index[n] for n in names]
        rows = [directions.entries[i].row for i in entry_of]
        source = lambda axis, k, start, stop, b: maker.chunk(axis, entry_of[k], start, stop, b)
        return StreamedWeights("regenerate", base, names, ndim, source, rows, chunk)
    # host: every direction in host memory (page-locked for DMA when the device is a GPU), piece by piece
    pin = device.type == "cuda"
    if is_recipe:  # made once, entry by entry on the device, kept on the host
        host = [
            [_host(maker.entry(a, index[n], chunk, b).view(-1).cpu(), pin) for n, b in zip(names, base)]
            for a in range(ndim)
        ]
    else:
        host = [[_host(torch.as_tensor(d[n]).float().reshape(-1), pin) for n in names] for d in directions]
    source = lambda axis, k, start, stop, b: host[axis][k][start:stop].to(device, non_blocking=True)
    rows = [b.numel() for b in base]
    return StreamedWeights("host", base, names, ndim, source, rows, chunk, host_directions=host)


def _host(t: torch.Tensor, pin: bool) -> torch.Tensor:
    t = t.contiguous()
    return t.pin_memory() if pin else t

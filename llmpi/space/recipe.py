"""Directions kept as a recipe: how to make each entry, instead of the entries themselves.

    recipe = plan_random(entries, seed=0, norm="filter", ignore="biasbn", axes=2, device=device)
    recipe.check_entries(entries); recipe.verify(device)         # on every rank, before the first point
    d = recipe.chunk(axis, k, start, stop, device, base_chunk)   # float32 values [start, stop) of entry k
    arrays = recipe.to_arrays(); Recipe.from_arrays(arrays)      # what the surface file holds (llmpi.file.store)

Why. A full direction is as large as the network in float32: 28 GB per direction for a 7B-parameter model, written
before the first point and sent to every rank. A recipe is a few MB whatever the size (the per-filter scales, a
table, a line per entry), and every rank makes the directions itself, entry by entry and chunk by chunk, on its
own device -- never a whole direction in one piece.

The generator (``llmpi-normal-1``) is entry-addressable and gives the same bits on every device. Element i of
entry e on axis a is a function of (seed, a, e, i) alone:

* key = the first 8 bytes of SHA-256("llmpi-normal-1", seed, axis, entry name), a 64-bit integer;
* 64 random bits r = splitmix64's output function of key + (i + 1) · 0x9E3779B97F4A7C15 (a Weyl sequence,
  mixed by two multiply-xorshift rounds): integer arithmetic modulo 2^64, exact and alike on every device;
* the top bit of r is the sign; the low 52 bits a give the tail probability p = (2a + 1) · 2^-54 in (0, 1/2), and
  |z| = Φ⁻¹(1 − p), so z is standard normal (|z| ≤ 8.1, the quantile of p = 2^-54);
* Φ⁻¹ is read from a table of exact quantiles (``CELLS`` cells per octave of p, 53 octaves) and interpolated
  linearly inside a cell: frexp splits 2a + 1 exactly into octave and position, and the interpolation is one
  float64 multiply and one add, both correctly rounded by IEEE 754 on any device, then rounded once to float32.
  The interpolation error is below 1.3e-6 relative (``interpolation_error`` measures it), far under what a
  random direction could notice. The table is stored in the recipe, so no rank ever depends on its own libm.

torch's own generators are not used: the CPU one draws a tensor in one sequence (not addressable per entry), and
CUDA's Philox stream depends on the launch configuration, i.e. on the GPU model. ``full`` stores keep the original
one-generator directions (``llmpi.space.directions.random_directions``) unchanged, so existing files resume as before.

Normalisation (``directions.norm``) is applied exactly as in ``llmpi.space.directions.normalize``, entry by entry, with
the scale of each filter d_ij computed once by rank 0 at planning -- ‖θ_ij‖ / (‖z_ij‖ + EPS) in float32 -- and
stored: ``filter`` one scale per slice along dim 0, ``layer`` one per entry, ``weight`` multiplies by θ* on the
device, ``none`` leaves z. Entries of one dimension or less are left out (``ignore: biasbn``) or are θ* itself
(``ignore: none``). Multiplying by a stored float32 scale is one correctly rounded operation, so every rank gets
the same bits whatever its device or chunk size.

Interpolations and planes through checkpoints (``plan_difference``) are recipes too: entry e of direction k is
θ_k − θ* taken in float64 and rounded to float32, exactly ``llmpi.space.between.difference``; the recipe names the job
key of θ_k (``checkpoint2``, ``checkpoint3``), every rank reads that checkpoint itself, memory-mapped, and forms each
piece on its device -- so a 7 B interpolation sends no 28 GB direction to anyone.

Proof on resume: the recipe names its generator and holds the table; every entry carries its name, shape, key and
a probe (SHA-256 of its first and last 64 generated values, or of θ_k − θ*'s), checked by each rank on its own
device before it computes (``verify``), and the entries' names and shapes are checked against the network
(``check_entries``). The seed, normalisation, network and checkpoints are in the file's fingerprint, so another
job is refused first, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch

from .directions import EPS

GENERATOR = "llmpi-normal-1"
CELLS = 256  # table cells per octave of the tail probability: interpolation error < 1.3e-6 relative
OCTAVES = 53  # 2a + 1 < 2^53: p from 2^-54 up to 1/2
PROBE = 64  # values at each end of an entry whose hash proves the generator on resume
MODES = ("filter", "layer", "weight", "none", "copy")

_WEYL = 0x9E3779B97F4A7C15 - (1 << 64)  # as signed int64: torch has no uint64 arithmetic on every device
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)
_LOW52 = (1 << 52) - 1


# ----------------------------------------------------------------------------------------------------------------
# The generator


@cache
def quantile_table() -> np.ndarray:
    """Φ⁻¹(1 − p) at the cell boundaries p = 2^e (1 + j/CELLS) · 2^-54, e = 0..52, j = 0..CELLS-1, then p = 1/2.

    Made once by rank 0 (Python's NormalDist, Wichura's AS241, ~1e-16 relative) and stored in the recipe: the
    ranks use the stored copy, never their own libm.
    """
    normal = statistics.NormalDist()
    knots = [-normal.inv_cdf(2.0**e * (1.0 + j / CELLS) * 2.0**-54) for e in range(OCTAVES) for j in range(CELLS)]
    knots.append(0.0)  # p = 1/2
    return np.asarray(knots, dtype=np.float64)


def entry_key(seed: int, axis: int, name: str) -> int:
    """The 64-bit key (as a signed integer) of one entry of one direction."""
    digest = hashlib.sha256(f"{GENERATOR}\0{seed}\0{axis}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


def _srl(z: torch.Tensor, shift: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic on signed integers)."""
    return (z >> shift) & ((1 << (64 - shift)) - 1)


def normal(key: int, start: int, count: int, table: torch.Tensor) -> torch.Tensor:
    """Standard normal float32 values of elements ``start .. start+count-1`` of the entry with ``key``, on the
    device of ``table`` (the float64 quantile table there). The same bits on every device and for any split of
    the range into calls."""
    device = table.device
    z = torch.arange(start + 1, start + count + 1, dtype=torch.int64, device=device)
    z.mul_(_WEYL).add_(key)  # wraps modulo 2^64
    z.bitwise_xor_(_srl(z, 30)).mul_(_MIX1)
    z.bitwise_xor_(_srl(z, 27)).mul_(_MIX2)
    z.bitwise_xor_(_srl(z, 31))
    negative = z < 0
    odd = z.bitwise_and_(_LOW52).mul_(2).add_(1)  # 2a + 1 < 2^53: exact in float64
    mantissa, exponent = torch.frexp(odd.double())  # odd = m · 2^x, m in [0.5, 1): octave x - 1, position 2m - 1
    del odd, z
    position = mantissa.mul_(2 * CELLS).sub_(CELLS)  # (2m - 1) · CELLS, exact
    cell = position.floor()
    fraction = position.sub_(cell)  # exact
    index = exponent.to(torch.int64).sub_(1).mul_(CELLS).add_(cell.to(torch.int64))
    del exponent, cell  # the temporaries of a piece are what the lean holdings cost beyond θ*: keep few alive
    low = table[index]
    step = table[index.add_(1)].sub_(low)
    del index
    magnitude = fraction.mul_(step).add_(low).float()
    del fraction, step, low
    return torch.where(negative, -magnitude, magnitude)


def interpolation_error(samples: int = 20000, seed: int = 0) -> float:
    """The largest error of the table's interpolation against Φ⁻¹ itself at random tail probabilities: relative
    where |z| > 1, absolute below (the module docstring's bound; a test holds it)."""
    rng = np.random.default_rng(seed)
    table = quantile_table()
    normal_dist = statistics.NormalDist()
    worst = 0.0
    for a in rng.integers(0, 1 << 52, size=samples, dtype=np.int64):
        odd = 2 * int(a) + 1
        octave = odd.bit_length() - 1
        position = (odd - (1 << octave)) / (1 << octave) * CELLS
        cell = octave * CELLS + int(position)
        approx = table[cell] + (position - int(position)) * (table[cell + 1] - table[cell])
        exact = -normal_dist.inv_cdf(odd * 2.0**-54)
        worst = max(worst, abs(approx - exact) / max(1.0, exact))
    return worst


def default_chunk(device: torch.device) -> int:
    """Elements per piece: 1 M on a CPU (a piece's temporaries stay in cache), 8 M on a GPU, where the generator's
    temporaries (about 50 bytes per element: ~0.4 GB) are a fixed cost and its ~40 kernel launches per piece stay
    small against the piece's memory traffic."""
    return (1 << 20) if device.type == "cpu" else (1 << 23)


def spans(numel: int, row: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) pieces of an entry of ``numel`` elements in rows of ``row``: whole rows, as many as fit in
    ``chunk`` elements, or pieces of one row when a row alone is longer. A piece never crosses a row boundary
    unless it holds whole rows, so one filter's scale applies to a piece as a column."""
    if numel == 0:
        return []
    if row <= chunk:
        step = (chunk // row) * row
        return [(s, min(numel, s + step)) for s in range(0, numel, step)]
    return [(r + s, r + min(row, s + chunk)) for r in range(0, numel, row) for s in range(0, row, chunk)]


def _difference_probe(base: torch.Tensor, other: torch.Tensor, device: torch.device) -> str:
    """SHA-256 (16 hex digits) of the first and last ``PROBE`` values of θ_k − θ* (float64, rounded to float32)."""
    a, b = base.detach().reshape(-1), other.detach().reshape(-1)
    n = a.numel()
    ends = [(0, min(PROBE, n)), (max(0, n - PROBE), n)]
    values = [(b[s:t].to(device).double() - a[s:t].to(device).double()).float() for s, t in ends]
    return hashlib.sha256(torch.cat(values).cpu().numpy().astype("<f4").tobytes()).hexdigest()[:16]


def _probe(key: int, numel: int, table: torch.Tensor) -> str:
    """SHA-256 (16 hex digits) of the first and last ``PROBE`` generated values of an entry, as float32 bytes."""
    head = normal(key, 0, min(PROBE, numel), table)
    tail = normal(key, max(0, numel - PROBE), min(PROBE, numel), table)
    data = torch.cat([head, tail]).cpu().numpy().astype("<f4").tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# The recipe


@dataclass
class EntryRecipe:
    """How to make one entry of every direction: ``mode`` (``MODES``, "difference", or "zero": left out), one
    key, probe and array of scales per axis (``filter``: one per slice along dim 0, ``layer``: one, else none);
    for "difference", per axis the job key of the checkpoint θ_k whose θ_k − θ* it is (``sources``)."""

    name: str
    shape: tuple[int, ...]
    mode: str
    keys: list[int] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)
    scales: list[np.ndarray] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def row(self) -> int:
        """Elements that share one scale: a filter (slice along dim 0) for ``filter``, the whole entry otherwise."""
        if self.mode == "filter":
            return self.numel // self.shape[0]
        return max(1, self.numel)


@dataclass
class Recipe:
    """Directions as a recipe (see the module docstring). ``axes``: 1 for a line, 2 for a plane. ``kind``
    "random", or "interpolate" / "plane": differences θ_k − θ* of other checkpoints, which every rank reads itself
    (memory-mapped) and attaches as ``others`` (``{job key: state_dict}``, never stored or sent)."""

    seed: int
    norm: str
    ignore: str
    type: str
    axes: int
    table: np.ndarray
    entries: list[EntryRecipe]
    generator: str = GENERATOR
    kind: str = "random"
    others: dict[str, Mapping[str, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def moved(self) -> list[EntryRecipe]:
        """The entries some direction moves (all but the zeroed ones)."""
        return [e for e in self.entries if e.mode != "zero"]

    @property
    def sources(self) -> list[str]:
        """The job keys of the checkpoints a difference recipe reads (``checkpoint2``, ``checkpoint3``)."""
        return sorted({s for e in self.entries for s in e.sources})

    def describe(self) -> str:
        if self.kind != "random":
            return f"a recipe ({self.kind}: {', '.join(self.sources)} minus θ*, {self.type}, {len(self.moved)} entries)"
        return (
            f"a recipe ({self.generator}, seed {self.seed}, {self.norm} norm, ignore {self.ignore}, {self.type}, "
            f"{self.axes} direction(s), {len(self.moved)} of {len(self.entries)} entries moved)"
        )

    # -- what the file holds ---------------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The recipe as named arrays for the surface file: ``recipe`` (UTF-8 JSON), ``table`` (float64) and
        ``scales/<axis>`` (float32, every entry's scales one after the other)."""
        head = {
            "generator": self.generator,
            "kind": self.kind,
            "seed": self.seed,
            "norm": self.norm,
            "ignore": self.ignore,
            "type": self.type,
            "axes": self.axes,
            "cells": CELLS,
            "table_sha256": hashlib.sha256(self.table.astype("<f8").tobytes()).hexdigest(),
            "entries": [
                {
                    "name": e.name,
                    "shape": list(e.shape),
                    "mode": e.mode,
                    "keys": [str(k) for k in e.keys],  # JSON readers lose 64-bit integers; strings keep them
                    "probes": e.probes,
                    "scales": len(e.scales[0]) if e.scales else 0,
                    "sources": e.sources,
                }
                for e in self.entries
            ],
        }
        out = {
            "recipe": np.frombuffer(json.dumps(head).encode(), dtype=np.uint8).copy(),
            "table": self.table.astype(np.float64),
        }
        for a, axis in enumerate("xy"[: self.axes]):
            parts = [e.scales[a] for e in self.entries if e.scales]
            out[f"scales/{axis}"] = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Recipe:
        head = json.loads(bytes(np.asarray(arrays["recipe"], dtype=np.uint8)).decode())
        table = np.asarray(arrays["table"], dtype=np.float64)
        offsets = dict.fromkeys("xy"[: head["axes"]], 0)
        entries = []
        for e in head["entries"]:
            scales = []
            if e["scales"]:
                for axis in offsets:
                    start = offsets[axis]
                    scales.append(np.asarray(arrays[f"scales/{axis}"][start : start + e["scales"]], np.float32))
                    offsets[axis] += e["scales"]
            keys = [int(k) for k in e["keys"]]
            entries.append(
                EntryRecipe(e["name"], tuple(e["shape"]), e["mode"], keys, e["probes"], scales, e.get("sources", []))
            )
        recipe = cls(head["seed"], head["norm"], head["ignore"], head["type"], head["axes"], table, entries,
                     head["generator"], head["kind"])  # fmt: skip
        if head.get("table_sha256") != hashlib.sha256(table.astype("<f8").tobytes()).hexdigest():
            raise ValueError("the recipe's quantile table does not match its checksum: the file is damaged")
        return recipe

    # -- proof ----------------------------------------------------------------------------------------------------

    def check_entries(self, entries: Mapping[str, torch.Tensor]) -> None:
        """The network's perturbed entries are the recipe's, in order, with the same shapes; else a ValueError
        naming the first difference."""
        ours = [(e.name, e.shape) for e in self.entries]
        theirs = [(name, tuple(t.shape)) for name, t in entries.items()]
        for (a, sa), (b, sb) in zip(ours, theirs):
            if a != b or sa != sb:
                raise ValueError(
                    f"the directions' recipe was made for entry {a!r} of shape {sa}, but this network has {b!r} of "
                    f"shape {sb}: it was made for another network"
                )
        if len(ours) != len(theirs):
            raise ValueError(
                f"the directions' recipe has {len(ours)} entries, this network {len(theirs)}: it was made for another "
                f"network"
            )

    def verify(self, device: torch.device | str, entries: Mapping[str, torch.Tensor] | None = None) -> None:
        """This device makes the recipe's numbers: generator, and every entry's probe on every axis (a difference
        recipe needs θ*'s ``entries`` and its ``others`` attached)."""
        if self.kind == "random" and self.generator != GENERATOR:
            raise ValueError(
                f"the directions were made by generator {self.generator!r}; this llmpi has {GENERATOR!r}. Resume with "
                f"the llmpi version that wrote the file, or start anew (--restart)"
            )
        table = torch.from_numpy(self.table).to(device)
        for e in self.moved:
            for a, probe in enumerate(e.probes):
                if e.mode == "difference":
                    assert entries is not None, "a difference recipe is verified against θ*"
                    other = self.others[e.sources[a]]
                    got = _difference_probe(entries[e.name], other[e.name], torch.device(device))
                else:
                    got = _probe(e.keys[a], e.numel, table)
                if got != probe:
                    raise ValueError(
                        f"entry {e.name!r} of direction {'xy'[a]}: this device ({device}) makes other numbers than the "
                        f"recipe recorded (probe {got}, recorded {probe}); the surface cannot be continued here"
                    )

    # -- making values --------------------------------------------------------------------------------------------

    def on(self, device: torch.device | str) -> RecipeMaker:
        """The recipe's table and scales on ``device``, ready to make chunks there."""
        return RecipeMaker(self, torch.device(device))


class RecipeMaker:
    """Makes float32 pieces of the directions of a recipe on one device."""

    def __init__(self, recipe: Recipe, device: torch.device) -> None:
        self.recipe, self.device = recipe, device
        self.table = torch.from_numpy(recipe.table).to(device)
        self.scales = [[torch.from_numpy(s).to(device) for s in e.scales] for e in recipe.entries]

    def chunk(self, axis: int, k: int, start: int, stop: int, base: torch.Tensor | None = None) -> torch.Tensor:
        """Values ``start .. stop-1`` (flat, row-major) of entry ``k`` of direction ``axis``, float32 on the device.

        ``base``: θ*'s values of the same range on the device (any float dtype), needed by ``weight`` and ``copy``.
        ``start, stop`` must come from ``spans(numel, entry.row, ...)`` for ``filter`` entries.
        """
        e = self.recipe.entries[k]
        if e.mode == "zero":
            return torch.zeros(stop - start, dtype=torch.float32, device=self.device)
        if e.mode == "difference":  # θ_k − θ* in float64, rounded to float32, as llmpi.space.between.difference
            assert base is not None, "a difference needs θ*"
            other = self.recipe.others[e.sources[axis]][e.name].reshape(-1)[start:stop]
            return other.to(self.device, non_blocking=True).double().sub_(base.double()).float()
        if e.mode == "copy":
            assert base is not None, "a copied entry needs θ*"
            return base.to(torch.float32, copy=True)
        z = normal(e.keys[axis], start, stop - start, self.table)
        if e.mode == "filter":
            row = e.row
            first = start // row
            if stop - start >= row:  # whole rows: one scale per row
                assert start % row == 0 and (stop - start) % row == 0, (start, stop, row)
                z.view(-1, row).mul_(self.scales[k][axis][first : first + (stop - start) // row].view(-1, 1))
            else:  # a piece of one row
                assert (stop - 1) // row == first, (start, stop, row)
                z.mul_(self.scales[k][axis][first : first + 1])
        elif e.mode == "layer":
            z.mul_(self.scales[k][axis][0:1])
        elif e.mode == "weight":
            assert base is not None, "a weight-normalised entry needs θ*"
            z.mul_(base.to(torch.float32))
        else:
            assert e.mode == "none", e.mode
        return z

    def entry(self, axis: int, k: int, chunk: int, base: torch.Tensor | None = None) -> torch.Tensor:
        """A whole entry of one direction (for tests and for writing a full file entry by entry)."""
        e = self.recipe.entries[k]
        out = torch.empty(e.numel, dtype=torch.float32, device=self.device)
        flat = None if base is None else base.reshape(-1)
        for start, stop in spans(e.numel, e.row, chunk):
            out[start:stop] = self.chunk(axis, k, start, stop, None if flat is None else flat[start:stop])
        return out.view(e.shape)


# ----------------------------------------------------------------------------------------------------------------
# Planning (rank 0, once per surface file)


def _sumsq_rows(values: torch.Tensor, row: int, numel_rows: int, out: torch.Tensor, start: int) -> None:
    """Add the float64 squares of a flat piece ``values`` (starting at element ``start``) into ``out`` per row."""
    first = start // row
    if len(values) >= row:
        out[first : first + len(values) // row] += values.double().view(-1, row).square().sum(dim=1)
    else:
        out[first] += values.double().square().sum()


def plan_random(
    entries: Mapping[str, torch.Tensor],
    seed: int,
    norm: str,
    ignore: str,
    type: str,
    axes: int,
    device: torch.device | str = "cpu",
    chunk: int | None = None,
) -> Recipe:
    """The recipe of ``axes`` random directions around θ* (``entries``, on any device, any float dtype).

    Entry by entry, chunk by chunk on ``device``: the Gaussian's sum of squares per filter (float64), θ*'s, and
    from them the float32 scales, exactly as ``directions.normalize`` defines them. Nothing larger than one chunk
    of one entry is made at a time, and nothing on the host but the scales.
    """
    if norm not in ("filter", "layer", "weight", "none"):
        raise ValueError(f"directions.norm must be one of filter, layer, weight, none; not {norm!r}")
    if ignore not in ("biasbn", "none"):
        raise ValueError(f"directions.ignore must be 'biasbn' or 'none', not {ignore!r}")
    device = torch.device(device)
    chunk = chunk or default_chunk(device)
    table_np = quantile_table()
    table = torch.from_numpy(table_np).to(device)
    planned = []
    for name, w in entries.items():
        shape = tuple(w.shape)
        if w.dim() <= 1:
            planned.append(EntryRecipe(name, shape, "zero" if ignore == "biasbn" else "copy"))
            continue
        e = EntryRecipe(name, shape, norm)
        e.keys = [entry_key(seed, a, name) for a in range(axes)]
        e.probes = [_probe(key, e.numel, table) for key in e.keys]
        if norm in ("filter", "layer"):
            rows = shape[0] if norm == "filter" else 1
            flat = w.detach().reshape(-1)
            w_sq = torch.zeros(rows, dtype=torch.float64, device=device)
            pieces = spans(e.numel, e.row, chunk)
            for start, stop in pieces:
                _sumsq_rows(flat[start:stop].to(device), e.row, rows, w_sq, start)
            w_norm = w_sq.sqrt().float()
            for key in e.keys:
                z_sq = torch.zeros(rows, dtype=torch.float64, device=device)
                for start, stop in pieces:
                    _sumsq_rows(normal(key, start, stop - start, table), e.row, rows, z_sq, start)
                # as directions.normalize: float32 norms, scale = ‖w‖ / (‖d‖ + EPS)
                e.scales.append((w_norm / (z_sq.sqrt().float() + EPS)).cpu().numpy())
        planned.append(e)
    return Recipe(seed, norm, ignore, type, axes, table_np, planned)


def plan_difference(
    entries: Mapping[str, torch.Tensor],
    others: Sequence[tuple[str, Mapping[str, torch.Tensor]]],
    kind: str,
    type: str,
    device: torch.device | str = "cpu",
    chunk: int | None = None,
) -> tuple[Recipe, np.ndarray]:
    """The recipe of the directions θ_k − θ* (``others``: (job key, state_dict) per axis), and their Gram matrix
    (float64, axes x axes) for the plane's checks -- entry by entry, piece by piece on ``device``.

    Refuses, as ``llmpi.space.between.difference`` does, a checkpoint that lacks an entry, has another shape, or is not
    floating-point there (ValueError naming the job key).
    """
    device = torch.device(device)
    chunk = chunk or default_chunk(device)
    gram = torch.zeros(len(others), len(others), dtype=torch.float64, device=device)
    planned = []
    for name, t in entries.items():
        e = EntryRecipe(name, tuple(t.shape), "difference", sources=[key for key, _ in others])
        for key, state in others:
            o = state.get(name)
            if o is None:
                raise ValueError(
                    f"model.{key} lacks entry {name!r} of the first model; was it saved from another architecture?"
                )
            if tuple(o.shape) != tuple(t.shape):
                raise ValueError(
                    f"model.{key}: entry {name!r} has shape {tuple(o.shape)}, the first model {tuple(t.shape)}; was it "
                    f"saved from another architecture?"
                )
            if not o.is_floating_point():
                raise ValueError(
                    f"model.{key}: entry {name!r} is not floating-point ({o.dtype}); it cannot be moved along"
                )
            e.probes.append(_difference_probe(t, o, device))
        flat = t.detach().reshape(-1)
        for start, stop in spans(t.numel(), max(1, t.numel()), chunk):
            base = flat[start:stop].to(device).double()
            d = [o[name].reshape(-1)[start:stop].to(device).double() - base for _, o in others]
            for i in range(len(d)):
                for j in range(len(d)):
                    gram[i, j] += torch.dot(d[i].float().double(), d[j].float().double())
        planned.append(e)
    recipe = Recipe(0, "none", "none", type, len(others), np.zeros(0), planned, kind=kind)
    recipe.others = dict(others)
    return recipe, gram.cpu().numpy()

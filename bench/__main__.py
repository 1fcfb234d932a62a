"""llmpi against the physical limit and against the naive way, measured side by side in one run (``make bench``).

    python -m bench                          # the CPU section, and the GPU section when torch sees a GPU
    python -m bench --profile gpu-short      # every GPU figure in one prepared run of < 8 min of device time
    python -m bench --profile gpu            # the long GPU section: eager and compiled, fp32 to bf16
    python -m bench --profile tiny           # a minute: the smoke test's size, and gpu-short's code path on a CPU
    python -m bench --json out.json          # every figure also as JSON

For each network, in rounds that interleave the three so load changes on the machine hit all of them alike:

1. limit: the raw eager forward pass of the same network on the same resident images (normalised, on the device),
   at its best batch size and memory format: images/s. Every point needs one such pass over the data;
   measured right before and right after the llmpi run (the mean is the limit);
2. llmpi: ``python -m llmpi.sweep`` as a user runs it, one rank, points x images / wall time from process start
   to exit (imports, data, tuning, compilation and the file included); the sweep phase alone, the forward path it
   ran, its batch and its compile time are read from the run's ``<file>.run.json``;
3. naive: bench/naive.py, the common per-point state_dict + DataLoader loop, batch 128, on the same images.

Each rate is also given in the device's terms (bench/device.py): FLOPs per image, TFLOP/s, fraction of the peak.
Then: the forward paths side by side in one process (eager, folded, compiled, folded+compiled, compile time
apart), each precision's deviation from fp32, the kernels' (fast against deterministic, both against a plain
fp32 loop), the coordinator under load (bench/stress.py: a trivial network and a no-op evaluator under
mpirun -n 4, on a 1001x1001 grid), and the Hessian (bench/hessian.py: products against their limit, the spectrum
against PyHessian with ``--pyhessian``; CPU profiles). bench/README.md records the figures with the device and the
date.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from llmpi.compute import runtime
from llmpi.compute.evaluate import Evaluator, autotune
from llmpi.compute.forward import ForwardPath
from llmpi.compute.oom import fits
from llmpi.file.grid import Grid
from llmpi.file.store import read_run_info, read_surface
from llmpi.space import checkpoint
from llmpi.space.directions import perturbed_entries, random_directions

from . import device as terms
from . import fixtures, hessian, naive
from .stress import register as register_trivial

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 1800.0  # seconds any one command of the bench may take


@dataclass(frozen=True)
class Case:
    arch: str
    images: int
    grid: int  # grid x grid points over [-1, 1]^2
    naive_points: int


# The llmpi runs' forward paths, as job keys: "auto" is what a user gets by default.
FORWARDS = {
    "auto": {},
    "eager": {"fold": False, "compile": False},
    "folded": {"fold": True, "compile": False},
    "compiled": {"fold": False, "compile": True},
    "folded+compiled": {"fold": True, "compile": True},
}


@dataclass(frozen=True)
class Profile:
    name: str
    device: str
    dataset: int  # training images written
    cases: tuple[Case, ...]
    rounds: int
    runs: tuple[tuple[str, str], ...]  # (precision, forward) of the llmpi runs; the limit at the same precision
    deviation: Case  # arch, images, points (grid field: how many points) for the precision deviations
    variants: tuple[tuple[str, str], ...]  # (precision, forward) measured against eager fp32
    paths: tuple[tuple[str, int, str], ...]  # (arch, images, precision): the forward paths side by side
    kernels: Case | None  # fast against deterministic kernels, both against a plain fp32 loop (grid: points)
    stress_ranks: int
    stress_grid: int  # the trivial network through the real evaluator
    bookkeeping_grid: int  # the no-op evaluator: coordinator, protocol and store alone
    workers: int  # the naive DataLoader's worker processes
    sustain: float = 10.0  # seconds the best forward-pass configurations run for the limit
    extrapolate: int | None = None  # report the time of a grid this size from the measured per-point time
    stress: bool = True
    compile_unfolded: bool = True  # the paths side by side include the compiled, unfolded network (a compilation)


PROFILES = {
    # gpu-short's code path at a CPU's smallest size (the test suite runs it): a compiled run, the kernels, paths.
    "tiny": Profile(
        "tiny", "cpu", 256, (Case("resnet8", 16, 4, 1),), 1, (("fp32", "auto"), ("fp32", "folded+compiled")),
        Case("resnet8", 16, 2, 0), (("fp32", "eager"), ("bf16", "eager"), ("fp32", "folded")),
        (("resnet8", 16, "fp32"),), Case("resnet8", 16, 2, 0), 2, 21, 31, 0, sustain=1.0, extrapolate=51,
        compile_unfolded=False,  # one compilation less in the test suite: folded+compiled shows the compiled path
    ),
    "cpu": Profile(
        "cpu", "cpu", 10000, (Case("resnet20", 512, 13, 2), Case("resnet56", 256, 10, 1)), 2,
        (("fp32", "auto"), ("fp32", "folded+compiled")),
        Case("resnet20", 64, 3, 0), (("fp32", "eager"), ("bf16", "eager"), ("fp32", "folded"), ("bf16", "folded")),
        (("resnet20", 512, "fp32"), ("resnet56", 256, "fp32")), Case("resnet20", 256, 3, 0), 4, 401, 1001, 0,
    ),
    # One lease of 15 minutes: everything the GPU figures need in < 8 minutes of device time, compile included
    # (two compilations, ~1 min each on an H200 by the CPU's figures); no eager sweep (the limit is eager's figure).
    "gpu-short": Profile(
        "gpu-short", "cuda", 50000, (Case("resnet56", 50000, 11, 0),), 1,
        (("bf16", "folded+compiled"), ("tf32", "folded+compiled")),
        Case("resnet56", 10000, 3, 0), (("fp32", "eager"), ("tf32", "eager"), ("bf16", "eager"), ("fp32", "folded")),
        (), Case("resnet56", 10000, 3, 0), 4, 0, 0, 4, sustain=2.0, extrapolate=51, stress=False,
    ),
    "gpu": Profile(
        "gpu", "cuda", 50000, (Case("resnet56", 50000, 11, 2),), 1,
        (("fp32", "eager"), ("fp32", "auto"), ("tf32", "folded+compiled"), ("bf16", "eager"),
         ("bf16", "folded+compiled")),
        Case("resnet56", 10000, 3, 0), (("fp32", "eager"), ("tf32", "eager"), ("bf16", "eager"), ("fp32", "folded")),
        (("resnet20", 50000, "bf16"), ("resnet56", 50000, "bf16")), Case("resnet56", 10000, 3, 0),
        4, 1001, 1001, 4, extrapolate=51,
    ),
}  # fmt: skip


@dataclass
class Results:
    device: str
    date: str
    profile: str
    threads: int
    cases: list[dict] = field(default_factory=list)
    deviation: list[dict] = field(default_factory=list)
    paths: list[dict] = field(default_factory=list)
    kernels: list[dict] = field(default_factory=list)
    stress: list[dict] = field(default_factory=list)
    hessian: dict = field(default_factory=dict)


def device_name(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {runtime.usable_cores()} usable cores (torch {torch.__version__})"


def say(text: str) -> None:
    print(text, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# The three measurements.


FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def forward_model(arch: str, ckpt: Path, precision: str, device: torch.device) -> torch.nn.Module:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return checkpoint.load_model(arch, ckpt).to(device=device, dtype=dtype).eval()


def forward_rate(
    model: torch.nn.Module, x: torch.Tensor, precision: str, batch: int, fmt: str, seconds: float
) -> float:
    """Images/s of whole raw forward passes over ``x`` (repeated for at least ``seconds``), after a warm-up."""
    device = x.device
    runtime.set_precision(device, precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    m = model.to(memory_format=FORMATS[fmt])
    xx = x.to(dtype).contiguous(memory_format=FORMATS[fmt])
    n = len(xx)
    try:
        with torch.no_grad():
            m(xx[:batch])  # warm-up at both shapes
            if n % batch:
                m(xx[: n % batch])
            runtime.synchronize(device)
            count, t0 = 0, time.perf_counter()
            while count == 0 or time.perf_counter() - t0 < seconds:
                for s in range(0, n, batch):
                    m(xx[s : s + batch])
                runtime.synchronize(device)
                count += n
            return count / (time.perf_counter() - t0)
    finally:
        runtime.set_precision(device, "fp32")


def forward_limit(model: torch.nn.Module, x: torch.Tensor, precision: str, sustain: float) -> tuple[float, int, str]:
    """The raw forward pass's best sustained images/s over all of ``x``: (rate, batch, memory format).

    A scan times one pass per batch size and memory format; the two fastest then run for ``sustain`` seconds each
    (one pass on a shared machine is a lucky or unlucky moment; the sweep it is compared with runs for minutes).
    """
    n = len(x)
    if x.device.type == "cuda":
        batches = [b for b in (256, 512, 1024, 2048, 4096, 8192, 16384) if b < n] + [n]
    else:
        batches = [b for b in (32, 64, 128, 256) if b < n] + [n]
    table = []
    for fmt in FORMATS:
        for b in batches:
            rate = fits(lambda b=b, fmt=fmt: forward_rate(model, x, precision, b, fmt, 0.0), x.device)
            if rate is not None:  # None: this batch does not fit the device
                table.append((rate, b, fmt))
    top = sorted(table, reverse=True)[:2]
    return max((forward_rate(model, x, precision, b, fmt, sustain), b, fmt) for _, b, fmt in top)


def run_command(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a command of the bench; past ``timeout`` it is killed and the bench fails (a deadlock never hangs)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "LLMPI_OFFLINE": "1"}
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{' '.join(cmd)} did not finish in {timeout:.0f} s:\n{e.stdout}\n{e.stderr}") from None


def llmpi_run(job: Path, output: Path, timeout: float) -> dict:
    """The real CLI, one rank, timed from process start to exit; the rest of its figures from its run.json."""
    t0 = time.perf_counter()
    result = run_command([sys.executable, "-m", "llmpi.sweep", str(job), "--restart"], timeout)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"llmpi.sweep failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    info = read_run_info(output)
    if info is None or info.get("state") != "complete":
        raise RuntimeError(f"the sweep left no complete run record next to {output}:\n{result.stdout}")
    setup = info["setup"]
    points = info["points_this_run"]
    return {
        "wall_s": wall,
        "points": points,
        "sweep_s": info["seconds"]["sweep"],
        "batch": setup["batch_size"],
        "forward": setup["forward"],
        "compile_s": max(setup["compile_seconds"]),
        "probe_s": setup["probe_seconds"],
        "tuned": setup["tuning"],
    }


def stored(path: Path) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """The directions and flat losses of a surface file."""
    surface = read_surface(path)
    return surface.directions, surface.values["train_loss"].ravel()


def measure_case(
    case: Case, profile: Profile, work: Path, root: Path, threads: int, rnd: int, device_label: str
) -> list[dict]:
    device = torch.device(profile.device)
    ckpt = fixtures.write_checkpoint(work / f"{case.arch}.pt", case.arch, root)
    u8, x, labels = fixtures.resident(root, case.images, device)
    rows = []
    for precision, forward in profile.runs:
        model = forward_model(case.arch, ckpt, precision, device)
        before, batch, fmt = forward_limit(model, x, precision, profile.sustain)
        output = work / f"{case.arch}-{precision}-{forward}.h5"
        job = fixtures.sweep_job(
            work / f"{case.arch}-{precision}.yaml", case.arch, ckpt, root, case.images, case.grid, output,
            profile.device, threads, precision, FORWARDS[forward],
        )  # fmt: skip
        run = llmpi_run(job, output, TIMEOUT)
        # The limit brackets the run: its best configuration again right after, and the mean of both is the limit.
        after = forward_rate(model, x, precision, batch, fmt, profile.sustain)
        limit = (before + after) / 2
        del model
        images = run["points"] * case.images
        row = {
            "arch": case.arch,
            "images": case.images,
            "grid": case.grid,
            "round": rnd,
            "precision": precision,
            "forward": forward,
            "limit_images_s": limit,
            "limit_before_after": [before, after],
            "limit_batch": batch,
            "limit_format": fmt,
            "llmpi_images_s": images / run["wall_s"],
            "llmpi_sweep_images_s": images / run["sweep_s"],
            **{f"llmpi_{k}": v for k, v in run.items()},
            "limit_terms": terms.in_device_terms(device_label, precision, case.arch, limit),
            "sweep_terms": terms.in_device_terms(device_label, precision, case.arch, images / run["sweep_s"]),
        }
        if profile.extrapolate:
            per_point = run["sweep_s"] / run["points"]
            row["extrapolated_grid"] = profile.extrapolate
            row["extrapolated_s"] = (run["wall_s"] - run["sweep_s"]) + per_point * profile.extrapolate**2
        if precision == "fp32" and forward == "auto" and case.naive_points:
            dirs, losses = stored(output)
            points = Grid.from_spec((-1.0, 1.0, case.grid), (-1.0, 1.0, case.grid)).coords(0, case.naive_points)
            model = checkpoint.load_model(case.arch, ckpt)
            state = checkpoint.read_state_dict(ckpt)
            values, seconds = naive.surface(
                model, state, dirs, points.tolist(), u8, labels.cpu().numpy(), device, workers=profile.workers
            )
            row["naive_images_s"] = len(points) * case.images / seconds
            row["naive_vs_llmpi_max_rel_loss"] = max(
                abs(v[0] - s) / abs(s) for v, s in zip(values, losses[: len(points)])
            )
            row["llmpi_over_naive"] = row["llmpi_images_s"] / row["naive_images_s"]
            row["sweep_over_naive"] = row["llmpi_sweep_images_s"] / row["naive_images_s"]
        row["llmpi_over_limit"] = row["llmpi_images_s"] / limit
        row["sweep_over_limit"] = row["llmpi_sweep_images_s"] / limit
        say(describe_case(row))
        rows.append(row)
    return rows


def describe_case(r: dict) -> str:
    text = (
        f"  {r['arch']} {r['precision']} {r['forward']}, {r['images']} images, {r['grid']}x{r['grid']}, round "
        f"{r['round']}: limit {r['limit_images_s']:.0f} img/s (eager, batch {r['limit_batch']}, {r['limit_format']}; "
        f"{r['limit_before_after'][0]:.0f} before, {r['limit_before_after'][1]:.0f} after); llmpi "
        f"{r['llmpi_images_s']:.0f} img/s end to end, {r['llmpi_sweep_images_s']:.0f} in the sweep "
        f"({r['llmpi_forward']}, batch {r['llmpi_batch']}, compiled in {r['llmpi_compile_s']:.1f} s, "
        f"{r['llmpi_wall_s']:.1f} s wall)"
        f"\n    limit: {terms.describe_terms(r['limit_terms'])}; sweep: {terms.describe_terms(r['sweep_terms'])}"
    )
    if "naive_images_s" in r:
        text += (
            f"\n    naive {r['naive_images_s']:.0f} img/s (its values agree to {r['naive_vs_llmpi_max_rel_loss']:.1e})"
            f"; llmpi/limit {r['llmpi_over_limit']:.3f} (sweep phase {r['sweep_over_limit']:.3f}); "
            f"llmpi/naive {r['llmpi_over_naive']:.2f} (sweep phase {r['sweep_over_naive']:.2f})"
        )
    else:
        text += f"\n    llmpi/limit {r['llmpi_over_limit']:.3f} (sweep phase {r['sweep_over_limit']:.3f})"
    if "extrapolated_s" in r:
        g = r["extrapolated_grid"]
        text += f"; {g}x{g} extrapolated (not measured): {r['extrapolated_s'] / 60:.1f} min"
    return text


# ----------------------------------------------------------------------------------------------------------------
# Precision, forward paths, kernels.


def case_setup(arch: str, images: int, work: Path, root: Path, device: torch.device) -> tuple:
    """Checkpoint, resident images and labels, and the filter-normalised directions of seed 0."""
    ckpt = fixtures.write_checkpoint(work / f"{arch}.pt", arch, root)
    _, x, labels = fixtures.resident(root, images, device)
    model = checkpoint.load_model(arch, ckpt)
    weights = {k: v.detach() for k, v in perturbed_entries(model, "weights").items()}
    return ckpt, x, labels, random_directions(weights, 0, "filter", "biasbn")


def evaluator(arch: str, ckpt: Path, dirs: list, x: torch.Tensor, labels: torch.Tensor, precision: str, forward: str):
    keys = FORWARDS[forward]
    return Evaluator(
        checkpoint.load_model(arch, ckpt), dirs, x, labels, min(len(labels), 2048), precision=precision,
        fold=keys.get("fold", False), compile=keys.get("compile", False),
    )  # fmt: skip


POINTS = [(0.0, 0.0), (0.5, -0.25), (-1.0, 1.0)]


def deviations(profile: Profile, work: Path, root: Path) -> list[dict]:
    """Each (precision, forward) variant's loss and accuracy against eager fp32 at the same points."""
    case = profile.deviation
    ckpt, x, labels, dirs = case_setup(case.arch, case.images, work, root, torch.device(profile.device))
    points = POINTS[: max(1, case.grid)]
    rows, reference = [], None
    for precision, forward in profile.variants:
        ev = evaluator(case.arch, ckpt, dirs, x, labels, precision, forward)
        t0 = time.perf_counter()
        values = ev.many(points)
        seconds = time.perf_counter() - t0
        if reference is None:
            reference = values
        row = {
            "arch": case.arch,
            "images": case.images,
            "precision": precision,
            "forward": forward,
            "max_rel_loss": max(abs(v[0] - r[0]) / abs(r[0]) for v, r in zip(values, reference)),
            "max_abs_acc": max(abs(v[1] - r[1]) for v, r in zip(values, reference)),
            "seconds_first_points": seconds,
        }
        say(
            f"  {precision} {forward}: loss within {row['max_rel_loss']:.1e} (relative) of eager fp32, accuracy "
            f"within {row['max_abs_acc']:.3f} points ({len(points)} points, {seconds:.1f} s)"
        )
        rows.append(row)
    runtime.set_precision(torch.device(profile.device), "fp32")
    return rows


def plain_fp32(arch: str, ckpt: Path, dirs: list, x: torch.Tensor, labels: torch.Tensor, point) -> float:
    """The loss at ``point`` the plain way, independent of llmpi.compute.evaluate: the state_dict perturbed in float64
    and loaded, the unfolded network in fp32 (TF32 off) over batches of 1000, the cross-entropy summed in float64."""
    state = checkpoint.read_state_dict(ckpt)
    for name, value in state.items():
        if value.is_floating_point() and name in dirs[0]:
            moved = value.double() + sum(c * d[name].double() for c, d in zip(point, dirs))
            state[name] = moved.float()
    model = checkpoint.load_model(arch, ckpt)
    model.load_state_dict(state)
    model = model.to(x.device).eval()
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(labels), 1000):
            logits = model(x[s : s + 1000].float()).double()
            total += torch.nn.functional.cross_entropy(logits, labels[s : s + 1000], reduction="sum").item()
    return total / len(labels)


def kernels(profile: Profile, work: Path, root: Path) -> list[dict]:
    """runtime.kernels: fast against deterministic (eager and folded, fp32), both against the plain fp32 loop."""
    case = profile.kernels
    device = torch.device(profile.device)
    ckpt, x, labels, dirs = case_setup(case.arch, case.images, work, root, device)
    points = POINTS[: max(1, case.grid)]
    runtime.set_precision(device, "fp32")
    plain = [plain_fp32(case.arch, ckpt, dirs, x, labels, p) for p in points]
    rows = []
    for forward in ("eager", "folded"):
        values = {}
        for mode in ("deterministic", "fast"):
            runtime.set_kernels(mode)
            try:
                ev = evaluator(case.arch, ckpt, dirs, x, labels, "fp32", forward)
                ev.many(points[:1])  # fast: cuDNN times its algorithms on the first pass
                values[mode] = [v[0] for v in ev.many(points)]
            finally:
                runtime.set_kernels("deterministic")
        row = {
            "arch": case.arch,
            "images": case.images,
            "forward": forward,
            "fast_vs_deterministic": max(abs(f - d) / abs(d) for f, d in zip(values["fast"], values["deterministic"])),
            **{f"{mode}_vs_plain": max(abs(v - p) / abs(p) for v, p in zip(values[mode], plain)) for mode in values},
        }
        say(
            f"  {forward} fp32: fast kernels within {row['fast_vs_deterministic']:.1e} (relative, in the loss) of "
            f"deterministic; against the plain fp32 loop: deterministic {row['deterministic_vs_plain']:.1e}, fast "
            f"{row['fast_vs_plain']:.1e} ({len(points)} points, {case.images} images)"
        )
        rows.append(row)
    return rows


def paths(profile: Profile, work: Path, root: Path, device_label: str) -> list[dict]:
    """The forward paths side by side in one process, at the batch the autotuner picks for the eager network:
    images/s of whole points (forming weights, folding, forward, tally) and each compilation's seconds."""
    device = torch.device(profile.device)
    rows = []
    for arch, images, precision in profile.paths:
        ckpt, x, labels, dirs = case_setup(arch, images, work, root, device)
        ev = evaluator(arch, ckpt, dirs, x, labels, precision, "eager")
        tuning = autotune(ev, work_images=1e12, fold=False, compile=False)  # the probe alone, not limited by a budget
        batch = tuning.batch_size
        row = {"arch": arch, "images": images, "precision": precision, "batch": batch, "rates": {}, "compile_s": {}}
        candidates = [ForwardPath(False, False), ForwardPath(True, False)]
        if profile.compile_unfolded:
            candidates.append(ForwardPath(False, True))
        candidates.append(ForwardPath(True, True))
        evaluators = {}
        for path in candidates:
            if path.fold and not ev.foldable:
                continue
            one = evaluator(arch, ckpt, dirs, x, labels, precision, "eager")
            one.batch_size = batch
            one.use(path)
            row["compile_s"][path.describe()] = one.prepare()
            evaluators[path.describe()] = one
        # interleaved rounds of whole points for at least a second each: the machine's load changes hit every path
        # alike; the median of each
        timings: dict[str, list[float]] = {name: [] for name in evaluators}
        for one in evaluators.values():
            one(POINTS[1])
        for _ in range(3):
            for name, one in evaluators.items():
                runtime.synchronize(device)
                count, t0 = 0, time.perf_counter()
                while count == 0 or time.perf_counter() - t0 < max(0.25, profile.sustain / 4):
                    one(POINTS[count % len(POINTS)])
                    runtime.synchronize(device)
                    count += 1
                timings[name].append(count * images / (time.perf_counter() - t0))
        for name, rates in timings.items():
            row["rates"][name] = statistics.median(rates)
        eager = row["rates"]["eager"]
        row["terms"] = {n: terms.in_device_terms(device_label, precision, arch, r) for n, r in row["rates"].items()}
        # The same network's convolutions and linear layers alone, at the same batch, dtype and memory format: the
        # limit of any forward path that keeps those kernels.
        runtime.set_precision(device, precision)
        fmt = runtime.memory_format(device, precision)
        layers = forward_model(arch, ckpt, precision, device).to(memory_format=fmt)
        xx = x.to(next(layers.parameters()).dtype).contiguous(memory_format=fmt)
        row["layer_bound"] = terms.layer_bound(layers, xx, min(batch, len(xx)), max(0.5, profile.sustain / 2))
        best = max(row["rates"].values())
        say(
            f"  {arch} {precision}, {images} images, batch {batch}: "
            + ", ".join(f"{n} {r:.0f} img/s ({r / eager:.2f}x)" for n, r in row["rates"].items())
            + "; compiled in "
            + ", ".join(f"{s:.1f} s ({n})" for n, s in row["compile_s"].items() if s)
            + f"\n    its convolutions and linear layers alone: {row['layer_bound']:.0f} img/s "
            f"({row['layer_bound'] / eager:.2f}x eager; the fastest path reaches {best / row['layer_bound']:.2f} of it)"
        )
        rows.append(row)
        runtime.set_precision(device, "fp32")
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The coordinator under load.


def stress(profile: Profile, work: Path, root: Path, noop: bool) -> dict:
    from .stress import Trivial

    ckpt = work / "trivial.pt"
    torch.manual_seed(0)
    torch.save({"state_dict": Trivial().state_dict()}, ckpt)
    grid = profile.bookkeeping_grid if noop else profile.stress_grid
    output = work / f"stress-{'noop' if noop else 'trivial'}.h5"
    job = fixtures.write_job(
        work / "stress.yaml",
        name="stress",
        model={"arch": "bench_trivial", "checkpoint": str(ckpt)},
        data={"dataset": "cifar10", "root": str(root), "subset": 1},
        grid={"x": [-1.0, 1.0, grid], "y": [-1.0, 1.0, grid]},
        output=str(output),
        runtime={"device": "cpu", "threads": 1, "fold": False, "compile": False},  # no tuning: the coordinator
    )
    mpirun = Path(sys.executable).parent / "mpirun"
    cmd = [str(mpirun) if mpirun.exists() else "mpirun", "-n", str(profile.stress_ranks)]
    cmd += [sys.executable, "-m", "bench.stress", str(job), "--restart"]
    if noop:
        cmd += ["--noop", "--set", "data.batch_size=1"]
    t0 = time.perf_counter()
    result = run_command(cmd, TIMEOUT)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"stress run failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    # the rate from the run log, not the summary line: a no-op sweep can finish in less than its 0.1 s resolution
    info = read_run_info(output)
    points, rate = info["points_this_run"], info["points_per_second"]
    rss = [int(k) for k in re.findall(r"peak_rss_kib (\d+)", result.stderr)]
    store = re.search(r"commits (\d+) blocks (\d+) write_s ([\d.]+) fsync_s ([\d.]+)", result.stderr)
    row = {
        "evaluator": "no-op" if noop else "trivial network",
        "ranks": profile.stress_ranks,
        "grid": grid,
        "points": points,
        "sweep_s": points / rate,
        "wall_s": wall,
        "points_s": rate,
        "peak_rss_mib_max": max(rss) / 1024 if rss else math.nan,
        "file_mib": output.stat().st_size / 2**20,
        "store_commits": int(store.group(1)),
        "store_blocks": int(store.group(2)),
        "store_write_s": float(store.group(3)),
        "store_fsync_s": float(store.group(4)),
    }
    say(
        f"  {row['evaluator']}, {row['ranks']} ranks, {grid}x{grid} = {row['points']} points: "
        f"{row['points_s']:.0f} points/s in the sweep ({row['sweep_s']:.1f} s; {wall:.1f} s wall with start-up), "
        f"peak RSS {row['peak_rss_mib_max']:.0f} MiB per rank, file "
        f"{row['file_mib']:.1f} MiB; rank 0 spent {row['store_write_s']:.1f} s writing {row['store_blocks']} "
        f"blocks in {row['store_commits']} commits ({row['store_fsync_s']:.1f} s of it in fsync)"
    )
    return row


# ----------------------------------------------------------------------------------------------------------------


def summary(cases: list[dict]) -> None:
    keys = sorted({(r["arch"], r["precision"], r["forward"]) for r in cases})
    say("\nsummary (median over rounds):")
    for arch, precision, forward in keys:
        rows = [r for r in cases if (r["arch"], r["precision"], r["forward"]) == (arch, precision, forward)]

        def med(k: str, rows: list[dict] = rows) -> float:
            values = [r[k] for r in rows if k in r]
            return statistics.median(values) if values else math.nan

        each = ", ".join(f"{r['llmpi_over_limit']:.3f}" for r in rows)
        naive_text = (
            f", llmpi/naive {med('llmpi_over_naive'):.2f} (sweep phase {med('sweep_over_naive'):.2f})"
            if any("llmpi_over_naive" in r for r in rows)
            else ""
        )
        say(
            f"  {arch} {precision} {forward} (ran {rows[-1]['llmpi_forward']}): llmpi/limit "
            f"{med('llmpi_over_limit'):.3f} (sweep phase {med('sweep_over_limit'):.3f}){naive_text}"
            f"  [each round: {each}]"
        )


def run_profile(profile: Profile, work: Path, results: Results, stress_runs: bool) -> None:
    threads = results.threads
    work.mkdir(parents=True, exist_ok=True)
    root = fixtures.write_dataset(work / "data", profile.dataset)
    label = device_label(profile.device)
    say(f"\n[{profile.name}] {results.device}; {threads} thread(s); {results.date}")
    say("forward-pass limit, llmpi and the naive loop, side by side:")
    for rnd in range(1, profile.rounds + 1):
        for case in profile.cases:
            results.cases.extend(measure_case(case, profile, work, root, threads, rnd, label))
    summary(results.cases)
    if profile.paths:
        say("forward paths side by side (one process, the eager network's best batch):")
        results.paths.extend(paths(profile, work, root, label))
    say("deviation from eager fp32 (same points, same data):")
    results.deviation.extend(deviations(profile, work, root))
    if profile.kernels is not None:
        say("runtime.kernels (fp32):")
        results.kernels.extend(kernels(profile, work, root))
    if stress_runs and profile.stress:
        say("coordinator under load (the real sweep under mpirun):")
        results.stress.append(stress(profile, work, root, noop=False))
        results.stress.append(stress(profile, work, root, noop=True))


def device_label(device: str) -> str:
    """The name the peak table matches: the GPU's own, or the CPU's model."""
    return torch.cuda.get_device_name(0) if device == "cuda" else device_name(device).split(",")[0]


def _variants(text: str) -> tuple[tuple[str, str], ...]:
    """'fp32,bf16+folded+compiled' -> (("fp32", "auto"), ("bf16", "folded+compiled")): a short lease runs fewer."""
    out = []
    for item in text.split(","):
        precision, _, forward = item.strip().partition("+")
        forward = forward or "auto"
        if precision not in ("fp32", "tf32", "bf16") or forward not in FORWARDS:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected fp32, tf32 or bf16, optionally +{' | +'.join(FORWARDS)}"
            )
        out.append((precision, forward))
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=["auto", *PROFILES], default="auto", help="auto: cpu, and gpu-short with a GPU")
    p.add_argument("--rounds", type=int, help="override the profile's number of rounds")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument("--work", type=Path, help="keep data, checkpoints and surfaces here (default: a temp dir)")
    p.add_argument("--no-stress", action="store_true", help="skip the coordinator stress runs")
    p.add_argument("--runs", type=_variants, help="override the profile's llmpi runs, e.g. fp32,bf16+folded+compiled")
    p.add_argument("--variants", type=_variants, help="override the variants whose deviation from fp32 is measured")
    p.add_argument("--sustain", type=float, help="override the seconds each best forward-pass configuration runs")
    p.add_argument("--no-hessian", action="store_true", help="skip the Hessian section (bench/hessian.py)")
    p.add_argument(
        "--pyhessian", help="the Python of a virtualenv with PyHessian, for the Hessian section's comparison"
    )
    args = p.parse_args(argv)
    register_trivial()
    cuda = torch.cuda.is_available()
    names = [args.profile] if args.profile != "auto" else ["cpu"] + (["gpu-short"] if cuda else [])
    if any(PROFILES[n].device == "cuda" for n in names) and not cuda:
        print(f"bench: error: --profile {args.profile} needs a GPU that torch can see", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="llmpi-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    # Compile times as a first run sees them: Inductor's cache starts empty (the sweeps inherit it).
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / f"inductor-cache-{os.getpid()}")
    threads = runtime.usable_cores()
    torch.set_num_threads(threads)
    runtime.set_kernels("deterministic")  # as a sweep runs by default; the kernels section measures fast
    all_results = []
    try:
        for name in names:
            profile = PROFILES[name]
            overrides = {"rounds": args.rounds, "runs": args.runs, "variants": args.variants, "sustain": args.sustain}
            profile = dataclasses.replace(profile, **{k: v for k, v in overrides.items() if v is not None})
            date = datetime.datetime.now().astimezone().isoformat(timespec="minutes")
            results = Results(device_name(profile.device), date, name, threads)
            run_profile(profile, work / name, results, not args.no_stress)
            if not args.no_hessian and name in hessian.PROFILES:  # CPU sizes; on a GPU: not measured yet
                results.hessian = hessian.run(hessian.PROFILES[name], work / name / "hessian", args.pyhessian, threads)
            all_results.append(asdict(results))
    finally:
        if args.json:
            args.json.write_text(json.dumps(all_results, indent=1, default=str))
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""llmpi against the physical limit and against the naive way, measured side by side in one run (``make bench``).

    python -m bench                          # the CPU section, and the GPU section when torch sees a GPU
    python -m bench --profile gpu            # the GPU section only: 50,000 images, resnet56, 11x11 -> 51x51
    python -m bench --profile tiny           # a few tens of seconds: the smoke test's size
    python -m bench --json out.json          # every figure also as JSON

For each network, in rounds that interleave the three so load changes on the machine hit all of them alike:

1. limit: the raw forward pass of the same network on the same resident images (normalised, on the device), at
   its best batch size and memory format: images/s. Every point needs one such pass over the data;
   measured right before and right after the llmpi run (the mean is the limit);
2. llmpi: ``python -m llmpi.sweep`` as a user runs it, one rank, points x images / wall time from process start
   to exit (imports, data, tuning and the file included); the sweep phase alone is printed too;
3. naive: bench/naive.py, the common per-point state_dict + DataLoader loop, batch 128, on the same images.

Then: each precision's deviation from fp32 (and compile's), where several points per pass pay, and the coordinator
under load (bench/stress.py: a trivial network and a no-op evaluator under mpirun -n 4, on a 1001x1001 grid).
bench/README.md records the figures with the device and the date.
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

from llmpi import checkpoint, runtime
from llmpi.directions import perturbed_entries, random_directions
from llmpi.evaluate import Evaluator, autotune
from llmpi.grid import Grid
from llmpi.memory import fits
from llmpi.store import read_run_info, read_surface

from . import fixtures, naive
from .stress import register as register_trivial

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 1800.0  # seconds any one command of the bench may take


@dataclass(frozen=True)
class Case:
    arch: str
    images: int
    grid: int  # grid x grid points over [-1, 1]^2
    naive_points: int


@dataclass(frozen=True)
class Profile:
    name: str
    device: str
    dataset: int  # training images written
    cases: tuple[Case, ...]
    rounds: int
    runs: tuple[tuple[str, bool], ...]  # (precision, compile) of the llmpi runs; the limit at the same precision
    deviation: Case  # arch, images, points (grid field: how many points) for the precision deviations
    variants: tuple[tuple[str, bool], ...]
    widths: tuple[tuple[str, int], ...]  # (arch, images) for the points-per-pass probe
    stress_ranks: int
    stress_grid: int  # the trivial network through the real evaluator
    bookkeeping_grid: int  # the no-op evaluator: coordinator, protocol and store alone
    workers: int  # the naive DataLoader's worker processes
    sustain: float = 10.0  # seconds the best forward-pass configurations run for the limit
    extrapolate: int | None = None  # report the time of a grid this size from the measured per-point time


PROFILES = {
    "tiny": Profile(
        "tiny", "cpu", 256, (Case("resnet8", 16, 4, 1),), 1, (("fp32", False),), Case("resnet8", 16, 2, 0),
        (("fp32", False), ("bf16", False)), (("resnet8", 8),), 2, 21, 31, 0, sustain=1.0,
    ),
    "cpu": Profile(
        "cpu", "cpu", 10000, (Case("resnet20", 512, 13, 2), Case("resnet56", 256, 10, 1)), 2, (("fp32", False),),
        Case("resnet20", 64, 3, 0), (("fp32", False), ("tf32", False), ("bf16", False)),
        (("bench_trivial", 1), ("resnet8", 16), ("resnet20", 128)), 4, 401, 1001, 0,
    ),
    "gpu": Profile(
        "gpu", "cuda", 50000, (Case("resnet56", 50000, 11, 2),), 1,
        (("fp32", False), ("tf32", False), ("bf16", False), ("bf16", True)),
        Case("resnet56", 10000, 3, 0), (("fp32", False), ("tf32", False), ("bf16", False), ("fp32", True)),
        (("resnet20", 512), ("resnet56", 50000)), 4, 1001, 1001, 4, extrapolate=51,
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
    widths: list[dict] = field(default_factory=list)
    stress: list[dict] = field(default_factory=list)


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


def llmpi_run(job: Path, timeout: float) -> dict:
    """The real CLI, one rank, timed from process start to exit."""
    t0 = time.perf_counter()
    result = run_command([sys.executable, "-m", "llmpi.sweep", str(job), "--restart"], timeout)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"llmpi.sweep failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    m = re.search(r"llmpi: (\d+) points in ([\d.]+) s \(([\d.]+) points/s", result.stdout)
    if m is None:
        raise RuntimeError(f"no summary line in the sweep's output:\n{result.stdout}")
    tuned = re.search(r"tuned on rank 0: (.*)", result.stdout)
    setup = re.search(r"batch (\d+)(?: x (\d+) points per pass)?", result.stdout)
    return {
        "wall_s": wall,
        "points": int(m.group(1)),
        # from the rate: the seconds are printed to 0.1 s, and a tiny sweep finishes within that
        "sweep_s": int(m.group(1)) / float(m.group(3)) if float(m.group(3)) > 0 else float(m.group(2)),
        "batch": int(setup.group(1)) if setup else None,
        "points_per_pass": int(setup.group(2) or 1) if setup else None,
        "tuned": tuned.group(1) if tuned else "",
    }


def stored(path: Path) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """The directions and flat losses of a surface file."""
    surface = read_surface(path)
    return surface.directions, surface.values["train_loss"].ravel()


def measure_case(case: Case, profile: Profile, work: Path, root: Path, threads: int, rnd: int) -> list[dict]:
    device = torch.device(profile.device)
    ckpt = fixtures.write_checkpoint(work / f"{case.arch}.pt", case.arch, root)
    u8, x, labels = fixtures.resident(root, case.images, device)
    rows = []
    for precision, compiled in profile.runs:
        model = forward_model(case.arch, ckpt, precision, device)
        before, batch, fmt = forward_limit(model, x, precision, profile.sustain)
        output = work / f"{case.arch}-{precision}-{int(compiled)}.h5"
        job = fixtures.sweep_job(
            work / f"{case.arch}-{precision}.yaml", case.arch, ckpt, root, case.images, case.grid, output,
            profile.device, threads, precision, compiled,
        )  # fmt: skip
        run = llmpi_run(job, TIMEOUT)
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
            "compile": compiled,
            "limit_images_s": limit,
            "limit_before_after": [before, after],
            "limit_batch": batch,
            "limit_format": fmt,
            "llmpi_images_s": images / run["wall_s"],
            "llmpi_sweep_images_s": images / run["sweep_s"],
            **{f"llmpi_{k}": v for k, v in run.items()},
        }
        if profile.extrapolate:
            per_point = run["sweep_s"] / run["points"]
            row["extrapolated_grid"] = profile.extrapolate
            row["extrapolated_s"] = (run["wall_s"] - run["sweep_s"]) + per_point * profile.extrapolate**2
        if precision == "fp32" and not compiled and case.naive_points:
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
        row["llmpi_over_limit"] = row["llmpi_images_s"] / limit
        row["sweep_over_limit"] = row["llmpi_sweep_images_s"] / limit
        say(describe_case(row))
        rows.append(row)
    return rows


def describe_case(r: dict) -> str:
    text = (
        f"  {r['arch']} {r['precision']}{' compiled' if r['compile'] else ''}, {r['images']} images, "
        f"{r['grid']}x{r['grid']}, round {r['round']}: limit {r['limit_images_s']:.0f} img/s (batch "
        f"{r['limit_batch']}, {r['limit_format']}; {r['limit_before_after'][0]:.0f} before, "
        f"{r['limit_before_after'][1]:.0f} after); llmpi {r['llmpi_images_s']:.0f} img/s end to end, "
        f"{r['llmpi_sweep_images_s']:.0f} in the sweep (batch {r['llmpi_batch']} x {r['llmpi_points_per_pass']}, "
        f"{r['llmpi_wall_s']:.1f} s wall)"
    )
    if "naive_images_s" in r:
        text += (
            f"; naive {r['naive_images_s']:.0f} img/s (its values agree to {r['naive_vs_llmpi_max_rel_loss']:.1e})"
            f"\n    llmpi/limit {r['llmpi_over_limit']:.3f} (sweep phase {r['sweep_over_limit']:.3f}); "
            f"llmpi/naive {r['llmpi_over_naive']:.2f}"
        )
    else:
        text += f"\n    llmpi/limit {r['llmpi_over_limit']:.3f} (sweep phase {r['sweep_over_limit']:.3f})"
    if "extrapolated_s" in r:
        g = r["extrapolated_grid"]
        text += f"; {g}x{g} extrapolated: {r['extrapolated_s'] / 60:.1f} min"
    return text


# ----------------------------------------------------------------------------------------------------------------
# Precision, compile, points per pass.


def deviations(profile: Profile, work: Path, root: Path) -> list[dict]:
    """Each (precision, compile) variant's loss and accuracy against eager fp32 at the same points."""
    case = profile.deviation
    device = torch.device(profile.device)
    ckpt = fixtures.write_checkpoint(work / f"{case.arch}.pt", case.arch, root)
    _, x, labels = fixtures.resident(root, case.images, device)
    model = checkpoint.load_model(case.arch, ckpt)
    weights = {k: v.detach() for k, v in perturbed_entries(model, "weights").items()}
    dirs = random_directions(weights, 0, "filter", "biasbn")
    points = [(0.0, 0.0), (0.5, -0.25), (-1.0, 1.0)][: max(1, case.grid)]
    rows, reference = [], None
    for precision, compiled in profile.variants:
        ev = Evaluator(
            checkpoint.load_model(case.arch, ckpt), dirs, x, labels, min(case.images, 2048), precision=precision,
            compile=compiled,
        )  # fmt: skip
        t0 = time.perf_counter()
        values = ev.many(points)
        seconds = time.perf_counter() - t0
        if reference is None:
            reference = values
        row = {
            "arch": case.arch,
            "images": case.images,
            "precision": precision,
            "compile": compiled,
            "max_rel_loss": max(abs(v[0] - r[0]) / abs(r[0]) for v, r in zip(values, reference)),
            "max_abs_acc": max(abs(v[1] - r[1]) for v, r in zip(values, reference)),
            "seconds_first_points": seconds,
        }
        say(
            f"  {precision}{' compiled' if compiled else ''}: loss within {row['max_rel_loss']:.1e} (relative) of "
            f"fp32, accuracy within {row['max_abs_acc']:.3f} points ({len(points)} points, {seconds:.1f} s incl. "
            f"any compilation)"
        )
        rows.append(row)
    return rows


def widths(profile: Profile, work: Path, root: Path) -> list[dict]:
    """Where several points per pass pay: the autotuner's table, and P=1 against its choice on real points."""
    device = torch.device(profile.device)
    rows = []
    for arch, images in profile.widths:
        ckpt = fixtures.write_checkpoint(work / f"{arch}.pt", arch, root)
        _, x, labels = fixtures.resident(root, images, device)
        model = checkpoint.load_model(arch, ckpt)
        weights = {k: v.detach() for k, v in perturbed_entries(model, "weights").items()}
        ev = Evaluator(model, random_directions(weights, 0, "filter", "biasbn"), x, labels, images)
        tuning = autotune(ev, work_images=1e12, max_batch=1024)  # the probe alone, not limited by a budget
        row = {"arch": arch, "images": images, "chosen": tuning.points_per_pass, "table": tuning.table}
        if tuning.points_per_pass > 1:
            points = [(a, 0.1) for a in np.linspace(-1, 1, 2 * tuning.points_per_pass)]
            rates = {}
            for width in (1, tuning.points_per_pass):
                ev.batch_size, ev.points_per_pass = images, width
                ev.many(points[:width])  # warm-up
                t0 = time.perf_counter()
                ev.many(points)
                rates[width] = len(points) * images / (time.perf_counter() - t0)
            row["one_images_s"], row["chosen_images_s"] = rates[1], rates[tuning.points_per_pass]
            say(
                f"  {arch}, {images} images: {tuning.points_per_pass} points per pass, "
                f"{rates[tuning.points_per_pass]:.0f} img/s against {rates[1]:.0f} with one "
                f"({rates[tuning.points_per_pass] / rates[1]:.2f}x)"
            )
        else:
            say(f"  {arch}, {images} images: one point per pass kept ({tuning.describe()})")
        rows.append(row)
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
        runtime={"device": "cpu", "threads": 1},
    )
    mpirun = Path(sys.executable).parent / "mpirun"
    cmd = [str(mpirun) if mpirun.exists() else "mpirun", "-n", str(profile.stress_ranks)]
    cmd += [sys.executable, "-m", "bench.stress", str(job), "--restart"]
    if noop:
        cmd += ["--noop", "--set", "data.batch_size=1", "--set", "runtime.points_per_pass=1"]
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
    setup = re.search(r"batch (\d+)(?: x (\d+) points per pass)?", result.stdout)
    row = {
        "evaluator": "no-op" if noop else "trivial network",
        "ranks": profile.stress_ranks,
        "grid": grid,
        "points": points,
        "sweep_s": points / rate,
        "wall_s": wall,
        "points_s": rate,
        "points_per_pass": int(setup.group(2) or 1) if setup else None,
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
        f"{row['points_per_pass']} point(s) per pass, peak RSS {row['peak_rss_mib_max']:.0f} MiB per rank, file "
        f"{row['file_mib']:.1f} MiB; rank 0 spent {row['store_write_s']:.1f} s writing {row['store_blocks']} "
        f"blocks in {row['store_commits']} commits ({row['store_fsync_s']:.1f} s of it in fsync)"
    )
    return row


# ----------------------------------------------------------------------------------------------------------------


def summary(cases: list[dict]) -> None:
    keys = sorted({(r["arch"], r["precision"], r["compile"]) for r in cases})
    say("\nsummary (median over rounds):")
    for arch, precision, compiled in keys:
        rows = [r for r in cases if (r["arch"], r["precision"], r["compile"]) == (arch, precision, compiled)]

        def med(k: str, rows: list[dict] = rows) -> float:
            values = [r[k] for r in rows if k in r]
            return statistics.median(values) if values else math.nan

        each = ", ".join(f"{r['llmpi_over_limit']:.3f}" for r in rows)
        say(
            f"  {arch} {precision}{' compiled' if compiled else ''}: llmpi/limit {med('llmpi_over_limit'):.3f} "
            f"(sweep phase {med('sweep_over_limit'):.3f}), llmpi/naive {med('llmpi_over_naive'):.2f}"
            f"  [each round: {each}]"
        )


def run_profile(profile: Profile, work: Path, results: Results, stress_runs: bool) -> None:
    threads = results.threads
    work.mkdir(parents=True, exist_ok=True)
    root = fixtures.write_dataset(work / "data", profile.dataset)
    say(f"\n[{profile.name}] {results.device}; {threads} thread(s); {results.date}")
    say("forward-pass limit, llmpi and the naive loop, side by side:")
    for rnd in range(1, profile.rounds + 1):
        for case in profile.cases:
            results.cases.extend(measure_case(case, profile, work, root, threads, rnd))
    summary(results.cases)
    say("deviation from fp32 (same points, same data):")
    results.deviation.extend(deviations(profile, work, root))
    say("several points per pass:")
    results.widths.extend(widths(profile, work, root))
    if stress_runs:
        say("coordinator under load (the real sweep under mpirun):")
        results.stress.append(stress(profile, work, root, noop=False))
        results.stress.append(stress(profile, work, root, noop=True))


def _variants(text: str) -> tuple[tuple[str, bool], ...]:
    """'fp32,bf16+compile' -> (("fp32", False), ("bf16", True)): a short GPU lease runs fewer of them."""
    out = []
    for item in text.split(","):
        precision, _, extra = item.strip().partition("+")
        if precision not in ("fp32", "tf32", "bf16") or extra not in ("", "compile"):
            raise argparse.ArgumentTypeError(f"{item!r}: expected fp32, tf32 or bf16, optionally +compile")
        out.append((precision, extra == "compile"))
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=["auto", *PROFILES], default="auto", help="auto: cpu, and gpu with a GPU")
    p.add_argument("--rounds", type=int, help="override the profile's number of rounds")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument("--work", type=Path, help="keep data, checkpoints and surfaces here (default: a temp dir)")
    p.add_argument("--no-stress", action="store_true", help="skip the coordinator stress runs")
    p.add_argument(
        "--runs", type=_variants, help="override the profile's llmpi runs, e.g. fp32,bf16+compile (precision[+compile])"
    )
    p.add_argument("--variants", type=_variants, help="override the variants whose deviation from fp32 is measured")
    p.add_argument("--sustain", type=float, help="override the seconds each best forward-pass configuration runs")
    args = p.parse_args(argv)
    register_trivial()
    names = [args.profile] if args.profile != "auto" else ["cpu"] + (["gpu"] if torch.cuda.is_available() else [])
    if "gpu" in names and not torch.cuda.is_available():
        print("bench: error: --profile gpu needs a GPU that torch can see", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="llmpi-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    threads = runtime.usable_cores()
    torch.set_num_threads(threads)
    all_results = []
    try:
        for name in names:
            profile = PROFILES[name]
            overrides = {"rounds": args.rounds, "runs": args.runs, "variants": args.variants, "sustain": args.sustain}
            profile = dataclasses.replace(profile, **{k: v for k, v in overrides.items() if v is not None})
            date = datetime.datetime.now().astimezone().isoformat(timespec="minutes")
            results = Results(device_name(profile.device), date, name, threads)
            run_profile(profile, work / name, results, not args.no_stress)
            all_results.append(asdict(results))
    finally:
        if args.json:
            args.json.write_text(json.dumps(all_results, indent=1, default=str))
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

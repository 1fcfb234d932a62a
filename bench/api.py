"""llmpi from Python against the command line on the same sweep, side by side: what ``llmpi.surface`` costs.

    python -m bench.api                              # resnet20, 512 images, 11x11 grid, 3 rounds (make bench-api)
    python -m bench.api --arch resnet8 --images 64 --grid 3 --rounds 1      # the test suite's size
    python -m bench.api --threads 1 --grid 9         # a shared machine: one thread per run, ~2 min a round

Three ways to run one job, each a fresh process timed from its start to its exit (imports, MPI, data, the sweep,
the file), in rounds that alternate them so that a change of load on the machine hits all three alike:

1. command: ``python -m llmpi.sweep job.yaml`` as a user runs it;
2. api (memory): a script that loads the checkpoint into its network and the images into tensors itself, as a
   notebook holds them, and calls ``llmpi.surface(model, (inputs, targets), job=job)``: the copy of the network,
   the hashes of its weights, structure and code, the Surface read back at the end are its costs;
3. api (job): ``llmpi.surface(job=job)``, the job of files called from Python.

The batch size and the forward path are fixed (``data.batch_size``, ``runtime.fold``/``compile``), so every run
does the same work and the timing of "auto" adds no noise; all three files must hold the same bits (checked).
Reported, as medians: wall time, its sweep phase (from the run record), the rest ("outside": start-up, set-up,
the ending), CPU time (user + system of the process), the ratios of wall and CPU time to the command's, and the
overhead: what a run adds outside the sweep phase to the command's, as a share of the command's wall time. The
sweep phase is the same code in all three, and it is what a shared machine stretches most; the overhead and the
CPU ratio are the steady figures there (bench/README.md records them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = ("command", "api (memory)", "api (job)")


def child(kind: str, job_path: str, output: str) -> None:
    """One timed run of ``kind`` (``python -m bench.api --child KIND JOB OUT``): what a user's script does."""
    import llmpi

    job = llmpi.Job.from_yaml(job_path, [f"output={output}"])
    if kind == "api (job)":
        llmpi.surface(job=job, restart=True)
        return
    import torch

    from llmpi.compute import data
    from llmpi.space import checkpoint

    model = checkpoint.load_model(job.model.arch, job.model.checkpoint)  # what the user holds in memory
    d = job.data
    images, labels, _ = data.load_images(d.dataset, d.root, d.split, d.subset, d.seed)
    pair = (data.normalize(images), torch.as_tensor(labels))
    llmpi.surface(model, pair, job=job.replace(data_subset=None), restart=True)  # the tensors are the selection


def timed(kind: str, job: Path, output: Path, timeout: float) -> dict:
    from llmpi.file.store import read_run_info

    if kind == "command":
        cmd = [sys.executable, "-m", "llmpi.sweep", str(job), "--set", f"output={output}", "--restart"]
    else:
        cmd = [sys.executable, "-m", "bench.api", "--child", kind, str(job), str(output)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLMPI_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the runs are sequential: the delta is this one's
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    info = read_run_info(output)
    if info is None or info.get("state") != "complete":
        raise RuntimeError(f"{kind} left no complete run record next to {output}:\n{result.stdout}")
    return {"wall_s": wall, "cpu_s": cpu, "sweep_s": info["seconds"]["sweep"], "points": info["points_this_run"]}


def measure(arch: str, images: int, grid: int, rounds: int, work: Path, timeout: float, threads: int | str) -> dict:
    import yaml

    from llmpi.file.store import read_surface

    from . import fixtures

    root = fixtures.write_dataset(work / "data", max(images, 512))
    ckpt = fixtures.write_checkpoint(work / f"{arch}.pt", arch, root)
    job = fixtures.sweep_job(
        work / "job.yaml", arch, ckpt, root, images, grid, work / "unused.h5", "cpu", threads,
        forward={"fold": False, "compile": False},
    )  # fmt: skip
    raw = yaml.safe_load(job.read_text())
    raw["data"]["batch_size"] = 64  # every run the same batches: no probing
    job.write_text(yaml.safe_dump(raw, sort_keys=False))
    times: dict[str, list[dict]] = {kind: [] for kind in RUNS}
    for r in range(rounds):
        order = RUNS if r % 2 == 0 else RUNS[::-1]  # alternating: neither always first after a pause
        for kind in order:
            out = work / f"{kind.replace(' ', '_').strip('()')}.h5"
            times[kind].append(timed(kind, job, out, timeout))
            print(f"bench.api: round {r + 1}: {kind}: {times[kind][-1]['wall_s']:.2f} s", file=sys.stderr, flush=True)
    files = {kind: read_surface(work / f"{kind.replace(' ', '_').strip('()')}.h5") for kind in RUNS}
    first = files["command"]
    same = all(
        all((f.values[k] == first.values[k]).all() for k in first.values) and f.values.keys() == first.values.keys()
        for f in files.values()
    )
    rows = {}
    for kind in RUNS:
        runs = times[kind]
        rows[kind] = {
            "wall_s": statistics.median(t["wall_s"] for t in runs),
            "sweep_s": statistics.median(t["sweep_s"] for t in runs),
            "outside_s": statistics.median(t["wall_s"] - t["sweep_s"] for t in runs),  # start-up, set-up, ending
            "cpu_s": statistics.median(t["cpu_s"] for t in runs),
            "walls": [t["wall_s"] for t in runs],
        }
    base = rows["command"]
    for row in rows.values():
        row["ratio"] = row["wall_s"] / base["wall_s"]
        row["cpu_ratio"] = row["cpu_s"] / base["cpu_s"]
        # the API's own cost: what it adds outside the sweep phase (the same code in all three), as a share of the
        # command's wall time -- steadier than the ratio of walls, whose sweep phases a shared machine stretches
        row["overhead"] = (row["outside_s"] - base["outside_s"]) / base["wall_s"]
    points = times["command"][0]["points"]
    return {"arch": arch, "images": images, "grid": grid, "points": points, "rounds": rounds, "runs": rows,
            "same_bits": same, "threads": threads}  # fmt: skip


def report(r: dict) -> str:
    lines = [
        f"bench.api: {r['arch']}, {r['images']} images, {r['grid']}x{r['grid']} grid ({r['points']} points), "
        f"{r['rounds']} round(s) alternating, one rank on the CPU ({r['threads']} thread(s)); each a fresh process, "
        "start to exit; medians",
        f"{'run':<14} {'wall s':>8} {'sweep s':>8} {'outside s':>10} {'cpu s':>8} {'wall/cmd':>9} {'cpu/cmd':>8} "
        f"{'overhead':>9}   every round's wall s",
    ]
    for kind, row in r["runs"].items():
        walls = ", ".join(f"{w:.2f}" for w in row["walls"])
        lines.append(
            f"{kind:<14} {row['wall_s']:>8.2f} {row['sweep_s']:>8.2f} {row['outside_s']:>10.2f} {row['cpu_s']:>8.2f} "
            f"{row['ratio']:>9.3f} {row['cpu_ratio']:>8.3f} {100 * row['overhead']:>+8.1f}%   {walls}"
        )
    lines.append(
        "overhead: what the run adds outside the sweep phase (start-up, set-up, ending) to the command's, as a share "
        "of the command's wall time"
    )
    lines.append(f"the three files hold the same bits: {'yes' if r['same_bits'] else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--grid", type=int, default=11, help="grid x grid points over [-1, 1]^2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--threads", default="auto", type=lambda v: v if v == "auto" else int(v),
        help="runtime.threads of the job (auto: every core; 1 keeps the figure steady on a shared machine)",
    )  # fmt: skip
    p.add_argument("--work", type=Path, help="keep data, checkpoint and surfaces here (default: a temp dir)")
    p.add_argument("--json", type=Path, help="write the figures to this file")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds any one run may take")
    p.add_argument("--child", nargs=3, metavar=("KIND", "JOB", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    with tempfile.TemporaryDirectory(prefix="llmpi-bench-api-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = measure(args.arch, args.images, args.grid, args.rounds, work, args.timeout, args.threads)
    print(report(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if result["same_bits"] else 1


if __name__ == "__main__":
    sys.exit(main())

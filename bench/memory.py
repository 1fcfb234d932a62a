"""Peak memory per parameter and time per point of real sweeps, for each direction store, holding and placement.

    python -m bench.memory                                   # CPU: 1 M to 300 M parameters, fp32 and bf16
    python -m bench.memory --sizes 1,10,30 --modes lean,full --dtypes fp32 --json out.json
    python -m bench.memory --device cuda --sizes 100,1000,3000,7000 --dtypes bf16   # on a GPU: the largest it holds

Every case is ``python -m llmpi.sweep`` on one rank as a user runs it, in a fresh process (so one case's peak never
hides another's): a seeded language-model-shaped network of the given size (token embedding, residual MLP blocks,
output layer: llmpi.space.theta' target case), its checkpoint in the given dtype, 4 windows of 64 random tokens, a 2x1
grid in a random plane (both directions move every point). Measured in the child:

* device memory -- on a GPU, ``torch.cuda.max_memory_allocated`` over the whole run; on a CPU, where the device is
  the host, the process's peak RSS (``ru_maxrss``) minus its RSS before the sweep started (Python, torch, MPI);
* the sweep phase's points per second (``<output>.run.json``), and the surface file's size.

Then, per mode and dtype, a least-squares line peak = a + b · parameters over the sizes: b is the bytes per
parameter, reported next to the checkpoint's own bytes per parameter (4 fp32, 2 bf16). The extrapolations below
the tables (labelled so) use that measured b: which sizes fit a device, and whether a 7 B bf16 model fits 80 GB.

Modes: ``lean`` (directions.store recipe, regenerated on the device per point: the default above 100 M),
``held`` (recipe made once and held on the device), ``host`` (recipe made once, held in host memory, streamed per
piece), ``full`` (directions in the file, held on the device: the only way before recipes; the default below
100 M). Placement: ``device`` or ``host`` (on a CPU the same thing; both are run at one size to show it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]
MODES = {  # name: (directions.store, runtime.hold_directions)
    "lean": ("recipe", "regenerate"),
    "held": ("recipe", "device"),
    "host": ("recipe", "host"),
    "full": ("full", "device"),
}
VOCAB, SAMPLES, CONTEXT = 8192, 4, 64


# ----------------------------------------------------------------------------------------------------------------
# The network, its data and loss (named by the job files as bench.memory:network / :tokens / :loss)


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class Network(nn.Module):
    """Token embedding, ``layers`` residual MLP blocks of ``width``, output layer: where a language model's
    parameters are (big matrices), without attention (its cost per token is beside the point here)."""

    def __init__(self, width: int, layers: int, vocab: int = VOCAB) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.Sequential(*[Block(width) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(tokens))))


def shape_for(millions: float) -> tuple[int, int]:
    """(width, layers) of a network with about ``millions`` M parameters."""
    target = millions * 1e6
    widths = [(3e6, 64), (20e6, 256), (60e6, 512), (500e6, 1024)]
    width = next((w for limit, w in widths if target < limit), 2048)
    per_layer = 8 * width * width + 7 * width
    return width, max(1, round((target - 2 * VOCAB * width) / per_layer))


def network(width: int, layers: int, dtype: str = "float32") -> nn.Module:
    with torch.device("meta"):
        net = Network(width, layers).to(getattr(torch, dtype))
    return net.to_empty(device="cpu")  # allocated once, in its dtype: the checkpoint's load fills it


def tokens(split: str, samples: int = SAMPLES, context: int = CONTEXT) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    seq = torch.randint(0, VOCAB, (samples, context + 1), generator=g)
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def loss(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int, torch.Tensor]:
    x, y = batch
    logits = net(x).float()
    per_token = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), reduction="none")
    return per_token.double().sum(), y.numel(), (logits.argmax(-1) == y).sum()


def parameters(width: int, layers: int) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in Network(width, layers).parameters())


def write_checkpoint(path: Path, width: int, layers: int, dtype: str) -> None:
    """A seeded network (small-normal weights) saved as a state_dict, made in a child so the parent stays small."""
    torch.manual_seed(0)
    net = network(width, layers, dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.02) if p.dim() > 1 else p.fill_(1.0 if p.shape[0] == width else 0.0)
    torch.save({"state_dict": net.state_dict()}, path)


# ----------------------------------------------------------------------------------------------------------------
# One case, in a fresh process


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(job: str, out: str) -> int:
    """Run the sweep in this process and record its peaks (``--child``)."""
    from mpi4py import MPI  # noqa: F401  (initialised before the baseline: it is part of every rank)

    from llmpi import sweep

    before = rss_now()
    t0 = time.perf_counter()
    code = sweep.main([job])
    record = {
        "code": code,
        "rss_before": before,
        "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "seconds": time.perf_counter() - t0,
    }
    if torch.cuda.is_available():
        record["cuda_peak"] = torch.cuda.max_memory_allocated()
    Path(out).write_text(json.dumps(record))
    return code


@dataclass
class Row:
    millions: float
    parameters: int
    dtype: str
    mode: str
    placement: str
    device: str
    peak_bytes: int
    bytes_per_parameter: float
    weight_bytes: int
    peak_over_weights: float
    points_per_second: float
    seconds_per_point: float
    file_bytes: int
    wall_seconds: float


def run_case(work: Path, millions: float, dtype: str, mode: str, placement: str, device: str) -> Row:
    width, layers = shape_for(millions)
    count = parameters(width, layers)
    torch_dtype = {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    ckpt = work / f"net-{millions:g}M-{dtype}.pt"
    if not ckpt.exists():
        make = ["--make-checkpoint", str(ckpt), str(width), str(layers), torch_dtype]
        subprocess.run([sys.executable, "-m", "bench.memory", *make], check=True, cwd=REPO, env=_env())
    store, hold = MODES[mode]
    name = f"{millions:g}M-{dtype}-{mode}-{placement}"
    job = {
        "name": name,
        "model": {
            "factory": "bench.memory:network",
            "kwargs": {"width": width, "layers": layers, "dtype": torch_dtype},
            "checkpoint": str(ckpt),
        },
        "data": {"factory": "bench.memory:tokens", "batch_size": SAMPLES, "placement": placement},
        "loss": {"factory": "bench.memory:loss"},
        "directions": {"kind": "random", "seed": 0, "norm": "filter", "ignore": "biasbn", "store": store},
        "grid": {"x": [-0.5, 0.5, 2], "y": [0.5, 0.5, 1]},
        "runtime": {"device": device, "precision": dtype, "hold_directions": hold, "threads": 2},
        "output": str(work / f"{name}.h5"),
    }
    job_path = work / f"{name}.yaml"
    job_path.write_text(yaml.safe_dump(job))
    result_path = work / f"{name}.json"
    for stale in (result_path, Path(job["output"])):
        stale.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--child", str(job_path), str(result_path)],
        cwd=REPO, env=_env(), capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"case {name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    record = json.loads(result_path.read_text())
    peak = record["cuda_peak"] if device == "cuda" else record["rss_peak"] - record["rss_before"]
    run = json.loads(Path(job["output"] + ".run.json").read_text())
    rate = run["points_per_second"]
    weight_bytes = count * (4 if dtype == "fp32" else 2)
    return Row(
        millions, count, dtype, mode, placement, device, peak, peak / count, weight_bytes, peak / weight_bytes, rate,
        1 / rate if rate else math.inf, Path(job["output"]).stat().st_size, record["seconds"],
    )  # fmt: skip


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "LLMPI_OFFLINE": "1"}


# ----------------------------------------------------------------------------------------------------------------
# Fits and the report


def fit(rows: list[Row]) -> tuple[float, float]:
    """Least-squares peak = a + b · parameters: (a bytes, b bytes per parameter)."""
    n = len(rows)
    if n < 2:
        return 0.0, rows[0].bytes_per_parameter
    xs, ys = [r.parameters for r in rows], [r.peak_bytes for r in rows]
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def report(rows: list[Row], device_bytes: float | None) -> str:
    gib = float(1 << 30)
    lines = [
        "| parameters | dtype | mode | placement | peak device memory | bytes/param | peak/weights | s/point | file |",
        "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.parameters / 1e6:.1f} M | {r.dtype} | {r.mode} | {r.placement} | {r.peak_bytes / gib:.3f} GiB | "
            f"{r.bytes_per_parameter:.2f} | {r.peak_over_weights:.2f} | {r.seconds_per_point:.2f} | "
            f"{r.file_bytes / 1e6:.2f} MB |"
        )
    lines.append("")
    lines.append("Fits peak = a + b x parameters (device placement), and what they extrapolate to (EXTRAPOLATED):")
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if r.placement == "device":
            groups.setdefault((r.dtype, r.mode), []).append(r)
    for (dtype, mode), group in sorted(groups.items()):
        a, b = fit(group)
        own = 4 if dtype == "fp32" else 2
        seven = a + b * 7e9
        line = (
            f"- {dtype} {mode}: b = {b:.2f} bytes/param ({b / own:.2f}x the weights), a = {a / gib:.2f} GiB over "
            f"{len(group)} sizes ({', '.join(f'{r.parameters / 1e6:.0f} M' for r in group)}); EXTRAPOLATED 7 B: "
            f"{seven / 1e9:.1f} GB ({seven / (7e9 * own):.2f}x its {7e9 * own / 1e9:.0f} GB of weights)"
        )
        if device_bytes:
            line += f"; largest that fits this device: {max(0.0, (device_bytes - a) / b) / 1e9:.2f} B parameters"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--sizes", default=None, help="millions of parameters, comma-separated (default by device)")
    p.add_argument("--modes", default="lean,full", help=f"comma-separated of {', '.join(MODES)}")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--full-up-to", type=float, default=100, help="run mode full only up to this many M parameters")
    p.add_argument("--placements-at", type=float, default=None, help="also run placement host at this size")
    p.add_argument("--work", default=None, help="folder for checkpoints and files (default: a temporary one)")
    p.add_argument("--json", default=None, help="write every row as JSON too")
    p.add_argument("--child", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--make-checkpoint", nargs=4, metavar=("PATH", "WIDTH", "LAYERS", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(*args.child)
    if args.make_checkpoint:
        path, width, layers, dtype = args.make_checkpoint
        write_checkpoint(Path(path), int(width), int(layers), dtype)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no GPU here")
    default_sizes = "1,10,30,100,300" if args.device == "cpu" else "100,1000,3000"
    sizes = [float(s) for s in (args.sizes or default_sizes).split(",")]
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode {unknown[0]}; choose from {', '.join(MODES)}")
    device_bytes = torch.cuda.get_device_properties(0).total_memory if args.device == "cuda" else None
    work = Path(args.work or tempfile.mkdtemp(prefix="llmpi-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for dtype in args.dtypes.split(","):
        for millions in sizes:
            for mode in modes:
                if mode == "full" and millions > args.full_up_to:
                    continue
                row = run_case(work, millions, dtype, mode, "device", args.device)
                print(json.dumps(asdict(row)), flush=True)
                rows.append(row)
            if args.placements_at == millions:
                row = run_case(work, millions, dtype, modes[0], "host", args.device)
                print(json.dumps(asdict(row)), flush=True)
                rows.append(row)
        for ckpt in work.glob(f"net-*-{dtype}.pt"):
            ckpt.unlink()
    print(report(rows, device_bytes), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

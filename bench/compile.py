"""What compiling llmpi's forward costs on this device, against the guess ``runtime.compile: auto`` decides by.

    python -m bench.compile                              # resnet8, resnet20, resnet56 on the CPU, 3 rounds
    python -m bench.compile --nets resnet8 --rounds 1 --device cuda

Each case is a fresh process (a compilation is cached in the process, so a second one in the same process says
nothing): ``cold`` with an empty Inductor cache (the first compilation on a machine, or after the cache was cleared:
the C++ compiler builds the kernels and the precompiled header), then ``warm`` with the cache the cold one left (what
every later run, and every other rank of the same node, pays). Both time the compiled forward's first pass on the
sweep's batch shape (``Network.warm_up``), the eager and the folded network, and print the guess
(``runtime.compile_guess``: a fixed start plus seconds per leaf module) beside them. The guess is meant to be near
the cold compilation (a guess too low compiles in vain; too high skips a compilation that would pay); bench/README.md
records the figures it was calibrated from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ONE = """
import json, sys, time, torch
from llmpi import models
from llmpi.compute import runtime
from llmpi.compute.forward import ForwardPath, Network
net, fold, device, threads = sys.argv[1], sys.argv[2] == "1", torch.device(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model = models.build(net).eval().to(device)
fmt = runtime.memory_format(device)
model = model.to(memory_format=fmt)
x = torch.randn(64, 3, 32, 32, device=device).contiguous(memory_format=fmt)
leaves = sum(1 for m in model.modules() if next(m.children(), None) is None)
network = Network(model, ForwardPath(fold=fold, compile=True), x[:1], device)
seconds = network.warm_up(x)
print(json.dumps({"seconds": seconds, "leaves": leaves, "guess": runtime.compile_guess(device, model)}))
"""


def once(net: str, fold: bool, device: str, threads: int, cache: Path) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    env.pop("LLMPI_COMPILE_GUESS_SECONDS", None)  # the built-in guess is what is measured against
    out = subprocess.run(
        [sys.executable, "-c", ONE, net, "1" if fold else "0", device, str(threads)],
        capture_output=True, text=True, env=env, timeout=1800, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compile", description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default="resnet8,resnet20,resnet56")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0))))
    p.add_argument("--json", help="write every figure here too")
    args = p.parse_args(argv)
    rows = []
    for net in args.nets.split(","):
        for fold in (False, True):
            cold, warm = [], []
            for _ in range(args.rounds):
                with tempfile.TemporaryDirectory(prefix="llmpi-inductor-") as cache:
                    first = once(net, fold, args.device, args.threads, Path(cache))
                    cold.append(first["seconds"])
                    warm.append(once(net, fold, args.device, args.threads, Path(cache))["seconds"])
            row = {
                "net": net, "fold": fold, "leaves": first["leaves"], "guess_s": round(first["guess"], 1),
                "cold_s": round(statistics.median(cold), 2), "warm_s": round(statistics.median(warm), 2),
            }  # fmt: skip
            row["guess_over_cold"] = round(row["guess_s"] / row["cold_s"], 2)
            row["guess_over_warm"] = round(row["guess_s"] / row["warm_s"], 2)
            rows.append(row)
            print(
                f"{net:9s} {'folded' if fold else 'eager ':6s} {row['leaves']:4d} leaves: compile cold "
                f"{row['cold_s']:6.1f} s, warm {row['warm_s']:5.1f} s; guess {row['guess_s']:5.1f} s = "
                f"{row['guess_over_cold']:.2f}x cold, {row['guess_over_warm']:.2f}x warm "
                f"(median of {args.rounds}, {args.device}, {args.threads} threads)",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fault benchmark: how much work a kill -9 costs.

    python -m bench.fault --trials 10

Runs a real ``mpirun -n 3`` sweep, SIGKILLs a random rank at a random moment (tests/faultkit.py, the harness of
the fault tests), reruns it to completion, and counts, from a per-point trace every rank writes, the points that
were computed before the kill but had to be computed again. Reports that recomputed work as a share of the work
done before the kill, and per rank in blocks (the goal: at most the one block each rank had in flight).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the kill harness is shared with the fault tests

from faultkit import done_count, resume, run_and_kill  # noqa: E402

from llmpi.file.store import read_surface  # noqa: E402


def fixture(d: Path, block: int) -> Path:
    import torch

    from llmpi import models

    torch.manual_seed(0)
    checkpoint = d / "resnet8.pt"
    torch.save({"state_dict": models.build("resnet8").state_dict()}, checkpoint)
    job = {
        "name": "fault-bench",
        "model": {"arch": "resnet8", "checkpoint": str(checkpoint)},
        "data": {"dataset": "synthetic", "subset": 64},
        "grid": {"x": [-1.0, 1.0, 8], "y": [-1.0, 1.0, 8], "block": block},
        "output": str(d / "s.h5"),
        "runtime": {"device": "cpu", "threads": 1},
    }
    path = d / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def trial(seed: int, block: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        job = fixture(d, block)
        trace = d / "trace"
        killed = run_and_kill(job, d / "s.h5", random.Random(seed), trace=trace, modes=("time",))
        lines = trace.read_text().splitlines() if trace.exists() else []
        computed = [tuple(map(int, line.split())) for line in lines]  # (rank, flat index) per finished point

        done = read_surface(d / "s.h5").done.ravel()
        lost = [(rank, index) for rank, index in computed if not done[index]]
        result = resume(job)
        assert result.returncode == 0, result.stderr
        assert done_count(d / "s.h5") == 64
        per_rank = Counter(rank for rank, _ in lost)
        return {
            "how": killed.how,
            "done_before": int(done.sum()),
            "computed_before": len(computed),
            "recomputed": len(lost),
            "worst_rank_blocks": max(per_rank.values(), default=0) / block,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fault", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--block", type=int, default=4)
    args = p.parse_args(argv)
    rows = [trial(1000 + t, args.block) for t in range(args.trials)]
    before = sum(r["done_before"] for r in rows)
    lost = sum(r["recomputed"] for r in rows)
    print(f"fault benchmark: {args.trials} kill -9 trials, mpirun -n 3, 8x8 grid, blocks of {args.block} points")
    for r in rows:
        print(
            f"  {r['how']:<45} done before {r['done_before']:>2}, computed {r['computed_before']:>2}, "
            f"recomputed {r['recomputed']:>2} ({r['worst_rank_blocks']:.2f} blocks on the worst rank)"
        )
    print(
        f"recomputed / done before the kill: {lost}/{before} = {lost / max(1, before):.3f}; worst rank: "
        f"{max(r['worst_rank_blocks'] for r in rows):.2f} blocks (goal: <= 1 block per rank in flight)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

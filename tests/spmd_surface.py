"""An SPMD program as users write them: every rank builds the same network and data and calls llmpi.surface (the
forward path fixed: "auto" decides by timing, and so may choose otherwise for 1 rank than for 3).

    mpirun -n 3 python tests/spmd_surface.py OUT.h5 [--differ RANK] [--memory]

Prints, on every rank, the rank and a digest of the Surface it got back (JSON), so a test can check that every
rank returns the same surface. ``--differ RANK``: that rank's network differs from rank 0's in one weight's last
bits (as a network trained separately on each rank does). ``--memory``: output=None, the surface kept in memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import torch
from mpi4py import MPI
from torch import nn

import llmpi


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("output")
    p.add_argument("--differ", type=int, default=None)
    p.add_argument("--memory", action="store_true")
    args = p.parse_args()
    rank = MPI.COMM_WORLD.Get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    x, y = torch.randn(200, 8), torch.randint(0, 4, (200,))
    if args.differ == rank:
        with torch.no_grad():
            model[0].weight[0, 0] = torch.nextafter(model[0].weight[0, 0], torch.tensor(1.0))
    s = llmpi.surface(
        model, (x, y), grid=((-1, 1, 7), (-1, 1, 5)), grid_block=3, output=None if args.memory else args.output,
        data_batch_size=64, runtime={"threads": 1, "compile": False, "fold": False},
    )  # fmt: skip
    digest = hashlib.sha256(b"".join(s.values[k].tobytes() for k in sorted(s.values))).hexdigest()
    print(json.dumps({"rank": rank, "digest": digest, "done": int(s.done.sum()), "where": s.where}), flush=True)


if __name__ == "__main__":
    main()

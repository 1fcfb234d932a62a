"""An SPMD program computing a spectrum: every rank builds the same network and data and calls llmpi.spectrum.

    mpirun -n 2 python tests/spmd_spectrum.py OUT.h5 [--differ RANK] [--memory]

Prints, on every rank, the rank and the Spectrum it got back (JSON: eigenvalues, trace, the density's nodes), so a
test can check that every rank returns the same values and compare them with one process. ``--differ RANK``: that
rank's network differs from rank 0's in one weight's last bits. ``--memory``: output=None.
"""

from __future__ import annotations

import argparse
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
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    x, y = torch.randn(120, 8), torch.randint(0, 4, (120,))
    if args.differ == rank:
        with torch.no_grad():
            model[0].weight[0, 0] = torch.nextafter(model[0].weight[0, 0], torch.tensor(1.0))
    h = llmpi.spectrum(
        model, (x, y), analyses=["topk", "trace", "density"], output=None if args.memory else args.output,
        runtime={"threads": 1}, hessian_ignore="none",
        spectrum={"topk": {"k": 3, "tol": 1e-6}, "trace": {"rel_se": 0.05, "min_probes": 8}, "batch_size": 40,
                  "density": {"runs": 4, "steps": 12}},
    )  # fmt: skip
    got = {
        "rank": rank,
        "eigenvalues": h.eigenvalues.tolist(),
        "trace": h.trace,
        "nodes": h.nodes.tolist(),
        "where": "in memory" if h.path is None else str(h.path),
    }
    print(json.dumps(got), flush=True)


if __name__ == "__main__":
    main()

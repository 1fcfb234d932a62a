"""PyHessian's side of the Hessian bench, run by the Python of a virtualenv that has PyHessian (never llmpi's own):

    python -m venv .venv-pyhessian
    .venv-pyhessian/bin/pip install torch==2.13.0 pyhessian
    .venv-pyhessian/bin/python bench/pyhessian_side.py REQUEST.json       # bench.hessian writes the request

The request names the network (``bench.hessian_nets``), its weights, the data (normalised images and labels in an
.npz), the batch size, the threads and the tasks: ``eigenvalue`` (``hessian.eigenvalues(top_n=1)`` at each ``tol``
of a ladder), ``trace`` (``hessian.trace`` with a fixed number of probes: its samples, to measure its variance and
its time per probe), ``trace_default`` (its own stopping rule, tol 1e-3 and 100 probes at most), ``density``. The
Hessian is over every parameter (PyHessian's), of the mean cross-entropy over all the data: PyHessian's
``dataloader`` mode, the data cut into the same batches as llmpi's. The answer is one JSON line on stdout: values,
wall seconds, Hessian-vector products (counted by wrapping PyHessian's product), or the error a task raised.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.hessian_nets, llmpi.models

from bench.hessian_nets import build


def main(request_path: str) -> int:
    from pyhessian import hessian

    request = json.loads(Path(request_path).read_text())
    torch.set_num_threads(request["threads"])
    model = build(request["arch"])
    model.load_state_dict(torch.load(request["weights"], weights_only=True))
    model.eval()
    data = np.load(request["data"])
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    batch = request["batch_size"]
    loader = [(x[s : s + batch], y[s : s + batch]) for s in range(0, len(y), batch)]
    criterion = torch.nn.CrossEntropyLoss()
    out: dict = {"torch": torch.__version__}

    def fresh():
        h = hessian(model, criterion, dataloader=loader, cuda=False)
        counter = {"hvps": 0}
        product = h.dataloader_hv_product

        def counted(v):
            counter["hvps"] += 1
            return product(v)

        h.dataloader_hv_product = counted
        return h, counter

    for task in request["tasks"]:
        name = task["name"]
        try:
            if name == "eigenvalue":
                runs = []
                for tol in task["tols"]:
                    torch.manual_seed(task.get("seed", 0))
                    h, counter = fresh()
                    t0 = time.perf_counter()
                    values, _ = h.eigenvalues(maxIter=task["max_iter"], tol=tol, top_n=1)
                    seconds = time.perf_counter() - t0
                    runs.append({"tol": tol, "value": values[0], "seconds": seconds, "hvps": counter["hvps"]})
                    if "stop_within" in task and abs(values[0] - task["reference"]) <= task["stop_within"] * abs(
                        task["reference"]
                    ):
                        break
                out[name] = runs
            elif name in ("trace", "trace_default"):
                torch.manual_seed(task.get("seed", 0))
                h, counter = fresh()
                t0 = time.perf_counter()
                samples = h.trace(maxIter=task["probes"], tol=task["tol"])
                out[name] = {
                    "samples": [float(v) for v in samples],
                    "seconds": time.perf_counter() - t0,
                    "hvps": counter["hvps"],
                }
            elif name == "density":
                torch.manual_seed(task.get("seed", 0))
                h, counter = fresh()
                t0 = time.perf_counter()
                nodes, weights = h.density(iter=task["steps"], n_v=task["runs"])
                out[name] = {"nodes": nodes, "weights": weights, "seconds": time.perf_counter() - t0}
        except Exception as e:  # a task PyHessian cannot do on this torch is a result too (density: torch.eig)
            out[name] = {"error": f"{type(e).__name__}: {e}", "where": traceback.format_exc().splitlines()[-3:]}
        print(f"pyhessian: {name} done", file=sys.stderr, flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

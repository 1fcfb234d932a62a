"""llmpi in a real Jupyter kernel: examples/landscape.ipynb executed cell by cell (any failing cell fails the suite),
and Jupyter's stop button (SIGINT to the kernel) during a sweep: it stops within seconds, raises KeyboardInterrupt,
leaves the file resumable and the kernel as it was (its SIGINT handler, no thread, no lock), and the same call
in the same kernel then resumes it to the bits of an uninterrupted sweep.

The kernel is this venv's Python (a kernelspec written for the test, so no other Jupyter install is picked up),
pinned to one core: three test workers share two cores, and two OpenMP threads spin-waiting for each other there
made the notebook several times slower.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

nbformat = pytest.importorskip("nbformat", reason="nbformat (the dev extra) is needed to run the notebook")
nbclient = pytest.importorskip("nbclient", reason="nbclient (the dev extra) is needed to run the notebook")
jupyter_client = pytest.importorskip("jupyter_client", reason="jupyter_client (the dev extra) runs the kernel")
pytest.importorskip("ipykernel", reason="ipykernel (the dev extra) is the kernel")

NOTEBOOK = REPO / "examples" / "landscape.ipynb"
KERNEL = "llmpi-test"


@pytest.fixture
def kernel_env(tmp_path, monkeypatch) -> Iterator[Path]:
    """A kernelspec for this Python in a folder of its own (JUPYTER_PATH), and this process (so the kernel it
    starts) on one core."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    work = tmp_path / "work"
    work.mkdir()
    with one_core():
        yield work


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    try:
        cores = os.sched_getaffinity(0)
    except AttributeError:  # not Linux: the kernel sees every core
        yield
        return
    os.sched_setaffinity(0, {min(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


@pytest.mark.slow
def test_the_notebook_runs_in_a_real_kernel(kernel_env):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    shutil.copy(NOTEBOOK, kernel_env / NOTEBOOK.name)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name=KERNEL, resources={"metadata": {"path": str(kernel_env)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the 1D line, the interpolation, the contours: inline
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)  # the 3D viewer's figure
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "were given in memory" in text and "the cluster's file holds the notebook's surface, bit for bit" in text
    assert (kernel_env / "landscape_work" / "spirals.yaml").is_file()


SETUP = """
import json, signal, threading, time
import torch
from torch import nn
import llmpi
from llmpi.file.store import WriterLock, read_run_info
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 384), nn.ReLU(), nn.Linear(384, 384), nn.ReLU(), nn.Linear(384, 10))
x, y = torch.randn(2048, 64), torch.randint(0, 10, (2048,))
args = dict(grid=((-1, 1, 15), (-1, 1, 15)), grid_block=2, data_batch_size=256, runtime={"compile": False})
handler, threads = signal.getsignal(signal.SIGINT), set(threading.enumerate())
"""
SWEEP = 'surface = llmpi.surface(model, (x, y), output="cut.h5", **args)'
CHECK = """
print(json.dumps({
    "handler": signal.getsignal(signal.SIGINT) is handler,
    "threads": sorted(t.name for t in set(threading.enumerate()) - threads),
    "locked": WriterLock.is_held(__import__("pathlib").Path("cut.h5")),
    "done": read_run_info("cut.h5")["points_done"],
}))
"""
RESUME = """
surface = llmpi.surface(model, (x, y), output="cut.h5", **args)
record = read_run_info("cut.h5")
whole = llmpi.surface(model, (x, y), **args)
print(json.dumps({
    "this_run": record["points_this_run"], "total": record["points_total"], "complete": surface.complete,
    "same": all((surface[k] == whole[k]).all() for k in whole.names),
}))
"""


def execute(kc, code: str, timeout: float = 300) -> tuple[dict, str]:
    """Run ``code`` in the kernel: (its execute reply's content, what it printed on stdout)."""
    printed: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":  # stderr: the progress bar
            printed.append(msg["content"]["text"])

    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return reply["content"], "".join(printed)


def last_json(text: str) -> dict:
    found = [line for line in text.splitlines() if line.startswith("{")]
    assert found, f"the kernel printed no result: {text!r}"
    return json.loads(found[-1])


@pytest.mark.slow
def test_the_stop_button_stops_within_seconds_and_the_same_call_resumes_in_the_same_kernel(kernel_env):
    km, kc = jupyter_client.manager.start_new_kernel(kernel_name=KERNEL, cwd=str(kernel_env))
    try:
        reply, printed = execute(kc, SETUP)
        assert reply["status"] == "ok", reply
        kc.execute(SWEEP, stop_on_error=False)  # its KeyboardInterrupt must not abort the cells sent next
        record = kernel_env / "cut.h5.run.json"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # until some points are in the file
            with contextlib.suppress(OSError, ValueError):
                if json.loads(record.read_text())["points_done"] >= 4:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the sweep never got going")
        km.interrupt_kernel()  # what Jupyter's stop button does: SIGINT to the kernel
        stopped = time.monotonic()
        while True:
            msg = kc.get_shell_msg(timeout=60)
            if msg["msg_type"] == "execute_reply":
                break
        took = time.monotonic() - stopped
        assert msg["content"]["status"] == "error", (msg["content"], took)
        assert msg["content"]["ename"] == "Interrupted", msg["content"]
        assert "call llmpi.surface again with the same output to resume" in msg["content"]["evalue"]
        assert took < 15, f"the interrupt took {took:.1f} s"
        reply, printed = execute(kc, CHECK)
        assert reply["status"] == "ok", reply
        state = last_json(printed)
        assert state["handler"] and state["threads"] == [] and not state["locked"], state
        assert 0 < state["done"] < 225, state
        reply, printed = execute(kc, RESUME)
        assert reply["status"] == "ok", reply
        resumed = last_json(printed)
        assert resumed["complete"] and resumed["same"], resumed
        assert resumed["this_run"] == 225 - state["done"] and resumed["total"] == 225, resumed
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

"""``python -m llmpi.status`` describes each direction kind by the settings that kind uses, and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_plot_surfaces import line_file

from llmpi.report.summary import describe_directions, render, summarize

MODELS = {"checkpoint": "ck/small.pt", "checkpoint2": "ck/large.pt", "checkpoint3": "ck/wd.pt"}
SETTINGS = {"seed": 0, "norm": "filter", "ignore": "biasbn", "type": "weights", "trajectory": None, "rescale": "none"}


def described(kind: str, extras: dict | None = None, **settings) -> str:
    job = {"model": MODELS, "directions": {**SETTINGS, "kind": kind, **settings}}
    return describe_directions(job, extras or {})


def test_each_kind_is_described_in_its_own_terms():
    random = described("random", seed=7)
    assert random.startswith("random (seed 7), filter norm, ignore biasbn") and "weights only" in random
    line = described("interpolate", type="states")
    assert "from ck/small.pt (α = 0) to ck/large.pt (α = 1)" in line and "running statistics move" in line
    plane = described("plane", {"model_coordinates": np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])})
    assert "ck/small.pt at (0, 0), ck/large.pt at (1, 0), ck/wd.pt at (0, 1)" in plane
    pca = described("pca", {"explained_variance_ratio": np.array([0.8, 0.15])}, trajectory="ck/run", rescale="filter")
    assert "trajectory ck/run, 80.0% and 15.0% of the variance, filter-rescaled" in pca
    for text in (line, plane, pca):  # seeds and normalisations those kinds do not use are not claimed
        assert "seed" not in text and "norm" not in text.replace("unnormalised", "")
    assert describe_directions({}, {}) is None  # a file from the paper's code records no job


def test_status_prints_the_description(tmp_path):
    info = summarize(line_file(tmp_path / "l.h5"))
    assert info["directions_described"].startswith("random (seed 0), filter norm")
    assert "  directions: random (seed 0), filter norm" in render(info)


def test_hessian_line_of_a_file_with_nothing_computed_says_so():
    from llmpi.report.summary import describe_convergence

    empty = {"points": 0, "unconverged": 0, "max_residual": None, "tol": 1e-3, "max_hvps": 300, "hvps": None}
    assert describe_convergence(empty) == "no point computed yet (hessian.tol 0.001, max_hvps 300)"
    done = {**empty, "points": 4, "hvps": {"mean": 19.5, "max": 23, "total": 78}}
    assert describe_convergence(done) == (
        "all 4 computed points converged (hessian.tol 0.001, max_hvps 300; 19.5 Hessian-vector products per point, "
        "at most 23)"
    )


@pytest.mark.mpi
def test_the_run_record_follows_a_long_point(fixture_data, tmp_path):
    """A point that takes seconds (a Hessian's can take minutes): the record is rewritten every 2 s meanwhile and
    says which rank computes which points since when; status shows it."""
    import json
    import subprocess
    import sys
    import time

    from conftest import job_dict, write_job
    from mpilaunch import REPO, env, mpirun

    out = tmp_path / "slow.h5"
    job = write_job(tmp_path / "job.yaml", job_dict(fixture_data, out, grid={"x": [-1.0, 1.0, 2], "block": 1}))
    proc = subprocess.Popen(
        [*mpirun(1), sys.executable, "-m", "llmpi.sweep", str(job)],
        cwd=REPO,
        env=env({"LLMPI_FAULT": "slow:seconds=7"}),  # each point 7 s longer: a long point to watch
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    record = Path(f"{out}.run.json")
    seen: list[dict] = []
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if record.exists():
                info = json.loads(record.read_text())
                if info["state"] == "running" and info["points_done"] == 0 and info.get("running"):
                    seen.append(info)
                    if info["running"][0]["seconds"] >= 4:
                        status = subprocess.run(
                            [sys.executable, "-m", "llmpi.status", str(out)], capture_output=True, text=True,
                            env=env(), cwd=REPO, timeout=60,
                        )  # fmt: skip
                        break
            time.sleep(0.3)
        else:
            pytest.fail(f"no record of a running point within the time limit: {seen[-1:]}")
    finally:
        proc.kill()
        proc.communicate()
    assert len({s["updated"] for s in seen}) >= 2  # rewritten while no point finished
    assert seen[-1]["running"] == [{"rank": 0, "points": [0, 1], "seconds": seen[-1]["running"][0]["seconds"]}]
    assert "    rank 0 computing point 0 for 0m0" in status.stdout, status.stdout

"""``python -m llmpi.status`` describes each direction kind by the settings that kind uses, and nothing else."""

from __future__ import annotations

import numpy as np
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

"""The Hessian bench at its tiny size: it runs end to end and measures what it says (PyHessian's side needs a
virtualenv of its own and is not run here; bench/README.md has its figures)."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

pytestmark = pytest.mark.bench  # a benchmark's own test, at a tiny size: make test-bench


@pytest.mark.slow
@pytest.mark.mpi  # the spread section runs llmpi.spectrum under mpirun
def test_the_hessian_bench_measures_what_it_says(tmp_path):
    args = ["--profile", "tiny", "--threads", "1", "--json", str(tmp_path / "out.json"), "--work", str(tmp_path)]
    result = run_cli("bench.hessian", *args, timeout=900, cores=1)
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    p = out["products"]
    assert set(p["over_limit"]) == {"limit", "llmpi", "llmpi_auto_batch", "llmpi_block2", "forward_over_reverse"}
    assert p["over_limit"]["limit"] == 1.0 and all(v > 0 for v in p["vectors_per_s"].values())
    assert p["llmpi_vs_bare_relative_difference"] < 1e-5  # the same product, summed in float64
    top = out["top_eigenvalue"]
    assert top["llmpi"][-1]["error"] <= 1e-3 and top["reference"]["residual"] < 1e-5 * abs(top["reference"]["value"])
    main = out["trace_main"]  # spreads and times per probe on the main network, what a 1% error would take
    assert main["llmpi_deflated"]["probes"] == main["llmpi_plain"]["probes"] == 4
    assert main["llmpi_deflated"]["seconds_needed"] > 0 and main["llmpi_fixed_products"] > 0
    t = out["trace"]
    for name in ("llmpi_deflated", "llmpi_plain"):
        assert abs(t[name]["value"] - t["exact_trace"]) <= 4 * t[name]["se"], name
    assert max(t["density"]["moment_errors"]) < 0.5 and 0 <= t["density"]["l1_smoothed"] <= 2
    assert "products" in result.stdout and "top eigenvalue: reference" in result.stdout
    s = out["spread"]  # the same values whichever way the ranks share the probes and runs
    assert s["trace_relative_gap"] < 1e-6 and s["nodes_relative_gap"] < 1e-6 and s["whole_over_data"] > 0

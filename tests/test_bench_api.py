"""bench.api at the test suite's size: the three runs of one job (the command, llmpi.surface on the network in
memory, llmpi.surface on the job of files) each complete in a fresh process, hold the same bits, and the report
gives each one's wall time and its ratio to the command's."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

pytestmark = pytest.mark.bench  # a benchmark's own test, at a tiny size: make test-bench


@pytest.mark.slow
def test_the_api_bench_runs_the_three_side_by_side(tmp_path):
    out = tmp_path / "api.json"
    args = ("--arch", "resnet8", "--images", "64", "--grid", "3", "--rounds", "1", "--threads", "1", "--json", str(out))
    result = run_cli("bench.api", *args, "--work", str(tmp_path / "work"), timeout=600, cores=1)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())
    assert figures["same_bits"] and figures["points"] == 9
    runs = figures["runs"]
    assert list(runs) == ["command", "api (memory)", "api (job)"] and runs["command"]["ratio"] == 1.0
    for row in runs.values():
        assert row["wall_s"] > row["sweep_s"] > 0 and row["ratio"] == pytest.approx(
            row["wall_s"] / runs["command"]["wall_s"]
        )
    assert "the three files hold the same bits: yes" in result.stdout and "api (memory)" in result.stdout

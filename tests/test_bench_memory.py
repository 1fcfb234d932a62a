"""bench.memory at its smallest: one real case in a fresh process measures what it says, and the fit is exact on
a line."""

from __future__ import annotations

import pytest

from bench import memory

pytestmark = pytest.mark.bench  # a benchmark's own test, at a tiny size: make test-bench


def test_one_case_measures_peak_time_and_file(tmp_path):
    row = memory.run_case(tmp_path, 1, "bf16", "lean", "device", "cpu")
    assert row.parameters == memory.parameters(*memory.shape_for(1)) and row.weight_bytes == 2 * row.parameters
    assert row.peak_bytes > row.weight_bytes  # at least the network itself (plus θ* and the process's own growth)
    assert row.seconds_per_point > 0 and 0 < row.file_bytes < 2e6  # a recipe, not the directions
    assert row.bytes_per_parameter == pytest.approx(row.peak_bytes / row.parameters)


def test_fit_recovers_a_line():
    rows = [
        memory.Row(m, int(m * 1e6), "bf16", "lean", "device", "cpu", int(5e8 + 4.5 * m * 1e6), 0, 0, 0, 1, 1, 0, 0)
        for m in (10, 100, 300)
    ]
    a, b = memory.fit(rows)
    assert a == pytest.approx(5e8) and b == pytest.approx(4.5)
    assert "EXTRAPOLATED 7 B" in memory.report(rows, None)

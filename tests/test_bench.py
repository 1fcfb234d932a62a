"""The benchmark at its tiny size: it runs end to end, measures what it says, and its llmpi values are right.

No assertion on absolute speed (machines differ, and other work shares them): the figures must exist, be
positive and hang together; the naive loop must compute the same surface as llmpi.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

pytestmark = pytest.mark.mpi  # the stress section runs the sweep under mpirun


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    args = ["--profile", "tiny", "--json", str(d / "out.json"), "--work", str(d / "work")]
    result = run_cli("bench", *args, timeout=600, cores=1)  # one thread: other tests run beside it
    assert result.returncode == 0, result.stdout + result.stderr
    (results,) = json.loads((d / "out.json").read_text())
    return results, result.stdout, d


def test_the_three_measurements_side_by_side(tiny):
    results, stdout, _ = tiny
    (case,) = results["cases"]
    assert (case["arch"], case["images"], case["grid"], case["precision"]) == ("resnet8", 16, 4, "fp32")
    assert case["llmpi_points"] == 16 and case["limit_batch"] == 16  # 16 images: one batch is all there is
    for key in ("limit_images_s", "llmpi_images_s", "llmpi_sweep_images_s", "naive_images_s"):
        assert case[key] > 0, key
    # end to end includes start-up, so it is slower than the sweep phase alone
    assert case["llmpi_images_s"] < case["llmpi_sweep_images_s"]
    assert case["llmpi_over_limit"] == pytest.approx(case["llmpi_images_s"] / case["limit_images_s"])
    assert case["llmpi_over_naive"] == pytest.approx(case["llmpi_images_s"] / case["naive_images_s"])
    assert case["naive_vs_llmpi_max_rel_loss"] < 1e-5  # the baseline computes the same surface
    assert "llmpi/limit" in stdout and "llmpi/naive" in stdout and results["device"] in stdout


def test_precision_deviation_is_measured(tiny):
    results, _, _ = tiny
    rows = {(r["precision"], r["compile"]): r for r in results["deviation"]}
    assert rows[("fp32", False)]["max_rel_loss"] == 0.0
    assert 0.0 < rows[("bf16", False)]["max_rel_loss"] < 5e-2


def test_points_per_pass_probe_reports_its_table(tiny):
    results, _, _ = tiny
    (row,) = results["widths"]
    assert row["chosen"] >= 1 and any(p > 1 for _, p, _ in row["table"])  # 8 images: several widths tried
    if row["chosen"] > 1:
        assert row["chosen_images_s"] > 0 and row["one_images_s"] > 0


def test_coordinator_stress_counts_every_point(tiny):
    results, _, d = tiny
    trivial, noop = results["stress"]
    assert (trivial["evaluator"], trivial["points"]) == ("trivial network", 21 * 21)
    assert (noop["evaluator"], noop["points"]) == ("no-op", 31 * 31)
    for row in (trivial, noop):
        assert row["points_s"] > 0 and row["peak_rss_mib_max"] > 0 and row["file_mib"] > 0
        assert row["store_blocks"] >= row["store_commits"] >= 1
    from llmpi.store import read_surface

    s = read_surface(d / "work" / "tiny" / "stress-noop.h5")
    assert s.complete and (s.values["train_loss"] == 1.0).all()  # the no-op evaluator's constant, everywhere


def test_bad_profile_is_refused():
    result = run_cli("bench", "--profile", "huge", timeout=60)
    assert result.returncode == 2 and "invalid choice: 'huge'" in result.stderr

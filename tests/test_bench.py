"""The benchmark at its tiny size: it runs end to end, measures what it says, and its llmpi values are right.

No assertion on absolute speed (machines differ, and other work shares them): the figures must exist, be
positive and hang together; the naive loop must compute the same surface as llmpi.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

pytestmark = [pytest.mark.mpi, pytest.mark.bench]  # the stress section runs the sweep under mpirun


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny profile without its Hessian section (tests/test_bench_hessian.py runs that on its own)."""
    d = tmp_path_factory.mktemp("bench")
    args = ["--profile", "tiny", "--json", str(d / "out.json"), "--work", str(d / "work"), "--no-hessian"]
    result = run_cli("bench", *args, timeout=600, cores=1)  # one thread: other tests run beside it
    assert result.returncode == 0, result.stdout + result.stderr
    (results,) = json.loads((d / "out.json").read_text())
    return results, result.stdout, d


def test_the_three_measurements_side_by_side(tiny):
    results, stdout, _ = tiny
    auto, _ = results["cases"]
    assert (auto["arch"], auto["images"], auto["grid"], auto["precision"], auto["forward"]) == (
        "resnet8",
        16,
        4,
        "fp32",
        "auto",
    )
    assert auto["llmpi_points"] == 16 and auto["limit_batch"] == 16  # 16 images: one batch is all there is
    assert auto["llmpi_forward"] == "eager"  # too little work to probe: eager (folding or compiling would not pay)
    for key in ("limit_images_s", "llmpi_images_s", "llmpi_sweep_images_s", "naive_images_s"):
        assert auto[key] > 0, key
    # end to end includes start-up, so it is slower than the sweep phase alone
    assert auto["llmpi_images_s"] < auto["llmpi_sweep_images_s"]
    assert auto["llmpi_over_limit"] == pytest.approx(auto["llmpi_images_s"] / auto["limit_images_s"])
    assert auto["llmpi_over_naive"] == pytest.approx(auto["llmpi_images_s"] / auto["naive_images_s"])
    assert auto["naive_vs_llmpi_max_rel_loss"] < 1e-5  # the baseline computes the same surface
    assert "llmpi/limit" in stdout and "llmpi/naive" in stdout and results["device"] in stdout


def test_figures_in_device_terms(tiny):
    results, stdout, _ = tiny
    for case in results["cases"]:
        for key in ("limit", "sweep"):
            t = case[f"{key}_terms"]
            assert t["flops_per_image"] == pytest.approx(25.0e6, rel=1e-3)  # resnet8, counted by flop_counter
            rate = case["limit_images_s" if key == "limit" else "llmpi_sweep_images_s"]
            assert t["tflops"] == pytest.approx(t["flops_per_image"] * rate / 1e12)
            assert t["fraction_of_peak"] is None and t["peak_of"].startswith("no peak known for")  # a CPU
    assert "MFLOP/image" in stdout


def test_gpu_short_code_path_runs_compiled_with_its_time_from_the_run_record(tiny):
    """The tiny profile runs what gpu-short runs on a GPU: a folded+compiled sweep, extrapolated to 51x51."""
    _, compiled = tiny[0]["cases"]
    assert compiled["forward"] == "folded+compiled" and compiled["llmpi_forward"].startswith("folded+compiled")
    assert compiled["llmpi_compile_s"] > 0 and compiled["llmpi_points"] == 16
    per_point = compiled["llmpi_sweep_s"] / 16
    startup = compiled["llmpi_wall_s"] - compiled["llmpi_sweep_s"]
    assert compiled["extrapolated_s"] == pytest.approx(startup + 51 * 51 * per_point)


def test_gpu_short_profile_measures_every_gpu_figure():
    from bench.__main__ import PROFILES

    p = PROFILES["gpu-short"]
    assert p.device == "cuda" and p.dataset == 50000 and p.extrapolate == 51
    assert [(c.arch, c.images, c.grid) for c in p.cases] == [("resnet56", 50000, 11)]
    assert {precision for precision, _ in p.runs} == {"bf16", "tf32"}
    assert all(forward == "folded+compiled" for _, forward in p.runs) and p.kernels is not None


def test_precision_and_forward_deviation_is_measured(tiny):
    results, _, _ = tiny
    rows = {(r["precision"], r["forward"]): r for r in results["deviation"]}
    assert rows[("fp32", "eager")]["max_rel_loss"] == 0.0
    assert 0.0 < rows[("bf16", "eager")]["max_rel_loss"] < 5e-2
    assert rows[("fp32", "folded")]["max_rel_loss"] < 2e-6


def test_forward_paths_and_kernels_are_measured(tiny):
    results, _, _ = tiny
    (paths,) = results["paths"]
    assert set(paths["rates"]) == {"eager", "folded", "folded+compiled"}  # tiny leaves out the compiled unfolded
    assert all(r > 0 for r in paths["rates"].values())
    # the layers alone are a part of every path's work (which also forms the weights, folds and tallies)
    # (measured minutes apart on a machine the other tests load: a sanity bound, the ratio itself is the bench's)
    assert paths["layer_bound"] > 0.2 * max(paths["rates"].values())
    assert paths["compile_s"]["eager"] == 0.0 and paths["compile_s"]["folded+compiled"] > 0
    for row in results["kernels"]:
        assert row["fast_vs_deterministic"] < 1e-5
        assert row["deterministic_vs_plain"] < 1e-5 and row["fast_vs_plain"] < 1e-5


def test_coordinator_stress_counts_every_point(tiny):
    results, _, d = tiny
    trivial, noop = results["stress"]
    assert (trivial["evaluator"], trivial["points"]) == ("trivial network", 21 * 21)
    assert (noop["evaluator"], noop["points"]) == ("no-op", 31 * 31)
    for row in (trivial, noop):
        assert row["points_s"] > 0 and row["peak_rss_mib_max"] > 0 and row["file_mib"] > 0
        assert row["store_blocks"] >= row["store_commits"] >= 1
    from llmpi.file.store import read_surface

    s = read_surface(d / "work" / "tiny" / "stress-noop.h5")
    assert s.complete and (s.values["train_loss"] == 1.0).all()  # the no-op evaluator's constant, everywhere


def test_bad_profile_is_refused():
    result = run_cli("bench", "--profile", "huge", timeout=60)
    assert result.returncode == 2 and "invalid choice: 'huge'" in result.stderr

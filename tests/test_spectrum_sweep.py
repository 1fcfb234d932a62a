"""The spectrum in sweeps: ``directions.kind: hessian`` (the top eigenvectors' line or plane, computed first or from a
spectrum file, unit or filter-normalised) and ``hessian.trace: true`` (a trace map), against dense Hessians."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from conftest import Fixture, brute_force, job_dict, run_cli, write_job
from mpilaunch import REPO
from test_kinds import dense_hessian

from llmpi.file.spectrum import read_eigenvectors, read_spectrum
from llmpi.file.store import read_directions, read_surface
from llmpi.job.config import from_dict
from llmpi.job.errors import JobError
from llmpi.report.landscape import Landscape
from llmpi.space import checkpoint

ENV = {"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
IMAGES = 32  # the Hessian's images (hessian.images, spectrum.images): the first of the 64 selected


@pytest.fixture(scope="module")
def plane(fixture_data, tmp_path_factory):
    """tinynet near a minimum, and a 2-rank sweep of the plane of its top two eigenvectors (computed first) with
    eigen-ratios and the trace at every point."""
    import tinynet

    d = tmp_path_factory.mktemp("hessplane")
    tinynet.train(fixture_data.root, d / "tiny.pt")
    fx = Fixture(fixture_data.root, d / "tiny.pt", "tinynet")
    job = job_dict(
        fx,
        d / "plane.h5",
        directions={"kind": "hessian", "seed": 0, "norm": None},
        grid={"x": [-0.5, 0.5, 3], "y": [-0.5, 0.5, 3], "block": 2},
        metrics=["hessian"],
        hessian={"tol": 1e-6, "basis": 30, "images": IMAGES, "trace": True, "trace_probes": 24},
        spectrum={"images": IMAGES, "topk": {"tol": 1e-6, "basis": 30}},
    )
    result = run_cli("tinynet", str(write_job(d / "job.yaml", job)), ranks=2, env=ENV)
    assert result.returncode == 0, result.stderr
    return fx, d, result


def eigen(fx: Fixture, point=(0.0,), directions=None) -> tuple[np.ndarray, np.ndarray]:
    return np.linalg.eigh(dense_hessian(fx, directions or [{}], point, IMAGES))


def weights_only(direction: dict, model) -> np.ndarray:
    """The direction's entries over the tensors of two or more dimensions, flat, in the order of the Hessian."""
    return np.concatenate([direction[n].ravel() for n, p in model.named_parameters() if p.dim() > 1])


@pytest.mark.mpi
def test_the_plane_of_the_top_two_eigenvectors(plane):
    import tinynet

    fx, d, result = plane
    assert "the top 2 eigenvector(s) first" in result.stdout
    s = read_spectrum(d / "plane.spectrum.h5")
    assert s.topk_done and s.analyses == ["topk"] and len(s.get("topk/values")) == 2
    values, vectors = eigen(fx)
    surface = read_surface(d / "plane.h5")
    assert surface.complete
    assert np.allclose(surface.extras["eigenvalues"], values[::-1][:2], rtol=2e-4)
    assert surface.extra_attrs["eigenvalues"]["norm"] == "none"
    model = tinynet.TinyNet()
    dirs = read_directions(d / "plane.h5")
    for k, direction in enumerate(dirs):
        flat = weights_only(direction, model)
        assert np.linalg.norm(flat) == pytest.approx(1.0, rel=1e-5)  # unit eigenvectors
        assert abs(flat @ vectors[:, -1 - k]) == pytest.approx(1.0, abs=1e-3)
        assert not np.any(direction["bn1.weight"]) and not np.any(direction["linear.bias"])  # biases, BN: zero
    loss, _ = brute_force(fx, dirs, (surface.x[2], surface.y[0]))
    assert surface.values["train_loss"][0, 2] == pytest.approx(loss, rel=2e-5)
    # eigen-ratio at θ* from the same Hessian: the top eigenvalue the plane was made of
    centre = surface.values["max_eig"][1, 1]
    assert centre == pytest.approx(values[-1], rel=1e-3)
    land = Landscape.read(d / "plane.h5")
    assert land.formula() == "L(θ* + α·v1 + β·v2)"
    assert land.axis_label("x") == f"α  (Hessian eigenvector v1, λ1 = {values[-1]:.4g}, unit)".replace(
        f"{values[-1]:.4g}", f"{surface.extras['eigenvalues'][0]:.4g}"
    )


@pytest.mark.mpi
def test_the_trace_map_matches_dense_traces(plane):
    fx, d, result = plane
    assert "the trace from its basis and 24 probes" in result.stdout
    surface = read_surface(d / "plane.h5")
    dirs = read_directions(d / "plane.h5")
    assert {"trace", "trace_se"} <= set(surface.values)
    for j, i in [(1, 1), (0, 2), (2, 0)]:
        H = dense_hessian(fx, dirs, (surface.x[i], surface.y[j]), IMAGES)
        trace, se = surface.values["trace"][j, i], surface.values["trace_se"][j, i]
        assert 0 < se < 0.3 * abs(trace)
        assert abs(trace - np.trace(H)) <= 4 * se + 1e-4 * abs(trace), (i, j)


def test_status_describes_the_hessian_plane(plane, capsys):
    from llmpi import status

    _, d, _ = plane
    assert status.main([str(d / "plane.h5")]) == 0
    text = capsys.readouterr().out
    assert "directions: hessian: the top eigenvector(s) v1 and v2 of the Hessian at θ* (λ = " in text
    assert "unit, from " in text and "plane.spectrum.h5" in text
    assert "trace: " in text and "trace_se: " in text


@pytest.mark.mpi
def test_a_rerun_resumes_without_computing_again(plane):
    _, d, _ = plane
    before = (d / "plane.spectrum.h5").stat().st_mtime_ns, (d / "plane.h5").read_bytes()
    result = run_cli("tinynet", str(d / "job.yaml"), env=ENV)
    assert result.returncode == 0, result.stderr
    assert "0 points in" in result.stdout or "already done" in result.stdout
    assert (d / "plane.spectrum.h5").stat().st_mtime_ns == before[0]
    assert read_surface(d / "plane.h5").complete


@pytest.mark.mpi
def test_a_line_along_a_spectrum_files_eigenvector_filter_normalised(plane, tmp_path):
    import tinynet

    fx, d, _ = plane
    job = job_dict(
        fx,
        tmp_path / "line.h5",
        directions={"kind": "hessian", "spectrum": str(d / "plane.spectrum.h5"), "norm": "filter"},
        grid={"x": [-1.0, 1.0, 3]},
    )
    del job["grid"]["y"]
    result = run_cli("tinynet", str(write_job(tmp_path / "job.yaml", job)), env=ENV)
    assert result.returncode == 0, result.stderr
    (direction,) = read_directions(tmp_path / "line.h5")
    _, _, vectors = read_eigenvectors(d / "plane.spectrum.h5", 1)
    state = checkpoint.read_state_dict(fx.checkpoint)
    for name, p in tinynet.TinyNet().named_parameters():
        if p.dim() > 1:  # every filter rescaled to θ*'s filter norm, along the eigenvector's own direction
            got = torch.as_tensor(direction[name]).flatten(1)
            assert torch.allclose(got.norm(dim=1), state[name].flatten(1).norm(dim=1), rtol=1e-5)
    flat = weights_only(direction, tinynet.TinyNet())
    assert flat @ vectors[0] > 0
    assert Landscape.read(tmp_path / "line.h5").axis_label("x").endswith("filter-normalised)")


def one_error(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmpi: error: "), result.stderr
    return lines[0]


def test_a_spectrum_of_another_network_or_theta_is_refused(plane, tmp_path, other_minimisers):
    fx, d, _ = plane
    job = job_dict(fx, tmp_path / "x.h5", directions={"kind": "hessian", "spectrum": str(d / "plane.spectrum.h5")})
    job["model"] = {"arch": "resnet8", "checkpoint": str(other_minimisers[0])}
    assert "spectrum of another θ*" in one_error(run_cli("tinynet", str(write_job(tmp_path / "a.yaml", job)), env=ENV))
    job = job_dict(fx, tmp_path / "y.h5", directions={"kind": "hessian", "spectrum": str(tmp_path / "none.h5")})
    assert "directions.spectrum" in one_error(run_cli("tinynet", str(write_job(tmp_path / "b.yaml", job)), env=ENV))


def test_job_rules_of_the_spectrum_in_sweeps():
    base = {"name": "x", "model": {"arch": "resnet8", "checkpoint": "c.pt"}}
    with pytest.raises(JobError, match="hessian.trace: true adds the trace to metrics"):
        from_dict(type_job(), {**base, "hessian": {"trace": True}})
    with pytest.raises(JobError, match="directions.spectrum is for directions.kind: hessian"):
        from_dict(type_job(), {**base, "directions": {"spectrum": "s.h5"}})
    with pytest.raises(JobError, match="trace_probes must be at least 2"):
        from_dict(type_job(), {**base, "metrics": ["hessian"], "hessian": {"trace": True, "trace_probes": 1}})
    assert from_dict(type_job(), {**base, "directions": {"kind": "hessian"}}).directions.norm == "none"
    assert from_dict(type_job(), base).directions.norm == "filter"
    job = from_dict(type_job(), {**base, "metrics": ["hessian"], "hessian": {"trace": True}})
    assert job.value_names()[-2:] == ["trace", "trace_se"]
    assert yaml.safe_load(__import__("llmpi.job.config", fromlist=["to_yaml"]).to_yaml(job))["hessian"]["trace"]


def type_job():
    from llmpi.job.config import Job

    return Job


def test_files_without_the_trace_keep_their_fingerprint():
    """Surfaces written before hessian.trace and directions.spectrum existed still resume: neither key enters
    the fingerprint unless used."""
    from llmpi.compute.data import DatasetInfo
    from llmpi.ranks.fingerprint import Identity, fingerprint

    base = {"name": "x", "model": {"arch": "resnet8", "checkpoint": str(REPO / "README.md")}, "metrics": ["hessian"]}
    info = DatasetInfo("cifar10", "train", 10, 10, "abc")
    fields = fingerprint(from_dict(type_job(), base), Identity("sha", {"train": info}))
    assert "trace" not in fields["hessian"] and "spectrum" not in fields["directions"]
    assert fields["directions"]["norm"] == "filter"


def test_the_trace_map_is_drawn_as_a_heat_map(plane, tmp_path):
    from llmpi import plot

    _, d, _ = plane
    assert plot.main([str(d / "plane.h5"), "-o", f"{tmp_path}/"]) == 0
    names = {p.name for p in tmp_path.glob("*.png")}
    assert "plane.h5_trace_2dheat.png" in names and "plane.h5_trace_2dcontour.png" not in names
    assert "plane.h5_trace_se_2dheat.png" not in names  # the standard error only when asked for
    assert plot.main([str(d / "plane.h5"), "--value", "trace_se", "--kind", "heat", "-o", f"{tmp_path}/"]) == 0
    assert (tmp_path / "plane.h5_trace_se_2dheat.png").exists()

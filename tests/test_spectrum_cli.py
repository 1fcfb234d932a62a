"""``python -m llmpi.spectrum`` as users run it, under mpirun: against a dense Hessian computed here, 1 rank against
3, killed and resumed, interrupted, failing on one rank, and refusing bad input in one line."""

from __future__ import annotations

import itertools
import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from conftest import Fixture, job_dict, run_cli, write_job
from mpilaunch import GRACEFUL, REPO, env, mpirun

from llmpi.compute import data
from llmpi.compute.spectrum import slq_start
from llmpi.file.spectrum import read_eigenvectors, read_spectrum
from llmpi.job.config import Job, from_dict
from llmpi.job.errors import JobError
from llmpi.space import checkpoint

ENV = {"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}  # python -m tinynet spectrum: llmpi.spectrum with tinynet known
IMAGES = 48
SPEC = {
    "analyses": ["topk", "trace", "density"],
    "topk": {"k": 4, "bottom": 1, "tol": 1.0e-6, "basis": 30},  # float32 products: ~1e-7 relative rounding
    "trace": {"rel_se": 0.05, "min_probes": 6, "max_probes": 120},
    "density": {"runs": 6, "steps": 8, "points": 2000},
    "batch_size": 16,
    "block": 2,
}


@pytest.fixture(scope="module")
def tiny(fixture_data, tmp_path_factory):
    """tinynet (268 weights in matrices) trained briefly on the fixture, and its spectrum on 3 ranks."""
    import tinynet

    d = tmp_path_factory.mktemp("spectrum")
    path = d / "tiny.pt"
    tinynet.train(fixture_data.root, path)
    fx = Fixture(fixture_data.root, path, "tinynet")
    job = spectrum_job(fx, d / "three.h5")
    result = run_cli("tinynet", "spectrum", str(write_job(d / "job.yaml", job)), ranks=3, env=ENV)
    assert result.returncode == 0, result.stderr
    return fx, d, result


def spectrum_job(fx: Fixture, output, **spectrum) -> dict:
    spec = {**SPEC, "output": str(output), **spectrum}
    return job_dict(fx, output.with_suffix(".surface.h5"), data={"subset": IMAGES}, spectrum=spec)


def dense(fx: Fixture) -> tuple[np.ndarray, list[int]]:
    """The float64 dense Hessian of the mean cross-entropy over the selected images, w.r.t. the tensors of two or
    more dimensions (torch.func.hessian, independent of llmpi's products), and those tensors' sizes."""
    import tinynet

    model = tinynet.TinyNet().double()
    model.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in
                           checkpoint.read_state_dict(fx.checkpoint).items()})  # fmt: skip
    model.eval()
    raw, lab, _ = data.load_images("cifar10", fx.root, "train", IMAGES, 0)
    x, y = data.normalize(raw).double(), torch.as_tensor(lab)
    params = dict(model.named_parameters())
    names = [n for n, p in params.items() if p.dim() > 1]
    shapes = [params[n].shape for n in names]
    sizes = [math.prod(s) for s in shapes]
    rest = {n: p.detach() for n, p in params.items() if n not in names} | dict(model.named_buffers())

    def loss(flat):
        weights = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, rest | weights, (x,)), y)

    return torch.func.hessian(loss)(torch.cat([params[n].detach().reshape(-1) for n in names])).numpy(), sizes


@pytest.mark.mpi
def test_the_spectrum_matches_a_dense_hessian(tiny):
    fx, d, result = tiny
    H, sizes = dense(fx)
    eig, vectors = np.linalg.eigh(H)
    scale = abs(eig).max()
    s = read_spectrum(d / "three.h5")
    assert s.attrs["kind"] == "spectrum" and s.analyses == ["topk", "trace", "density"]
    assert s.attrs["parameters"] == len(H) == 268 and list(s.entries.sizes) == sizes
    # top-k: the float32 network's Hessian against the float64 one
    assert s.topk_done and s.get("topk/converged").all()
    assert np.allclose(s.get("topk/values"), np.r_[eig[::-1][:4], eig[:1]], atol=2e-4 * scale)
    _, _, got = read_eigenvectors(d / "three.h5")
    for v, index in zip(got, [-1, -2, -3, -4]):
        assert abs(v @ vectors[:, index]) == pytest.approx(1.0, abs=1e-3)
    assert (s.get("topk/residuals") <= 1e-6 * scale).all()
    # trace: within three standard errors of the dense trace, and each entry's of its block's
    used = s.trace_used
    assert used >= 6 and s.get("trace/done")[:used].all()
    value, se = float(s.get("trace/value")[0]), float(s.get("trace/se")[0])
    assert se <= 0.05 * abs(value) or used == 120
    assert abs(value - np.trace(H)) <= 3 * se
    bounds = np.cumsum([0, *sizes])
    blocks = [np.trace(H[a:b, a:b]) for a, b in itertools.pairwise(bounds)]
    assert np.all(np.abs(s.get("trace/layers") - blocks) <= 3 * s.get("trace/layers_se") + 1e-3 * abs(value))
    assert s.get("trace/layers").sum() == pytest.approx(value, rel=1e-9)
    samples = s.get("trace/samples")[:used]
    assert s.get("trace/running_mean")[used - 1] == pytest.approx(value)
    assert np.allclose(s.get("trace/entries")[:used].sum(axis=1), samples, rtol=1e-9, atol=1e-12)
    # density: each run's quadrature reproduces its start vector's moments of the dense Hessian
    assert s.density_complete and s.get("density/done").all()
    for r in range(6):
        m = int(s.get("density/steps")[r])
        theta, tau = s.get("density/nodes")[r, :m], s.get("density/weights")[r, :m]
        v = slq_start(len(H), 0, r).numpy()
        for p in (1, 2, 3):
            exact = v @ np.linalg.matrix_power(H, p) @ v
            assert np.sum(tau * theta**p) == pytest.approx(exact, rel=1e-3, abs=1e-4 * scale**p)
    grid, phi = s.get("density/grid"), s.get("density/values")
    assert np.trapezoid(phi, grid) == pytest.approx(1.0, rel=1e-3)
    assert "top-4 eigenvalues" in result.stdout and "trace" in result.stdout


@pytest.mark.mpi
def test_one_rank_and_three_agree(tiny, tmp_path):
    _, d, _ = tiny
    job = yaml.safe_load((d / "job.yaml").read_text())
    job["spectrum"]["output"] = str(tmp_path / "one.h5")
    result = run_cli("tinynet", "spectrum", str(write_job(tmp_path / "job.yaml", job)), env=ENV)
    assert result.returncode == 0, result.stderr
    one, three = read_spectrum(tmp_path / "one.h5"), read_spectrum(d / "three.h5")
    # the top-k's products are summed over 3 shares in rank order: equal where the sums allow, else to rounding
    assert np.allclose(one.get("topk/values"), three.get("topk/values"), rtol=1e-6, atol=0)
    # the trace's probes are whole on every rank: their samples depend on the rank count only through the deflation
    used = one.trace_used
    assert used == three.trace_used
    assert np.allclose(one.get("trace/samples")[:used], three.get("trace/samples")[:used], rtol=1e-6, atol=1e-9)
    assert float(one.get("trace/value")[0]) == pytest.approx(float(three.get("trace/value")[0]), rel=1e-6)
    # the density's runs are whole too: the same bits on 1 rank and 3
    for name in ("density/nodes", "density/weights", "density/steps", "density/values"):
        assert np.array_equal(one.get(name), three.get(name), equal_nan=True), name


def same_files(a, b) -> None:
    x, y = read_spectrum(a), read_spectrum(b)
    assert set(x.values) == set(y.values)
    for name in x.values:
        assert np.array_equal(x.values[name], y.values[name], equal_nan=True), name
    assert np.array_equal(read_eigenvectors(a)[2], read_eigenvectors(b)[2])


@pytest.mark.mpi
@pytest.mark.slow
def test_kill_9_inside_writes_then_resume_equals_an_uninterrupted_run(tiny, tmp_path):
    fx, _, _ = tiny
    spec = {"trace": {"rel_se": 0.05, "min_probes": 6, "max_probes": 40}}
    reference = write_job(tmp_path / "ref.yaml", spectrum_job(fx, tmp_path / "ref.h5", **spec))
    assert run_cli("tinynet", "spectrum", str(reference), ranks=2, env=ENV).returncode == 0
    for trial, (stage, after) in enumerate([("between", 1), ("done", 4)]):  # in the top-k's commit, in the trace
        out = tmp_path / f"killed{trial}.h5"
        job = write_job(tmp_path / f"k{trial}.yaml", spectrum_job(fx, out, **spec))
        killed = run_cli(
            "tinynet", "spectrum", str(job), ranks=2, env={**ENV, "LLMPI_FAULT": f"kill:stage={stage}:after={after}"}
        )
        assert killed.returncode != 0
        s = read_spectrum(out)  # the file opens after a kill -9 inside a write
        assert not s.density_complete
        resumed = run_cli("tinynet", "spectrum", str(job), ranks=2, env=ENV)
        assert resumed.returncode == 0, resumed.stderr
        same_files(tmp_path / "ref.h5", out)


@pytest.mark.mpi
def test_an_interruption_keeps_finished_work_and_a_rerun_finishes(tiny, tmp_path):
    fx, _, _ = tiny
    job = write_job(tmp_path / "job.yaml", spectrum_job(fx, tmp_path / "int.h5", analyses=["topk", "density"],
                                                         trace={"deflate": 0}))  # fmt: skip
    slow = {**ENV, "LLMPI_FAULT": "slow:seconds=0.15"}  # every product a little slower: time to interrupt
    cmd = [*mpirun(2), sys.executable, "-m", "tinynet", "spectrum", str(job)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(slow), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "top-4 eigenvalues" not in (line := proc.stdout.readline()):
        assert line or proc.poll() is None, proc.stderr.read()
    proc.send_signal(getattr(signal, GRACEFUL))  # SIGTERM where mpirun passes it on (MPICH), else SIGUSR1
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert f"interrupted ({GRACEFUL})" in err and "rerun the same command to resume" in err
    s = read_spectrum(tmp_path / "int.h5")
    assert s.topk_done and not s.density_complete
    resumed = run_cli("tinynet", "spectrum", str(job), ranks=2, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert "top-4 eigenvalues" in resumed.stdout and read_spectrum(tmp_path / "int.h5").density_complete


@pytest.mark.mpi
def test_an_error_on_one_rank_stops_every_rank_and_names_it(tiny, tmp_path):
    fx, _, _ = tiny
    job = write_job(tmp_path / "job.yaml", spectrum_job(fx, tmp_path / "err.h5"))
    result = run_cli("tinynet", "spectrum", str(job), ranks=3, env={**ENV, "LLMPI_FAULT": "raise:rank=1:after=3"})
    assert result.returncode == 1
    assert "rank 1 of 3" in result.stderr and "injected fault after 3 points" in result.stderr
    assert result.stderr.count("Traceback") == 1  # reported once, by rank 0


def one_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmpi: error: "), result.stderr
    return lines[0]


def test_bad_input_is_one_line(tiny, tmp_path):
    fx, _, _ = tiny
    cases = [  # one found by the loader, one only once the network is there
        ({"trace": {"max_probes": 0}}, "zero probes estimate nothing"),
        ({"topk": {"k": 300, "basis": 310}}, "300 eigenpairs, but the Hessian of tinynet is over 268 parameters"),
    ]
    for i, (spec, words) in enumerate(cases):
        job = write_job(tmp_path / f"{i}.yaml", spectrum_job(fx, tmp_path / f"{i}.h5", **spec))
        assert words in one_error(run_cli("tinynet", "spectrum", str(job), env=ENV))
    base = {"name": "x", "model": {"arch": "resnet8", "checkpoint": "c.pt"}}
    for spec, words in [
        ({"analyses": ["trace"]}, "spectrum.trace.deflate takes the exact share"),
        ({"analyses": ["trace"], "trace": {"deflate": 0}}, None),  # plain Hutchinson needs no top-k
        ({"topk": {"k": 3, "bottom": 0, "basis": 4}}, "spectrum.topk.basis 4 cannot hold 3 eigenpairs"),
        ({"topk": {"k": 0}}, "ask for at least one"),
        ({"trace": {"min_probes": 1}}, "min_probes must be between 2 and max_probes"),
        ({"trace": {"deflate": 50}}, "more vectors than the top-k's Lanczos basis holds"),
        ({"density": {"runs": 0}}, "leave density out of spectrum.analyses"),
        ({"analyses": ["topk", "topk"]}, "an analysis twice"),
        ({"sigma": 1}, "unknown key 'spectrum.sigma'"),
    ]:
        if words is None:
            from_dict(Job, {**base, "spectrum": spec})
        else:
            with pytest.raises(JobError, match=words):
                from_dict(Job, {**base, "spectrum": spec})
    job = spectrum_job(fx, tmp_path / "bf.h5")
    job["runtime"]["precision"] = "bf16"
    assert "fp32 or tf32" in one_error(run_cli("tinynet", "spectrum", str(write_job(tmp_path / "bf.yaml", job)),
                                                env=ENV))  # fmt: skip


def test_a_loss_factory_without_a_graph_is_refused_in_one_line(tiny, tmp_path):
    fx, _, _ = tiny
    job = spectrum_job(fx, tmp_path / "f.h5")
    job["loss"] = {"factory": "tinynet:detached_loss"}
    result = run_cli("tinynet", "spectrum", str(write_job(tmp_path / "f.yaml", job)), env=ENV)
    assert "returned a summed loss without a graph" in one_error(result)


def test_another_jobs_file_is_refused_and_restart_replaces_it(tiny, tmp_path):
    fx, d, _ = tiny
    import shutil

    shutil.copy(d / "three.h5", tmp_path / "s.h5")
    job = write_job(tmp_path / "j.yaml", spectrum_job(fx, tmp_path / "s.h5", seed=5))
    assert "holds another job's spectrum (spectrum.seed: file 0, job 5)" in one_error(
        run_cli("tinynet", "spectrum", str(job), env=ENV)
    )


# -- what status and plot make of a spectrum file ------------------------------------------------------------------


def test_status_summarises_a_spectrum_file(tiny, capsys):
    from llmpi import status

    _, d, _ = tiny
    assert status.main([str(d / "three.h5")]) == 0
    text = capsys.readouterr().out
    s = read_spectrum(d / "three.h5")
    assert "spectrum fixture -- tinynet on" in text and "Hessian over 268 parameters in 2 entries" in text
    assert f"top-4 eigenvalues: {s.get('topk/values')[0]:.6g}" in text and "most negative" in text
    assert f"trace: {s.get('trace/value')[0]:.6g} ±" in text and f"{s.trace_used} probes" in text
    assert "conv1.weight" in text and "linear.weight" in text
    assert "density: 6 runs x 8 steps, complete" in text and "live: no run is writing it" in text
    assert status.main([str(d / "three.h5"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "spectrum" and info["trace"]["final"] and len(info["trace"]["layers"]) == 2
    assert info["topk"]["values"] == pytest.approx(s.get("topk/values").tolist())
    assert status.main([str(d / "three.h5"), "--metrics"]) == 0  # the metrics are a surface's: nothing to add


def test_plot_draws_the_density_and_the_layers(tiny, tmp_path, capsys):
    from llmpi import plot
    from llmpi.report.spectrum import SpectrumView, figure_density, figure_layers

    _, d, _ = tiny
    assert plot.main([str(d / "three.h5"), "-o", f"{tmp_path}/"]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["three.h5_density.pdf", "three.h5_density.png", "three.h5_layers.pdf", "three.h5_layers.png"]
    view = SpectrumView.read(d / "three.h5")
    fig = figure_density(view)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    top = read_spectrum(d / "three.h5").get("topk/values")[:4]
    marked = sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--")
    assert np.allclose(marked, sorted(top))
    bars = figure_layers(view).axes[0].patches
    assert [b.get_width() for b in bars] == pytest.approx(read_spectrum(d / "three.h5").get("trace/layers"))
    assert plot.main([str(d / "three.h5"), "--kind", "contour"]) == 2
    assert "is a spectrum file; --kind contour draws surfaces" in capsys.readouterr().err


def test_a_partial_file_shows_what_is_done(tiny, tmp_path, capsys):
    """A spectrum stopped in its trace: status gives the running estimate, plot the layers so far; the density,
    not begun, is refused by name when asked for."""
    from llmpi import plot, status

    fx, _, _ = tiny
    job = write_job(tmp_path / "p.yaml", spectrum_job(fx, tmp_path / "p.h5", analyses=["topk", "trace", "density"]))
    killed = run_cli("tinynet", "spectrum", str(job), env={**ENV, "LLMPI_FAULT": "kill:stage=done:after=4"})
    assert killed.returncode != 0
    assert status.main([str(tmp_path / "p.h5")]) == 0
    text = capsys.readouterr().out
    assert "trace: running" in text and "density: 6 runs x 8 steps, 0 of 6 runs done" in text
    assert plot.main([str(tmp_path / "p.h5"), "-o", f"{tmp_path}/"]) == 0  # the layers; no density yet
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["p.h5_layers.png"]
    assert plot.main([str(tmp_path / "p.h5"), "--kind", "density"]) == 2
    assert "no run of its density is done yet" in capsys.readouterr().err


@pytest.mark.mpi
def test_a_top_k_stopped_between_restarts_resumes_from_its_last_restart(tiny, tmp_path):
    """A small basis restarts every few products; a run that fails after 12 of them leaves its last restart's
    Lanczos state beside the file, and the rerun continues from it to the same bits as an uninterrupted run."""
    fx, _, _ = tiny
    spec = {"analyses": ["topk"], "topk": {"k": 4, "bottom": 1, "tol": 1.0e-6, "basis": 8}}
    ref = write_job(tmp_path / "ref.yaml", spectrum_job(fx, tmp_path / "ref.h5", **spec))
    assert run_cli("tinynet", "spectrum", str(ref), ranks=2, env=ENV).returncode == 0
    job = write_job(tmp_path / "job.yaml", spectrum_job(fx, tmp_path / "cut.h5", **spec))
    failed = run_cli("tinynet", "spectrum", str(job), ranks=2, env={**ENV, "LLMPI_FAULT": "raise:rank=0:after=12"})
    assert failed.returncode == 1 and (tmp_path / "cut.h5.topk-state").exists()
    resumed = run_cli("tinynet", "spectrum", str(job), ranks=2, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert "top-k: resuming after" in resumed.stdout
    assert not (tmp_path / "cut.h5.topk-state").exists()
    same_files(tmp_path / "ref.h5", tmp_path / "cut.h5")


@pytest.mark.mpi
def test_the_api_on_the_network_and_data_in_memory_gives_the_commands_bits(tiny, tmp_path):
    """llmpi.spectrum in this process, on the checkpoint's network and the selected images as tensors, against the
    command on one rank: the same values, bit for bit (same samples, batches and products)."""
    import tinynet

    import llmpi

    fx, d, _ = tiny
    job = yaml.safe_load((d / "job.yaml").read_text())
    job["spectrum"]["output"] = str(tmp_path / "command.h5")
    result = run_cli("tinynet", "spectrum", str(write_job(tmp_path / "job.yaml", job)), env=ENV)
    assert result.returncode == 0, result.stderr
    model = tinynet.TinyNet()
    model.load_state_dict(checkpoint.read_state_dict(fx.checkpoint))
    raw, labels, _ = data.load_images("cifar10", fx.root, "train", IMAGES, 0)
    spec = {k: v for k, v in job["spectrum"].items() if k != "output"}
    got = llmpi.spectrum(
        model, (data.normalize(raw), torch.as_tensor(labels)), output=tmp_path / "api.h5", spectrum=spec,
        runtime=job["runtime"], directions={"ignore": job["directions"]["ignore"]},
    )  # fmt: skip
    command, api = read_spectrum(tmp_path / "command.h5"), read_spectrum(tmp_path / "api.h5")
    assert set(command.values) == set(api.values)
    for name in command.values:
        assert np.array_equal(command.values[name], api.values[name], equal_nan=True), name
    assert np.array_equal(read_eigenvectors(tmp_path / "command.h5")[2], got.eigenvectors)

"""The paper's other direction kinds, Hessian maps and surface metrics through the real sweep under mpirun -n 3,
each checked against an independent computation written here: checkpoints' own losses by a plain forward
(interpolation ends, plane corners), numpy's SVD of the dense snapshot matrix (PCA), a dense Hessian from
torch.autograd.functional.hessian (eigenvalues), and the metrics' definitions applied to the stored arrays."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import REPO, Fixture, brute_force, job_dict, run_cli, write_job

from llmpi.compute import data
from llmpi.file.store import WriterLock, read_directions, read_surface
from llmpi.job.config import load_job
from llmpi.job.errors import JobError
from llmpi.space import checkpoint

pytestmark = pytest.mark.mpi


def own_loss(fx: Fixture, path, split: str = "train", subset: int = 64) -> tuple[float, float]:
    """A checkpoint's own loss and accuracy (no direction at all), the obvious way."""
    return brute_force(Fixture(fx.root, path, fx.arch), [], (), subset=subset, split=split)


@pytest.fixture(scope="module")
def others(other_minimisers):
    """Two more minimisers trained on from the fixture's (tests/conftest.py)."""
    return other_minimisers


# -- job validation (in-process, fast) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"directions": {"kind": "interpolate"}}, "needs model.checkpoint2"),
        ({"directions": {"kind": "interpolate"}, "model": {"checkpoint2": "b.pt"}}, "drop grid.y"),
        ({"directions": {"kind": "plane"}, "model": {"checkpoint2": "b.pt"}}, "needs model.checkpoint3"),
        ({"directions": {"kind": "pca"}}, "needs directions.trajectory"),
        ({"directions": {"kind": "pca", "trajectory": "t"}, "grid": {"y": None}}, "spans a plane: give grid.y"),
        ({"model": {"checkpoint2": "b.pt"}}, "model.checkpoint2 is only used by directions.kind interpolate"),
        ({"directions": {"trajectory": "t"}}, "directions.trajectory is for directions.kind: pca"),
        ({"directions": {"kind": "pca", "trajectory": "t", "rescale": "layer"}}, "valid: none, filter"),
        ({"metrics": ["hessian"], "runtime": {"precision": "bf16"}}, "needs runtime.precision fp32 or tf32"),
        ({"metrics": ["hessian"], "hessian": {"tol": 2.0}}, "hessian.tol must be in"),
        ({"metrics": ["hesian"]}, "did you mean 'hessian'"),
        ({"data": {"split": "all"}}, "valid: train, test, both"),
    ],
)
def test_each_kind_says_what_it_needs(fixture_data, tmp_path, sections, message):
    job = job_dict(fixture_data, tmp_path / "x.h5", **sections)
    with pytest.raises(JobError, match=message):
        load_job(write_job(tmp_path / "job.yaml", job))


def test_value_names_follow_the_split_and_metrics(fixture_data, tmp_path):
    job = job_dict(fixture_data, tmp_path / "x.h5", data={"split": "both"}, metrics=["hessian"])
    loaded = load_job(write_job(tmp_path / "job.yaml", job))
    assert loaded.value_names() == [
        "train_loss", "train_acc", "test_loss", "test_acc", "max_eig", "min_eig", "eig_ratio", "eig_converged",
        "eig_residual", "eig_hvps",
    ]  # fmt: skip


def test_too_few_snapshots_is_one_clear_error(fixture_data, tmp_path):
    from llmpi.space.plan import plan_directions

    folder = tmp_path / "traj"
    folder.mkdir()
    state = checkpoint.read_state_dict(fixture_data.checkpoint)
    for i in range(2):
        torch.save({"state_dict": state}, folder / f"epoch_{i:03d}.pt")
    job = job_dict(fixture_data, tmp_path / "p.h5", directions={"kind": "pca", "trajectory": str(folder)})
    job = load_job(write_job(tmp_path / "job.yaml", job))
    model = checkpoint.load_model(fixture_data.arch, fixture_data.checkpoint)
    with pytest.raises(JobError, match=r"directions.kind pca: 2 snapshot\(s\) cannot give 2 principal components"):
        plan_directions(job, model, 2)
    with pytest.raises(JobError, match="no snapshots"):
        plan_directions(load_job(tmp_path / "job.yaml", [f"directions.trajectory={tmp_path}"]), model, 2)


# -- interpolation, with train and test in one file ---------------------------------------------------------------


def test_interpolation_ends_are_the_two_checkpoints_on_both_splits(fixture_data, others, tmp_path):
    job = job_dict(
        fixture_data,
        tmp_path / "line.h5",
        model={"checkpoint2": str(others[0])},
        directions={"kind": "interpolate", "type": "states"},
        data={"split": "both", "subset": 48},
        grid={"x": [-0.5, 1.5, 5], "y": None, "block": 1},
    )
    result = run_cli("llmpi.sweep", str(write_job(tmp_path / "job.yaml", job)), ranks=3)
    assert result.returncode == 0, result.stderr
    s = read_surface(tmp_path / "line.h5")
    assert s.complete and s.y is None and list(s.x) == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert set(s.values) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    for split in ("train", "test"):
        for i, path in ((1, fixture_data.checkpoint), (3, others[0])):  # α = 0 and α = 1
            loss, acc = own_loss(fixture_data, path, split, subset=48)
            assert s.values[f"{split}_loss"][i] == pytest.approx(loss, rel=2e-5), (split, i)
            assert s.values[f"{split}_acc"][i] == pytest.approx(acc, abs=1e-9), (split, i)
    (dx,) = read_directions(tmp_path / "line.h5")
    assert any("running_var" in k and np.any(v) for k, v in dx.items())  # states: BatchNorm statistics move too
    loss, _ = brute_force(fixture_data, [dx], (1.5,), subset=48, split="test")  # beyond the second model
    assert s.values["test_loss"][4] == pytest.approx(loss, rel=2e-5)


# -- plane through three models -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plane(fixture_data, others, tmp_path_factory):
    d = tmp_path_factory.mktemp("plane")
    job = job_dict(
        fixture_data,
        d / "plane.h5",
        model={"checkpoint2": str(others[0]), "checkpoint3": str(others[1])},
        directions={"kind": "plane", "type": "states"},
        grid={"x": [-0.5, 1.0, 4], "y": [0.0, 1.0, 3], "block": 2},
    )
    result = run_cli("llmpi.sweep", str(write_job(d / "job.yaml", job)), ranks=3)
    assert result.returncode == 0, result.stderr
    return d / "plane.h5"


def test_plane_corners_are_the_three_models_and_their_coordinates_are_stored(fixture_data, others, plane):
    s = read_surface(plane)
    assert s.complete and s.values["train_loss"].shape == (3, 4)
    assert set(s.values) == {"train_loss", "train_acc"}  # the extras are not values
    assert np.array_equal(s.extras["model_coordinates"], [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    names = s.extra_attrs["model_coordinates"]["names"]
    assert names == [str(fixture_data.checkpoint), str(others[0]), str(others[1])]
    for path, (a, b) in zip([fixture_data.checkpoint, *others], s.extras["model_coordinates"]):
        i, j = list(s.x).index(a), list(s.y).index(b)
        loss, acc = own_loss(fixture_data, path)
        assert s.values["train_loss"][j, i] == pytest.approx(loss, rel=2e-5), path
        assert s.values["train_acc"][j, i] == pytest.approx(acc, abs=1e-9), path


def test_plane_pictures_mark_the_three_models(plane, tmp_path):
    from llmpi.report.landscape import Landscape

    land = Landscape.read(plane)
    marks = {o.tag: (float(o.x[0]), float(o.y[0])) for o in land.overlays("train_loss") if o.kind == "point"}
    assert marks["θ1"] == (0.0, 0.0) and marks["θ2"] == (1.0, 0.0) and marks["θ3"] == (0.0, 1.0)
    assert "θ2 − θ1" in land.axis_label("x") and "model2" in land.axis_label("x")
    result = run_cli("llmpi.plot", str(plane), "--kind", "contour", "-o", str(tmp_path) + "/")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "plane.h5_train_loss_2dcontour.png").stat().st_size > 10_000


# -- PCA of a trajectory ------------------------------------------------------------------------------------------


def test_pca_directions_are_numpys_svd_of_the_snapshots(fixture_data, tmp_path):
    final = checkpoint.read_state_dict(fixture_data.checkpoint)
    moved = [k for k, v in final.items() if v.is_floating_point() and v.dim() > 1]  # ignore: biasbn
    rng = np.random.default_rng(5)
    a, b = ({k: rng.normal(size=final[k].shape) * 0.05 for k in moved} for _ in range(2))
    folder = tmp_path / "trajectory"
    folder.mkdir()
    for i in range(6):  # drifting towards the final model along a curve; the last snapshot is the final model
        t = 1.0 - i / 5
        state = dict(final)
        for k in moved:
            noise = 0.002 * t * rng.normal(size=final[k].shape)
            state[k] = (final[k].double() + torch.from_numpy(t * a[k] + math.sin(3 * t) * b[k] + noise)).float()
        torch.save({"state_dict": state}, folder / f"epoch_{i:03d}.pt")
    job = job_dict(
        fixture_data,
        tmp_path / "pca.h5",
        directions={"kind": "pca", "trajectory": str(folder)},
        grid={"x": [-1.0, 1.0, 3], "y": [-1.0, 1.0, 3], "block": 2},
    )
    result = run_cli("llmpi.sweep", str(write_job(tmp_path / "job.yaml", job)), ranks=3)
    assert result.returncode == 0, result.stderr

    snaps = [checkpoint.read_state_dict(p) for p in sorted(folder.iterdir())]
    D = np.stack(
        [np.concatenate([(s[k].double() - final[k].double()).reshape(-1).numpy() for k in moved]) for s in snaps]
    )
    _, sv, vt = np.linalg.svd(D - D.mean(axis=0), full_matrices=False)
    s = read_surface(tmp_path / "pca.h5")
    dirs = read_directions(tmp_path / "pca.h5")
    flat = np.stack([np.concatenate([d[k].astype(np.float64).reshape(-1) for k in moved]) for d in dirs])
    assert np.allclose(flat @ flat.T, np.eye(2), atol=1e-5)  # orthonormal
    signs = np.sign(np.sum(flat * vt[:2], axis=1))
    assert np.allclose(flat, signs[:, None] * vt[:2], atol=1e-6)
    assert all(not d[k].any() for d in dirs for k in d if k not in moved)  # biases, BatchNorm: zero
    assert np.allclose(s.extras["explained_variance_ratio"], sv[:2] ** 2 / (sv**2).sum(), rtol=1e-9)
    path = D @ vt[:2].T * signs
    assert np.allclose(s.extras["trajectory/x"], path[:, 0], rtol=1e-6, atol=1e-9)
    assert np.allclose(s.extras["trajectory/y"], path[:, 1], rtol=1e-6, atol=1e-9)
    assert s.extra_attrs["trajectory/x"]["snapshots"] == [f"epoch_{i:03d}.pt" for i in range(6)]
    loss, _ = brute_force(fixture_data, dirs, (s.x[2], s.y[0]))
    assert s.values["train_loss"][0, 2] == pytest.approx(loss, rel=2e-5)

    from llmpi.report.landscape import Landscape

    land = Landscape.read(tmp_path / "pca.h5")
    (drawn,) = [o for o in land.overlays("train_loss") if o.kind == "path"]
    assert np.array_equal(drawn.x, s.extras["trajectory/x"]) and np.array_equal(drawn.y, s.extras["trajectory/y"])
    assert f"{100 * sv[0] ** 2 / (sv**2).sum():.1f}% of the variance" in land.axis_label("x")


# -- Hessian eigenvalues at every point, against a dense Hessian ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny(fixture_data, tmp_path_factory):
    """tinynet (268 weights in matrices) trained briefly on the fixture, and a Hessian sweep around it."""
    import tinynet

    from llmpi.compute import data

    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = tinynet.TinyNet()
    images, labels = data.load_cifar10(fixture_data.root, "train", download=False)
    x, y = data.normalize(images[:200]), torch.as_tensor(labels[:200])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for s in torch.randperm(200).split(25):
        loss = torch.nn.functional.cross_entropy(model(x[s]), y[s])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = d / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    fx = Fixture(fixture_data.root, path, "tinynet")
    job = job_dict(
        fx,
        d / "eig.h5",
        metrics=["hessian"],
        hessian={"tol": 1e-7, "max_hvps": 400, "basis": 30, "images": 16},
        grid={"x": [-1.0, 1.0, 5], "y": [-1.0, 1.0, 3], "block": 2},
    )
    env = {"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    result = run_cli("tinynet", str(write_job(d / "job.yaml", job)), ranks=3, env=env)
    assert result.returncode == 0, result.stderr
    return fx, d, result, env


def dense_extremes(fx: Fixture, directions, point, images: int) -> tuple[float, float]:
    """λmin, λmax of the dense Hessian (``dense_hessian``)."""
    eig = np.linalg.eigvalsh(dense_hessian(fx, directions, point, images))
    return float(eig[0]), float(eig[-1])


def dense_hessian(fx: Fixture, directions, point, images: int, ignore: str = "biasbn") -> np.ndarray:
    """The dense Hessian (float64, ``torch.func.hessian``: forward over reverse) of the mean cross-entropy over the
    first ``images`` selected images, with respect to the tensors of two or more dimensions (``ignore: none``: every
    parameter) in the order of ``named_parameters``, at θ* + Σ point·direction."""
    import tinynet

    state = checkpoint.read_state_dict(fx.checkpoint)
    model = tinynet.TinyNet().double()
    perturbed = {}
    for name, value in state.items():
        v = value.double()
        for c, d in zip(point, directions):
            if name in d:
                v = v + c * torch.as_tensor(d[name]).double()
        perturbed[name] = v if value.is_floating_point() else value
    model.load_state_dict(perturbed)
    model.eval()
    raw, lab, _ = data.load_images("cifar10", fx.root, "train", 64, 0)
    x, y = data.normalize(raw[:images]).double(), torch.as_tensor(lab[:images])
    names = [n for n, p in model.named_parameters() if p.dim() > 1 or ignore == "none"]
    shapes = [dict(model.named_parameters())[n].shape for n in names]
    sizes = [math.prod(s) for s in shapes]
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in names}
    buffers = dict(model.named_buffers())

    def loss(flat):
        weights = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        out = torch.func.functional_call(model, {**fixed, **buffers, **weights}, (x,))
        return torch.nn.functional.cross_entropy(out, y)

    start = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in names])
    return torch.func.hessian(loss)(start).numpy()


def test_hessian_extremes_at_every_point_match_a_dense_hessian(tiny):
    fx, d, result, _ = tiny
    assert "Hessian extremes at every point" in result.stdout
    s = read_surface(d / "eig.h5")
    assert s.complete and {"max_eig", "min_eig", "eig_ratio"} <= set(s.values)
    assert (s.values["eig_converged"] == 1.0).all() and (s.values["eig_residual"] <= 1e-7).all()
    dirs = read_directions(d / "eig.h5")
    for j, i in [(0, 0), (1, 2), (2, 3)]:
        lo, hi = dense_extremes(fx, dirs, (s.x[i], s.y[j]), images=16)
        scale = max(abs(lo), abs(hi))
        assert s.values["max_eig"][j, i] == pytest.approx(hi, abs=2e-4 * scale), (i, j)
        assert s.values["min_eig"][j, i] == pytest.approx(lo, abs=2e-4 * scale), (i, j)
        assert s.values["eig_ratio"][j, i] == pytest.approx(abs(lo / hi), abs=5e-4), (i, j)
    loss, _ = brute_force(fx, dirs, (s.x[3], s.y[2]))
    assert s.values["train_loss"][2, 3] == pytest.approx(loss, rel=2e-5)


def test_the_hessian_takes_its_own_parameter_set_when_the_job_gives_one(tiny, tmp_path):
    """hessian.ignore: none takes the Hessian over every parameter (biases and BatchNorm's too) while the directions
    keep ignore: biasbn; the extremes are the dense Hessian's over all parameters, not over the matrices only."""
    from llmpi.ranks.worker import DataCache, PointValues, load

    fx, d, _, _ = tiny
    raw = job_dict(
        fx, tmp_path / "all.h5", metrics=["hessian"], hessian={"tol": 1e-7, "max_hvps": 400, "images": 16,
        "ignore": "none"}, grid={"x": [-1.0, 1.0, 3], "y": [-1.0, 1.0, 3]},
    )  # fmt: skip
    job = load_job(write_job(tmp_path / "job.yaml", raw))
    dirs = read_directions(d / "eig.h5")  # directions ignore biasbn: zero on biases and BatchNorm
    values = PointValues.build(job, load(job, torch.device("cpu"), DataCache()), dirs)
    values.hessian_batch = 16
    hi, lo, *_ = values.eigenvalues((0.5, -0.5), lambda: None)
    everything = np.linalg.eigvalsh(dense_hessian(fx, dirs, (0.5, -0.5), 16, ignore="none"))
    matrices = np.linalg.eigvalsh(dense_hessian(fx, dirs, (0.5, -0.5), 16))
    scale = max(abs(everything[0]), abs(everything[-1]))
    assert hi == pytest.approx(everything[-1], abs=2e-4 * scale) and lo == pytest.approx(
        everything[0], abs=2e-4 * scale
    )
    assert abs(hi - matrices[-1]) > 1e-2 * scale or abs(lo - matrices[0]) > 1e-2 * scale  # another operator


def test_hessian_values_do_not_depend_on_the_rank_count(tiny, tmp_path):
    _, d, _, env = tiny
    text = (d / "job.yaml").read_text().replace(str(d / "eig.h5"), str(tmp_path / "one.h5"))
    result = run_cli("tinynet", str(write_job(tmp_path / "job.yaml", __import__("yaml").safe_load(text))), env=env)
    assert result.returncode == 0, result.stderr
    one, three = read_surface(tmp_path / "one.h5"), read_surface(d / "eig.h5")
    for name in ("max_eig", "min_eig", "eig_ratio", "train_loss"):
        assert np.array_equal(one.values[name], three.values[name]), name


def plain_lanczos(H: np.ndarray, start: np.ndarray, steps: int, tol: float) -> tuple[float, float, float, bool, int]:
    """Textbook Lanczos with full reorthogonalisation on a dense symmetric matrix, stopped when both extreme Ritz
    pairs have residual <= tol * max|Ritz value| or after ``steps`` products: (θmax, θmin, larger relative
    residual, converged, products)."""
    V = [start / np.linalg.norm(start)]
    alphas, betas = [], []
    for k in range(1, steps + 1):
        w = H @ V[-1]
        for _ in range(2):
            w = w - np.array(V).T @ (np.array(V) @ w)
        alphas.append(V[-1] @ (H @ V[-1]))
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, S = np.linalg.eigh(T)
        beta = np.linalg.norm(w)
        residual = np.abs(beta * S[-1, :])
        scale = max(abs(theta[0]), abs(theta[-1]))
        worst = max(residual[0], residual[-1]) / scale
        if worst <= tol or k == steps:
            return float(theta[-1]), float(theta[0]), float(worst), bool(worst <= tol), k
        betas.append(beta)
        V.append(w / beta)
    raise AssertionError("unreachable")


def test_points_that_stop_at_max_hvps_are_marked_unconverged(tiny, tmp_path):
    """A budget of products some points need more than: the stored flags and residuals are those of a plain
    Lanczos run on the dense Hessian from the same start vector; status counts the unconverged points and the
    eigen-ratio map marks them."""
    fx, _, _, env = tiny
    tol, steps, images = 1e-3, 18, 16
    job = job_dict(
        fx, tmp_path / "few.h5", metrics=["hessian"], grid={"x": [-1.0, 1.0, 3], "y": [-1.0, 1.0, 3], "block": 3},
        hessian={"tol": tol, "max_hvps": steps, "basis": 30, "images": images, "seed": 5},
    )  # fmt: skip
    result = run_cli("tinynet", str(write_job(tmp_path / "job.yaml", job)), env=env)
    assert result.returncode == 0, result.stderr
    s = read_surface(tmp_path / "few.h5")
    dirs = read_directions(tmp_path / "few.h5")
    expected = np.zeros(s.done.shape, bool)
    decided = 0
    for j, i in np.ndindex(s.done.shape):
        H = dense_hessian(fx, dirs, (s.x[i], s.y[j]), images)
        start = torch.randn(len(H), generator=torch.Generator().manual_seed(5), dtype=torch.float64).numpy()
        hi, lo, residual, converged, products = plain_lanczos(H, start, steps, tol)
        scale = max(abs(hi), abs(lo))
        assert s.values["max_eig"][j, i] == pytest.approx(hi, abs=1e-4 * scale), (i, j)
        assert s.values["min_eig"][j, i] == pytest.approx(lo, abs=1e-4 * scale), (i, j)
        assert s.values["eig_residual"][j, i] == pytest.approx(residual, rel=1e-3), (i, j)
        expected[j, i] = not converged
        # float32 products move the residual by ~2e-5 relative (measured): 2% away from tol the verdict is sure
        if abs(residual / tol - 1) > 0.02:
            decided += 1
            assert s.values["eig_converged"][j, i] == float(converged), (i, j, residual)
            assert s.values["eig_hvps"][j, i] == products, (i, j, residual)  # what the point cost
    assert decided >= 7 and 0 < expected.sum() < expected.size  # some points converge within the budget, some not
    flags = s.values["eig_converged"]
    unconverged = int((flags == 0).sum())
    assert set(np.unique(flags)) <= {0.0, 1.0} and unconverged >= 1

    status = run_cli("llmpi.status", str(tmp_path / "few.h5"), "--json")
    assert json.loads(status.stdout)["hessian"]["unconverged"] == unconverged
    text = run_cli("llmpi.status", str(tmp_path / "few.h5")).stdout
    assert f"{unconverged} of 9 computed points did not converge (hessian.tol 0.001, max_hvps {steps}" in text

    from llmpi.report.landscape import Landscape, Scale
    from llmpi.report.static import figure_2d

    land = Landscape.read(tmp_path / "few.h5")
    fig = figure_2d(land, "eig_ratio", "heat", Scale())
    (marks,) = [c for c in fig.axes[0].collections if c.get_label().startswith("not converged")]
    X, Y = np.meshgrid(s.x, s.y)
    got = {tuple(p) for p in marks.get_offsets().tolist()}
    assert got == {(X[j, i], Y[j, i]) for j, i in zip(*np.nonzero(flags == 0))}
    assert marks.get_label().startswith(f"not converged ({unconverged} point")
    assert f"{unconverged} of 9 not converged" in fig._suptitle.get_text()


# -- status --metrics ---------------------------------------------------------------------------------------------


def reference_metrics(s, radius: float, threshold: float, ratio_threshold: float) -> dict:
    """The README's definitions applied to the arrays by hand (flood fill by repeated dilation)."""
    loss = s.values["train_loss"]
    X, Y = np.meshgrid(s.x, s.y)
    dist = np.hypot(X, Y)
    centre = np.unravel_index(np.argmin(dist), dist.shape)
    c = loss[centre]
    near = np.hypot(X - X[centre], Y - Y[centre]) <= radius + 1e-12
    below = loss <= c + threshold
    region = np.zeros_like(below)
    region[centre] = below[centre]
    while True:
        grown = region.copy()
        grown[1:, :] |= region[:-1, :]
        grown[:-1, :] |= region[1:, :]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= below
        if np.array_equal(grown, region):
            break
        region = grown
    u = np.stack([X[near] - X[centre], Y[near] - Y[centre]], axis=1)
    A = np.column_stack([np.ones(len(u)), u[:, 0], u[:, 1], u[:, 0] ** 2 / 2, u[:, 0] * u[:, 1], u[:, 1] ** 2 / 2])
    coef = np.linalg.lstsq(A, loss[near], rcond=None)[0]
    curvature = np.linalg.eigvalsh([[coef[3], coef[4]], [coef[4], coef[5]]])
    convex = (s.values["eig_ratio"] < ratio_threshold) | (s.values["min_eig"] >= 0)
    return {
        "centre_loss": c,
        "min_loss": loss.min(),
        "sharpness": loss[near].max() - c,
        "curvature": list(curvature),
        "basin_share": region.sum() / loss.size,
        "basin_area": region.sum() * (s.x[1] - s.x[0]) * (s.y[1] - s.y[0]),
        "below_share": below.sum() / loss.size,
        "convex_share": convex.sum() / loss.size,
    }


def test_status_metrics_follow_their_definitions_and_are_stored(tiny):
    d = tiny[1]
    path = d / "eig.h5"
    before = read_surface(path)
    options = ["--metrics", "--radius", "1.2", "--threshold", "0.05", "--ratio-threshold", "0.2"]
    out = run_cli("llmpi.status", str(path), *options, "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)["metrics"]
    want = reference_metrics(before, 1.2, 0.05, 0.2)
    m = got["train_loss"]
    for key, value in want.items():
        assert m[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert got["options"] == {"radius": 1.2, "fit_radius": 1.2, "threshold": 0.05, "ratio_threshold": 0.2}
    after = read_surface(path)
    assert json.loads(after.attrs["metrics"]) == got  # stored through the store, values untouched
    assert all(np.array_equal(after.values[k], before.values[k]) for k in before.values)
    text = run_cli("llmpi.status", str(path), "--metrics").stdout
    assert "sharpness" in text and "max loss within distance `radius` of the centre" in text


def test_status_metrics_under_a_live_sweep_are_printed_not_stored(plane):
    lock = WriterLock(plane)
    lock.acquire(plane)
    try:
        out = run_cli("llmpi.status", str(plane), "--metrics")
    finally:
        lock.release()
    assert out.returncode == 0 and "centre_loss" in out.stdout
    assert "printed, not stored: a sweep is writing the file" in out.stderr
    assert "metrics" not in read_surface(plane).attrs


def test_paper_figure_jobs_use_the_train_variants_outputs():
    from llmpi.job.config import load
    from llmpi.job.training import TrainJob

    def trained(name):
        return load(TrainJob, REPO / "jobs" / "train" / f"{name}.yaml")

    line = load_job(REPO / "jobs" / "interpolate_vgg9_bs128_bs8192.yaml")
    assert (line.model.checkpoint, line.model.checkpoint2) == (
        trained("vgg9_bs128_wd0").output, trained("vgg9_bs8192_wd0").output,
    )  # fmt: skip
    assert line.data.split == "both" and line.directions.type == "states" and line.grid.y is None
    pca = load_job(REPO / "jobs" / "pca_vgg9_bs128_wd5e-4.yaml")
    source = trained("vgg9_bs128_wd5e-4")
    assert pca.directions.trajectory == str(source.snapshot_dir) and pca.model.checkpoint == source.output
    assert source.train.save_every >= 1
    assert "hessian" in load_job(REPO / "jobs" / "eigratio_resnet56_noshort.yaml").metrics
    plane = load_job(REPO / "jobs" / "plane_vgg9_wd.yaml")
    assert {plane.model.checkpoint, plane.model.checkpoint2, plane.model.checkpoint3} == {
        trained(n).output for n in ("vgg9_bs128_wd5e-4", "vgg9_bs128_wd0", "vgg9_bs8192_wd0")
    }

"""PCA directions against numpy's SVD of the same snapshots held densely; blockwise reading; filter rescaling;
snapshot files; and an end-to-end check that a trajectory lying in a plane is reproduced by the evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Fixture, brute_force

from llmpi.compute import data
from llmpi.compute.evaluate import Evaluator
from llmpi.space import checkpoint
from llmpi.space.directions import perturbed_entries
from llmpi.space.pca import load_snapshot, pca_directions, snapshot_files

SHAPES = {"conv1.weight": (4, 3, 3, 3), "bn1.weight": (4,), "bn1.running_mean": (4,), "fc.weight": (3, 6), "b": (3,)}


def trajectory(n: int = 9, seed: int = 0) -> tuple[dict, list[dict]]:
    """A final model and n snapshots drifting towards it along a curve, plus noise (so all ranks are full); the last
    snapshot is the final model itself, as in a real run."""
    rng = np.random.default_rng(seed)
    final = {k: torch.from_numpy(rng.normal(size=s)).float() for k, s in SHAPES.items()}
    a, b = ({k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(2))
    snaps = []
    for i in range(n):
        t = 1.0 - i / (n - 1)
        snaps.append(
            {
                k: final[k]
                + torch.from_numpy(3 * t * a[k] + np.sin(3 * t) * b[k] + 0.05 * t * rng.normal(size=SHAPES[k]))
                for k in SHAPES
            }
        )
        snaps[-1] = {k: v.float() for k, v in snaps[-1].items()}
    return final, snaps


def dense_reference(final, snaps, names, center, k=2):
    """numpy's SVD of the dense (snapshots x params) matrix: components, ratios, projections of θ_i − θ_final."""
    D = np.stack(
        [np.concatenate([(s[n].double() - final[n].double()).reshape(-1).numpy() for n in names]) for s in snaps]
    )
    M = D - D.mean(axis=0) if center else D
    _, sv, vt = np.linalg.svd(M, full_matrices=False)
    return vt[:k], sv[:k] ** 2 / (sv**2).sum(), D @ vt[:k].T, sv[:k]


def flat(direction, names):
    return np.concatenate([direction[n].double().reshape(-1).numpy() for n in names])


def loaders(snaps, calls=None):
    def make(s):
        def load():
            if calls is not None:
                calls.append(1)
            return s

        return load

    return [make(s) for s in snaps]


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("ignore", ["biasbn", "none"])
def test_components_match_numpy_svd(center, ignore):
    final, snaps = trajectory()
    names = [k for k in SHAPES if ignore == "none" or len(SHAPES[k]) > 1]
    comps, ratios, proj, sv = dense_reference(final, snaps, names, center)
    result = pca_directions(final, loaders(snaps), ignore=ignore, center=center)
    got = np.stack([flat(c, names) for c in result.components])
    signs = np.sign(np.sum(got * comps, axis=1))
    assert np.allclose(got, comps * signs[:, None], atol=1e-6)  # float32 storage
    assert np.allclose(got @ got.T, np.eye(2), atol=1e-5)  # orthonormal
    assert np.allclose(result.explained_variance_ratio, ratios, rtol=1e-10)
    assert np.allclose(result.singular_values, sv, rtol=1e-10)
    assert np.allclose(result.coordinates, proj * signs, atol=1e-9)
    assert np.allclose(result.coordinates[-1], 0.0)  # the final snapshot is the final model: the origin
    for name in SHAPES:
        assert result.components[0][name].shape == SHAPES[name]
        if name not in names:
            assert not result.components[0][name].any() and not result.components[1][name].any()


def test_blockwise_reading_gives_the_same_answer():
    """A block budget of 5 elements per snapshot: every snapshot is read once per block, twice over (Gram, then
    components), and nothing changes but rounding."""
    final, snaps = trajectory(n=6)
    whole = pca_directions(final, loaders(snaps), ignore="none")
    calls = []
    used = sum(int(np.prod(s)) for s in SHAPES.values())
    blocked = pca_directions(final, loaders(snaps, calls), ignore="none", max_block_bytes=8 * 6 * 5)
    groups = -(-used // 5)
    assert len(calls) == 2 * groups * 6
    for a, b in zip(whole.components, blocked.components):
        assert all(torch.allclose(a[n], b[n], atol=1e-7) for n in SHAPES)
    assert np.allclose(whole.coordinates, blocked.coordinates, atol=1e-10)
    assert np.allclose(whole.explained_variance_ratio, blocked.explained_variance_ratio, rtol=1e-12)


def test_signs_are_deterministic_and_independent_of_snapshot_storage():
    final, snaps = trajectory()
    a = pca_directions(final, loaders(snaps))
    b = pca_directions(final, loaders([{k: v.clone() for k, v in s.items()} for s in snaps]))
    assert all(torch.equal(x[n], y[n]) for x, y in zip(a.components, b.components) for n in SHAPES)


def test_filter_rescaling_and_least_squares_coordinates():
    final, snaps = trajectory()
    names = list(SHAPES)
    plain = pca_directions(final, loaders(snaps), ignore="none")
    scaled = pca_directions(final, loaders(snaps), ignore="none", rescale="filter")
    for comp, raw in zip(scaled.components, plain.components):
        for name in names:
            d, w = comp[name].double(), final[name].double()
            if d.dim() > 1:
                assert torch.allclose(d.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-5)
                # each filter is the raw component's filter, rescaled (same direction)
                cos = torch.nn.functional.cosine_similarity(d.flatten(1), raw[name].double().flatten(1), dim=1)
                assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
            else:
                assert float(d.norm()) == pytest.approx(float(w.norm()), rel=1e-5)
    X = np.stack([flat(c, names) for c in scaled.components], axis=1)
    D = np.stack([np.concatenate([(s[n] - final[n]).double().reshape(-1).numpy() for n in names]) for s in snaps])
    expected = np.linalg.lstsq(X, D.T, rcond=None)[0].T
    assert np.allclose(scaled.coordinates, expected, atol=1e-8)
    assert np.allclose(scaled.explained_variance_ratio, plain.explained_variance_ratio)


def test_bad_trajectories_are_refused_with_the_reason():
    final, snaps = trajectory(n=4)
    with pytest.raises(ValueError, match="need at least 3"):
        pca_directions(final, loaders(snaps[:2]))
    with pytest.raises(ValueError, match="copies"):
        pca_directions(final, loaders([snaps[0]] * 4))
    wrong = [dict(s) for s in snaps]
    wrong[2]["fc.weight"] = torch.zeros(3, 7)
    with pytest.raises(ValueError, match=r"snapshot 2: entry 'fc.weight' has shape \(3, 7\)"):
        pca_directions(final, loaders(wrong))
    missing = [dict(s) for s in snaps]
    del missing[1]["conv1.weight"]
    with pytest.raises(ValueError, match="snapshot 1 has no entry 'conv1.weight'"):
        pca_directions(final, loaders(missing))
    for kwargs, word in [({"ignore": "bias"}, "ignore"), ({"rescale": "layer"}, "rescale")]:
        with pytest.raises(ValueError, match=word):
            pca_directions(final, loaders(snaps), **kwargs)


def test_snapshot_files_are_ordered_by_epoch_and_skip_the_rest(tmp_path):
    for name in ["epoch_10.pt", "epoch_002.pt", "epoch_000.pt", "resume.pt", ".epoch_011.pt.tmp-5", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in snapshot_files(tmp_path)] == ["epoch_000.pt", "epoch_002.pt", "epoch_10.pt"]
    with pytest.raises(ValueError, match="does not exist"):
        snapshot_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no snapshots"):
        snapshot_files(tmp_path / "empty")


def test_snapshots_load_lazily_from_current_and_legacy_files(tmp_path):
    state = {"conv.weight": torch.randn(2, 3), "bn.num_batches_tracked": torch.tensor(5)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "epoch_003.pt")
    torch.save({"state_dict": state}, tmp_path / "model_4.t7", _use_new_zipfile_serialization=False)
    for path in snapshot_files(tmp_path):
        loaded = load_snapshot(path)
        assert loaded.keys() == state.keys() and torch.equal(loaded["conv.weight"], state["conv.weight"])
    (tmp_path / "epoch_005.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="epoch_005.pt cannot be read"):
        load_snapshot(tmp_path / "epoch_005.pt")


def test_a_planar_trajectory_of_states_is_reproduced_by_the_evaluator(fixture_data, tmp_path):
    """Snapshots θ_i = θ* + a_i·u + b_i·v over every floating state entry (BN statistics included), saved as files:
    uncentred PCA recovers the plane, and the loss at each snapshot's coordinates is the snapshot's own loss."""
    model = checkpoint.load_model(fixture_data.arch, fixture_data.checkpoint)
    full = checkpoint.read_state_dict(fixture_data.checkpoint)
    final = {k: v.detach().clone() for k, v in perturbed_entries(model, "states").items()}
    g = torch.Generator().manual_seed(0)
    u = {k: 0.05 * torch.randn(v.shape, generator=g) * (v.abs().mean() + 0.1) for k, v in final.items()}
    v_ = {k: 0.05 * torch.randn(v.shape, generator=g) * (v.abs().mean() + 0.1) for k, v in final.items()}
    ab = [(1.0, 0.5), (0.7, -0.4), (0.2, 0.9), (0.0, 0.0)]
    folder = tmp_path / "run"
    folder.mkdir()
    for i, (a, b) in enumerate(ab):
        state = dict(full)
        for k in final:
            state[k] = (final[k] + a * u[k] + b * v_[k]).contiguous()
            if k.endswith("running_var"):
                assert bool((state[k] > 0).all())
        torch.save({"state_dict": state, "epoch": i}, folder / f"epoch_{i:03d}.pt")
    files = snapshot_files(folder)
    result = pca_directions(final, [lambda p=p: load_snapshot(p) for p in files], ignore="none", center=False)
    assert result.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-6)  # the plane holds everything
    im, lab, _ = data.load_images("cifar10", fixture_data.root, "train", 64, 0)
    ev = Evaluator(model, result.components, data.normalize(im), torch.as_tensor(lab), 64, kind="states")
    for i in (0, 1):
        loss, _ = ev(tuple(result.coordinates[i]))
        ref, _ = brute_force(Fixture(fixture_data.root, files[i], fixture_data.arch), [], ())
        assert loss == pytest.approx(ref, rel=1e-4)

"""Interpolation and plane directions: evaluated at the endpoints and corners they reproduce each checkpoint's own
loss, computed independently (a plain forward of that checkpoint)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Fixture, brute_force

from llmpi import models
from llmpi.compute import data
from llmpi.compute.evaluate import Evaluator
from llmpi.space import checkpoint
from llmpi.space.between import difference, interpolation, plane_through
from llmpi.space.directions import perturbed_entries


@pytest.fixture(scope="module")
def three(fixture_data, other_minimisers) -> list[Fixture]:
    """The fixture's minimiser and two others trained on from it (other lr and order: other weights and BN stats)."""
    return [fixture_data] + [Fixture(fixture_data.root, path, fixture_data.arch) for path in other_minimisers]


def evaluator(fx: Fixture, directions, kind: str) -> Evaluator:
    model = checkpoint.load_model(fx.arch, fx.checkpoint)
    im, lab, _ = data.load_images("cifar10", fx.root, "train", 64, 0)
    return Evaluator(model, directions, data.normalize(im), torch.as_tensor(lab), 32, kind=kind)


def entries(fx: Fixture, kind: str) -> dict[str, torch.Tensor]:
    model = checkpoint.load_model(fx.arch, fx.checkpoint)
    return {k: v.detach().clone() for k, v in perturbed_entries(model, kind).items()}


def own_loss(fx: Fixture) -> float:
    return brute_force(fx, [], ())[0]


def test_interpolation_endpoints_are_the_two_checkpoints(three):
    first, second, _ = three
    delta = interpolation(entries(first, "states"), checkpoint.read_state_dict(second.checkpoint))
    assert "bn1.running_mean" in delta and "bn1.num_batches_tracked" not in delta
    ev = evaluator(first, [delta], "states")
    assert ev((0.0,))[0] == pytest.approx(own_loss(first), rel=1e-5)
    assert ev((1.0,))[0] == pytest.approx(own_loss(second), rel=1e-5)
    assert abs(own_loss(first) - own_loss(second)) > 1e-3  # the two really differ


def test_interpolation_midpoint_is_the_average_model(three, tmp_path):
    first, second, _ = three
    s1, s2 = (checkpoint.read_state_dict(f.checkpoint) for f in (first, second))
    delta = interpolation(entries(first, "states"), s2)
    average = {k: ((v.double() + s2[k].double()) / 2).float() if v.is_floating_point() else v for k, v in s1.items()}
    torch.save({"state_dict": average}, tmp_path / "average.pt")
    ref = own_loss(Fixture(first.root, tmp_path / "average.pt", first.arch))
    assert evaluator(first, [delta], "states")((0.5,))[0] == pytest.approx(ref, rel=1e-5)


def test_weights_interpolation_keeps_the_first_models_statistics(three, tmp_path):
    """type: weights moves parameters only: at α = 1 the net has θ2's parameters and θ1's BN statistics."""
    first, second, _ = three
    s1, s2 = (checkpoint.read_state_dict(f.checkpoint) for f in (first, second))
    delta = interpolation(entries(first, "weights"), s2)
    assert "bn1.weight" in delta and "bn1.running_mean" not in delta
    ev = evaluator(first, [delta], "weights")
    ev.move_to((1.0,))
    moved = ev.model.state_dict()
    params = {k for k, _ in ev.model.named_parameters()}
    for k in s1:
        if k in params:
            assert torch.allclose(moved[k], s2[k], rtol=0, atol=1e-6 * (1 + float(s2[k].abs().max())))
        else:
            assert torch.equal(moved[k], s1[k])  # statistics and num_batches_tracked untouched
    hybrid = {k: (s2[k] if k in params else s1[k]) for k in s1}
    torch.save({"state_dict": hybrid}, tmp_path / "hybrid.pt")
    assert ev((1.0,))[0] == pytest.approx(own_loss(Fixture(first.root, tmp_path / "hybrid.pt", first.arch)), rel=1e-5)


def test_plane_corners_are_the_three_models(three):
    first, second, third = three
    plane = plane_through(
        entries(first, "states"), *(checkpoint.read_state_dict(f.checkpoint) for f in (second, third))
    )
    assert plane.coordinates == ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))
    ev = evaluator(first, plane.directions, "states")
    for fx, corner in zip(three, plane.coordinates):
        assert ev(corner)[0] == pytest.approx(own_loss(fx), rel=1e-5)
    # the stored coordinates are the least-squares coordinates of each model in the frame (numpy, independently)
    base = checkpoint.read_state_dict(first.checkpoint)
    names = list(plane.directions[0])
    X = np.stack([np.concatenate([d[n].double().reshape(-1).numpy() for n in names]) for d in plane.directions], 1)
    for fx, corner in zip(three, plane.coordinates):
        s = checkpoint.read_state_dict(fx.checkpoint)
        d = np.concatenate([(s[n].double() - base[n].double()).reshape(-1).numpy() for n in names])
        assert np.allclose(np.linalg.lstsq(X, d, rcond=None)[0], corner, atol=1e-6)


def test_checkpoints_that_do_not_fit_are_refused(three):
    first, second, _ = three
    base = entries(first, "weights")
    other = models.build("resnet8_noshort").state_dict()
    with pytest.raises(ValueError, match="model.checkpoint2 lacks entries of the first model: layer2.0.shortcut"):
        interpolation(base, other)
    s2 = checkpoint.read_state_dict(second.checkpoint)
    with pytest.raises(ValueError, match=r"entry 'linear.weight' has shape \(10, 3\)"):
        difference(base, {**s2, "linear.weight": torch.zeros(10, 3)})
    with pytest.raises(ValueError, match="not floating-point"):
        difference({"n": torch.tensor(1.0)}, {"n": torch.tensor(1)})


def test_degenerate_planes_are_refused(three):
    first, second, _ = three
    base = entries(first, "weights")
    s1, s2 = (checkpoint.read_state_dict(f.checkpoint) for f in (first, second))
    beyond = {k: (2 * s2[k].double() - s1[k].double()).float() if v.is_floating_point() else v for k, v in s1.items()}
    with pytest.raises(ValueError, match="one line"):
        plane_through(base, s2, beyond)
    with pytest.raises(ValueError, match="model.checkpoint3 is the same model"):
        plane_through(base, s2, s1)
